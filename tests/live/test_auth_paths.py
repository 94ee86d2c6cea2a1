"""Path parameters of `/auth/keys/<key_id>` and `/admin/users/<name>` that no key or user can
have (a NUL, which PostgreSQL cannot even compare with) are `404` as any unknown one, not `500`;
on PostgreSQL, through a real relay (the fuzz test did not happen on them)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from ..helpers import assert_error_shape
from .relay_server import RelayServer

pytestmark = [pytest.mark.timeout(60), pytest.mark.postgres]

CASES = [
    ("DELETE", "/auth/keys/key_%00", None, "key_not_found"),
    ("PATCH", "/admin/users/a%00b", {"disabled": False}, "user_not_found"),
    ("DELETE", "/auth/keys/key_unknown", None, "key_not_found"),
    ("PATCH", "/admin/users/nobody", {"disabled": False}, "user_not_found"),
]


def test_a_name_or_id_no_row_can_have_is_not_found(
    start_relay: Callable[..., RelayServer], migrated_postgres: str
) -> None:
    relay = start_relay({"DATABASE_URL": migrated_postgres}, workers=1)
    with httpx.Client(base_url=relay.url, timeout=30) as admin:
        set_up = admin.post("/auth/setup", json={"username": "root", "password": "correct horse"})
        assert set_up.status_code == 201, set_up.text
        for method, path, body, code in CASES:
            response = admin.request(method, path, json=body)
            assert_error_shape(response, 404, code)
    assert "Traceback" not in relay.log()
