"""Draining stored webhook events into the pipeline.

The receiver (api/webhooks.py) stores each verified event before answering and then asks Prefect to
run ``drain-webhooks``; if that trigger is lost, the next run drains the table anyway. Events are
processed in order of occurrence, mapped and stored like any page, and marked processed in the same
transaction. HubSpot and Zoom webhooks carry only ids and partial objects, and a Twilio status
callback only a new status, so those trigger an incremental read of the stream instead.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from connectors.errors import ConnectorError
from identity.ingest import Counts, dead_letter, ingest_records
from identity.store import run_in_transaction

TRIGGER_STREAMS = {("hubspot", "webhook_events"): ("hubspot", "contacts"),
                   ("zoom", "webhook_events"): ("zoom", "engagements"),
                   ("twilio", "webhook_events"): ("twilio", "messages")}


def drain(engine: Engine, *, vendor: str | None = None, run_id: str | None = None, batch: int = 500,
          sync_triggered: bool = True) -> dict[str, Any]:
    from identity import webhook_intake as intake

    total = Counts()
    triggers: set[tuple[str, str]] = set()
    events = 0
    while True:
        def work(session):
            dead = Counts()
            rows = intake.pending(session, vendor=vendor, limit=batch)
            records = []
            for row in rows:
                try:
                    converted = intake.to_source_records(row)
                except (ValueError, KeyError, TypeError, ConnectorError) as e:
                    # Verified and stored, yet unusable: set aside with a reason, never retried forever.
                    dead_letter(session, system=row.vendor, stream="webhook", external_id=row.event_id[:128],
                                stage="webhook", reason=f"webhook event {row.event_id}: {e}", payload=row.payload,
                                run_id=run_id)
                    dead.bump(row.vendor, "webhook", "read")  # so the run's counts still reconcile
                    dead.bump(row.vendor, "webhook", "dead_lettered")
                    continue
                for rec in converted:
                    if (rec.system, rec.stream) in TRIGGER_STREAMS:
                        triggers.add(TRIGGER_STREAMS[(rec.system, rec.stream)])
                    else:
                        records.append(rec)
            counts = ingest_records(session, records, run_id=run_id) if records else Counts()
            intake.mark_processed(session, rows)
            return len(rows), counts.merge(dead)

        n, counts = run_in_transaction(work, engine)
        events += n
        total.merge(counts)
        if n < batch:
            break
    synced = {}
    if sync_triggered and triggers:
        from flows.connect import make_connector
        from flows.sync import sync_stream

        for system, stream in sorted(triggers):
            conn = make_connector(system)
            try:
                res = sync_stream(engine, conn, stream, run_id=run_id)
            finally:
                conn.close()
            total.merge(res.counts)
            synced[f"{system}/{stream}"] = res.status
    return {"events": events, "counts": total.as_dict(), "triggered": synced}
