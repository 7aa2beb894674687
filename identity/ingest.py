"""Ingest: store vendor pages durably, map them, and hand new facts to identity resolution.

This is the part of the pipeline between a connector's :class:`~omnisync.records.Page` and the
resolver. It is plain Python over a SQLAlchemy session (flows wrap it in tasks), and it is where
four invariants of DESIGN.md are enforced:

1. *Nothing is lost*: :func:`store_page` writes the page's rows and advances the stream's
   checkpoint in the same transaction, so a crash either keeps both or neither.
2. *Re-reads are harmless*: records are deduplicated by ``(system, stream, external_id)`` and
   ``modified_at``; an older version arriving late never overwrites a newer one.
4. *Echo suppression*: an inbound version that differs from the version we last read only in
   values omnisync wrote to that record since (the outbound ledger's ``since``: every write planned
   against that version, composed, including writes whose answer was lost) is our own echo, not a
   new fact. What a record says of its own is kept apart from what we wrote into it (its *facts*),
   and only the facts vote in survivorship and count as evidence in matching. A record omnisync
   created is marked ``created_for`` (the golden id its creation's ledger entry names): a copy,
   placed by resolution, never weighed.
7. *Bad input is never dropped*: a record that cannot be mapped is dead-lettered with a masked
   reason naming the record and field, and its sealed payload for replay. Counts reconcile:
   ``read = stored + unchanged + echoes + dead_lettered + suppressed``.

Erased people are not re-imported: identifiers are checked against tombstones before anything
is stored.
"""

from __future__ import annotations

import copy
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import tuple_
from sqlalchemy.orm import defer
from sqlmodel import Session, select

from identity.golden import canonical_facts
from identity.store import (
    Checkpoint,
    ConsentEventRow,
    DeadLetter,
    InteractionRow,
    OutboundLedger,
    SourceRow,
    Tombstone,
    lock_identity_graph,
    update_by_ids,
)
from mappings.engine import Mapping, MappingConfigError, MappingError, dig, flatten_profile, mappings_for
from omnisync.model import ConsentEvent, CustomerProfile, Interaction
from omnisync.privacy import EMAIL_RE, keyed_hash, mask_text
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

ID_MAX = 128  # external ids are VARCHAR(128) in source_record, interaction, consent_event, dead_letter
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")  # NUL (PostgreSQL text) and lone surrogates (UTF-8)
_E164 = re.compile(r"\+\d{7,15}")


def storable(value: Any) -> bool:
    """Whether a string can be stored in, or looked up by, a text column on every backend."""
    return isinstance(value, str) and not _UNSTORABLE.search(value)


def letter_id(external_id: str | None) -> str | None:
    """The form a dead letter keeps a record's id in.

    Ordinary vendor ids are kept as they are (erasure and repeat letters find them by it). An id
    that is an email address or a phone number (SendGrid unsubscribes are keyed by the address)
    is masked, and an id the store cannot hold (longer than 128 characters, a NUL, a lone
    surrogate) is shortened; both carry a keyed hash of the whole id, so the form stays unique
    to its record and :func:`letter_id` of the same id finds it again (erasure does).
    """
    if external_id is None:
        return None
    text = str(external_id)
    personal = bool(EMAIL_RE.search(text)) or bool(_E164.fullmatch(text.strip()))
    if not personal and len(text) <= ID_MAX and storable(text):
        return text
    if personal:
        shown = mask_text(text.strip())
        hashed = text.strip().lower()  # the address as erasure normalizes it finds the letter
    else:
        shown = _UNSTORABLE.sub("?", text)
        hashed = text
    secret = get_settings().tombstone_key.get_secret_value()
    digest = keyed_hash(f"dead-letter-id:{hashed.encode('utf-8', 'surrogatepass').hex()}", secret)[:16]
    return f"{shown[:ID_MAX - len(digest) - 1]}~{digest}"


