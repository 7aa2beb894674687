"""The golden store: every table omnisync keeps, on SQLite by default or PostgreSQL.

``identity`` owns the store (DESIGN.md). Tables fall in four groups:

* sources: :class:`SourceRow` (latest version of every vendor record, with its fingerprint),
  :class:`InteractionRow`, :class:`ConsentEventRow`;
* golden: :class:`GoldenRecord` (profile + lineage), :class:`GoldenAlias`, :class:`IdentityKey`
  (the match index), :class:`MatchTerm` (the matcher's population counts), :class:`MergeEvent`,
  :class:`ChangeEvent` (the change feed), :class:`Tombstone`;
* operations: :class:`Checkpoint`, :class:`SyncRun`, :class:`DeadLetter`, :class:`OutboundLedger`,
  :class:`WebhookEvent`, :class:`AuditEntry`;
* access: :class:`ApiKey`.

The schema is created and changed only by migrations (``identity/migrations``); :func:`get_engine`
upgrades a database to head on first use, so a fresh SQLite file needs no set-up step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, UniqueConstraint, event, insert, update
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, create_engine

from omnisync.records import utcnow
from omnisync.settings import get_settings


def _ts(**kw: Any) -> Any:
    return Field(sa_column_kwargs={}, sa_type=DateTime(timezone=True), **kw)


def _json(default: Any = None) -> Any:
    factory = (lambda: {}) if default is None else default
    return Field(default_factory=factory, sa_column=Column(JSON, nullable=False))


# --- sources -------------------------------------------------------------------------------------

class SourceRow(SQLModel, table=True):
    """The latest version of one vendor record as read, plus the golden record it resolved to."""

    __tablename__ = "source_record"
    __table_args__ = (
        UniqueConstraint("system", "stream", "external_id", name="uq_source_record"),
        Index("ix_source_record_golden", "golden_id"),
        # The push planner's "re-read with new facts since the last push" (identity.push.reread_golden_ids).
        Index("ix_source_record_resolved", "system", "stream", "resolved_at"),
        # The resolver's "next pending batch of one kind, in id order": with pending alone the
        # batch query read past every pending row of the other kinds, once per batch.
        Index("ix_source_record_pending_kind", "pending", "kind", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    system: str = Field(max_length=32)
    stream: str = Field(max_length=64)
    external_id: str = Field(max_length=128)
    modified_at: datetime = _ts()
    deleted: bool = False
    merged_into: str | None = Field(default=None, max_length=128)
    fingerprint: str = Field(max_length=64)
    payload: dict = _json()
    canonical: dict = _json()  # the mapped canonical object(s), so resolution never re-maps
    kind: str = Field(default="profile", max_length=16)
    golden_id: str | None = Field(default=None, max_length=40)
    echo: bool = False
    ingested_at: datetime = _ts(default_factory=utcnow)
    resolved_at: datetime | None = _ts(default=None)
    pending: bool = True  # changed since last resolution


class InteractionRow(SQLModel, table=True):
    """One interaction on the unified timeline, attached to its customer's golden record."""

    __tablename__ = "interaction"
    __table_args__ = (
        UniqueConstraint("system", "external_id", name="uq_interaction"),
        Index("ix_interaction_golden_time", "golden_id", "started_at"),
        Index("ix_interaction_started", "started_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    system: str = Field(max_length=32)
    external_id: str = Field(max_length=128)
    golden_id: str | None = Field(default=None, max_length=40)
    channel: str = Field(max_length=16)
    direction: str = Field(max_length=16)
    started_at: datetime = _ts()
    ended_at: datetime | None = _ts(default=None)
    queue: str | None = None
    agent: str | None = None
    disposition: str | None = None
    summary: str | None = None
    fingerprint: str = Field(max_length=64)
    data: dict = _json()
    ingested_at: datetime = _ts(default_factory=utcnow)


class ConsentEventRow(SQLModel, table=True):
    """Every consent change observed, kept as history; the golden record holds the resulting state."""

    __tablename__ = "consent_event"
    __table_args__ = (
        UniqueConstraint("system", "external_id", name="uq_consent_event"),
        Index("ix_consent_event_golden", "golden_id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    system: str = Field(max_length=32)
    external_id: str = Field(max_length=128)
    golden_id: str | None = Field(default=None, max_length=40)
    channel: str = Field(max_length=16)
    purpose: str = Field(max_length=16)
    status: str = Field(max_length=16)
    occurred_at: datetime = _ts()
    data: dict = _json()
    ingested_at: datetime = _ts(default_factory=utcnow)


# --- golden --------------------------------------------------------------------------------------

class GoldenRecord(SQLModel, table=True):
    """One person. ``profile`` holds the surviving canonical fields, ``lineage`` where each came from."""

    __tablename__ = "golden_record"
    golden_id: str = Field(primary_key=True, max_length=40)
    status: str = Field(default="active", max_length=16)  # active | merged | erased
    merged_into: str | None = Field(default=None, max_length=40)
    profile: dict = _json()
    lineage: dict = _json()
    version: int = 1
    created_at: datetime = _ts(default_factory=utcnow)
    updated_at: datetime = _ts(default_factory=utcnow)


class GoldenAlias(SQLModel, table=True):
    """A golden id that was merged away, pointing at the survivor (ids stay resolvable forever)."""

    __tablename__ = "golden_alias"
    alias_id: str = Field(primary_key=True, max_length=40)
    golden_id: str = Field(max_length=40, index=True)
    created_at: datetime = _ts(default_factory=utcnow)


class IdentityKey(SQLModel, table=True):
    """The match index: a normalized identifier (email, phone, external id, CDP id) of a source record,
    or one of its blocking keys (kind ``blk``) or name/postcode values (kind ``tf``) for probabilistic
    matching (see :func:`identity.matching.index_keys`)."""

    __tablename__ = "identity_key"
    __table_args__ = (
        UniqueConstraint("kind", "value", "source_id", name="uq_identity_key"),  # also every (kind, value) lookup
        Index("ix_identity_key_golden", "golden_id"),
        Index("ix_identity_key_source", "source_id"),  # a record's keys are replaced when it changes
    )
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=24)
    value: str = Field(max_length=255)
    source_id: int = Field(sa_type=BigInteger)
    golden_id: str = Field(max_length=40)


class MatchTerm(SQLModel, table=True):
    """A count the probabilistic matcher needs about the whole population, kept up to date by the
    resolver so one record can be scored without counting: live profile records per first name,
    last name and postcode (term frequencies; ``key`` is a keyed hash, never the value), and the
    number of live profile records (``key`` ``*``)."""

    __tablename__ = "match_term"
    key: str = Field(primary_key=True, max_length=64)
    n: int = Field(default=0, sa_type=BigInteger)


class MergeEvent(SQLModel, table=True):
    """A merge or unmerge of golden records, with the evidence that caused it."""

    __tablename__ = "merge_event"
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)  # merge | unmerge
    survivor_id: str = Field(max_length=40, index=True)
    absorbed_id: str = Field(max_length=40, index=True)
    evidence: dict = _json()
    run_id: str | None = Field(default=None, max_length=64)
    at: datetime = _ts(default_factory=utcnow)


class ChangeEvent(SQLModel, table=True):
    """The change feed for downstream consumers; ``seq`` is the ``since`` cursor."""

    __tablename__ = "change_event"
    seq: int | None = Field(default=None, primary_key=True)
    golden_id: str = Field(max_length=40, index=True)
    kind: str = Field(max_length=16)  # created | updated | merged | unmerged | erased | consent
    detail: dict = _json()
    at: datetime = _ts(default_factory=utcnow)


class Tombstone(SQLModel, table=True):
    """A keyed hash of an erased person's identifier: blocks re-import, holds no personal data."""

    __tablename__ = "tombstone"
    key_hash: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=24)
    golden_id: str | None = Field(default=None, max_length=40)
    created_at: datetime = _ts(default_factory=utcnow)


# --- operations ----------------------------------------------------------------------------------

class Checkpoint(SQLModel, table=True):
    """The committed cursor of one stream (and partition), advanced only after its batch is stored."""

    __tablename__ = "checkpoint"
    system: str = Field(primary_key=True, max_length=32)
    stream: str = Field(primary_key=True, max_length=64)
    partition: str = Field(default="", primary_key=True, max_length=64)
    cursor: dict = _json()
    batches: int = 0
    records: int = 0
    run_id: str | None = Field(default=None, max_length=64)
    updated_at: datetime = _ts(default_factory=utcnow)


class SyncRun(SQLModel, table=True):
    """One flow run as omnisync saw it: counts per system and stream, status, and any alarm."""

    __tablename__ = "sync_run"
    run_id: str = Field(primary_key=True, max_length=64)
    flow: str = Field(max_length=64)
    status: str = Field(default="running", max_length=16)
    counts: dict = _json()
    flagged: str | None = None
    started_at: datetime = _ts(default_factory=utcnow)
    finished_at: datetime | None = _ts(default=None)


class DeadLetter(SQLModel, table=True):
    """A record that could not be processed, with a reason naming the record and field (masked)."""

    __tablename__ = "dead_letter"
    __table_args__ = (Index("ix_dead_letter_open", "resolved_at", "system", "stream"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str | None = Field(default=None, max_length=64)
    system: str = Field(max_length=32)
    stream: str = Field(max_length=64)
    external_id: str | None = Field(default=None, max_length=128)
    stage: str = Field(max_length=24)  # read | map | resolve | push | webhook | loop
    reason: str
    payload: dict = _json()
    attempts: int = 1
    created_at: datetime = _ts(default_factory=utcnow)
    resolved_at: datetime | None = _ts(default=None)


class OutboundLedger(SQLModel, table=True):
    """What each target system last received from us, per record: the push planner's diff base.

    Also the echo detector: an inbound record whose fingerprint equals ``fingerprint`` here is our
    own write coming back.
    """

    __tablename__ = "outbound_ledger"
    __table_args__ = (
        UniqueConstraint("target_system", "target_stream", "key", name="uq_outbound_ledger"),
        Index("ix_outbound_ledger_ext", "target_system", "external_id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    target_system: str = Field(max_length=32)
    target_stream: str = Field(max_length=64)
    key: str = Field(max_length=128)
    external_id: str | None = Field(default=None, max_length=128)
    fingerprint: str = Field(max_length=64)
    inbound_fingerprint: str | None = Field(default=None, max_length=64)
    payload: dict = _json()
    bounces: int = 0
    written_at: datetime = _ts(default_factory=utcnow)


class WebhookEvent(SQLModel, table=True):
    """A verified webhook event, stored before anything else happens (deduplicated by event id)."""

    __tablename__ = "webhook_event"
    __table_args__ = (UniqueConstraint("vendor", "event_id", name="uq_webhook_event"),
                      Index("ix_webhook_event_pending", "processed_at"))
    id: int | None = Field(default=None, primary_key=True)
    vendor: str = Field(max_length=24)
    event_id: str = Field(max_length=160)
    event_type: str = Field(max_length=64)
    occurred_at: datetime = _ts()
    payload: dict = _json()
    received_at: datetime = _ts(default_factory=utcnow)
    processed_at: datetime | None = _ts(default=None)


class AuditEntry(SQLModel, table=True):
    """Who did what to personal data (erasures, key management); no personal data itself."""

    __tablename__ = "audit_entry"
    id: int | None = Field(default=None, primary_key=True)
    action: str = Field(max_length=32)
    subject: str = Field(max_length=128)
    detail: dict = _json()
    at: datetime = _ts(default_factory=utcnow)


class RateBucket(SQLModel, table=True):
    """A vendor rate budget shared by every process using this store (a token bucket).

    ``tokens`` may go negative: a caller that takes more than is left owes the difference and
    waits it out, so concurrent workers queue up instead of all calling at once.
    """

    __tablename__ = "rate_bucket"
    name: str = Field(primary_key=True, max_length=128)
    tokens: float = 0.0
    updated: float = 0.0  # epoch seconds of the last refill


class ApiKey(SQLModel, table=True):
    """An API key: only its SHA-256 is stored; scopes is a space-separated list."""

    __tablename__ = "api_key"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    key_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=12)
    scopes: str
    created_at: datetime = _ts(default_factory=utcnow)
    revoked_at: datetime | None = _ts(default=None)


# --- engine --------------------------------------------------------------------------------------

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str, *, pre_ping: bool = True) -> Engine:
    """An engine for ``url``. ``pre_ping`` checks a pooled PostgreSQL connection with a round trip
    before handing it out, so a restarted server costs no failed statement; a caller that turns it
    off must handle a dropped connection itself (see :func:`get_read_engine`)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=pre_ping)
    return engine


def get_engine(url: str | None = None, *, migrate: bool = True) -> Engine:
    """The engine for ``url`` (default: settings), upgraded to the latest migration on first use."""
    url = url or get_settings().resolved_database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = make_engine(url)
            if migrate:
                from identity.migrations import upgrade

                upgrade(engine)
            _engines[url] = engine
    return engine


def get_read_engine(engine: Engine) -> Engine:
    """An engine on ``engine``'s database for hot read paths: no ping before each checkout (a third
    of a screen pop's round trips). Its users retry once on a dropped connection instead, which
    SQLAlchemy calls optimistic disconnect handling. SQLite has no round trip to save: ``engine``."""
    if engine.dialect.name == "sqlite":
        return engine
    url = engine.url.render_as_string(hide_password=False)
    with _lock:
        read = _engines.get("read:" + url)
        if read is None:
            read = _engines["read:" + url] = make_engine(url, pre_ping=False)
    return read


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = Session(engine or get_engine(), expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# Constant keys of PostgreSQL advisory locks (64-bit; any value no other application on the
# database uses). One lock guards the golden-record graph: see :func:`lock_identity_graph`.
IDENTITY_GRAPH_LOCK = 0x6F6D6E69_73796E63  # "omnisync"


def lock_identity_graph(session: Session) -> None:
    """Serialize changes to the golden-record graph (placements, merges, erasure) until commit.

    Resolution reads the identity-key index, decides, then writes: two transactions doing that at
    once for one person each see the other's keys missing and found two golden records. A row lock
    cannot prevent it (the row that would conflict does not exist yet), so on PostgreSQL every such
    transaction first takes one transaction-scoped advisory lock; a waiting resolver then reads what
    the first one committed. On SQLite the transaction takes the database's write lock before it
    reads (:func:`take_sqlite_write_lock`), to the same effect. Ingest and API reads never take it.
    """
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        from sqlalchemy import func, select

        session.execute(select(func.pg_advisory_xact_lock(IDENTITY_GRAPH_LOCK)))
    else:
        take_sqlite_write_lock(session)


def take_sqlite_write_lock(session: Session) -> None:
    """On SQLite, make this transaction the writer before it reads anything (BEGIN IMMEDIATE).

    Python's sqlite3 begins a transaction only at the first write, so what a transaction read
    before it was read outside it: two drains (or resolvers) could read the same pending rows and
    both commit. A transaction that reads in order to write starts here instead; another waits
    (busy_timeout) and then reads what the first committed. A no-op on other backends, and when
    this transaction has already written (it holds the lock)."""
    if session.get_bind().dialect.name != "sqlite":
        return
    conn = session.connection()
    if not conn.connection.dbapi_connection.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def update_by_ids(session: Session, model: Any, ids: list[int], chunk: int = 500, *, synchronize: bool = True,
                  **values: Any) -> None:
    """Set ``values`` on the rows of ``model`` with these ids: one UPDATE per ``chunk`` ids, not an
    ORM update per row. The session's objects of those rows take the values too, unless
    ``synchronize`` is false: for a caller done with them, as matching each statement against
    every object the session holds cost 7% of a resolution pass."""
    for i in range(0, len(ids), chunk):
        stmt = update(model).where(model.id.in_(ids[i:i + chunk])).values(**values)
        session.execute(stmt if synchronize else stmt.execution_options(synchronize_session=False))


def add_change_events(session: Session, events: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Append ``(golden_id, kind, detail)`` events to the change feed in one INSERT.

    A first load writes an event or more per person; as ORM objects each cost a model construction
    and a unit-of-work entry, a fifth of linking a batch of interactions. The session is flushed
    first so the feed keeps program order: events added as objects before this call get the lower
    ``seq``, as they would have.
    """
    if not events:
        return
    session.flush()
    at = utcnow()
    session.execute(insert(ChangeEvent.__table__),
                    [{"golden_id": g, "kind": k, "detail": d, "at": at} for g, k, d in events])


def run_in_transaction(fn, engine: Engine | None = None, *, attempts: int = 5):
    """Run ``fn(session)`` in its own transaction, retrying on conflicts.

    Two workers upserting the same rows at once (overlapping sync windows, the same person arriving
    through two systems) collide on unique constraints or deadlock on PostgreSQL; both are safe to
    retry because every write here is an idempotent upsert.
    """
    import random
    import time as _time

    from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

    for attempt in range(1, attempts + 1):
        try:
            with session_scope(engine) as session:
                return fn(session)
        except (IntegrityError, OperationalError, DBAPIError) as e:
            retryable = isinstance(e, IntegrityError) or _is_transient_db_error(e)
            if not retryable or attempt == attempts:
                raise
            _time.sleep(random.uniform(0.01, 0.05) * attempt)


def _is_transient_db_error(e: Exception) -> bool:
    code = getattr(getattr(e, "orig", None), "sqlstate", None)
    # 40001 serialization failure, 40P01 deadlock detected; SQLite: database is locked
    return code in {"40001", "40P01"} or "database is locked" in str(e)
