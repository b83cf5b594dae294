"""the X-Request-ID of the HTTP request that accepted each deletion

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

Logs follow a deletion from its POST through the outbox, the Celery tasks and the
engine by this id (``app.logs``): the job flow binds the ids of the requests it serves.
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deletion_requests') as batch:
        batch.add_column(sa.Column('trace_id', sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deletion_requests') as batch:
        batch.drop_column('trace_id')
