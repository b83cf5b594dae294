"""revocation and aliases

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

A version trained on samples erased for a request is revoked when the version that
removes them is published: ``revoked_at``, the requests and the replacing version.
Aliases (``production``, ...) name a version of a model and move off a revoked one.
``purged_at``: when the revoked version's learned artifacts were deleted from the store.
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('model_versions') as batch:
        batch.add_column(sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('revoked_for', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('replaced_by', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('purged_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table('model_aliases',
    sa.Column('model', sa.String(length=64), nullable=False),
    sa.Column('alias', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model'], ['models.name'], ),
    sa.PrimaryKeyConstraint('model', 'alias')
    )


def downgrade() -> None:
    op.drop_table('model_aliases')
    with op.batch_alter_table('model_versions') as batch:
        batch.drop_column('purged_at')
        batch.drop_column('replaced_by')
        batch.drop_column('revoked_for')
        batch.drop_column('revoked_at')