def _clean(text: str) -> str:
    """Text a text column takes: NUL spelled out, lone surrogates replaced."""
    return text.replace("\x00", "\\x00").encode("utf-8", "replace").decode("utf-8")


def letter_reason(reason: str) -> str:
    """The form a dead letter keeps its reason in: masked, and text every store takes."""
    return _clean(mask_text(reason))


def dead_letter(session: Session, *, system: str, stream: str, external_id: str | None, stage: str,
                reason: str, payload: Any = None, run_id: str | None = None) -> None:
    """Record a failure: the reason is masked, the payload sealed (replayable, not readable), the
    record's id kept in its :func:`letter_id` form (no address, nothing the store refuses)."""
    session.add(DeadLetter(system=system, stream=stream, external_id=letter_id(external_id), stage=stage,
                           reason=letter_reason(reason), payload=seal(payload) if payload is not None else {},
                           run_id=run_id))


def _non_finite(obj: Any) -> str | None:
    """The path of the first NaN or infinity in a JSON-like value (PostgreSQL's json refuses them)."""
    stack: list[tuple[Any, str]] = [(obj, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return path or "$"
        if isinstance(value, dict):
            stack += [(v, f"{path}.{k}" if path else str(k)) for k, v in reversed(list(value.items()))]
        elif isinstance(value, (list, tuple)):
            stack += [(v, f"{path}.{i}" if path else str(i)) for i, v in reversed(list(enumerate(value)))]
    return None


def _refused(r: SourceRecord) -> str | None:
    """Why the store cannot hold a record whatever its mapping says (None: it can)."""
    for what, value in (("external id", r.external_id), ("merged-into id", r.merged_into)):
        if value is None:
            continue
        if not storable(value):
            return f"its {what} holds a NUL or an unpaired surrogate, which no store column takes"
        if len(value) > ID_MAX:
            return f"its {what} is {len(value)} characters; the store keeps at most {ID_MAX}"
    where = _non_finite(r.payload)
    if where is not None:
        return f"payload field {where[:80]!r} is NaN or infinite, which JSON storage (PostgreSQL json) refuses"
    return None


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


# --- echoes and facts ----------------------------------------------------------------------------
#
# A profile row keeps two views of its vendor record. ``canonical["profile"]`` is what the record
# shows now (the push planner diffs against it). ``canonical["facts"]`` (only when it differs) is
# what the record says *of its own*: the profile minus the values omnisync wrote into it, with the
# time the vendor last said something new (``observed_at``). Survivorship reads the facts
# (:func:`identity.golden.row_facts`), so our own writes never vote for themselves and the golden
# record does not depend on when, or in how many pieces, they landed and were read back.

def _units(profile: dict[str, Any] | None) -> dict[str, Any]:
    """A canonical profile as comparable leaves (``first_name``, ``address.city``, ``consent.email.marketing``...)."""
    return {k: v for k, v in flatten_profile(profile or {}).items() if v not in (None, "", [], {})}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):  # emails/phones: a vendor may reorder them
        return sorted(map(str, a)) == sorted(map(str, b))
    return a == b


def _written_since(row: SourceRow, ledgers: list[OutboundLedger]) -> dict[str, Any]:
    """Vendor leaves omnisync wrote (or sent, answer unknown) to this record since its stored version
    was read: every ledger entry planned against that version, composed in the order written."""
    out: dict[str, Any] = {}
    for led in sorted(ledgers, key=lambda r: as_utc(r.written_at)):
        p = led.payload or {}
        if p.get("since") and p.get("since_fp") == row.fingerprint:
            out.update(p["since"])
    return out


def _expected(mapping: Mapping | None, r: SourceRecord, base: dict[str, Any], written: dict[str, Any]) -> dict | None:
    """The canonical profile the record shows once ``written`` (vendor leaves) is applied to ``base``."""
    from identity.push import deep_merge, unflatten

    if mapping is None:
        return None
    try:
        obj = mapping.inbound(r.model_copy(update={"payload": deep_merge(base, unflatten(written))}))
    except ValueError:
        return None
    return obj.model_dump(mode="json") if obj is not None else None


def _theirs(before: dict[str, Any], after: dict[str, Any], expected: dict[str, Any] | None) -> set[str]:
    """Leaves that changed from ``before`` to ``after`` and are not what we wrote (``expected``)."""
    old, new = _units(before), _units(after)
    exp = _units(expected) if expected is not None else None
    changed = {k for k in old.keys() | new.keys() if not _same(old.get(k), new.get(k))}
    return {k for k in changed if exp is None or not _same(new.get(k), exp.get(k))}


def _apply(facts: dict[str, Any], new: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    """``facts`` with the leaves ``keys`` taken from the profile ``new``."""
    out = copy.deepcopy(facts)
    for k in sorted(keys):
        field, _, sub = k.partition(".")
        if field == "address":
            addrs = list(out.get("addresses") or [])
            first = dict(addrs[0]) if addrs else {}
            first[sub] = ((new.get("addresses") or [{}])[0] or {}).get(sub)
            addrs[:1] = [first] if any(v not in (None, "") for v in first.values()) else []
            out["addresses"] = addrs
        elif field == "consent":
            out["consent"] = copy.deepcopy(new.get("consent") or [])
        elif field in ("attributes", "external_ids") and sub:
            d = dict(out.get(field) or {})
            v = (new.get(field) or {}).get(sub)
            if v is None:
                d.pop(sub, None)
            else:
                d[sub] = v
            out[field] = d
        else:
            out[k] = copy.deepcopy(new.get(k))
    return out


def _facts(row: SourceRow) -> tuple[dict[str, Any], str]:
    f = (row.canonical or {}).get("facts")
    if f:
        return f["profile"], f["observed_at"]
    return (row.canonical or {}).get("profile") or {}, as_utc(row.modified_at).isoformat()


def _with_facts(mapped: dict[str, Any], facts: dict[str, Any], observed_at: str, modified) -> dict[str, Any]:
    if facts == mapped["profile"] and observed_at == as_utc(modified).isoformat():
        return mapped
    return {**mapped, "facts": {"profile": facts, "observed_at": observed_at}}


def _echo_or_facts(m: "_Mapped", ledgers: list[OutboundLedger], mapping: Mapping | None) -> tuple[bool, dict[str, Any]]:
    """For a changed version of a profile row we hold: is it our echo, and the row's canonical to store.

    Our echo: the record differs from the version we last read only in values we wrote since
    (all of them: several writes compose; or some of them: a write cut short). Otherwise it is a
    new fact, and its facts are the last ones plus what *they* changed, observed now.
    """
    from identity.push import canonical_fingerprint

    row, new = m.row, m.mapped["profile"]
    facts, observed = _facts(row)
    written = _written_since(row, ledgers)
    expected = _expected(mapping, m.record, row.payload or {}, written) if written else None
    theirs = _theirs((row.canonical or {}).get("profile"), new, expected)
    legacy = [led for led in ledgers if "since" not in (led.payload or {}) and led.inbound_fingerprint]
    if (written and expected is not None and not theirs) or \
            any(canonical_fingerprint(new) == led.inbound_fingerprint for led in legacy):
        return True, _with_facts(m.mapped, facts, observed, m.modified)
    return False, _with_facts(m.mapped, _apply(facts, new, theirs), as_utc(m.modified).isoformat(), m.modified)


def _created_facts(m: "_Mapped", creation: OutboundLedger | None, mapping: Mapping | None) -> dict[str, Any]:
    """The canonical to store for a record read for the first time: a record we created holds, of
    its own, only what differs from what we sent (what the vendor added, what someone changed)."""
    if creation is None:
        return m.mapped
    new = m.mapped["profile"]
    expected = _expected(mapping, m.record, {}, (creation.payload or {}).get("since") or {})
    # What we sent cannot be told apart from the record (it does not map back): it is all ours.
    theirs = _theirs({}, new, expected) if expected is not None else set()
    out = _with_facts(m.mapped, _apply({}, new, theirs), as_utc(m.modified).isoformat(), m.modified)
    # A copy of the golden record it was made for: resolution places it there and never weighs it
    # as evidence (identity.golden.created_for), so what it holds of ours never ties people together.
    return {**out, "created_for": creation.key.removesuffix("|new")}


def _keep_marks(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """A later version of a record keeps what ingest noted on its first (it was made by omnisync)."""
    made = (old or {}).get("created_for")
    return {**new, "created_for": made} if made and "profile" in new else new


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


def _ledger(session: Session, system: str, stream: str, ids: list[str]) -> dict[str, list[OutboundLedger]]:
    """Ledger entries per record; several keys may point at one record (its creation, golden merges)."""
    found: dict[str, list[OutboundLedger]] = {}
    for i in range(0, len(ids), CHUNK):
        part = ids[i:i + CHUNK]
        rows = session.exec(select(OutboundLedger).where(OutboundLedger.target_system == system,
                                                         OutboundLedger.target_stream == stream,
                                                         OutboundLedger.external_id.in_(part)))
        for r in rows:
            found.setdefault(r.external_id, []).append(r)
    return found


def _link_path(mapping: Mapping | None) -> str | None:
    """Where a record carries the golden id omnisync wrote into it (its ``golden_id`` out field)."""
    for fm in mapping.outbound_fields() if mapping is not None else ():
        if fm.target == "golden_id":
            return fm.sources[0]
    return None


def _creations(session: Session, system: str, stream: str, todo: list["_Mapped"], ledgers: dict[str, list],
               mapping: Mapping | None) -> dict[str, OutboundLedger]:
    """For records read for the first time: the ledger entry of the creation that made each, if we did.

    Found by the record's id once the create was confirmed, else by the golden id the record
    carries (the create's answer was lost: a quota spent mid-batch, a crash).
    """
    out: dict[str, OutboundLedger] = {}
    by_key: dict[str, str] = {}
    link = _link_path(mapping)
    for m in todo:
        if m.row is not None or "profile" not in m.mapped:
            continue
        ext = m.record.external_id
        made = [led for led in ledgers.get(ext, []) if led.key.endswith("|new")]
        if made:
            out[ext] = made[0]
        elif link:
            gid = dig(m.record.payload, link)
            # Anyone can type into the link field: only a value that could be a key is looked up.
            if isinstance(gid, str) and gid and storable(gid) and len(gid) <= 40:
                by_key[f"{gid}|new"] = ext
    keys = sorted(by_key)
    for i in range(0, len(keys), CHUNK):
        for led in session.exec(select(OutboundLedger).where(OutboundLedger.target_system == system,
                                                             OutboundLedger.target_stream == stream,
                                                             OutboundLedger.key.in_(keys[i:i + CHUNK]))):
            if (led.payload or {}).get("since"):
                out[by_key[led.key]] = led
    return out


def _written_elsewhere(session: Session, system: str, stream: str, todo: list["_Mapped"]) -> set[str]:
    """Records read for the first time that omnisync itself created by writing another stream of the
    same system: a Segment profile behind our ``identify`` (its user id is a golden id). Found by
    the id the create was answered with, or by the ledger key of a create whose answer was lost."""
    from identity.push import policy

    push_stream = policy(system).get("profile_stream")
    ids = sorted({m.record.external_id for m in todo if m.row is None and "profile" in m.mapped})
    if not push_stream or push_stream == stream or not ids:
        return set()
    found: set[str] = set()
    for i in range(0, len(ids), CHUNK):
        part = ids[i:i + CHUNK]
        keys = [f"{e}|new" for e in part]
        for key, ext in session.exec(select(OutboundLedger.key, OutboundLedger.external_id).where(
                OutboundLedger.target_system == system, OutboundLedger.target_stream == push_stream,
                OutboundLedger.external_id.in_(part) | OutboundLedger.key.in_(keys))):
            if key.endswith("|new"):
                found.add(ext if ext in part else key.removesuffix("|new"))
    return found


@dataclass
class _Known:
    """Interaction and consent rows of one batch, looked up once per page instead of once per record.

    Inside the batch nothing is flushed until the end (no autoflush), so these maps are also how a
    second record of the same interaction or consent event finds the row the first one added.
    """

    interactions: dict[tuple[str, str], InteractionRow | dict[str, Any]] = field(default_factory=dict)
    consent: set[tuple[str, str]] = field(default_factory=set)
    looked_up: set[tuple[str, str, str]] = field(default_factory=set)  # (table, system, external_id)
    # Rows the batch creates, as column values: inserted in one statement per table at the end.
    # (Building an ORM object per row cost more than mapping the record; a first load is all new rows.)
    new_sources: list[dict[str, Any]] = field(default_factory=list)
    new_interactions: list[dict[str, Any]] = field(default_factory=list)
    new_consent: list[dict[str, Any]] = field(default_factory=list)

    def insert_new(self, session: Session) -> None:
        """Insert the batch's new rows (after the session's flush: one transaction, one order)."""
        now = utcnow()
        for model, rows in ((SourceRow, self.new_sources), (InteractionRow, self.new_interactions),
                            (ConsentEventRow, self.new_consent)):
            for i in range(0, len(rows), 5000):
                session.execute(model.__table__.insert(), [{**r, "ingested_at": now} for r in rows[i:i + 5000]])
            rows.clear()

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
        why = _refused(r)
        if why is not None:
            # Before any lookup: a value the store refuses would fail the whole batch's query.
            record = {**r.model_dump(mode="json"), "payload": r.payload}  # NaN kept as read: replay sees it
            dead_letter(session, system=r.system, stream=r.stream, external_id=r.external_id, stage="map",
                        reason=f"{r.system}/{r.stream}/{letter_id(r.external_id)}: <record>: {why}",
                        payload={"record": record}, run_id=run_id)
            counts.bump(r.system, r.stream, "dead_lettered")
            continue
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
            profile_mapping = next((m for m in mappings if m.kind == "profile"), None)
            todo = [m for r in recs
                    if (m := _check_and_map(session, r, mappings, existing.get(r.external_id), counts, run_id))]
            created = _creations(session, system, stream, todo, ledger, profile_mapping)
            ours = _written_elsewhere(session, system, stream, todo)
            if ours:
                # Our own write seen through a stream we do not push to: nothing in it is the
                # person's, and whether a lookup happens to see it must not change the store.
                counts.bump(system, stream, "echoes", sum(1 for m in todo if m.record.external_id in ours))
                todo = [m for m in todo if m.record.external_id not in ours]
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
                ext = m.record.external_id
                _store_one(session, m, ledger.get(ext, []), counts, known, profile_mapping, created.get(ext))
    session.flush()
    known.insert_new(session)
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


def _store_one(session: Session, m: _Mapped, ledgers: list[OutboundLedger], counts: Counts, known: _Known,
               mapping: Mapping | None = None, creation: OutboundLedger | None = None) -> None:
    """Second pass over one record (not erased): echo, unmapped-only change, or a new fact."""
    r, row, fp, modified, mapped = m.record, m.row, m.fp, m.modified, m.mapped
    if "interaction" in mapped and ledgers:
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
            # A change to fields omnisync does not map (our golden-id link, say) says nothing new:
            # the record's facts keep the time they were observed.
            facts, observed = _facts(row)
            current = {k: v for k, v in (row.canonical or {}).items() if k != "facts"}
            row.payload, row.fingerprint, row.modified_at = r.payload, fp, modified
            row.canonical = _with_facts(current, facts, observed, modified)
            session.add(row)
            counts.bump(r.system, r.stream, "unchanged")
            return
        if not row.deleted:
            echo, mapped = _echo_or_facts(m, ledgers, mapping)
            mapped = _keep_marks(row.canonical, mapped)
            if echo:
                row.payload, row.fingerprint, row.modified_at, row.canonical = r.payload, fp, modified, mapped
                row.echo = True
                session.add(row)
                counts.bump(r.system, r.stream, "echoes")
                return
    elif row is None and kind == "profile":
        mapped = _created_facts(m, creation, mapping)

    if row is None:
        known.new_sources.append({"system": r.system, "stream": r.stream, "external_id": r.external_id,
                                  "modified_at": modified, "deleted": False, "merged_into": None, "fingerprint": fp,
                                  "payload": r.payload, "canonical": mapped, "kind": kind, "golden_id": None,
                                  "echo": False, "resolved_at": None, "pending": True})
    else:
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
    values = {"channel": it.channel.value, "direction": it.direction.value, "started_at": it.started_at,
              "ended_at": it.ended_at, "queue": it.queue, "agent": it.agent, "disposition": it.disposition,
              "summary": it.summary, "fingerprint": fp, "data": data}
    if row is None:
        row = {"system": it.system, "external_id": it.external_id, "golden_id": None, **values}
        known.interactions[(it.system, it.external_id)] = row
        known.new_interactions.append(row)
    elif isinstance(row, dict):  # created earlier in this batch: not inserted yet
        row.update(values)
    else:
        for k, v in values.items():
            setattr(row, k, v)
        session.add(row)


def _insert_consent(session: Session, data: dict[str, Any], known: _Known) -> None:
    ev = ConsentEvent.model_validate(data)
    key = (ev.system, ev.external_id)
    if ("c", *key) not in known.looked_up:
        known.load(session, [], [key])
    if key not in known.consent:
        known.consent.add(key)
        known.new_consent.append({"system": ev.system, "external_id": ev.external_id, "golden_id": None,
                                  "channel": ev.channel.value, "purpose": ev.purpose.value, "status": ev.status.value,
                                  "occurred_at": ev.occurred_at, "data": data})


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
        rows = list(session.exec(pending_batch(kind, batch)))
        if not rows:
            continue
        gone = [r for r in rows if r.deleted]
        live = [r for r in rows if not r.deleted]
        if kind == "profile":
            if gone:
                totals["detached"] += resolver.detach_sources(session, gone)
            # Matching weighs what each record says of its own (its facts), like survivorship.
            pairs = [(r, CustomerProfile.model_validate(canonical_facts(r.canonical) or {})) for r in live]
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
        session.flush()
        # the batch's rows are not read again in this transaction
        update_by_ids(session, SourceRow, [r.id for r in rows], CHUNK, synchronize=False, pending=False,
                      resolved_at=utcnow())
        totals["remaining"] = 1
        return dict(totals)
    # Interactions and consent that arrived before their customer's profile get another chance.
    totals.update(resolver.relink_orphans(session))
    totals["remaining"] = 0
    return dict(totals)


def pending_batch(kind: str, batch: int):
    """The next ``batch`` pending source rows of ``kind``, in id order (served by the index on
    (pending, kind, id)). Resolution reads what ingest mapped (canonical), never the vendor payload:
    it is not loaded."""
    return (select(SourceRow).options(defer(SourceRow.payload))
            .where(SourceRow.pending.is_(True), SourceRow.kind == kind).order_by(SourceRow.id).limit(batch))


def _rows_by_key(session: Session, model, keys: list[tuple[str, str]]) -> list:
    out = []
    for i in range(0, len(keys), CHUNK):
        part = keys[i:i + CHUNK]
        out += list(session.exec(select(model).where(tuple_(model.system, model.external_id).in_(part))))
    return out
