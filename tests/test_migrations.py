"""The schema is managed by migrations, and the migrations describe exactly the models."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import identity.store  # noqa: F401
from identity.store import get_engine


def test_fresh_store_is_migrated_to_head_and_matches_the_models(store_url):
    engine = get_engine(store_url)
    with engine.connect() as conn:
        version = conn.exec_driver_sql("select version_num from alembic_version").scalar()
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), SQLModel.metadata)
    assert version
    assert diff == [], f"models changed without a migration: {diff[:5]} (run python -m identity.migrations.regenerate)"


def test_migrating_twice_is_a_no_op(store_url):
    from identity.migrations import upgrade

    engine = get_engine(store_url)
    upgrade(engine)
    assert "golden_record" in sa.inspect(engine).get_table_names()
