"""Who is calling: the one place that turns a request into an owner id.

Today every browser or client gets an anonymous identity in a signed cookie; accounts and API
keys plug in here later without touching the views. The cookie is Flask's session, stored as
just `<owner>.<signature>` (itsdangerous' Signer): Flask's default format (tagged JSON, zlib,
a timestamp) cost about 0.1 ms on every request, the most of anything in `POST /new` after SQL.
Cookies in the old format are still read, and replaced.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Request, Response, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import BadSignature, Signer


def current_owner() -> str:
    """Return the caller's owner id, creating an anonymous identity on first use."""
    owner = session.get("uid")
    if not isinstance(owner, str) or not owner:
        owner = "anon:" + secrets.token_urlsafe(18)
        session["uid"] = owner
    return owner


class IdentityCookie(SecureCookieSessionInterface):
    """A session that holds only `uid`, signed with the app's secret key."""

    def __init__(self) -> None:
        self._signers: dict[Any, Signer] = {}

    def _signer(self, app: Flask) -> Signer:
        key = app.secret_key
        if key not in self._signers:
            salted = Signer(
                key, salt="relay-identity", key_derivation="hmac", digest_method=hashlib.sha256
            )
            # The same signatures, with the salted key derived once rather than per cookie.
            self._signers[key] = Signer(
                salted.derive_key(), key_derivation="none", digest_method=hashlib.sha256
            )
        return self._signers[key]

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        raw = request.cookies.get(self.get_cookie_name(app))
        if not raw or not app.secret_key:
            return self.session_class()
        try:
            return self.session_class({"uid": self._signer(app).unsign(raw).decode()})
        except (BadSignature, UnicodeDecodeError):
            pass
        legacy = super().open_session(app, request)  # Flask's own format, before this one
        uid = legacy.get("uid") if legacy is not None else None
        session = self.session_class()
        if isinstance(uid, str) and uid:
            session["uid"] = uid  # modified: answered with a cookie in the new format
        return session

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        if not session.modified or not session.get("uid"):
            return
        response.set_cookie(
            self.get_cookie_name(app),
            self._signer(app).sign(session["uid"]).decode(),
            expires=datetime.now(UTC) + app.permanent_session_lifetime,
            httponly=self.get_cookie_httponly(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
        )
        response.vary.add("Cookie")
