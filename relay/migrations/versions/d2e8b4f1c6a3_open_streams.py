"""open streams

Revision ID: d2e8b4f1c6a3
Revises: a7f3c9e1d2b4
Create Date: 2026-12-03 13:50:00.000000

The streams open now, per user and address, counted in the store when no Redis counts them.
"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = 'd2e8b4f1c6a3'
down_revision = 'a7f3c9e1d2b4'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('open_streams',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('worker', sa.String(length=80), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('open_streams', schema=None) as batch_op:
        batch_op.create_index('ix_open_streams_address', ['address', 'expires_at'], unique=False)
        batch_op.create_index('ix_open_streams_owner', ['owner', 'expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_open_streams_worker'), ['worker'], unique=False)


def downgrade():
    with op.batch_alter_table('open_streams', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_open_streams_worker'))
        batch_op.drop_index('ix_open_streams_owner')
        batch_op.drop_index('ix_open_streams_address')
    op.drop_table('open_streams')
