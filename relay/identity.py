"""Who is calling: the one place that turns a request into an owner id.

Today every browser or client gets an anonymous identity in a signed cookie; accounts and API
keys plug in here later without touching the views. The cookie is Flask's session, stored as
just `<owner>.<signature>` (itsdangerous' Signer): Flask's default format (tagged JSON, zlib,
a timestamp) cost about 0.1 ms on every request, the most of anything in `POST /new` after SQL.
Cookies in the old format are still read, and replaced.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Request, Response, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import BadSignature, Signer
from werkzeug.http import dump_cookie

# What werkzeug writes unquoted: the signed ids relay makes (`anon:<token>.<signature>`).
_PLAIN_COOKIE_VALUE = re.compile(r"^[A-Za-z0-9_.:-]+$")
_MAX_VERIFIED = 4096  # Cookie headers remembered as verified, per worker


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
        self._templates: dict[Flask, tuple[int, str]] = {}
        self._verified: dict[tuple[Any, str], str] = {}  # (secret, Cookie header) -> uid

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
        header = request.environ.get("HTTP_COOKIE")
        if not header or not app.secret_key:
            return self.session_class()
        # A browser sends the same Cookie header with every request: parsing it and checking
        # the signature again took ~35 µs of each (cold caches make werkzeug's cookie parser and
        # itsdangerous slow), so a header once verified is remembered with its uid.
        uid = self._verified.get((app.secret_key, header))
        if uid is not None:
            return self.session_class({"uid": uid})
        raw = request.cookies.get(self.get_cookie_name(app))
        if not raw:
            return self.session_class()
        try:
            uid = self._signer(app).unsign(raw).decode()
        except (BadSignature, UnicodeDecodeError):
            return self._legacy_session(app, request)
        self._remember(app, header, uid)
        return self.session_class({"uid": uid})

    def _remember(self, app: Flask, header: str, uid: str) -> None:
        if len(self._verified) >= _MAX_VERIFIED:
            self._verified.clear()
        self._verified[(app.secret_key, header)] = uid

    def _legacy_session(self, app: Flask, request: Request) -> SecureCookieSession:
        """The uid of a cookie in Flask's own format (before this one), to be replaced."""
        legacy = super().open_session(app, request)
        uid = legacy.get("uid") if legacy is not None else None
        session = self.session_class()
        if isinstance(uid, str) and uid:
            session["uid"] = uid  # modified: answered with a cookie in the new format
        return session

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        if not session.modified or not session.get("uid"):
            return
        value = self._signer(app).sign(session["uid"]).decode()
        if _PLAIN_COOKIE_VALUE.match(value):
            response.headers.add("Set-Cookie", self._cookie_template(app).format(value))
            # What a client with no other cookie here sends back next: already verified.
            self._remember(app, f"{self.get_cookie_name(app)}={value}", session["uid"])
        else:
            response.set_cookie(self.get_cookie_name(app), value, **self._cookie_options(app))
        if "Vary" in response.headers:
            response.vary.add("Cookie")
        else:
            response.headers["Vary"] = "Cookie"  # what vary.add writes, without its header set

    def _cookie_template(self, app: Flask) -> str:
        """`name={}; Expires=...; HttpOnly; ...` as werkzeug writes it, made at most once a
        minute: werkzeug's cookie and date formatting was a tenth of a new visitor's POST /new."""
        minute = int(time.time() // 60)
        cached = self._templates.get(app)
        if cached is None or cached[0] != minute:
            empty = dump_cookie(self.get_cookie_name(app), "", **self._cookie_options(app))
            name, _, attributes = empty.partition("=;")
            cached = self._templates[app] = (minute, f"{name}={{}};{attributes}")
        return cached[1]

    def _cookie_options(self, app: Flask) -> dict[str, Any]:
        return {
            "expires": datetime.now(UTC) + app.permanent_session_lifetime,
            "httponly": self.get_cookie_httponly(app),
            "domain": self.get_cookie_domain(app),
            "path": self.get_cookie_path(app),
            "secure": self.get_cookie_secure(app),
            "samesite": self.get_cookie_samesite(app),
        }
