"""drop ix_identity_key_lookup: uq_identity_key (kind, value, source_id) serves every (kind, value)
lookup (the real-time read is an index-only scan on it), so the second index only cost writes and
cache (464 MB beside the unique index's 918 MB at 14M keys)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 11:00:00
"""
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('identity_key', schema=None) as batch_op:
        batch_op.drop_index('ix_identity_key_lookup')


def downgrade() -> None:
    with op.batch_alter_table('identity_key', schema=None) as batch_op:
        batch_op.create_index('ix_identity_key_lookup', ['kind', 'value'], unique=False)
