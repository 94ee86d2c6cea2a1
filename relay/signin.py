"""Sign-in attempts limited per user and per address, with the `limits` library: a moving
window of 15 minutes, in Redis when configured (every worker and host counts together), else in
each worker's memory. Only failures count. Must not use `request` or `g`.
"""

from __future__ import annotations

import ipaddress
import time
from functools import cache
from typing import Any

from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from .errors import ErrorCode, TooManyRequests

WINDOW_MINUTES = 15


class SignInLimiter:
    """Refuses sign-ins for a user or an address after too many failures."""

    def __init__(self, redis_url: str | None, attempts: int) -> None:
        self._storage_uri = redis_url or "memory://"
        self._per_user = RateLimitItemPerMinute(attempts, WINDOW_MINUTES)
        self._per_address = RateLimitItemPerMinute(attempts * 4, WINDOW_MINUTES)
        self._limiter: MovingWindowRateLimiter | None = None  # made on first use, not at import

    def check(self, name: str, address: str) -> None:
        """429 `rate_limited` (with when to retry) if `name` or `address` failed too often."""
        limiter = self._get()
        for item, kind, value in self._items(name, address):
            if not limiter.test(item, "relay-signin", kind, value):
                reset_at = limiter.get_window_stats(item, "relay-signin", kind, value).reset_time
                raise TooManyRequests(
                    "Too many failed sign-ins; try again later.",
                    retry_after=int(reset_at - time.time()) + 1, code=ErrorCode.RATE_LIMITED,
                )

    def failed(self, name: str, address: str) -> None:
        """Count a failed sign-in against `name` and `address`."""
        limiter = self._get()
        for item, kind, value in self._items(name, address):
            limiter.hit(item, "relay-signin", kind, value)

    def _items(self, name: str, address: str) -> list[tuple[Any, str, str]]:
        return [(self._per_user, "user", name[:64]), (self._per_address, "address", address)]

    def _get(self) -> MovingWindowRateLimiter:
        if self._limiter is None:
            self._limiter = MovingWindowRateLimiter(storage_from_string(self._storage_uri))
        return self._limiter


def client_address(environ: dict[str, Any], trusted: tuple[str, ...]) -> str:
    """The client's address: the peer, or behind proxies relay trusts, the last address in
    `X-Forwarded-For` that is not one of them."""
    address = environ.get("REMOTE_ADDR", "")
    forwarded = environ.get("HTTP_X_FORWARDED_FOR")
    if not forwarded or not address_in(address, trusted):
        return address
    for hop in reversed([part.strip() for part in forwarded.split(",")]):
        if not address_in(hop, trusted):
            return hop
    return address


def address_in(address: str, networks: tuple[str, ...]) -> bool:
    """Whether `address` is in one of `networks` (addresses or CIDR networks)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in _network(network) for network in networks)


@cache
def _network(network: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(network, strict=False)
