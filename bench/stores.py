"""Scratch stores for benchmarks: a temporary SQLite file or a PostgreSQL schema dropped afterwards.

PostgreSQL is found at ``OMNISYNC_TEST_PG_URL`` (the test suite's variable, same default). A schema
per run keeps concurrent or aborted benchmarks from seeing each other's rows.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from sandbox.framework import free_port

PG_URL = os.environ.get("OMNISYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pg_reachable(base: str = PG_URL) -> bool:
    try:
        eng = sa.create_engine(base, connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.exec_driver_sql("select 1")
        eng.dispose()
        return True
    except Exception:
        return False


def create_pg_schema(schema: str, base: str = PG_URL) -> str | None:
    """Create ``schema`` and return a store URL whose search_path is it (None when unreachable)."""
    admin = sa.create_engine(base, connect_args={"connect_timeout": 3})
    try:
        with admin.begin() as c:
            c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')  # a name the benchmark makes, never input
    except sa.exc.OperationalError:
        return None
    finally:
        admin.dispose()
    return f"{base}?options=-csearch_path%3D{schema}"


def drop_pg_schema(schema: str, base: str = PG_URL) -> None:
    admin = sa.create_engine(base)
    try:
        with admin.begin() as c:
            c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        admin.dispose()


def scratch_store(backend: str, prefix: str, pg_base: str = PG_URL) -> tuple[str, Callable[[], None]]:
    """A fresh, empty store URL on ``backend`` ("sqlite" or "postgresql", on the server at
    ``pg_base``) and its clean-up."""
    if backend == "postgresql":
        schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
        url = create_pg_schema(schema, pg_base)
        if url is None:
            raise RuntimeError(f"PostgreSQL not reachable at {pg_base}")
        return url, lambda: drop_pg_schema(schema, pg_base)
    d = tempfile.mkdtemp(prefix=f"{prefix}-")
    return f"sqlite:///{d}/store.db", lambda: shutil.rmtree(d, ignore_errors=True)


def _server_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@contextmanager
def serving_postgres(shared_buffers: str = "4GB") -> Iterator[str | None]:
    """A private PostgreSQL server configured to serve, for as long as the block runs: its URL, or
    None when no server binaries are installed or it does not start.

    The machine's shared server runs with PostgreSQL's development default of 128 MB of buffers, so a
    store of a million customers is read through the OS page cache, which this kind of machine does
    not keep (its memory is reclaimed proactively); the bench then measures the virtual disk. A store
    that serves an IVR is sized to hold its working set in ``shared_buffers``: this one is (25% of
    RAM on the 24 GB machines here, the usual starting point), on its own port, in a temporary
    directory removed afterwards.
    """
    initdb, pg_ctl = _server_bin("initdb"), _server_bin("pg_ctl")
    if not initdb or not pg_ctl:
        yield None
        return
    # the server refuses to run as root: as root, run it as the system's postgres user
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    d = tempfile.mkdtemp(prefix="omnisync-pgserve-")
    if as_user:
        shutil.chown(d, "postgres")
    port = free_port()
    data, started, base = os.path.join(d, "data"), False, None
    try:
        try:
            subprocess.run([*as_user, initdb, "-D", data, "-U", "postgres", "--auth=trust"], check=True,
                           capture_output=True)
            options = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={d} "
                       f"-c shared_buffers={shared_buffers} -c max_connections=60")
            subprocess.run([*as_user, pg_ctl, "-D", data, "-l", os.path.join(d, "log"), "-o", options, "-w",
                            "start"], check=True, capture_output=True)
            started = True
            base = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        except (subprocess.CalledProcessError, OSError):
            pass
        yield base if base and pg_reachable(base) else None
    finally:
        if started:
            subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)
