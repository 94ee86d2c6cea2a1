"""relay's Flask class and response class: Flask's per-request work that profiles showed, cut.

Every request binds the URL map to its Host header, and asks whether each function it calls (the
view, the teardown hooks) is a coroutine function: the answers are the same for every request
with the same Host and for the same function, so RelayFlask keeps them. A response's headers are
copied and scanned once more on the way out; PreparedResponse, for the bodies relay builds
itself, sends them as they are, and under gunicorn before the request's teardown. Each of these
took microseconds that a cold CPU cache makes tens of, and relay's time to first token is two
requests, each starting on caches the worker's idle CPU lost. Must not know relay's routes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Request, Response
from flask.ctx import RequestContext
from werkzeug.routing import MapAdapter

_MAX_BINDINGS = 64  # the Host header is the client's to choose
# What Map.bind_to_environ reads of the environ, besides the path, query string and method.
_BINDING_KEYS = ("HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "wsgi.url_scheme", "SCRIPT_NAME",
                 "HTTP_CONNECTION", "HTTP_UPGRADE")


class RelayFlask(Flask):
    """Flask, binding the URL map once per Host header and checking each function once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (the request's host, the adapter's server name, script name, subdomain, url scheme)
        self._bindings: dict[tuple[Any, ...], tuple[str, str, str, str | None, str]] = {}
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def create_url_adapter(self, request: Request | None) -> MapAdapter | None:
        """Flask's adapter, with everything but the path, query and method kept per Host."""
        config = self.config
        if (request is None or config["TRUSTED_HOSTS"] is not None
                or config["SERVER_NAME"] is not None or self.subdomain_matching
                or self.url_map.host_matching):
            return super().create_url_adapter(request)
        environ = request.environ
        key = tuple(environ.get(name) for name in _BINDING_KEYS)
        binding = self._bindings.get(key)
        if binding is None:
            adapter = super().create_url_adapter(request)
            assert adapter is not None
            if len(self._bindings) >= _MAX_BINDINGS:
                self._bindings.clear()
            self._bindings[key] = (request.host, adapter.server_name, adapter.script_name,
                                   adapter.subdomain, adapter.url_scheme)
            return adapter
        request.host, server_name, script_name, subdomain, url_scheme = binding  # type: ignore[misc]
        return MapAdapter(
            self.url_map, server_name, script_name, subdomain, url_scheme,
            _wsgi_string(environ.get("PATH_INFO")) or "/", environ["REQUEST_METHOD"],
            _wsgi_string(environ.get("QUERY_STRING")),
        )

    def wsgi_app(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """Flask's, except that under gunicorn a PreparedResponse of bytes is sent before the
        request's teardown: gunicorn closes a body right after writing it, and the teardown
        (contexts popped, the session removed) no longer delays `POST /new`'s answer (0.15-0.22
        ms of the first token, side by side). Anything else, and other servers (the test client
        closes a body only when told to), get Flask's own order."""
        if "gunicorn.socket" not in environ or "werkzeug.debug.preserve_context" in environ:
            return super().wsgi_app(environ, start_response)
        ctx = self.request_context(environ)
        error: BaseException | None = None
        try:
            try:
                ctx.push()
                response = self.full_dispatch_request()
            except Exception as e:
                error = e
                response = self.handle_exception(e)
            except:  # noqa: E722 (Flask's own: the error is passed to the teardown)
                error = sys.exc_info()[1]
                raise
            body = response(environ, start_response)
        except BaseException:
            self._pop(ctx, error)
            raise
        if error is None and isinstance(response, PreparedResponse) and isinstance(body, list):
            return _TeardownOnClose(body, ctx)
        self._pop(ctx, error)
        return body

    def _pop(self, ctx: RequestContext, error: BaseException | None) -> None:
        ctx.pop(None if error is not None and self.should_ignore_error(error) else error)

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Flask's answer for `func`, remembered (views and hooks are a fixed set)."""
        sync = self._sync.get(func)
        if sync is None:
            sync = self._sync[func] = super().ensure_sync(func)
        return sync


def _wsgi_string(value: str | None) -> str | None:
    """A WSGI environ string as werkzeug decodes it (latin-1 bytes read as UTF-8)."""
    if value is None or value.isascii():
        return value
    return value.encode("latin1").decode(errors="replace")


class PreparedResponse(Response):
    """A response sent with its headers as built: werkzeug's pass over them on the way out (a
    copy of them all, IRI-to-URI on `Location`, Content-Length from the body, a closing wrapper
    around a body of bytes) is skipped.

    Only for bodies of bytes (whose Content-Length `set_data` wrote) or generators of bytes
    (`direct_passthrough`), a status with a body, and an ASCII `Location` if any. A HEAD request
    still goes werkzeug's way, which drops the body.
    """

    def get_wsgi_response(
        self, environ: dict[str, Any]
    ) -> tuple[Any, str, list[tuple[str, str]]]:
        if environ["REQUEST_METHOD"] == "HEAD":
            return super().get_wsgi_response(environ)
        return self.response, self.status, self.headers.to_wsgi_list()


class _TeardownOnClose(list[bytes]):
    """A response body whose request context is popped when the server closes it, once sent."""

    def __init__(self, body: list[bytes], ctx: RequestContext) -> None:
        super().__init__(body)
        self._ctx: RequestContext | None = ctx

    def close(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            ctx.pop(None)
