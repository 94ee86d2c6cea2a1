"""Who is calling: the one place that turns a request into an owner id.

Today every browser or client gets an anonymous identity in a signed cookie; accounts and API
keys plug in here later without touching the views. The cookie is Flask's session through its
`SessionInterface` seam, stored as just `<owner>.<signature>` (itsdangerous' Signer): Flask's
default format (tagged JSON, zlib, a timestamp) was the largest cost of `POST /new` after SQL.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Request, Response, session
from flask.sessions import SecureCookieSession, SessionInterface
from itsdangerous import BadSignature, Signer


def current_owner() -> str:
    """Return the caller's owner id, creating an anonymous identity on first use."""
    owner = session.get("uid")
    if not isinstance(owner, str) or not owner:
        owner = "anon:" + secrets.token_urlsafe(18)
        session["uid"] = owner
    return owner


class IdentityCookie(SessionInterface):
    """A session that holds only `uid`, signed with the app's secret key."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession:
        raw = request.cookies.get(self.get_cookie_name(app))
        if not raw or not app.secret_key:
            return SecureCookieSession()
        try:
            uid = _signer(app).unsign(raw).decode()
        except (BadSignature, UnicodeDecodeError):
            return SecureCookieSession()
        return SecureCookieSession({"uid": uid})

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        if not session.modified or not session.get("uid"):
            return
        response.set_cookie(
            self.get_cookie_name(app),
            _signer(app).sign(session["uid"]).decode(),
            expires=datetime.now(UTC) + app.permanent_session_lifetime,
            httponly=self.get_cookie_httponly(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
        )
        response.vary.add("Cookie")


def _signer(app: Flask) -> Signer:
    if not app.secret_key:
        raise RuntimeError("relay's identity cookie needs the app's secret key")
    return Signer(app.secret_key, salt="relay-identity", key_derivation="hmac",
                  digest_method=hashlib.sha256)
