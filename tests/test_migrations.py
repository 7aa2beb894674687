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


def test_the_resolvers_pending_batch_query_is_an_index_range_in_id_order_on_sqlite(tmp_path):
    # On (pending) alone, each batch of profiles read past every pending interaction to test its kind.
    from sqlalchemy.dialects import sqlite

    from identity.ingest import pending_batch

    engine = get_engine(f"sqlite:///{tmp_path / 'plan.db'}")
    sql = str(pending_batch("profile", 2000).compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        plan = " | ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    assert "INDEX ix_source_record_pending_kind (pending=? AND kind=?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan  # the index gives id order: no sort
