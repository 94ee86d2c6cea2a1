"""Stream tokens: the `access_token` of a key-made ticket's `stream_url`, for clients that can
only GET. Signed (itsdangerous, with the app's secret) over the ticket id and the key id, with
the time it was made; pure, no I/O. Whether the key still works and the ticket still lives is
`identity`'s to check.
"""

from __future__ import annotations

from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer


@dataclass(frozen=True)
class StreamToken:
    ticket_id: str
    key_id: str
    age: float  # seconds since it was made


class InvalidStreamToken(ValueError):
    """Not a token relay made with this secret (tampered, truncated, another secret)."""


def make_token(secret_key: str | bytes, ticket_id: str, key_id: str) -> str:
    """A token for streaming `ticket_id`, made with the key `key_id`."""
    return str(_serializer(secret_key).dumps([ticket_id, key_id]))


def read_token(secret_key: str | bytes, token: str, now: float) -> StreamToken:
    """What a token says, or InvalidStreamToken."""
    try:
        payload, made_at = _serializer(secret_key).loads(token, return_timestamp=True)
    except (BadSignature, ValueError, TypeError) as exc:
        raise InvalidStreamToken("not a valid stream token") from exc
    if not (isinstance(payload, list) and len(payload) == 2
            and all(isinstance(part, str) for part in payload)):
        raise InvalidStreamToken("not a valid stream token")
    return StreamToken(payload[0], payload[1], max(0.0, now - made_at.timestamp()))


def _serializer(secret_key: str | bytes) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt="relay-stream-token")
