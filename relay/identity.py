"""Who is calling: `current_principal()`, the one place that turns a request into a principal
(a user, the user behind an API key or a stream token, or an anonymous visitor), and
`check_access`, the app's one gate: credentials the auth mode requires, and no cross-site
request riding on a cookie.

Credentials are read in this order, and a bad one is refused rather than skipped:
`Authorization: Bearer <key>` (an open relay skips a header that is not a relay key `rk_...`),
`?access_token=` (on `GET /sse/<id>` only), the trusted proxy's user header (`proxy` mode), the
cookie. Each lookup in the store is remembered for the rest of
the current second (`SecondCache`), no longer, so a revocation holds everywhere within a second.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any

from flask import current_app, g, request, session

from . import apikeys, sessions, sse, tickets, users
from .cookies import SESSION_PREFIX
from .errors import ErrorCode, Forbidden, Unauthenticated
from .signin import address_in
from .state import relay_state
from .streamtokens import InvalidStreamToken, read_token

if TYPE_CHECKING:
    from .apikeys import KeyInfo
    from .users import UserInfo


class AuthMode(StrEnum):
    OPEN = "open"
    ACCOUNTS = "accounts"
    PROXY = "proxy"


class AuthKind(StrEnum):
    """Which credential a principal came with."""

    ANONYMOUS = "anonymous"  # open mode's signed cookie, or nobody at all (owner None)
    SESSION = "session"
    KEY = "key"
    STREAM_TOKEN = "stream_token"
    PROXY = "proxy"


@dataclass(frozen=True)
class Principal:
    """Who is calling: `owner` is what their tickets and conversations hold (None: nobody)."""

    owner: str | None
    kind: AuthKind
    user: UserInfo | None = None
    key: KeyInfo | None = None

    @property
    def ambient(self) -> bool:
        """Whether a browser sends this credential by itself (so a cross-site page could too)."""
        return self.kind not in (AuthKind.KEY, AuthKind.STREAM_TOKEN)

    def check_model(self, model: str) -> None:
        """Refuse (403 `model_not_allowed`) a model this principal's key may not use."""
        if self.key is not None and not self.key.allows(model):
            raise Forbidden(f"This API key may not use the model {model!r}.",
                            code=ErrorCode.MODEL_NOT_ALLOWED)


NOBODY = Principal(None, AuthKind.ANONYMOUS)
# Reachable without credentials in every mode: the page shell and its files, health, the API's
# description, and what signing in needs.
PUBLIC_ENDPOINTS = frozenset({
    "web.index", "web.static_file", "ops.healthz", "ops.openapi_document",
    "auth.login", "auth.set_up", "auth.me", "auth.logout",
})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def current_principal() -> Principal:
    """Who is calling this request (NOBODY when no credential was sent)."""
    principal: Principal | None = g.get("principal")
    if principal is None:
        principal = g.principal = _principal_of_request()
    return principal


def current_owner() -> str:
    """The caller's owner id; an anonymous visitor of an open relay gets one on first use."""
    owner = current_principal().owner
    if owner is None:
        if current_app.config["AUTH"] != AuthMode.OPEN:
            raise Unauthenticated("Sign in or send an API key.")
        owner = "anon:" + secrets.token_urlsafe(18)
        session["uid"] = owner
        g.principal = Principal(owner, AuthKind.ANONYMOUS)
    return owner


def check_access() -> None:
    """The app's gate (`before_request`): credentials where the mode requires them; no unsafe
    request on a cookie or proxy sign-in from another site."""
    method = request.environ["REQUEST_METHOD"]
    if method == "OPTIONS":  # CORS preflights carry no credentials
        return
    if request.endpoint in PUBLIC_ENDPOINTS:
        if method not in _SAFE_METHODS and _cross_site(request.environ):
            raise _cross_site_refusal()
        return
    principal = current_principal()
    if principal.owner is None and current_app.config["AUTH"] != AuthMode.OPEN:
        raise Unauthenticated("Sign in or send an API key.")
    if method not in _SAFE_METHODS and principal.ambient and _cross_site(request.environ):
        raise _cross_site_refusal()


