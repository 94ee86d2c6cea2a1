"""The cookie: Flask's session through its `SessionInterface` seam, holding one signed value,
`uid`: an anonymous identity (`anon:...`, open mode) or a sign-in session (`s:<token>`).

Stored as just `<uid>.<signature>` (itsdangerous' Signer): Flask's default format (tagged JSON,
zlib, a timestamp) was the largest cost of `POST /new` after SQL. A Cookie header once verified
is trusted for the rest of that second (`SecondCache`): parsing and verifying it again on every
request cost more than 10% of the added time to first token (a stream is two requests with the
same header; bench/README.md). A session's validity is not cached here: `identity` looks it up.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask, Request, Response
from flask import request as current_request
from flask.sessions import SecureCookieSession, SessionInterface
from itsdangerous import BadSignature, Signer

from .secondcache import SecondCache

SESSION_PREFIX = "s:"


class IdentityCookie(SessionInterface):
    """A session that holds only `uid`, signed with the app's secret key."""

    def __init__(self) -> None:
        self._verified = SecondCache()  # (secret, Cookie header) -> uid

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession:
        header = request.environ.get("HTTP_COOKIE")
        if not header or not app.secret_key:
            return SecureCookieSession()
        uid = self._verified.get((_secret(app), header), lambda: self._verify(app, request))
        return SecureCookieSession({"uid": uid} if uid else {})

    def _verify(self, app: Flask, request: Request) -> str | None:
        raw = request.cookies.get(self.get_cookie_name(app))
        if not raw:
            return None
        try:
            return _signer(app).unsign(raw).decode()
        except (BadSignature, UnicodeDecodeError):
            return None

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        if not session.modified:
            return
        name = self.get_cookie_name(app)
        uid = session.get("uid")
        secure = self.get_cookie_secure(app) or current_request.is_secure  # as gunicorn says
        if not uid:
            response.delete_cookie(name, domain=self.get_cookie_domain(app),
                                   path=self.get_cookie_path(app), secure=secure,
                                   httponly=True, samesite=self.get_cookie_samesite(app))
            response.vary.add("Cookie")
            return
        lifetime = (timedelta(days=app.config["SESSION_DAYS"]) if uid.startswith(SESSION_PREFIX)
                    else app.permanent_session_lifetime)
        value = _signer(app).sign(uid).decode()
        response.set_cookie(
            name, value,
            expires=datetime.now(UTC) + lifetime,
            httponly=self.get_cookie_httponly(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=secure,
            samesite=self.get_cookie_samesite(app),
        )
        response.vary.add("Cookie")
        # What a client with no other cookie here sends next: already verified.
        self._verified.put((_secret(app), f"{name}={value}"), uid)


def _secret(app: Flask) -> str | bytes:
    if not app.secret_key:
        raise RuntimeError("relay's identity cookie needs the app's secret key")
    return app.secret_key


def _signer(app: Flask) -> Signer:
    return Signer(_secret(app), salt="relay-identity", key_derivation="hmac",
                  digest_method=hashlib.sha256)
