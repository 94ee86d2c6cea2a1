"""request counts

Revision ID: 5b1e7c2d9a40
Revises: 142965b7b7cc
Create Date: 2026-12-03 09:50:00.000000

Requests per user or key in the current minute, counted in the store when no Redis counts them.
"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '5b1e7c2d9a40'
down_revision = '142965b7b7cc'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('request_counts',
    sa.Column('scope', sa.String(length=200), nullable=False),
    sa.Column('window_start', sa.Float(), nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('scope')
    )


def downgrade():
    op.drop_table('request_counts')
