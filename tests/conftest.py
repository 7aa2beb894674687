"""Shared fixtures: isolated stores on SQLite and PostgreSQL, and the Prefect test harness.

Store tests take the ``store_url`` fixture, parametrized over SQLite and PostgreSQL. PostgreSQL
tests skip with a visible reason only when the server is unreachable; each test gets its own
schema, so parallel workers never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from omnisync.settings import reset_settings

PG_URL = os.environ.get("OMNISYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_pg_ok: bool | None = None


def postgres_available() -> bool:
    global _pg_ok
    if _pg_ok is None:
        try:
            eng = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
            with eng.connect() as c:
                c.exec_driver_sql("select 1")
            eng.dispose()
            _pg_ok = True
        except Exception:
            _pg_ok = False
    return _pg_ok


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch) -> Iterator[None]:
    """Every test gets its own OMNISYNC_HOME, so the default SQLite store is private to it."""
    monkeypatch.setenv("OMNISYNC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OMNISYNC_DATABASE_URL", raising=False)
    reset_settings()
    yield
    reset_settings()


@pytest.fixture(autouse=True)
def _own_token_cache(monkeypatch) -> None:
    """OAuth tokens are shared per client and process: a sandbox of an earlier test may have had
    this one's port, and its token would cost this test a refusal it does not expect."""
    import connectors.http

    monkeypatch.setattr(connectors.http, "_SHARED", {})


def _pg_schema_url() -> Iterator[str]:
    if not postgres_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        from identity.store import dispose_engines

        dispose_engines()
        with admin.begin() as c:
            c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path, monkeypatch) -> Iterator[str]:
    """A fresh, migrated store on each backend; also set as OMNISYNC_DATABASE_URL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        monkeypatch.setenv("OMNISYNC_DATABASE_URL", url)
        reset_settings()
        yield url
        from identity.store import dispose_engines

        dispose_engines()
    else:
        gen = _pg_schema_url()
        url = next(gen)
        monkeypatch.setenv("OMNISYNC_DATABASE_URL", url)
        reset_settings()
        yield url
        try:
            next(gen)
        except StopIteration:
            pass


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema (skips visibly when the server is unreachable)."""
    yield from _pg_schema_url()


@pytest.fixture(autouse=True)
def _flows_under_the_harness(request) -> None:
    """Tests marked ``flow`` run their flows on the session's harness, not on a temporary server
    Prefect would start per process with a heartbeat costing ~1 s per flow run. The demo test
    runs the demo in a subprocess with a Prefect home of its own and needs none."""
    if request.node.get_closest_marker("flow") and "demo" not in request.fixturenames:
        request.getfixturevalue("prefect_harness")


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session, without the ~1 s flow heartbeat."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield
