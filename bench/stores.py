"""Scratch stores for benchmarks: a temporary SQLite file or a PostgreSQL schema dropped afterwards.

PostgreSQL is found at ``OMNISYNC_TEST_PG_URL`` (the test suite's variable, same default). A schema
per run keeps concurrent or aborted benchmarks from seeing each other's rows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable

import sqlalchemy as sa

PG_URL = os.environ.get("OMNISYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pg_reachable() -> bool:
    try:
        eng = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.exec_driver_sql("select 1")
        eng.dispose()
        return True
    except Exception:
        return False


def create_pg_schema(schema: str) -> str | None:
    """Create ``schema`` and return a store URL whose search_path is it (None when unreachable)."""
    admin = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with admin.begin() as c:
            c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')  # a name the benchmark makes, never input
    except sa.exc.OperationalError:
        return None
    finally:
        admin.dispose()
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


def drop_pg_schema(schema: str) -> None:
    admin = sa.create_engine(PG_URL)
    try:
        with admin.begin() as c:
            c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        admin.dispose()


def scratch_store(backend: str, prefix: str) -> tuple[str, Callable[[], None]]:
    """A fresh, empty store URL on ``backend`` ("sqlite" or "postgresql") and its clean-up."""
    if backend == "postgresql":
        schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
        url = create_pg_schema(schema)
        if url is None:
            raise RuntimeError(f"PostgreSQL not reachable at {PG_URL}")
        return url, lambda: drop_pg_schema(schema)
    d = tempfile.mkdtemp(prefix=f"{prefix}-")
    return f"sqlite:///{d}/store.db", lambda: shutil.rmtree(d, ignore_errors=True)
