"""`SecondCache`: what was looked up for a credential, kept for the rest of the current second.

A credential path may not trust a cached answer for longer than a second or two after a
revocation; this one forgets everything at each turn of the second (of `time.monotonic`), so a
sign-out, a revoked key or a disabled user is seen by every worker within a second. Per worker,
no locks: greenlets of one worker share it, and a lookup racing another only looks up twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

_MAX_ENTRIES = 4096


class SecondCache:
    """A mapping cleared at every new second, and when it holds too much."""

    def __init__(self) -> None:
        self._values: dict[Hashable, Any] = {}
        self._second = 0

    def get(self, key: Hashable, look_up: Callable[[], Any]) -> Any:
        """The value remembered for `key` in this second, else `look_up()` (remembered)."""
        second = int(time.monotonic())
        if second != self._second:
            self._values.clear()
            self._second = second
        try:
            return self._values[key]
        except KeyError:
            pass
        value = look_up()
        self.put(key, value)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        """Remember `value` for `key` until the second turns."""
        if len(self._values) >= _MAX_ENTRIES:
            self._values.clear()
        self._values[key] = value

    def clear(self) -> None:
        self._values.clear()
