"""sealed evidence per request

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

Each deletion request's forget set is sealed (AES-256-GCM) in the engine's evidence
vault; its key lives here until the evidence is destroyed (crypto-shredding).
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deletion_requests') as batch:
        batch.add_column(sa.Column('evidence_key', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('evidence_held_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('evidence_destroyed_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('evidence_destroyed_reason', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deletion_requests') as batch:
        batch.drop_column('evidence_destroyed_reason')
        batch.drop_column('evidence_destroyed_at')
        batch.drop_column('evidence_held_at')
        batch.drop_column('evidence_key')
