"""architecture parameters

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25

A model's architecture can be any torchvision classification model or a plugin, with its
own keyword arguments; the name grows to 64 characters.
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('models') as batch:
        batch.add_column(sa.Column('architecture_params', sa.JSON(), nullable=True))
        batch.alter_column('architecture', type_=sa.String(length=64), existing_type=sa.String(length=32))


def downgrade() -> None:
    with op.batch_alter_table('models') as batch:
        batch.alter_column('architecture', type_=sa.String(length=32), existing_type=sa.String(length=64))
        batch.drop_column('architecture_params')
