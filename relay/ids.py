"""Unguessable URL-safe ids, for tickets and conversations."""

from __future__ import annotations

import re
import secrets

_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def new_id() -> str:
    """An unguessable URL-safe id (192 random bits)."""
    return secrets.token_urlsafe(24)


def is_valid_id(value: str) -> bool:
    """Whether `value` has the shape of an id relay makes (anything else is unknown at once)."""
    return bool(_ID_PATTERN.match(value))
