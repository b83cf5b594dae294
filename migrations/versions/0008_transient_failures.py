"""transient failures, counted apart; signing keys append-only for the application

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26

A transient failure (the database or broker blinked) does not count as one of a
deletion's ``LETHE_MAX_ATTEMPTS``; it is counted apart, for its growing back-off and
its own cap, on the outcome and on a training job (which is queued again instead of
failing its model).

On PostgreSQL the application's role may only read and add published signing keys: a
key that ever signed must not be replaced or removed by the service, or a forged
certificate or audit anchor could be made to verify.
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

ROLE = "lethe_app"


def upgrade() -> None:
    with op.batch_alter_table('deletion_outcomes') as batch:
        batch.add_column(sa.Column('transient_failures', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('transient_failures', sa.Integer(), nullable=False, server_default='0'))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON signing_keys FROM {ROLE}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"GRANT UPDATE, DELETE ON signing_keys TO {ROLE}")
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('transient_failures')
    with op.batch_alter_table('deletion_outcomes') as batch:
        batch.drop_column('transient_failures')
