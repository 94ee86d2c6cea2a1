"""The README's settings tables say what the code does: every setting's row, default and meaning.

The app's settings are checked against `relay.config.SETTINGS` (the help text is the meaning,
word for word); the server's against the variables the gunicorn configuration reads.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from relay.config import SETTINGS, Setting

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
GUNICORN_CONF = next(
    path for path in (ROOT / "relay" / "gunicorn_conf.py", ROOT / "gunicorn.conf.py")
    if path.exists()
)


def _settings_tables(readme: str) -> list[dict[str, tuple[str, str]]]:
    """The tables of the README's Settings section: variable -> (default, meaning), in order."""
    section = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    tables: list[dict[str, tuple[str, str]]] = []
    in_table = False
    for line in section.splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        if not in_table:
            tables.append({})
            in_table = True
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`([A-Z0-9_]+)`", cells[0])
        if name:  # not the header or the |---| line
            assert len(cells) == 3, line
            tables[-1][name.group(1)] = (cells[1], cells[2])
    return tables


APP_TABLE, SERVER_TABLE = _settings_tables(README)


def _readme_default(value: Any) -> str:
    """How the README writes a default: `(unset)` (nothing, or an empty list), or the value as
    it would be set, in code."""
    if value is None or value == ():
        return "(unset)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _environ_reads(path: Path) -> set[str]:
    """The variables a module reads: `os.environ.get("X")`, `os.environ["X"]`, `os.getenv("X")`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Attribute):
            target = ast.unparse(node.func)
            if target in {"os.environ.get", "os.getenv"}:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
        elif (isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ"
              and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)
              and isinstance(node.ctx, ast.Load)):
            names.add(node.slice.value)
    return names


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.env)
def test_every_setting_has_a_readme_row_with_its_default_and_help(setting: Setting) -> None:
    assert setting.env in APP_TABLE, f"README's settings table has no row for {setting.env}"
    default, meaning = APP_TABLE[setting.env]
    assert default == _readme_default(setting.default)
    assert " ".join(meaning.split()) == " ".join(setting.help.split())


def test_the_settings_table_has_no_row_for_a_setting_that_does_not_exist() -> None:
    assert set(APP_TABLE) == {setting.env for setting in SETTINGS}


def test_the_server_table_names_exactly_what_the_gunicorn_config_reads() -> None:
    reads = _environ_reads(GUNICORN_CONF)
    assert reads, f"found no os.environ reads in {GUNICORN_CONF.name}"
    assert set(SERVER_TABLE) == reads


@pytest.mark.parametrize(
    ("value", "written"),
    [(None, "(unset)"), ((), "(unset)"), ("auto", "`auto`"), (15.0, "`15`"), (2.5, "`2.5`"),
     (2000, "`2000`"), (False, "`false`"), (True, "`true`")],
)
def test_defaults_are_written_as_they_would_be_set(value: Any, written: str) -> None:
    assert _readme_default(value) == written
