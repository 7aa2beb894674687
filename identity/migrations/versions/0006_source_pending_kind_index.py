"""source record index on (pending, kind, id) for the resolver's batch query, in place of (pending)

The resolver asks for the next pending rows of one kind in id order. On (pending) alone it read past
every pending row of the other kinds for each batch (all the pending interactions, for every batch of
profiles), loading each to test its kind.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 19:00:00
"""
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('source_record', schema=None) as batch_op:
        batch_op.drop_index('ix_source_record_pending')
        batch_op.create_index('ix_source_record_pending_kind', ['pending', 'kind', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('source_record', schema=None) as batch_op:
        batch_op.drop_index('ix_source_record_pending_kind')
        batch_op.create_index('ix_source_record_pending', ['pending'], unique=False)
