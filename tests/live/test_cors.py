"""CORS through a real relay (`RELAY_CORS_ORIGINS`): a listed origin's page may call the API with
a key, another origin's may not, and no response ever allows credentials (relay's cookie)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from ..helpers import assert_error_shape, read_stream, text_of
from .accounts import bearer, new_key, new_user, signed_in
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(60)

APP = "https://app.example"


@pytest.fixture(scope="module")
def cors_relay(start_relay: Callable[..., RelayServer]) -> RelayServer:
    return start_relay({"RELAY_AUTH": "accounts", "RELAY_CORS_ORIGINS": APP,
                        "RELAY_DEFAULT_MODEL": "mock-echo"}, workers=1)


@pytest.fixture()
def seen(cors_relay: RelayServer) -> Iterator[list[httpx.Response]]:
    """Every response a test gets; none may allow credentials."""
    responses: list[httpx.Response] = []
    yield responses
    assert responses
    for response in responses:
        assert "access-control-allow-credentials" not in response.headers, response.request.url


def preflight(
    relay: RelayServer, path: str, origin: str, method: str, headers: str
) -> httpx.Response:
    return httpx.options(relay.url + path, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }, timeout=30)


def listed(header: str | None) -> set[str]:
    return {part.strip().lower() for part in (header or "").split(",") if part.strip()}


def test_a_listed_origin_may_post_with_a_key(
    cors_relay: RelayServer, seen: list[httpx.Response]
) -> None:
    response = preflight(cors_relay, "/new", APP, "POST", "authorization, content-type")
    seen.append(response)
    assert response.status_code in (200, 204), response.text
    assert response.headers["access-control-allow-origin"] == APP
    assert "post" in listed(response.headers.get("access-control-allow-methods"))
    assert {"authorization", "content-type"} <= listed(
        response.headers.get("access-control-allow-headers"))

    _, key = new_key(cors_relay, new_user(cors_relay))
    with httpx.Client(base_url=cors_relay.url, headers={"Origin": APP}, timeout=30) as page:
        created = page.post("/new", json={"prompt": "from app.example"}, headers=bearer(key))
        seen.append(created)
        assert created.status_code == 201, created.text
        assert created.headers["access-control-allow-origin"] == APP
        assert "location" in listed(created.headers.get("access-control-expose-headers"))
        stream_preflight = preflight(cors_relay, created.json()["stream_url"], APP, "GET",
                                     "last-event-id")
        seen.append(stream_preflight)
        assert stream_preflight.headers["access-control-allow-origin"] == APP
        assert "last-event-id" in listed(
            stream_preflight.headers.get("access-control-allow-headers"))
        with page.stream("GET", created.json()["stream_url"]) as stream:
            seen.append(stream)
            assert stream.headers["access-control-allow-origin"] == APP
        events = read_stream(page, created.json()["stream_url"])
        assert text_of(events) == "from app.example"
        refused = page.post("/new", json={"prompt": "x"}, headers=bearer("rk_" + "x" * 43))
        seen.append(refused)
        assert_error_shape(refused, 401, "invalid_api_key")
        assert refused.headers["access-control-allow-origin"] == APP


def test_another_origin_gets_no_cors_headers(
    cors_relay: RelayServer, seen: list[httpx.Response]
) -> None:
    for origin in ("https://evil.example", "https://app.example.evil.example", "null"):
        response = preflight(cors_relay, "/new", origin, "POST", "authorization, content-type")
        seen.append(response)
        cors = [name for name in response.headers if name.lower().startswith("access-control-")]
        assert cors == [], (origin, cors)


def test_a_listed_origin_still_cannot_post_with_the_cookie(
    cors_relay: RelayServer, seen: list[httpx.Response]
) -> None:
    with signed_in(cors_relay, new_user(cors_relay)) as browser:
        response = browser.post("/new", json={"prompt": "riding on a cookie"},
                                headers={"Origin": APP})
        seen.append(response)
        assert_error_shape(response, 403, "cross_site_request")
        same_origin = browser.post("/new", json={"prompt": "from relay's own page"},
                                   headers={"Origin": cors_relay.url})
        seen.append(same_origin)
        assert same_origin.status_code == 201, same_origin.text
