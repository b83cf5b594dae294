"""each running shard's progress on its job, for GET /v1/jobs/{id}

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

A JSON object: shard number -> its phase, slice, epoch, samples/s and ETA, written by
the shard's heartbeat (every few seconds while it trains, and once when it is done).
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('shard_progress', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('shard_progress')
