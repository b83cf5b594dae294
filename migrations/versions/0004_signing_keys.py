"""signing keys

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

The public half of every key that ever signed a deletion certificate, so a certificate
stays verifiable after the key is rotated (served at ``/.well-known/jwks.json``).
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('signing_keys',
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('public_jwk', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('kid')
    )


def downgrade() -> None:
    op.drop_table('signing_keys')