def _principal_of_request() -> Principal:
    environ = request.environ
    config = current_app.config
    authorization = environ.get("HTTP_AUTHORIZATION")
    if authorization is not None:
        scheme, _, secret = authorization.strip().partition(" ")
        secret = secret.strip() if scheme.lower() == "bearer" else ""
        # An open relay needs no key and skips any other header: the OpenAI SDKs always send
        # their `api_key`.
        if config["AUTH"] != AuthMode.OPEN or secret.startswith(apikeys.KEY_START):
            return _key_principal(secret)
    if "access_token=" in environ.get("QUERY_STRING", "") and request.endpoint == "stream.stream":
        return _token_principal(request.args.get("access_token", ""),
                                (request.view_args or {}).get("ticket_id", ""))
    if config["AUTH"] == AuthMode.PROXY:
        return _proxy_principal(environ, config)
    uid = session.get("uid")
    if not isinstance(uid, str):
        return NOBODY
    if uid.startswith(SESSION_PREFIX):
        token = uid[len(SESSION_PREFIX):]
        user = _cached(("session", token), lambda: sessions.session_user(token))
        return Principal(user.owner, AuthKind.SESSION, user) if user is not None else NOBODY
    if config["AUTH"] == AuthMode.OPEN and uid.startswith("anon:"):
        return Principal(uid, AuthKind.ANONYMOUS)
    return NOBODY


def _key_principal(secret: str) -> Principal:
    """The key a Bearer `secret` is ('' for a header that is not a Bearer), else 401."""
    key = None
    if secret:
        secret_key = current_app.secret_key or ""
        key = _cached(("key", secret), lambda: apikeys.key_by_secret(secret_key, secret))
    if key is None:
        named = (f"The API key {secret[:apikeys.PREFIX_LENGTH]}…"
                 if secret.startswith(apikeys.KEY_START) else "The API key")
        raise Unauthenticated(f"{named} is not valid: unknown, expired or revoked.",
                              code=ErrorCode.INVALID_API_KEY)
    return Principal(key.user.owner, AuthKind.KEY, key.user, key)


def _token_principal(token: str, ticket_id: str) -> Principal:
    config = current_app.config
    refusal = Unauthenticated("This stream's access token is not valid: tampered, expired, for "
                              "another ticket, or its API key was revoked.",
                              code=ErrorCode.INVALID_TOKEN)
    try:
        said = read_token(current_app.secret_key or "", token, time.time())
    except InvalidStreamToken:
        raise refusal from None
    if said.ticket_id != ticket_id:
        raise refusal
    key = _cached(("key id", said.key_id), lambda: apikeys.key_by_id(said.key_id))
    if key is None:
        raise refusal
    lifetime = config["STREAM_TOKEN_SECONDS"]
    if said.age > lifetime and not (_resuming() and tickets.is_live(ticket_id, lifetime)):
        raise refusal
    return Principal(key.user.owner, AuthKind.STREAM_TOKEN, key.user, key)


def _resuming() -> bool:
    """Whether the request resumes a stream: an EventSource reconnecting sends the id of the
    last event it got. Id 0 asks for the whole stream, as a first connection does."""
    last = (request.environ.get("HTTP_LAST_EVENT_ID") or "").strip()
    try:
        return (sse.parse_last_event_id(last or request.args.get("last_event_id")) or 0) > 0
    except ValueError:
        return False


def _proxy_principal(environ: dict[str, Any], config: dict[str, Any]) -> Principal:
    name = environ.get(_header_key(config["PROXY_USER_HEADER"]), "").strip()
    if not name or not address_in(environ.get("REMOTE_ADDR", ""), config["TRUSTED_PROXIES"]):
        return NOBODY
    try:
        users.check_username(name)
    except Exception:
        raise Unauthenticated("The proxy named a user relay cannot take.") from None
    user = _cached(("proxy", name), lambda: users.proxy_user(name))
    return Principal(user.owner, AuthKind.PROXY, user) if user is not None else NOBODY


def _cached(key: tuple[str, str], look_up: Any) -> Any:
    return relay_state().credentials.get(key, look_up)


@cache
def _header_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def _cross_site(environ: dict[str, Any]) -> bool:
    """Whether a browser says the request came from another site's page: `Sec-Fetch-Site`, or
    else an `Origin` that is not relay's own. A client that sends neither is not a browser
    (every browser since 2020 sends one on a POST), as in Go's CrossOriginProtection."""
    site = environ.get("HTTP_SEC_FETCH_SITE")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return False
    return origin.rstrip("/") != request.host_url.rstrip("/")


def _cross_site_refusal() -> Forbidden:
    return Forbidden("A request from another site's page was refused; use relay's own page, or "
                     "an API key.", code=ErrorCode.CROSS_SITE_REQUEST)
