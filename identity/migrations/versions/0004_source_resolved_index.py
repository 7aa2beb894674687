"""source record index on (system, stream, resolved_at) for the push planner's re-read query

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 18:00:00
"""
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('source_record', schema=None) as batch_op:
        batch_op.create_index('ix_source_record_resolved', ['system', 'stream', 'resolved_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('source_record', schema=None) as batch_op:
        batch_op.drop_index('ix_source_record_resolved')
