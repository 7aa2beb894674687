"""Ingest: store vendor pages durably, map them, and hand new facts to identity resolution.

This is the part of the pipeline between a connector's :class:`~omnisync.records.Page` and the
resolver. It is plain Python over a SQLAlchemy session (flows wrap it in tasks), and it is where
four invariants of DESIGN.md are enforced:

1. *Nothing is lost*: :func:`store_page` writes the page's rows and advances the stream's
   checkpoint in the same transaction, so a crash either keeps both or neither.
2. *Re-reads are harmless*: records are deduplicated by ``(system, stream, external_id)`` and
   ``modified_at``; an older version arriving late never overwrites a newer one.
4. *Echo suppression*: an inbound change whose changed fields all equal what omnisync last wrote to
   that record (the outbound ledger) is our own echo, not a new fact.
7. *Bad input is never dropped*: a record that cannot be mapped is dead-lettered with a masked
   reason naming the record and field, and its sealed payload for replay. Counts reconcile:
   ``read = stored + unchanged + echoes + dead_lettered + suppressed``.

Erased people are not re-imported: identifiers are checked against tombstones before anything
is stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import tuple_
from sqlmodel import Session, select

from identity.store import (
    Checkpoint,
    ConsentEventRow,
    DeadLetter,
    InteractionRow,
    OutboundLedger,
    SourceRow,
    Tombstone,
    lock_identity_graph,
)
from mappings.engine import Mapping, MappingConfigError, MappingError, flatten_profile, mappings_for
from omnisync.model import ConsentEvent, CustomerProfile, Interaction
from omnisync.privacy import keyed_hash, mask_text
from omnisync.records import Cursor, Page, SourceRecord, as_utc, fingerprint, utcnow
from omnisync.sealing import seal
from omnisync.settings import get_settings

CHUNK = 500  # rows per IN (...) lookup: well under every backend's bound-parameter limit


@dataclass
class Counts:
    """What happened to the records of one run, per system and stream."""

    by_stream: dict[tuple[str, str], Counter] = field(default_factory=dict)

    def bump(self, system: str, stream: str, key: str, n: int = 1) -> None:
        if n:
            self.by_stream.setdefault((system, stream), Counter())[key] += n

    def merge(self, other: "Counts") -> "Counts":
        for k, c in other.by_stream.items():
            self.by_stream.setdefault(k, Counter()).update(c)
        return self

    def total(self, key: str) -> int:
        return sum(c[key] for c in self.by_stream.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {f"{s}/{t}": dict(c) for (s, t), c in sorted(self.by_stream.items())}

    def reconciles(self) -> bool:
        """read == stored + unchanged + echoes + dead_lettered + suppressed, for every stream."""
        for c in self.by_stream.values():
            accounted = c["stored"] + c["unchanged"] + c["echoes"] + c["dead_lettered"] + c["suppressed"]
            if c["read"] != accounted:
                return False
        return True


# --- checkpoints ---------------------------------------------------------------------------------

def load_cursor(session: Session, system: str, stream: str, partition: str = "") -> Cursor | None:
    row = session.get(Checkpoint, (system, stream, partition))
    return Cursor.model_validate(row.cursor) if row and row.cursor else None


def save_cursor(session: Session, system: str, stream: str, cursor: Cursor, *, records: int,
                partition: str = "", run_id: str | None = None) -> None:
    row = session.get(Checkpoint, (system, stream, partition))
    if row is None:
        row = Checkpoint(system=system, stream=stream, partition=partition)
    row.cursor = cursor.model_dump(mode="json")
    row.batches += 1
    row.records += records
    row.run_id = run_id
    row.updated_at = utcnow()
    session.add(row)


# --- dead letters --------------------------------------------------------------------------------

def dead_letter(session: Session, *, system: str, stream: str, external_id: str | None, stage: str,
                reason: str, payload: Any = None, run_id: str | None = None) -> None:
    """Record a failure: the reason is masked, the payload sealed (replayable, not readable)."""
    session.add(DeadLetter(system=system, stream=stream, external_id=external_id, stage=stage,
                           reason=mask_text(reason), payload=seal(payload) if payload is not None else {},
                           run_id=run_id))


# --- the page pipeline ---------------------------------------------------------------------------

def tombstone_hash(kind: str, value: str) -> str:
    """The keyed hash an erasure leaves for a normalized identifier (``kind`` email or phone)."""
    return keyed_hash(f"{kind}:{value}", get_settings().tombstone_key.get_secret_value())


def _tombstoned(session: Session, hashes: Iterable[str]) -> set[str]:
    """The ``hashes`` that an erasure left a tombstone for (one query per CHUNK of them)."""
    todo = sorted(set(hashes))
    found: set[str] = set()
    for i in range(0, len(todo), CHUNK):
        found.update(session.exec(select(Tombstone.key_hash).where(Tombstone.key_hash.in_(todo[i:i + CHUNK]))))
    return found


def _identifiers(mapped: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    p = mapped.get("profile")
    if p:
        out += [("email", e) for e in p.get("emails", [])] + [("phone", ph) for ph in p.get("phones", [])]
    for k in ("interaction", "consent"):
        obj = mapped.get(k)
        if obj:
            if obj.get("customer_email"):
                out.append(("email", obj["customer_email"]))
            if obj.get("customer_phone"):
                out.append(("phone", obj["customer_phone"]))
    return out


def _map(mappings: tuple[Mapping, ...], record: SourceRecord) -> dict[str, Any]:
    """All canonical objects of one record, as JSON-able dicts keyed by kind."""
    out: dict[str, Any] = {}
    for m in mappings:
        obj = m.inbound(record)
        if obj is not None:
            out[m.kind] = obj.model_dump(mode="json")
    return out


def _echo(profile: dict[str, Any], ledger: OutboundLedger | None) -> bool:
    """Our own write coming back: the record now shows exactly what the planner expected after it."""
    from identity.push import canonical_fingerprint

    return bool(ledger and ledger.inbound_fingerprint) and canonical_fingerprint(profile) == ledger.inbound_fingerprint


def _flat(profile: dict[str, Any] | None) -> dict[str, Any]:
    if not profile:
        return {}
    return {k: v for k, v in flatten_profile(profile).items()
            if v not in (None, [], {}) and not k.startswith("external_ids.")}


def _existing(session: Session, system: str, stream: str, ids: list[str]) -> dict[str, SourceRow]:
    found: dict[str, SourceRow] = {}
    for i in range(0, len(ids), CHUNK):
        part = ids[i:i + CHUNK]
        # Row locks (PostgreSQL; SQLite has one writer anyway) taken in key order: a concurrent
        # writer of the same records waits and then compares against the committed version, so a
        # newer version is never overwritten by an older one (no lost updates, no deadlock cycles).
        rows = session.exec(select(SourceRow).where(SourceRow.system == system, SourceRow.stream == stream,
                                                    SourceRow.external_id.in_(part))
                            .order_by(SourceRow.external_id).with_for_update())
        found.update({r.external_id: r for r in rows})
    return found


def _ledger(session: Session, system: str, stream: str, ids: list[str]) -> dict[str, OutboundLedger]:
    found: dict[str, OutboundLedger] = {}
    for i in range(0, len(ids), CHUNK):
        part = ids[i:i + CHUNK]
        rows = session.exec(select(OutboundLedger).where(OutboundLedger.target_system == system,
                                                         OutboundLedger.target_stream == stream,
                                                         OutboundLedger.external_id.in_(part)))
        for r in rows:  # several ledger keys may point at one record (merges): the latest write counts
            if r.external_id not in found or r.written_at > found[r.external_id].written_at:
                found[r.external_id] = r
    return found


@dataclass
class _Known:
    """Interaction and consent rows of one batch, looked up once per page instead of once per record.

    Inside the batch nothing is flushed until the end (no autoflush), so these maps are also how a
    second record of the same interaction or consent event finds the row the first one added.
    """

    interactions: dict[tuple[str, str], InteractionRow] = field(default_factory=dict)
    consent: set[tuple[str, str]] = field(default_factory=set)
    looked_up: set[tuple[str, str, str]] = field(default_factory=set)  # (table, system, external_id)

    def load(self, session: Session, interaction_keys: Iterable[tuple[str, str]],
             consent_keys: Iterable[tuple[str, str]]) -> None:
        todo = sorted({k for k in interaction_keys if ("i", *k) not in self.looked_up})
        for i in range(0, len(todo), CHUNK):
            part = todo[i:i + CHUNK]
            # Locked in key order, like the source rows: concurrent writers of one interaction queue up.
            for row in session.exec(select(InteractionRow).where(tuple_(InteractionRow.system,
                                                                        InteractionRow.external_id).in_(part))
                                    .order_by(InteractionRow.system, InteractionRow.external_id).with_for_update()):
                self.interactions[(row.system, row.external_id)] = row
        self.looked_up.update(("i", *k) for k in todo)
        todo = sorted({k for k in consent_keys if ("c", *k) not in self.looked_up})
        for i in range(0, len(todo), CHUNK):
            part = todo[i:i + CHUNK]
            self.consent.update(session.exec(select(ConsentEventRow.system, ConsentEventRow.external_id).where(
                tuple_(ConsentEventRow.system, ConsentEventRow.external_id).in_(part))))
        self.looked_up.update(("c", *k) for k in todo)


@dataclass
class _Mapped:
    """A record that passed the version check and mapped: what the second pass needs of it."""

    record: SourceRecord
    row: SourceRow | None
    fp: str
    modified: Any
    mapped: dict[str, Any]
    hashes: list[str]


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return str(obj.get("system")), str(obj.get("external_id"))


def ingest_records(session: Session, records: list[SourceRecord], *, run_id: str | None = None) -> Counts:
    """Store, map and classify a batch of source records (no commit; the caller owns the transaction).

    Per (system, stream) the store is asked a fixed number of questions whatever the batch size:
    existing source rows, ledger entries, tombstones of every identifier, interaction rows and
    consent events, each one ``IN (...)`` query per CHUNK; then everything is flushed once.
    """
    counts = Counts()
    latest: dict[tuple[str, str, str], SourceRecord] = {}
    for r in records:
        counts.bump(r.system, r.stream, "read")
        prev = latest.get(r.key)
        if prev is None or (as_utc(r.modified_at), r.deleted) >= (as_utc(prev.modified_at), prev.deleted):
            if prev is not None:
                counts.bump(r.system, r.stream, "unchanged")  # the same record twice in one batch
            latest[r.key] = r
        else:
            counts.bump(r.system, r.stream, "unchanged")

    by_stream: dict[tuple[str, str], list[SourceRecord]] = {}
    for r in latest.values():
        by_stream.setdefault((r.system, r.stream), []).append(r)

    session.flush()  # what the caller added before is visible to the lookups below
    known = _Known()
    with session.no_autoflush:  # one flush at the end, not one before every lookup
        for (system, stream), recs in by_stream.items():
            try:
                mappings = mappings_for(system, stream)
            except MappingConfigError as e:
                for r in recs:
                    dead_letter(session, system=system, stream=stream, external_id=r.external_id, stage="map",
                                reason=str(e), payload={"record": r.model_dump(mode="json")}, run_id=run_id)
                    counts.bump(system, stream, "dead_lettered")
                continue
            ids = sorted(r.external_id for r in recs)
            existing = _existing(session, system, stream, ids)
            ledger = _ledger(session, system, stream, ids)
            todo = [m for r in recs
                    if (m := _check_and_map(session, r, mappings, existing.get(r.external_id), counts, run_id))]
            blocked = _tombstoned(session, (h for m in todo for h in m.hashes))
            live = []
            for m in todo:
                if blocked.intersection(m.hashes):
                    counts.bump(system, stream, "suppressed")
                else:
                    live.append(m)
            known.load(session,
                       [_key(m.mapped["interaction"]) for m in live
                        if "interaction" in m.mapped and m.record.external_id not in ledger],
                       [_key(m.mapped["consent"]) for m in live if "consent" in m.mapped])
            for m in live:
                _store_one(session, m, ledger.get(m.record.external_id), counts, known)
    session.flush()
    return counts


def _check_and_map(session: Session, r: SourceRecord, mappings: tuple[Mapping, ...], row: SourceRow | None,
                   counts: Counts, run_id: str | None) -> _Mapped | None:
    """First pass over one record: version check, deletes, mapping. Returns what is left to store."""
    fp = fingerprint(r.payload)
    modified = as_utc(r.modified_at)
    if row is not None:
        stored_at = as_utc(row.modified_at)
        if stored_at > modified or (stored_at == modified and row.fingerprint == fp and row.deleted == r.deleted):
            counts.bump(r.system, r.stream, "unchanged")  # an overlap re-read or a late, older version
            return None

    if r.deleted or r.merged_into:
        if row is None:
            # Never seen alive: remember the tombstone so a late, older "alive" version is ignored.
            row = SourceRow(system=r.system, stream=r.stream, external_id=r.external_id, modified_at=modified,
                            fingerprint=fp, payload={}, canonical={}, kind=mappings[0].kind, pending=False)
        row.deleted, row.merged_into, row.modified_at, row.fingerprint = True, r.merged_into, modified, fp
        row.pending = row.golden_id is not None
        session.add(row)
        counts.bump(r.system, r.stream, "stored")
        counts.bump(r.system, r.stream, "deleted" if not r.merged_into else "merged_away")
        return None

    try:
        mapped = _map(mappings, r)
    except MappingError as e:
        dead_letter(session, system=r.system, stream=r.stream, external_id=r.external_id, stage="map",
                    reason=str(e), payload={"record": r.model_dump(mode="json")}, run_id=run_id)
        counts.bump(r.system, r.stream, "dead_lettered")
        return None
    if not mapped:
        counts.bump(r.system, r.stream, "unchanged")  # e.g. an SMS event that carries no consent change
        return None
    hashes = [tombstone_hash(kind, v) for kind, v in _identifiers(mapped) if v]
    return _Mapped(r, row, fp, modified, mapped, hashes)


def _store_one(session: Session, m: _Mapped, ledger: OutboundLedger | None, counts: Counts, known: _Known) -> None:
    """Second pass over one record (not erased): echo, unmapped-only change, or a new fact."""
    r, row, fp, modified, mapped = m.record, m.row, m.fp, m.modified, m.mapped
    if "interaction" in mapped and ledger is not None:
        # An activity omnisync itself wrote (the copy of another system's interaction) read back:
        # the original is on the timeline already, so the copy is our echo, not a new fact.
        if row is None:
            row = SourceRow(system=r.system, stream=r.stream, external_id=r.external_id, modified_at=modified,
                            fingerprint=fp, payload=r.payload, canonical=mapped, kind="interaction")
        row.payload, row.fingerprint, row.modified_at, row.canonical = r.payload, fp, modified, mapped
        row.kind, row.deleted, row.echo, row.pending = "interaction", False, True, False
        session.add(row)
        counts.bump(r.system, r.stream, "echoes")
        return

    kind = next(iter(mapped)) if "profile" not in mapped else "profile"
    if "interaction" in mapped:
        kind = "interaction"
    if row is not None and kind == "profile":
        flat_old, flat_new = _flat(row.canonical.get("profile")), _flat(mapped["profile"])
        changed = {k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k) != flat_new.get(k)}
        if not changed and not row.deleted:
            row.payload, row.fingerprint, row.modified_at = r.payload, fp, modified
            session.add(row)
            counts.bump(r.system, r.stream, "unchanged")  # a change to fields omnisync does not map
            return
        if _echo(mapped["profile"], ledger) and not row.deleted:
            row.payload, row.fingerprint, row.modified_at, row.canonical = r.payload, fp, modified, mapped
            row.echo = True
            session.add(row)
            counts.bump(r.system, r.stream, "echoes")
            return

    if row is None:
        row = SourceRow(system=r.system, stream=r.stream, external_id=r.external_id, modified_at=modified,
                        fingerprint=fp, payload=r.payload, canonical=mapped, kind=kind)
    row.payload, row.fingerprint, row.modified_at, row.canonical = r.payload, fp, modified, mapped
    row.kind, row.deleted, row.merged_into, row.echo, row.pending = kind, False, None, False, True
    session.add(row)
    counts.bump(r.system, r.stream, "stored")
    if "interaction" in mapped:
        _upsert_interaction(session, mapped["interaction"], fp, known)
    if "consent" in mapped:
        _insert_consent(session, mapped["consent"], known)


def _upsert_interaction(session: Session, data: dict[str, Any], fp: str, known: _Known) -> None:
    it = Interaction.model_validate(data)
    row = known.interactions.get((it.system, it.external_id))
    if row is None:
        if ("i", it.system, it.external_id) not in known.looked_up:  # not one of the page's keys
            known.load(session, [(it.system, it.external_id)], [])
            row = known.interactions.get((it.system, it.external_id))
    if row is None:
        row = InteractionRow(system=it.system, external_id=it.external_id, channel=it.channel.value,
                             direction=it.direction.value, started_at=it.started_at, fingerprint=fp)
        known.interactions[(it.system, it.external_id)] = row
    row.channel, row.direction, row.started_at, row.ended_at = it.channel.value, it.direction.value, it.started_at, it.ended_at
    row.queue, row.agent, row.disposition, row.summary = it.queue, it.agent, it.disposition, it.summary
    row.fingerprint, row.data = fp, data
    session.add(row)


def _insert_consent(session: Session, data: dict[str, Any], known: _Known) -> None:
    ev = ConsentEvent.model_validate(data)
    key = (ev.system, ev.external_id)
    if ("c", *key) not in known.looked_up:
        known.load(session, [], [key])
    if key not in known.consent:
        known.consent.add(key)
        session.add(ConsentEventRow(system=ev.system, external_id=ev.external_id, channel=ev.channel.value,
                                    purpose=ev.purpose.value, status=ev.status.value, occurred_at=ev.occurred_at,
                                    data=data))


def store_page(session: Session, page: Page, *, system: str, stream: str, partition: str = "",
               run_id: str | None = None) -> Counts:
    """Ingest one page and advance the stream's checkpoint in the same transaction (invariant 1)."""
    counts = ingest_records(session, page.records, run_id=run_id)
    save_cursor(session, system, stream, page.cursor, records=len(page.records), partition=partition, run_id=run_id)
    return counts


