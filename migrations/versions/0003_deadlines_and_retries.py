"""deadlines and retries

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Every deletion request is due a fixed time after it was accepted (GDPR Art. 12(3): one
month); requests accepted before this revision get their due time from ``created_at``
and the default of 30 days. A failed outcome is retried a few times, with back-off,
before its request fails: ``attempts`` and ``retry_at``.
"""
from datetime import timedelta

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deletion_requests') as batch:
        batch.add_column(sa.Column('due_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('deletion_outcomes') as batch:
        batch.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('retry_at', sa.DateTime(timezone=True), nullable=True))
    requests = sa.table('deletion_requests', sa.column('id', sa.String), sa.column('created_at', sa.DateTime(timezone=True)),
                        sa.column('due_at', sa.DateTime(timezone=True)))
    bind = op.get_bind()
    for row in bind.execute(sa.select(requests.c.id, requests.c.created_at)).all():
        bind.execute(requests.update().where(requests.c.id == row.id).values(due_at=row.created_at + timedelta(days=30)))


def downgrade() -> None:
    with op.batch_alter_table('deletion_outcomes') as batch:
        batch.drop_column('retry_at')
        batch.drop_column('attempts')
    with op.batch_alter_table('deletion_requests') as batch:
        batch.drop_column('due_at')
