"""store each message once: tickets keep their options, not a copy of the history; one
unfinished ticket per conversation; message positions unique

Revision ID: 79f75f09ee8e
Revises: 9ebd9a8758e2
Create Date: 2026-12-03 06:05:00.000000

Existing data is migrated: duplicate positions (two concurrent turns) are renumbered in their
order, every unfinished ticket of a conversation but one (a running one first, then the newest)
ends cancelled with its `done`, and each ticket's request keeps its options and its own system
message. The downgrade rebuilds each request's messages from its conversation.
"""
import time

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '79f75f09ee8e'
down_revision = '9ebd9a8758e2'
branch_labels = None
depends_on = None

UNFINISHED = "status IN ('pending', 'running')"
SENT_UPSTREAM = (
    "(status IS NULL OR status IN ('completed', 'cancelled')) "
    "AND (role <> 'assistant' OR content <> '')"
)
CANCELLED_DONE = '{"status": "cancelled", "finish_reason": "cancelled", "usage": {}}'
OPTIONS = ("model", "temperature", "max_tokens")
BATCH = 200

tickets = sa.table(
    "tickets", sa.column("id", sa.String), sa.column("conversation_id", sa.String),
    sa.column("request", sa.JSON), sa.column("created_at", sa.Float),
)


def upgrade():
    conn = op.get_bind()
    _renumber_duplicate_positions(conn)
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_conversation_position')
        batch_op.create_index('ix_messages_conversation_position', ['conversation_id', 'position'], unique=True)
    _cancel_all_unfinished_tickets_but_one(conn)
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.create_index('ix_tickets_unfinished_per_conversation', ['conversation_id'], unique=True, sqlite_where=sa.text(UNFINISHED), postgresql_where=sa.text(UNFINISHED))
    _rewrite_requests(conn, _options_of)


def downgrade():
    conn = op.get_bind()
    _rewrite_requests(conn, _request_with_history)
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.drop_index('ix_tickets_unfinished_per_conversation', sqlite_where=sa.text(UNFINISHED), postgresql_where=sa.text(UNFINISHED))
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_conversation_position')
        batch_op.create_index('ix_messages_conversation_position', ['conversation_id', 'position'], unique=False)


def _renumber_duplicate_positions(conn):
    conversations = conn.execute(sa.text(
        "SELECT DISTINCT conversation_id FROM messages "
        "GROUP BY conversation_id, position HAVING COUNT(*) > 1"
    )).scalars().all()
    for conversation_id in conversations:
        ids = conn.execute(sa.text(
            "SELECT id FROM messages WHERE conversation_id = :cid ORDER BY position, id"
        ), {"cid": conversation_id}).scalars().all()
        conn.execute(sa.text("UPDATE messages SET position = :position WHERE id = :id"),
                     [{"position": position, "id": id_} for position, id_ in enumerate(ids)])


def _cancel_all_unfinished_tickets_but_one(conn):
    rows = conn.execute(sa.text(
        f"SELECT id, conversation_id, status FROM tickets WHERE {UNFINISHED} "
        "AND conversation_id IS NOT NULL ORDER BY created_at DESC"
    )).all()
    kept = {}
    for id_, conversation_id, status in rows:
        if conversation_id not in kept or (status == "running" and kept[conversation_id][1] != "running"):
            kept[conversation_id] = (id_, status)
    keep = {id_ for id_, _ in kept.values()}
    now = time.time()
    for id_, _, _ in rows:
        if id_ in keep:
            continue
        done_seq = conn.execute(sa.text(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM ticket_events WHERE ticket_id = :id"
        ), {"id": id_}).scalar_one()
        conn.execute(sa.text(
            "INSERT INTO ticket_events (ticket_id, seq, kind, data) VALUES (:id, :seq, 'done', :data)"
        ), {"id": id_, "seq": done_seq, "data": CANCELLED_DONE})
        conn.execute(sa.text(
            "UPDATE tickets SET status = 'cancelled', finished_at = :now, "
            "finish_reason = 'cancelled', lease_expires_at = NULL, last_seq = :seq WHERE id = :id"
        ), {"now": now, "seq": done_seq, "id": id_})


def _rewrite_requests(conn, rewrite):
    """Replace each request of a ticket in a conversation with `rewrite(conn, row)`."""
    ids = conn.execute(
        sa.select(tickets.c.id).where(tickets.c.conversation_id.is_not(None))
    ).scalars().all()
    update = tickets.update().where(tickets.c.id == sa.bindparam("b_id")).values(
        request=sa.bindparam("b_request"))
    for start in range(0, len(ids), BATCH):
        rows = conn.execute(
            sa.select(tickets).where(tickets.c.id.in_(ids[start:start + BATCH]))).all()
        conn.execute(update, [{"b_id": row.id, "b_request": rewrite(conn, row)} for row in rows])


def _options_of(conn, row):
    """The stored request without its messages, with the ticket's own system message."""
    request = row.request
    if "messages" not in request:
        return request
    options = {name: request[name] for name in OPTIONS if request.get(name) is not None}
    messages = request.get("messages", [])
    # Sent first were the ticket's system message, if any, then the conversation's (whose
    # leading system messages are its own): a ticket had one when it sent more of them.
    sent = _leading_system_messages(messages)
    if sent:
        first = conn.execute(sa.text(
            "SELECT role FROM messages WHERE conversation_id = :cid ORDER BY position LIMIT :n"
        ), {"cid": row.conversation_id, "n": sent}).scalars().all()
        if sent > _leading_system_messages([{"role": role} for role in first]):
            options["system"] = messages[0]["content"]
    return options


def _leading_system_messages(messages):
    count = 0
    while count < len(messages) and messages[count]["role"] == "system":
        count += 1
    return count


def _request_with_history(conn, row):
    """The request with the messages its ticket sent: its conversation's until it was made."""
    options = row.request
    history = conn.execute(sa.text(
        f"SELECT role, content FROM messages WHERE conversation_id = :cid AND {SENT_UPSTREAM} "
        "AND created_at <= :created_at ORDER BY position"
    ), {"cid": row.conversation_id, "created_at": row.created_at}).all()
    system = [{"role": "system", "content": options["system"]}] if options.get("system") else []
    request = {name: options[name] for name in OPTIONS if options.get(name) is not None}
    request["messages"] = system + [{"role": role, "content": content} for role, content in history]
    return request