# --- resolution of what ingest left pending ------------------------------------------------------

def resolve_pending(session: Session, *, run_id: str | None = None, batch: int = 2000) -> dict[str, int]:
    """Resolve one batch of pending source rows: profiles first, then interactions, then consent.

    Returns the resolver's counts plus ``remaining`` (0 when nothing is pending). Callers loop,
    committing after each batch, so a crash loses at most one batch of (idempotent) work.
    """
    from identity import resolve as resolver

    lock_identity_graph(session)  # before reading what is pending: a waiting resolver sees it resolved
    totals: Counter = Counter()
    for kind in ("profile", "interaction", "consent"):
        rows = list(session.exec(select(SourceRow).where(SourceRow.pending.is_(True), SourceRow.kind == kind)
                                 .order_by(SourceRow.id).limit(batch)))
        if not rows:
            continue
        gone = [r for r in rows if r.deleted]
        live = [r for r in rows if not r.deleted]
        if kind == "profile":
            if gone:
                totals["detached"] += resolver.detach_sources(session, gone)
            pairs = [(r, CustomerProfile.model_validate(r.canonical["profile"])) for r in live]
            if pairs:
                totals.update(resolver.resolve_profiles(session, pairs, run_id=run_id))
        elif kind == "interaction":
            keys = [(r.system, r.canonical["interaction"]["external_id"]) for r in live]
            its = _rows_by_key(session, InteractionRow, keys)
            totals["interactions_linked"] += resolver.link_interactions(session, its)
        if kind in ("interaction", "consent"):
            keys = [(r.system, r.canonical["consent"]["external_id"]) for r in live if "consent" in r.canonical]
            if keys:
                evs = _rows_by_key(session, ConsentEventRow, keys)
                totals["consent_applied"] += resolver.apply_consent(session, evs)
        for r in rows:
            r.pending = False
            r.resolved_at = utcnow()
            session.add(r)
        session.flush()
        totals["remaining"] = 1
        return dict(totals)
    # Interactions and consent that arrived before their customer's profile get another chance.
    totals.update(resolver.relink_orphans(session))
    totals["remaining"] = 0
    return dict(totals)


def _rows_by_key(session: Session, model, keys: list[tuple[str, str]]) -> list:
    out = []
    for i in range(0, len(keys), CHUNK):
        part = keys[i:i + CHUNK]
        out += list(session.exec(select(model).where(tuple_(model.system, model.external_id).in_(part))))
    return out
