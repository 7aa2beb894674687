"""Webhook intake: verified events stored durably, then drained into the pipeline.

The receiver (``api/webhooks.py``) verifies a vendor's signature, parses the body into
:class:`IncomingEvent` items and calls :func:`store_events` *before* it answers, so a crash between
storing and triggering the drain loses nothing: the rows wait in ``webhook_event`` with
``processed_at`` empty until :func:`pending` hands them to ``flows.webhooks.drain``.

* Idempotent: ``(vendor, event_id)`` is unique and inserts skip conflicts (``ON CONFLICT DO
  NOTHING`` on SQLite and PostgreSQL alike), so a redelivered or replayed event is acknowledged and
  stored once, even when two deliveries race.
* Order: :func:`pending` returns events by occurrence, so out-of-order delivery is drained in the
  order things happened; ingest's ``modified_at`` comparison makes any leftover disorder harmless.
* Concurrency: on PostgreSQL two drains lock disjoint rows (``FOR UPDATE SKIP LOCKED``).
* Event ids per vendor: HubSpot ``eventId``; SendGrid ``sg_event_id``; Twilio ``MessageSid`` plus
  the message status (a status callback is a new fact about the same message); Zoom sends no event
  id, so its id is the event name plus a fingerprint of the signed body's event (a redelivery is
  byte-identical).

:func:`to_source_records` converts a stored row with the connectors' own record helpers, so a
webhook and an API read of the same thing become the same ``SourceRecord``. HubSpot and Zoom events
carry ids and partial objects only: they become ``webhook_events`` records, which the drain turns
into an incremental read of the stream they name.
"""

from __future__ import annotations

import email.utils
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from identity.ingest import dead_letter
from identity.store import DeadLetter, WebhookEvent, take_sqlite_write_lock, update_by_ids
from omnisync.records import SourceRecord, as_utc, utcnow

VENDORS = ("hubspot", "zoom", "twilio", "sendgrid")
CHUNK = 500


@dataclass(frozen=True)
class IncomingEvent:
    """One verified event as the receiver parsed it (payload as the vendor sent it)."""

    event_id: str
    event_type: str
    occurred_at: datetime
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoreResult:
    stored: int
    duplicates: int


def _insert(session: Session):
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(WebhookEvent)
    if dialect == "sqlite":
        return sqlite.insert(WebhookEvent)
    raise RuntimeError(f"webhook intake supports SQLite and PostgreSQL, not {dialect}")


def store_events(session: Session, vendor: str, events: Sequence[IncomingEvent]) -> StoreResult:
    """Store ``events`` once each (no commit: the caller owns the transaction).

    Duplicates, within the batch or already stored, are counted and skipped.
    """
    if vendor not in VENDORS:
        raise ValueError(f"unknown webhook vendor {vendor!r}; known: {', '.join(VENDORS)}")
    unique: dict[str, IncomingEvent] = {}
    for ev in events:
        unique.setdefault(ev.event_id, ev)
    now = utcnow()
    stored = 0
    items = list(unique.values())
    for i in range(0, len(items), CHUNK):
        part = items[i:i + CHUNK]
        stmt = _insert(session).values([
            {"vendor": vendor, "event_id": ev.event_id, "event_type": ev.event_type[:64],
             "occurred_at": as_utc(ev.occurred_at), "payload": ev.payload, "received_at": now,
             "processed_at": None} for ev in part])
        stmt = stmt.on_conflict_do_nothing(index_elements=["vendor", "event_id"]).returning(WebhookEvent.event_id)
        stored += len(session.execute(stmt).all())
    return StoreResult(stored=stored, duplicates=len(events) - stored)


def reject(session: Session, vendor: str, reason: str, body: bytes) -> None:
    """Dead-letter a verified but unusable body (masked reason, sealed body).

    A vendor retries a rejected post; the same body is recorded once, its attempts counted.
    """
    digest = hashlib.sha256(body).hexdigest()[:40]
    row = session.exec(select(DeadLetter).where(
        DeadLetter.system == vendor, DeadLetter.stream == "webhook", DeadLetter.external_id == digest,
        DeadLetter.resolved_at.is_(None))).first()  # type: ignore[union-attr]
    if row is not None:
        row.attempts += 1
        session.add(row)
        return
    dead_letter(session, system=vendor, stream="webhook", external_id=digest, stage="webhook", reason=reason,
                payload={"body": body.decode("utf-8", "replace")})


def pending(session: Session, *, vendor: str | None = None, limit: int = 500) -> list[WebhookEvent]:
    """Unprocessed events in order of occurrence (locked against a concurrent drain on PostgreSQL)."""
    take_sqlite_write_lock(session)  # PostgreSQL: the rows are locked below
    q = select(WebhookEvent).where(WebhookEvent.processed_at.is_(None))  # type: ignore[union-attr]
    if vendor:
        q = q.where(WebhookEvent.vendor == vendor)
    q = q.order_by(WebhookEvent.occurred_at, WebhookEvent.id).limit(limit)
    return list(session.exec(q.with_for_update(skip_locked=True)).all())


def mark_processed(session: Session, rows: Sequence[WebhookEvent]) -> None:
    update_by_ids(session, WebhookEvent, [r.id for r in rows if r.id is not None], CHUNK, processed_at=utcnow())


# --- per vendor --------------------------------------------------------------------------------

def _rfc2822(dt: datetime) -> str:
    return email.utils.format_datetime(as_utc(dt).astimezone(timezone.utc), usegmt=True)


def twilio_message(form: dict[str, Any], received_at: datetime) -> dict[str, Any]:
    """An inbound-message webhook form in the Message resource's shape (what the API would return).

    Twilio's form carries no time: the message was received when Twilio posted it.
    """
    when = _rfc2822(received_at)
    return {"sid": form["MessageSid"], "account_sid": form.get("AccountSid"), "from": form.get("From"),
            "to": form.get("To"), "body": form.get("Body", ""), "direction": "inbound",
            "status": str(form.get("SmsStatus") or form.get("MessageStatus") or "received").lower(),
            "num_segments": form.get("NumSegments", "1"), "num_media": form.get("NumMedia", "0"),
            "messaging_service_sid": form.get("MessagingServiceSid"), "date_created": when, "date_sent": when,
            "date_updated": when, "api_version": form.get("ApiVersion", "2010-04-01"), "error_code": None}


def _trigger(vendor: str, row: WebhookEvent) -> SourceRecord:
    return SourceRecord(system=vendor, stream="webhook_events", external_id=row.event_id,
                        modified_at=as_utc(row.occurred_at), payload=row.payload)


def to_source_records(row: WebhookEvent) -> list[SourceRecord]:
    """The source records one stored event stands for (see the module docstring)."""
    if row.vendor == "hubspot":
        from connectors.hubspot import webhook_records

        return webhook_records([row.payload])
    if row.vendor == "sendgrid":
        from connectors.sendgrid import event_records

        return event_records([row.payload])
    if row.vendor == "twilio":
        if row.event_type == "message.received":
            from connectors.twilio import message_record

            return [message_record(twilio_message(row.payload, row.occurred_at))]
        return [_trigger("twilio", row)]  # a status callback: the API has the message's new state
    if row.vendor == "zoom":
        return [_trigger("zoom", row)]
    raise ValueError(f"webhook event {row.id}: unknown vendor {row.vendor!r}")
