"""Reconciliation sweep: what no incremental cursor shows.

Hard deletes (a record purged without a tombstone), merges done in a vendor's UI, formula fields
and association edits (which contact an activity hangs on) do not move a modification cursor. The
sweep reads each profile and interaction stream in full (no cursor) and lets ingest pick up any
content change: an activity moved to another contact is a changed record, resolution relinks it.
Stored records the vendor no longer returns are marked deleted so resolution detaches them; for a
stream whose vendor keeps only a window of history (``StreamSpec.retention``), only records inside
that window can be judged gone.

A sweep reads every record of the swept streams: it is the daily job (``reconcile`` deployment),
not the 15-minute one. ``kinds`` narrows it, e.g. to profiles only on a tight API budget.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import select

from connectors.base import Connector
from flows.sync import readable_streams
from identity.ingest import CHUNK, Counts, ingest_records
from identity.store import SourceRow, run_in_transaction
from omnisync.records import as_utc, utcnow

KINDS = ("profile", "interaction")


def sweep(engine: Engine, connector: Connector, *, run_id: str | None = None,
          streams: list[str] | None = None, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        for stream in streams or readable_streams(connector):
            spec = connector.stream(stream)
            if spec.kind not in kinds:
                continue
            started = utcnow()
            seen: set[str] = set()
            counts = Counts()
            for page in connector.read(stream, None):
                seen.update(r.external_id for r in page.records if not r.deleted)
                counts.merge(run_in_transaction(lambda s, p=page: ingest_records(s, p.records, run_id=run_id), engine))
            kept_since = started - spec.retention if spec.retention else None
            hard_deleted = run_in_transaction(
                lambda s, stream=stream, seen=seen, since=kept_since: _mark_gone(s, connector.system, stream, seen,
                                                                                 since), engine)
            out[stream] = {"scanned": len(seen), "hard_deleted": hard_deleted,
                           **{k: int(v) for k, v in counts.by_stream.get((connector.system, stream), {}).items()}}
    finally:
        connector.close()
    return out


def _mark_gone(session, system: str, stream: str, seen: set[str], since) -> int:
    """Mark stored, live records of ``stream`` that the full read did not return as deleted."""
    gone = []
    q = select(SourceRow.id, SourceRow.external_id, SourceRow.modified_at).where(
        SourceRow.system == system, SourceRow.stream == stream, SourceRow.deleted.is_(False))
    for rid, ext, modified in session.exec(q):
        if ext in seen or (since is not None and as_utc(modified) < since):
            continue  # returned, or older than what the vendor keeps: no evidence either way
        gone.append(rid)
    now = utcnow()
    for i in range(0, len(gone), CHUNK):
        for row in session.exec(select(SourceRow).where(SourceRow.id.in_(gone[i:i + CHUNK]))):
            row.deleted, row.pending, row.modified_at = True, True, now
            session.add(row)
    return len(gone)
