"""Reconciliation sweep: what no incremental cursor shows.

Hard deletes (a record purged without a tombstone), merges done in a vendor's UI, formula fields
and association edits do not move a modification cursor. The sweep reads each profile stream in
full (no cursor), lets ingest pick up any content change, and marks stored records the vendor no
longer returns as deleted so resolution detaches them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import select

from connectors.base import Connector
from flows.sync import readable_streams
from identity.ingest import Counts, ingest_records
from identity.store import SourceRow, run_in_transaction
from omnisync.records import utcnow


def sweep(engine: Engine, connector: Connector, *, run_id: str | None = None,
          streams: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        for stream in streams or readable_streams(connector):
            if connector.stream(stream).kind != "profile":
                continue
            seen: set[str] = set()
            counts = Counts()
            for page in connector.read(stream, None):
                seen.update(r.external_id for r in page.records if not r.deleted)
                counts.merge(run_in_transaction(lambda s, p=page: ingest_records(s, p.records, run_id=run_id), engine))

            def mark_gone(session, stream=stream, seen=seen):
                gone = 0
                rows = session.exec(select(SourceRow).where(SourceRow.system == connector.system,
                                                            SourceRow.stream == stream,
                                                            SourceRow.deleted.is_(False)))
                for row in rows:
                    if row.external_id not in seen:
                        row.deleted, row.pending, row.modified_at = True, True, utcnow()
                        session.add(row)
                        gone += 1
                return gone

            hard_deleted = run_in_transaction(mark_gone, engine)
            out[stream] = {"scanned": len(seen), "hard_deleted": hard_deleted, **counts.as_dict()}
    finally:
        connector.close()
    return out
