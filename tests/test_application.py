"""RelayFlask's kept URL bindings and PreparedResponse give what Flask and werkzeug would."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, Response, has_app_context, has_request_context, url_for
from werkzeug.test import EnvironBuilder

from relay.application import PreparedResponse, RelayFlask

ENVIRONS = [
    {"base_url": "http://relay.example:8000/", "path": "/sse/abc"},
    {"base_url": "http://relay.example/", "path": "/sse/abc", "query_string": "last_event_id=3"},
    {"base_url": "https://relay.example/", "path": "/new", "method": "POST"},
    {"base_url": "http://relay.example/mount/", "path": "/sse/abc"},
    {"base_url": "http://RELAY.example:8000/", "path": "/sse/gr\u00fc\u00dfe",
     "query_string": "q=\u00e4"},
    {"base_url": "http://b\u00fccher.example/", "path": "/sse/abc"},
    {"base_url": "http://relay.example/", "path": "/sse/abc",
     "headers": {"Connection": "Upgrade", "Upgrade": "websocket"}},
]


def _adapter_fields(app: Flask, environ: dict[str, Any]) -> tuple[Any, ...]:
    with app.request_context(environ) as ctx:
        adapter = ctx.url_adapter
        return (ctx.request.host, adapter.server_name, adapter.script_name, adapter.subdomain,
                adapter.url_scheme, adapter.path_info, adapter.default_method,
                adapter.query_args, url_for("stream", ticket_id="t1", _external=True))


def _apps() -> tuple[Flask, RelayFlask]:
    apps = (Flask(__name__), RelayFlask(__name__))
    for app in apps:
        app.add_url_rule("/sse/<ticket_id>", "stream", lambda ticket_id: ticket_id)
    return apps


@pytest.mark.parametrize("options", ENVIRONS)
def test_url_adapter_is_flasks_when_made_and_when_kept(options: dict[str, Any]) -> None:
    flask_app, relay_app = _apps()
    environ = EnvironBuilder(**options).get_environ()
    expected = _adapter_fields(flask_app, environ)
    assert _adapter_fields(relay_app, environ) == expected  # made, and kept
    assert _adapter_fields(relay_app, environ) == expected  # from what was kept
    other = EnvironBuilder(**{**options, "path": "/sse/other"}).get_environ()
    assert _adapter_fields(relay_app, other) == _adapter_fields(flask_app, other)


def test_kept_bindings_are_per_host_and_bounded() -> None:
    _, relay_app = _apps()
    for number in range(200):
        environ = EnvironBuilder(base_url=f"http://host{number}.example/").get_environ()
        fields = _adapter_fields(relay_app, environ)
        assert fields[0] == f"host{number}.example"
        assert fields[-1] == f"http://host{number}.example/sse/t1"
    assert 0 < len(relay_app._bindings) <= 64


def test_trusted_hosts_are_still_checked() -> None:
    _, relay_app = _apps()
    relay_app.config["TRUSTED_HOSTS"] = ["relay.example"]
    good = EnvironBuilder(base_url="http://relay.example/", path="/sse/a").get_environ()
    assert relay_app.test_client().get("/sse/a", base_url="http://relay.example/").status_code \
        == 200
    assert _adapter_fields(relay_app, good)[0] == "relay.example"
    assert relay_app.test_client().get("/sse/a", base_url="http://evil.example/").status_code \
        == 400


def test_a_prepared_response_sends_what_werkzeug_would() -> None:
    environ = EnvironBuilder(method="POST", path="/new").get_environ()
    headers = {"Location": "/sse/abc"}
    plain = Response(b'{"id": "abc"}', 201, headers, mimetype="application/json")
    prepared = PreparedResponse(b'{"id": "abc"}', 201, headers, mimetype="application/json")
    plain_iter, plain_status, plain_headers = plain.get_wsgi_response(environ)
    body, status, sent = prepared.get_wsgi_response(environ)
    assert (status, sorted(sent)) == (plain_status, sorted(plain_headers))
    assert b"".join(body) == b"".join(plain_iter) == b'{"id": "abc"}'
    assert ("Content-Length", "13") in sent


def test_a_prepared_stream_is_its_generator_and_head_drops_the_body() -> None:
    def frames() -> Any:
        yield b"retry: 1000\n\n"

    response = PreparedResponse(frames(), 200, content_type="text/event-stream",
                                direct_passthrough=True)
    body, status, headers = response.get_wsgi_response(EnvironBuilder().get_environ())
    assert body is response.response and status == "200 OK"
    assert ("Content-Type", "text/event-stream") in headers
    assert not any(name == "Content-Length" for name, _ in headers)
    head = PreparedResponse(b"body", 200).get_wsgi_response(
        EnvironBuilder(method="HEAD").get_environ())
    assert list(head[0]) == []


def _teardown_app(body: Any) -> tuple[RelayFlask, list[str]]:
    app = RelayFlask(__name__)
    torn_down: list[str] = []
    app.add_url_rule("/answer", "answer", lambda: body)
    app.teardown_request(lambda error: torn_down.append(f"request {error!r}"))
    app.teardown_appcontext(lambda error: torn_down.append(f"app {error!r}"))
    return app, torn_down


def _call(app: Flask, **environ: Any) -> tuple[Any, list[str]]:
    started: list[str] = []
    wsgi_environ = {**EnvironBuilder(path="/answer").get_environ(), **environ}
    body = app.wsgi_app(wsgi_environ, lambda status, headers, exc_info=None: started.append(status))
    return body, started


def test_under_gunicorn_a_prepared_body_is_torn_down_when_closed_after_sending() -> None:
    # gunicorn writes the body, then closes it: the teardown runs at the close, so it no longer
    # delays the answer, and still runs exactly once, with the contexts gone after it.
    app, torn_down = _teardown_app(PreparedResponse(b'{"id": "t1"}', 201))
    body, started = _call(app, **{"gunicorn.socket": object()})
    assert started == ["201 CREATED"] and list(body) == [b'{"id": "t1"}']
    assert torn_down == []
    body.close()
    body.close()
    assert torn_down == ["request None", "app None"]
    assert not has_request_context() and not has_app_context()


@pytest.mark.parametrize("case", ["not gunicorn", "werkzeug's Response", "an error"])
def test_anything_else_is_torn_down_before_its_body_is_returned(case: str) -> None:
    body: Any = Response("plain") if case == "werkzeug's Response" else PreparedResponse(b"ok")
    app, torn_down = _teardown_app(body)
    if case == "an error":
        app.add_url_rule("/answer", "fails", lambda: 1 / 0, methods=["POST"])
        returned, _ = _call(app, REQUEST_METHOD="POST", **{"gunicorn.socket": object()})
        assert torn_down == ["request ZeroDivisionError('division by zero')",
                             "app ZeroDivisionError('division by zero')"]
    else:
        environ = {} if case == "not gunicorn" else {"gunicorn.socket": object()}
        returned, _ = _call(app, **environ)
        assert torn_down == ["request None", "app None"]
    assert b"".join(returned)
