"""Settings: defaults, parsing, and bad values failing loudly with their name (the README's
table of them is checked in test_settings_docs.py)."""

from __future__ import annotations

import pytest

from relay.config import ConfigError, load_config


def test_defaults_match_the_contract() -> None:
    config = load_config({})
    assert config["HEARTBEAT_SECONDS"] == 15
    assert config["UPSTREAM_TIMEOUT_SECONDS"] == 60
    assert config["MAX_PROMPT_BYTES"] == 4194304
    assert config["MOCK_DELAY_MS"] == 20
    assert config["CANCEL_ON_DISCONNECT"] is False


@pytest.mark.parametrize(
    ("env", "value"),
    [("RELAY_HEARTBEAT_SECONDS", "soon"), ("RELAY_HEARTBEAT_SECONDS", "0"),
     ("RELAY_MAX_PROMPT_BYTES", "-5"), ("RELAY_CANCEL_ON_DISCONNECT", "maybe"),
     ("RELAY_UPSTREAM", "gpt"), ("RELAY_LOG_LEVEL", "LOUD")],
)
def test_bad_values_name_the_variable(env: str, value: str) -> None:
    with pytest.raises(ConfigError, match=env):
        load_config({env: value})


def test_values_are_parsed() -> None:
    config = load_config({"RELAY_CANCEL_ON_DISCONNECT": "yes", "RELAY_HEARTBEAT_SECONDS": "2.5"})
    assert config["CANCEL_ON_DISCONNECT"] is True and config["HEARTBEAT_SECONDS"] == 2.5
