"""Who is calling: the one place that turns a request into an owner id.

Today every browser or client gets an anonymous identity in a signed session cookie; accounts
and API keys plug in here later without touching the views.
"""

from __future__ import annotations

import secrets

from flask import session


def current_owner() -> str:
    """Return the caller's owner id, creating an anonymous identity on first use."""
    owner = session.get("uid")
    if not isinstance(owner, str) or not owner:
        owner = "anon:" + secrets.token_urlsafe(18)
        session["uid"] = owner
        session.permanent = True
    return owner
