"""The screen pop's reads, straight on the database driver.

An IVR looks a caller up on every call, so ``/v1/lookup`` is the one endpoint whose cost sets the
API's capacity. Through the ORM, its reads cost about 1.6 ms of CPU (statement construction, cache
keys, result processing); the same two statements on the driver cost about 0.2 ms. This module is
that fast path, for the common case only: every identifier match is an active golden record and the
chosen one has absorbed no other id. Anything else (a merge to follow, an alias whose interactions
may still carry the old id) answers ``None`` and the caller takes the general path in
:mod:`api.app`, which handles every case; both produce the same body, and a test holds them to it.

The reads use a pool that does not ping a connection before each use (on PostgreSQL that ping
was a third of the lookup's round trips); a connection the server dropped is retried once on a
fresh pool (:meth:`ScreenPopReader.read`).

The SQL is constant text with placeholders in the driver's style (``%s`` for psycopg, ``?`` for
sqlite3), as :mod:`identity.resolve` writes its read path. No input ever becomes part of a statement.
"""

from __future__ import annotations

import json
from collections import namedtuple
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from identity.store import get_read_engine
from omnisync.records import as_utc

MAX_MATCHES = 50
RECENT = 20  # interactions the screen pop looks at (last agent, open case, hand-off)

Match = namedtuple("Match", "golden_id status merged_into profile updated_at n_alias")
Interaction = namedtuple("Interaction", "id system external_id channel direction started_at ended_at queue "
                                        "agent disposition summary data")

_FIND = """
SELECT g.golden_id, g.status, g.merged_into, g.profile, g.updated_at,
       (SELECT count(*) FROM golden_alias x WHERE x.golden_id = g.golden_id AND x.alias_id <> g.golden_id)
FROM identity_key k
LEFT JOIN golden_alias a ON a.alias_id = k.golden_id
JOIN golden_record g ON g.golden_id = coalesce(a.golden_id, k.golden_id)
WHERE k.kind = {ph} AND k.value = {ph}
LIMIT {limit}"""

_RECENT = """
SELECT id, system, external_id, channel, direction, started_at, ended_at, queue, agent, disposition, summary, data
FROM interaction WHERE golden_id = {ph}
ORDER BY started_at DESC, id DESC
LIMIT {limit}"""


def _time(v: Any) -> datetime | None:
    return datetime.fromisoformat(v) if isinstance(v, str) else v


def _doc(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str | bytes) else v


class ScreenPopReader:
    """The two reads of a screen pop on one pooled connection, in autocommit (no BEGIN round trip)."""

    def __init__(self, engine: Engine) -> None:
        self._base = get_read_engine(engine)
        self._engine = self._base.execution_options(isolation_level="AUTOCOMMIT")
        self._dbapi_error = engine.dialect.loaded_dbapi.Error
        ph = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._find = _FIND.format(ph=ph, limit=MAX_MATCHES)
        self._recent = _RECENT.format(ph=ph, limit=RECENT)
        # PostgreSQL's driver hands back parsed JSON and aware datetimes; sqlite3 hands back text
        self._decode = engine.dialect.name == "sqlite"

    def read(self, kind: str, value: str) -> tuple[Match | None, set[str], list[Interaction]] | None:
        """``(best, other ids, recent)`` for identifier ``(kind, value)``; ``best`` is None when no active
        customer has it. ``None`` when the general path must answer (see the module docstring)."""
        with self._engine.connect() as conn:
            dbapi_conn = conn.connection.dbapi_connection
            try:
                return self._read(dbapi_conn, kind, value)
            except self._dbapi_error as e:
                if not self._base.dialect.is_disconnect(e, dbapi_conn, None):
                    raise
                conn.invalidate()
        # Pooled connections are not pinged before use (a round trip per lookup). One the server
        # dropped fails above; it has most likely dropped them all (a restart), so the pool starts
        # afresh and the read is tried once more, on a new connection.
        self._base.dispose()
        with self._engine.connect() as conn:
            return self._read(conn.connection.dbapi_connection, kind, value)

    def _read(self, dbapi_conn: Any, kind: str, value: str) -> tuple[Match | None, set[str], list[Interaction]] | None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute(self._find, (kind, value))
            found: dict[str, Match] = {}
            for row in cur.fetchall():
                m = Match(*row)
                if m.status == "merged":
                    return None
                if m.status == "active":
                    found.setdefault(m.golden_id, m)
            if not found:
                return None, set(), []
            if self._decode:
                found = {g: m._replace(profile=_doc(m.profile), updated_at=_time(m.updated_at))
                         for g, m in found.items()}
            best = max(found.values(), key=lambda m: (as_utc(m.updated_at), m.golden_id))
            if best.n_alias:
                return None
            cur.execute(self._recent, (best.golden_id,))
            recent = [Interaction(*r) for r in cur.fetchall()]
        finally:
            cur.close()
        if self._decode:
            recent = [it._replace(started_at=_time(it.started_at), ended_at=_time(it.ended_at), data=_doc(it.data))
                      for it in recent]
        return best, set(found) - {best.golden_id}, recent

