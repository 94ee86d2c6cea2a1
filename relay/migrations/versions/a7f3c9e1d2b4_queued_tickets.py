"""queued tickets

Revision ID: a7f3c9e1d2b4
Revises: 5b1e7c2d9a40
Create Date: 2026-12-03 13:40:00.000000

With an upstream cap (`RELAY_UPSTREAM_MAX_CONCURRENCY`), a ticket waiting for a slot is pending
with `queued_at` set and its `queue_round` (fair order: `fairqueue.py`); the partial index keeps
the queue's reads off the finished tickets.
"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = 'a7f3c9e1d2b4'
down_revision = '5b1e7c2d9a40'
branch_labels = None
depends_on = None

_QUEUED = "status = 'pending' AND queued_at IS NOT NULL"


def upgrade():
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('queued_at', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('queue_round', sa.BigInteger(), nullable=True))
    op.create_index('ix_tickets_queued', 'tickets', ['queued_at'], unique=False,
                    sqlite_where=sa.text(_QUEUED), postgresql_where=sa.text(_QUEUED))


def downgrade():
    op.drop_index('ix_tickets_queued', table_name='tickets')
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.drop_column('queue_round')
        batch_op.drop_column('queued_at')
