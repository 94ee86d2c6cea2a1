"""Password hashing: argon2id (argon2-cffi) at OWASP's recommended strength (m=19 MiB, t=2, p=1;
Password Storage Cheat Sheet), run in a pool of threads. A stored hash names its parameters,
so raising them later still verifies old hashes.

A hash takes tens of milliseconds of CPU: on the event loop it would stall every stream of the
worker, so `hash_password` and `verify_password` hand it to a thread (argon2 releases the GIL) of
a small pool of their own: half the CPUs, so that twenty sign-ins at once leave the event loop a
CPU (in gevent's 10-thread pool they took both of two and stalled streams for 0.1-0.5 s), and do
not hold up the fsyncs that wait for that pool. Must not know HTTP or the store.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from gevent.threadpool import ThreadPool

T = TypeVar("T")
MIN_LENGTH = 8
MAX_LENGTH = 1024  # argon2 takes any length; a megabyte "password" is only a way to burn CPU

_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


def password_problem(password: object) -> str | None:
    """Why `password` cannot be set (a sentence), or None."""
    if not isinstance(password, str) or not password:
        return "A password is required."
    if len(password) < MIN_LENGTH:
        return f"A password needs at least {MIN_LENGTH} characters."
    if len(password) > MAX_LENGTH:
        return f"A password may have at most {MAX_LENGTH} characters."
    if "\x00" in password:
        return "A password cannot contain NUL characters."
    return None


def hash_password(password: str) -> str:
    """The argon2id hash of `password`, computed off the event loop."""
    return _off_loop(_hasher.hash, password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Whether `password` matches `stored_hash`; with no hash (an unknown user, a proxy user)
    a dummy hash is checked, so that the answer takes as long either way."""
    return bool(_off_loop(_verify, stored_hash or _dummy_hash(), password) and stored_hash)


def _verify(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password[:MAX_LENGTH])
    except (VerificationError, InvalidHashError):
        return False


@cache
def _dummy_hash() -> str:
    return _hasher.hash("not a password of anyone")


def _off_loop(function: Callable[..., T], *args: Any) -> T:
    result: T = _pool().apply(function, args)
    return result


_pools: dict[int, ThreadPool] = {}


def _pool() -> ThreadPool:
    """This process's hashing threads, made on first use (after the fork, never at import)."""
    pid = os.getpid()
    if pid not in _pools:
        _pools[pid] = ThreadPool(max(1, (os.cpu_count() or 2) // 2))
    return _pools[pid]
