"""Who is calling: the one place that turns a request into an owner id.

Today every browser or client gets an anonymous identity in a signed cookie; accounts and API
keys plug in here later without touching the views. The cookie is Flask's session through its
`SessionInterface` seam, stored as just `<owner>.<signature>` (itsdangerous' Signer): Flask's
default format (tagged JSON, zlib, a timestamp) was the largest cost of `POST /new` after SQL.

A Cookie header once verified is trusted for the rest of that second, no longer: parsing and
verifying it again on every request cost more than 10% of the added time to first token (a
stream is two requests with the same header; bench/README.md), and a second is as long as any
cache on a credential path may outlive a revocation.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Request, Response, session
from flask.sessions import SecureCookieSession, SessionInterface
from itsdangerous import BadSignature, Signer

_MAX_VERIFIED = 4096  # Cookie headers remembered within one second, per worker


def current_owner() -> str:
    """Return the caller's owner id, creating an anonymous identity on first use."""
    owner = session.get("uid")
    if not isinstance(owner, str) or not owner:
        owner = "anon:" + secrets.token_urlsafe(18)
        session["uid"] = owner
    return owner


class IdentityCookie(SessionInterface):
    """A session that holds only `uid`, signed with the app's secret key."""

    def __init__(self) -> None:
        self._verified: dict[tuple[str | bytes, str], str] = {}  # (secret, header) -> uid
        self._verified_in = 0  # the second they were verified in

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession:
        header = request.environ.get("HTTP_COOKIE")
        if not header or not app.secret_key:
            return SecureCookieSession()
        uid = self._recall(app, header)
        if uid is None:
            raw = request.cookies.get(self.get_cookie_name(app))
            if not raw:
                return SecureCookieSession()
            try:
                uid = _signer(app).unsign(raw).decode()
            except (BadSignature, UnicodeDecodeError):
                return SecureCookieSession()
            self._remember(app, header, uid)
        return SecureCookieSession({"uid": uid})

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        if not session.modified or not session.get("uid"):
            return
        value = _signer(app).sign(session["uid"]).decode()
        response.set_cookie(
            self.get_cookie_name(app), value,
            expires=datetime.now(UTC) + app.permanent_session_lifetime,
            httponly=self.get_cookie_httponly(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
        )
        response.vary.add("Cookie")
        # What a client with no other cookie here sends next: already verified.
        self._remember(app, f"{self.get_cookie_name(app)}={value}", session["uid"])

    def _recall(self, app: Flask, header: str) -> str | None:
        """The uid of a Cookie header verified in this second, else None."""
        second = int(time.monotonic())
        if second != self._verified_in:
            self._verified.clear()
            self._verified_in = second
        return self._verified.get((_secret(app), header))

    def _remember(self, app: Flask, header: str, uid: str) -> None:
        if len(self._verified) >= _MAX_VERIFIED:
            self._verified.clear()
        self._verified[(_secret(app), header)] = uid


def _secret(app: Flask) -> str | bytes:
    if not app.secret_key:
        raise RuntimeError("relay's identity cookie needs the app's secret key")
    return app.secret_key


def _signer(app: Flask) -> Signer:
    return Signer(_secret(app), salt="relay-identity", key_derivation="hmac",
                  digest_method=hashlib.sha256)
