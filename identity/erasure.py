"""Erasure in the store: find the person, leave tombstones, remove personal data, keep an audit trail.

Erasure is a job with per-system progress kept in an :class:`~identity.store.AuditEntry`, so it is
idempotent (erasing an erased person changes nothing) and resumable (a crash halfway re-runs only
the systems not yet done). Tombstones are keyed hashes of normalized identifiers: ingest refuses
any record carrying one, so the person is not re-imported, and a tombstone reveals nothing.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import delete, or_
from sqlmodel import Session, select

from identity.ingest import letter_id, tombstone_hash
from identity.store import (
    AuditEntry,
    ChangeEvent,
    ConsentEventRow,
    DeadLetter,
    GoldenAlias,
    GoldenRecord,
    IdentityKey,
    InteractionRow,
    MergeEvent,
    OutboundLedger,
    SourceRow,
    Tombstone,
    WebhookEvent,
    lock_identity_graph,
)
from omnisync.model import normalize_email, normalize_phone
from omnisync.records import utcnow

KEEP_INTERACTION_FIELDS = ("system", "external_id", "channel", "direction", "started_at", "ended_at", "queue")


class PersonNotFound(LookupError):
    pass


def find_golden(session: Session, *, email: str | None = None, phone: str | None = None,
                golden_id: str | None = None) -> str:
    """The golden id to erase; an already-erased person is found through their tombstone job."""
    if golden_id:
        alias = session.get(GoldenAlias, golden_id)
        gid = alias.golden_id if alias else golden_id
        if session.get(GoldenRecord, gid) is None:
            raise PersonNotFound(f"no golden record {golden_id}")
        return gid
    kind, value = ("email", normalize_email(email)) if email else ("phone", normalize_phone(phone or ""))
    row = session.exec(select(IdentityKey.golden_id).where(IdentityKey.kind == kind, IdentityKey.value == value)
                       .limit(1)).first()
    if row:
        return row
    tomb = session.get(Tombstone, tombstone_hash(kind, value))
    if tomb is not None and tomb.golden_id:
        return tomb.golden_id
    raise PersonNotFound(f"no customer with that {kind}")


def job(session: Session, golden_id: str) -> AuditEntry:
    entry = session.exec(select(AuditEntry).where(AuditEntry.action == "erase", AuditEntry.subject == golden_id)
                         .order_by(AuditEntry.id.desc()).limit(1)).first()
    if entry is None:
        entry = AuditEntry(action="erase", subject=golden_id, detail={"systems": {}, "store": "pending"})
        session.add(entry)
        session.flush()
    return entry


def person_sources(session: Session, golden_ids: list[str]) -> list[SourceRow]:
    """Every stored vendor record about the person: their profiles, and the records behind their
    interactions and consent events (messages, calls, unsubscribes), which resolution links through
    the interaction and consent tables rather than ``SourceRow.golden_id``."""
    rows = {r.id: r for r in session.exec(select(SourceRow).where(SourceRow.golden_id.in_(golden_ids)))}
    keys: set[tuple[str, str]] = set()
    for model in (InteractionRow, ConsentEventRow):
        keys |= set(session.exec(select(model.system, model.external_id).where(model.golden_id.in_(golden_ids))))
    # A consent row's id may be derived from its record's (e.g. "<message sid>:consent"): match both.
    wanted = {k for k in keys} | {(s, e.rsplit(":", 1)[0]) for s, e in keys if ":" in e}
    by_system: dict[str, list[str]] = {}
    for system, ext in wanted:
        by_system.setdefault(system, []).append(ext)
    for system, exts in by_system.items():
        for i in range(0, len(exts), 500):
            for r in session.exec(select(SourceRow).where(SourceRow.system == system,
                                                          SourceRow.external_id.in_(exts[i:i + 500]))):
                rows[r.id] = r
    return sorted(rows.values(), key=lambda r: r.id or 0)


def targets(session: Session, golden_id: str) -> dict[str, dict[str, list[str]]]:
    """Vendor records to erase: system -> stream -> external ids.

    Besides what we read about the person, the ids we created for them: their profile pushed to
    a system (ledger keys ``<golden id>|...``) and their timeline written as activities (ledger keys
    ``<system>:<interaction id>``). Profile streams come first in each system, so a CRM whose
    person-delete also removes associated activities does that before they are addressed one by one.
    """
    out: dict[str, dict[str, list[str]]] = {}

    def add(system: str, stream: str, ext: str | None) -> None:
        if ext:
            ids = out.setdefault(system, {}).setdefault(stream, [])
            if ext not in ids:
                ids.append(ext)

    gids = _with_aliases(session, golden_id)
    rows = person_sources(session, gids)
    for row in sorted(rows, key=lambda r: (r.kind != "profile", r.id or 0)):
        add(row.system, row.stream, row.external_id)
    for g in gids:
        for led in session.exec(select(OutboundLedger).where(OutboundLedger.key.like(f"{g}|%"))):
            add(led.target_system, led.target_stream, led.external_id)
    its = [f"{s}:{e}" for s, e in session.exec(select(InteractionRow.system, InteractionRow.external_id)
                                                .where(InteractionRow.golden_id.in_(gids)))]
    for i in range(0, len(its), 500):
        for led in session.exec(select(OutboundLedger).where(OutboundLedger.key.in_(its[i:i + 500]))):
            add(led.target_system, led.target_stream, led.external_id)
    return out


def _with_aliases(session: Session, golden_id: str) -> list[str]:
    return [golden_id, *session.exec(select(GoldenAlias.alias_id).where(GoldenAlias.golden_id == golden_id))]


def identifiers(session: Session, golden_id: str) -> set[tuple[str, str]]:
    ids: set[tuple[str, str]] = set()
    g = session.get(GoldenRecord, golden_id)
    if g is not None:
        ids |= {("email", e) for e in (g.profile or {}).get("emails", [])}
        ids |= {("phone", p) for p in (g.profile or {}).get("phones", [])}
    for kind, value in session.exec(select(IdentityKey.kind, IdentityKey.value).where(IdentityKey.golden_id == golden_id)):
        if kind in ("email", "phone"):
            ids.add((kind, value))
    return ids


def erase_store(session: Session, golden_id: str) -> dict[str, int]:
    """Remove the person's personal data from every table; leave tombstones and an erased golden record."""
    lock_identity_graph(session)  # a resolver placing this person's records waits, then sees the tombstones
    counts: dict[str, int] = {}
    idents = identifiers(session, golden_id)
    for kind, value in idents:
        key = tombstone_hash(kind, value)
        if session.get(Tombstone, key) is None:
            session.add(Tombstone(key_hash=key, kind=kind, golden_id=golden_id))
    counts["tombstones"] = len(idents)

    gids = _with_aliases(session, golden_id)
    rows = person_sources(session, gids)
    source_ids = [r.external_id for r in rows]
    row_ids = [r.id for r in rows]
    from identity.resolve import unindex

    unindex(session, row_ids)  # out of the matcher's population and name counts too
    for i in range(0, len(row_ids), 500):
        session.exec(delete(IdentityKey).where(IdentityKey.source_id.in_(row_ids[i:i + 500])))
        session.exec(delete(SourceRow).where(SourceRow.id.in_(row_ids[i:i + 500])))
    counts["source_records"] = len(row_ids)
    session.exec(delete(IdentityKey).where(IdentityKey.golden_id.in_(gids)))
    session.exec(delete(ConsentEventRow).where(ConsentEventRow.golden_id.in_(gids)))
    its = [f"{s}:{e}" for s, e in session.exec(select(InteractionRow.system, InteractionRow.external_id)
                                                .where(InteractionRow.golden_id.in_(gids)))]
    session.exec(delete(OutboundLedger).where(or_(*[OutboundLedger.key.like(f"{g}|%") for g in gids])))
    for i in range(0, len(its), 500):
        # What we wrote for their timeline is gone from the targets; the ledger's copy (payloads
        # with summaries) goes too.
        session.exec(delete(OutboundLedger).where(OutboundLedger.key.in_(its[i:i + 500])))
    for ev in session.exec(select(MergeEvent).where(or_(MergeEvent.survivor_id.in_(gids),
                                                        MergeEvent.absorbed_id.in_(gids)))):
        ev.evidence = {"erased": True}  # evidence names the identifiers that matched
        session.add(ev)
    for ev in session.exec(select(ChangeEvent).where(ChangeEvent.golden_id.in_(gids))):
        ev.detail = {}
        session.add(ev)
    # Dead letters keep an id that is an address masked (with a keyed hash: letter_id), so they are
    # found by that form too, and by her addresses and numbers (a refused unsubscribe has no row).
    letter_ids = sorted({x for v in [*source_ids, *(v for _, v in idents)] for x in (v, letter_id(v)) if x})
    for i in range(0, len(letter_ids), 500):
        session.exec(delete(DeadLetter).where(DeadLetter.external_id.in_(letter_ids[i:i + 500])))

    n = 0
    for it in session.exec(select(InteractionRow).where(InteractionRow.golden_id.in_(gids))):
        # Keep the contact's shape (channel, time, queue) for workforce statistics; drop what it said.
        it.data = {k: it.data.get(k) for k in KEEP_INTERACTION_FIELDS if k in (it.data or {})}
        it.summary, it.disposition, it.agent = None, None, None
        session.add(it)
        n += 1
    counts["interactions_anonymized"] = n

    # Webhook payloads are raw vendor bodies: drop any that name the person.
    values = [v for _, v in idents]
    gone = 0
    if values:
        # Searched by the database (a scan of the bodies, not a load of every event into Python).
        body = sa.cast(WebhookEvent.payload, sa.Text)
        needles = {n for v in values for n in (v, v.lstrip("+")) if n}
        match = or_(*[body.contains(n, autoescape=True) for n in sorted(needles)])
        for ev in session.exec(select(WebhookEvent).where(match)):
            session.delete(ev)
            gone += 1
    counts["webhook_events"] = gone

    g = session.get(GoldenRecord, golden_id)
    if g is not None:
        g.status, g.profile, g.lineage, g.updated_at = "erased", {}, {}, utcnow()
        session.add(g)
    session.add(ChangeEvent(golden_id=golden_id, kind="erased", detail={"tombstones": len(idents)}))
    return counts


def record_system(entry: AuditEntry, system: str, status: str, detail: Any = None) -> None:
    systems = dict(entry.detail.get("systems", {}))
    systems[system] = {"status": status, **({"detail": detail} if detail else {})}
    entry.detail = {**entry.detail, "systems": systems}
