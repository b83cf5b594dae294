"""webhooks and their deliveries; when a deletion request was first seen overdue

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

A delivery row is written in the same transaction as the change it reports (the
outbox pattern), so an API restart loses none; the webhook sender claims due rows,
POSTs them and logs each attempt on the row.
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'webhooks',
        sa.Column('id', sa.String(40), primary_key=True),
        sa.Column('url', sa.Text(), nullable=False),
        sa.Column('events', sa.JSON(), nullable=False),
        sa.Column('secret', sa.String(100), nullable=False),
        sa.Column('created_by', sa.String(32), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        'webhook_deliveries',
        sa.Column('id', sa.String(40), primary_key=True),
        sa.Column('webhook_id', sa.String(40), sa.ForeignKey('webhooks.id'), nullable=False),
        sa.Column('event', sa.String(64), nullable=False),
        sa.Column('payload', sa.Text(), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('attempt_log', sa.JSON(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index('ix_webhook_deliveries_webhook_id', 'webhook_deliveries', ['webhook_id'])
    op.create_index('ix_webhook_deliveries_due', 'webhook_deliveries', ['status', 'next_attempt_at'])
    with op.batch_alter_table('deletion_requests') as batch:
        batch.add_column(sa.Column('overdue_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deletion_requests') as batch:
        batch.drop_column('overdue_at')
    op.drop_index('ix_webhook_deliveries_due', 'webhook_deliveries')
    op.drop_index('ix_webhook_deliveries_webhook_id', 'webhook_deliveries')
    op.drop_table('webhook_deliveries')
    op.drop_table('webhooks')
