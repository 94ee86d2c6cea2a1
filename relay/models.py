"""Typed models: tickets, the events streamed for them, conversations and their messages; users,
their sign-in sessions and API keys."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .db import db

if TYPE_CHECKING:  # db.Model is made at run time from Base, which type checkers can follow
    from .db import Base as Model
else:
    Model = db.Model


class TicketStatus(StrEnum):
    """A ticket's life: pending until claimed, running while generated, then one final status."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_STATUSES = frozenset({TicketStatus.COMPLETED, TicketStatus.FAILED, TicketStatus.CANCELLED})
ACTIVE_STATUSES = frozenset({TicketStatus.PENDING, TicketStatus.RUNNING})
_UNFINISHED = "status IN ('pending', 'running')"
_QUEUED = "status = 'pending' AND queued_at IS NOT NULL"


class Conversation(Model):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    title: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)


class Message(Model):
    """One message of a conversation, stored once: every ticket of the conversation sends the
    messages before it upstream (`conversations.upstream_messages`)."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_conversation_position", "conversation_id", "position", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("conversations.id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    ticket_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class Ticket(Model):
    __tablename__ = "tickets"
    # A ticket changes status twice (claimed, finished): keyed on what does not change, and
    # only running tickets in the claims index, each of those writes touches fewer pages.
    # One unfinished ticket per conversation: a second concurrent turn fails to insert its own.
    __table_args__ = (
        Index("ix_tickets_conversation", "conversation_id"),
        Index("ix_tickets_unfinished_per_conversation", "conversation_id", unique=True,
              sqlite_where=text(_UNFINISHED), postgresql_where=text(_UNFINISHED)),
        Index("ix_tickets_running_claims", "claimed_by", "cancel_requested",
              sqlite_where=text("status = 'running'"), postgresql_where=text("status = 'running'")),
        Index("ix_tickets_queued", "queued_at", sqlite_where=text(_QUEUED),
              postgresql_where=text(_QUEUED)),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    conversation_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("conversations.id", ondelete="CASCADE"), nullable=True
    )
    # The turn's options (model, system, temperature, max_tokens), not its messages: those are
    # the conversation's, stored once.
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # The id of the `done` event once the ticket is finished (0 before).
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The API key that made it (its access tokens, and ending it when the key is revoked).
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Why its cancel was asked, when not by its owner: an ErrorCode its `done` carries.
    cancel_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Set when it waits for an upstream slot (`fairqueue.py`); it stays pending until dispatched.
    queued_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    queue_round: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class TicketEvent(Model):
    """Streamed events: `done`, or a run of consecutive deltas (`seq` is the last one's id,
    `data` their JSON texts joined by newlines, as `tickets.event_rows` writes them)."""

    __tablename__ = "ticket_events"

    ticket_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(8))
    data: Mapped[str] = mapped_column(Text)


class User(Model):
    """Someone who signs in (or whom the trusted proxy names); tickets name them `user:<id>`."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    disabled_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Overrides of the limit settings (`quotas.LIMIT_NAMES`; a missing or null one: the setting).
    limits: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class AuthSession(Model):
    """A sign-in: the cookie holds a random token, the store only its SHA-256."""

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    expires_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ApiKey(Model):
    """An API key: shown once, stored as a keyed hash; `prefix` is what lists and errors show."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100), default="")
    prefix: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    limits: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Usage(Model):
    """What one finished ticket spent: written with its `done`, in the same transaction. No
    foreign key: usage outlives a deleted conversation and its tickets."""

    __tablename__ = "usage"
    __table_args__ = (
        Index("ix_usage_owner_day", "owner", "day"),
        Index("ix_usage_key_day", "key_id", "day"),
    )

    ticket_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model: Mapped[str] = mapped_column(String(200))
    day: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD, UTC, of the finish
    status: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)  # generated
    delivered_tokens: Mapped[int] = mapped_column(Integer)  # of the stored answer
    total_tokens: Mapped[int] = mapped_column(Integer)
    estimated: Mapped[bool] = mapped_column(Boolean)
    cost: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class UsageTotal(Model):
    """Tokens per scope (`user:<owner>`, `key:<key_id>`) and period (`d:YYYY-MM-DD`,
    `m:YYYY-MM`), kept with every usage row: what a quota check reads, and locks."""

    __tablename__ = "usage_totals"

    scope: Mapped[str] = mapped_column(String(200), primary_key=True)
    period: Mapped[str] = mapped_column(String(12), primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class Reservation(Model):
    """Tokens (prompt estimate plus the answer's cap) held by a generating ticket: inserted by
    its claim, deleted by its finish, each in that one's transaction."""

    __tablename__ = "reservations"

    ticket_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)


class RequestCount(Model):
    """Requests of a scope (`user:<owner>`, `key:<key_id>`) in its current minute, when no Redis
    counts them (ratelimits.py)."""

    __tablename__ = "request_counts"

    scope: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[float] = mapped_column(Float)
    requests: Mapped[int] = mapped_column(Integer)


class OpenStream(Model):
    """A stream open now, counted against its user's and its address's open-stream limits when
    no Redis counts them (openstreams.py); its worker renews `expires_at`, so a killed worker's
    streams stop counting."""

    __tablename__ = "open_streams"
    __table_args__ = (
        Index("ix_open_streams_owner", "owner", "expires_at"),
        Index("ix_open_streams_address", "address", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    address: Mapped[str] = mapped_column(String(64))
    worker: Mapped[str] = mapped_column(String(80), index=True)
    expires_at: Mapped[float] = mapped_column(Float)


class FirstAdmin(Model):
    """At most one row, ever: the admin created from the page's set-up screen. Its primary key
    makes twenty concurrent set-ups create one admin."""

    __tablename__ = "first_admin"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id", ondelete="CASCADE"))
