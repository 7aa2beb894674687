"""Real-time identity resolution: each new or changed source record joins, founds or merges golden records.

The resolver is called by :func:`identity.ingest.resolve_pending` with batches of source rows that
ingest marked pending. For a profile it works in four steps:

1. **Keys.** Every identifier the record carries becomes a key in the ``identity_key`` index:
   ``ext:<system>`` (its own vendor id, and any other system's id it carries), ``cdp`` (a CDP user
   id), ``email`` (lower-cased; Gmail dots and +tags folded) and ``phone`` (E.164).
2. **Evidence.** A key is evidence that two records are one person unless the rules
   (:mod:`identity.rules`) say otherwise: protected values (``test@test.com``, ``0000000000``, a
   switchboard) never count, a key carried by more records than its kind's limit stops counting,
   and *guarded* kinds (email, phone) count only when the names do not conflict -- a family's
   shared phone never glues a mother to her son.
3. **Cluster.** No evidence founds a new golden record. Evidence for one golden record joins it.
   Evidence for several merges them: the older golden id survives, the other becomes an alias
   (ids stay resolvable forever) and a :class:`~identity.store.MergeEvent` records the evidence.
   Two candidates whose names conflict are not merged; the record joins the best-evidenced one.
   A record whose identifiers no longer tie it to its golden record moves (an *unmerge* event).
4. **Survivorship.** Every touched golden record is recomputed from all its sources
   (:func:`identity.golden.refresh`), which appends the change-feed events.

Interactions and consent events follow their customer: they are linked by the customer's id in
their own system, then email, then phone, and only when exactly one golden record holds the key.
Anything that cannot be linked yet is retried by :func:`relink_orphans` after later profiles land.

The same rules answer :func:`resolve_one` (a read-only "who is this?" for screen pops), so the
index lookup an API does and the resolution a sync does can never disagree.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, update
from sqlmodel import Session, select

from identity.golden import refresh
from identity.rules import Rules, load_rules
from identity.store import (
    ChangeEvent,
    ConsentEventRow,
    GoldenAlias,
    GoldenRecord,
    IdentityKey,
    InteractionRow,
    MergeEvent,
    SourceRow,
)
from omnisync.model import CustomerProfile
from omnisync.privacy import mask_email, mask_phone
from omnisync.records import as_utc, utcnow

CHUNK = 500
KIND_ORDER = {"ext": 0, "cdp": 1, "email": 2, "phone": 3}


def new_golden_id() -> str:
    return f"g-{uuid.uuid4().hex[:20]}"


def profile_keys(system: str, external_id: str, profile: CustomerProfile | dict[str, Any],
                 rules: Rules | None = None) -> list[tuple[str, str]]:
    """Every identifier of one profile, in stored (searchable) form, strongest kinds first."""
    rules = rules or load_rules()
    p = profile if isinstance(profile, dict) else profile.model_dump(mode="json")
    raw: list[tuple[str, Any]] = [(f"ext:{system}", external_id)]
    raw += [(f"ext:{s}", v) for s, v in sorted((p.get("external_ids") or {}).items())]
    if p.get("cdp_user_id"):
        raw.append(("cdp", p["cdp_user_id"]))
    raw += [("email", e) for e in p.get("emails") or []]
    raw += [("phone", ph) for ph in p.get("phones") or []]
    out: list[tuple[str, str]] = []
    for kind, value in raw:
        v = rules.key_value(kind, value)
        if v and (kind, v) not in out:
            out.append((kind, v[:255]))
    return out


def masked_key(kind: str, value: str) -> str:
    base = kind.split(":", 1)[0]
    if base == "email":
        return f"email={mask_email(value)}"
    if base == "phone":
        return f"phone={mask_phone(value)}"
    return f"{kind}={value}"


@dataclass
class _Batch:
    """What one resolution batch knows: the key index slice it needs and merges made so far."""

    session: Session
    rules: Rules
    run_id: str | None
    holders: dict[tuple[str, str], dict[int, str]] = field(default_factory=lambda: defaultdict(dict))
    parent: dict[str, str] = field(default_factory=dict)
    names: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    created: dict[str, Any] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    counts: Counter = field(default_factory=Counter)

    def find(self, gid: str) -> str:
        while gid in self.parent:
            gid = self.parent[gid]
        return gid

    def load_keys(self, keys: Iterable[tuple[str, str]]) -> None:
        by_kind: dict[str, set[str]] = defaultdict(set)
        for kind, value in keys:
            by_kind[kind].add(value)
        for kind, values in by_kind.items():
            vals = sorted(values)
            for i in range(0, len(vals), CHUNK):
                for k in self.session.exec(select(IdentityKey).where(IdentityKey.kind == kind,
                                                                     IdentityKey.value.in_(vals[i:i + CHUNK]))):
                    self.holders[(k.kind, k.value)][k.source_id] = k.golden_id

    def golden_names(self, gid: str) -> tuple[str | None, str | None]:
        if gid not in self.names:
            g = self.session.get(GoldenRecord, gid)
            prof = (g.profile if g else None) or {}
            self.names[gid] = (prof.get("first_name"), prof.get("last_name"))
        return self.names[gid]

    def created_at(self, gid: str) -> Any:
        if gid not in self.created:
            g = self.session.get(GoldenRecord, gid)
            self.created[gid] = as_utc(g.created_at) if g else utcnow()  # SQLite hands back naive times
        return self.created[gid]


def _name_of(profile: dict[str, Any]) -> tuple[str | None, str | None]:
    return profile.get("first_name"), profile.get("last_name")


def _conflict(b: _Batch, a: tuple[str | None, str | None], c: tuple[str | None, str | None]) -> bool:
    return b.rules.names_conflict(a[0], a[1], c[0], c[1])


def _evidence(b: _Batch, source_id: int | None, keys: list[tuple[str, str]],
              name: tuple[str | None, str | None]) -> tuple[dict[str, list[tuple[str, str]]], int]:
    """Golden records this record's keys point at, with the keys that count; and how many were refused."""
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    refused = 0
    for kind, value in keys:
        if b.rules.match_key(kind, value) is None:
            continue  # protected: searchable, never evidence
        holders = {sid: g for sid, g in b.holders.get((kind, value), {}).items() if sid != source_id}
        if not holders:
            continue
        if b.rules.overused(kind, len(holders) + 1):
            refused += 1
            continue
        for gid in {b.find(g) for g in holders.values()}:
            if not b.rules.is_strong(kind) and _conflict(b, name, b.golden_names(gid)):
                refused += 1
                continue
            found[gid].append((kind, value))
    return found, refused


def _strength(b: _Batch, keys: list[tuple[str, str]]) -> tuple:
    strong = any(b.rules.is_strong(k) for k, _ in keys)
    return (0 if strong else 1, -len(keys))


def _merge(b: _Batch, a: str, c: str, keys: list[tuple[str, str]], record: str) -> str:
    """Merge golden records ``a`` and ``c``: the older id survives. Returns the survivor."""
    s = b.session
    survivor, absorbed = sorted((a, c), key=lambda g: (b.created_at(g), g))
    for model in (SourceRow, IdentityKey, InteractionRow, ConsentEventRow):
        s.exec(update(model).where(model.golden_id == absorbed).values(golden_id=survivor))
    s.exec(update(GoldenAlias).where(GoldenAlias.golden_id == absorbed).values(golden_id=survivor))
    g = s.get(GoldenRecord, absorbed)
    if g is not None:
        g.status, g.merged_into, g.updated_at = "merged", survivor, utcnow()
        s.add(g)
    s.add(GoldenAlias(alias_id=absorbed, golden_id=survivor))
    evidence = {"keys": [masked_key(k, v) for k, v in keys], "record": record,
                "reason": "shared identifiers (deterministic)"}
    s.add(MergeEvent(kind="merge", survivor_id=survivor, absorbed_id=absorbed, evidence=evidence, run_id=b.run_id))
    s.add(ChangeEvent(golden_id=survivor, kind="merged", detail={"absorbed": absorbed}))
    s.add(ChangeEvent(golden_id=absorbed, kind="merged", detail={"into": survivor}))
    for holders in b.holders.values():
        for sid, gid in holders.items():
            if gid == absorbed:
                holders[sid] = survivor
    b.parent[absorbed] = survivor
    b.touched.discard(absorbed)
    b.touched.add(survivor)
    b.names.pop(survivor, None)
    b.counts["merged"] += 1
    return survivor


def _other_members(session: Session, gid: str, source_id: int | None) -> int:
    return session.exec(select(func.count()).select_from(SourceRow).where(
        SourceRow.golden_id == gid, SourceRow.id != source_id, SourceRow.kind == "profile",
        SourceRow.deleted.is_(False))).one()


def _place(b: _Batch, row: SourceRow, profile: dict[str, Any], keys: list[tuple[str, str]]) -> str:
    name = _name_of(profile)
    found, refused = _evidence(b, row.id, keys, name)
    b.counts["refused_evidence"] += refused
    old = b.find(row.golden_id) if row.golden_id else None
    if old is not None and old not in found:
        g = b.session.get(GoldenRecord, old)
        if g is not None and g.status == "active" and _other_members(b.session, old, row.id) == 0:
            found[old] = []  # its own golden record: ids stay stable when nothing ties it elsewhere

    if not found:
        gid = new_golden_id()
        b.session.add(GoldenRecord(golden_id=gid))
        b.created[gid] = utcnow()
        b.names[gid] = name
        b.counts["new_golden"] += 1
        target = gid
    else:
        ranked = sorted(found.items(), key=lambda kv: _strength(b, kv[1]) + (b.created_at(kv[0]), kv[0]))
        target = ranked[0][0]
        record = f"{row.system}/{row.stream}/{row.external_id}"
        for gid, ks in ranked[1:]:
            gid, target_now = b.find(gid), b.find(target)
            if gid == target_now:
                continue
            strong = any(b.rules.is_strong(k) for k, _ in ks) and any(
                b.rules.is_strong(k) for k, _ in found[ranked[0][0]])
            if strong or not _conflict(b, b.golden_names(target_now), b.golden_names(gid)):
                target = _merge(b, target_now, gid, ks + found[ranked[0][0]], record)
            else:
                b.counts["merge_refused"] += 1
        target = b.find(target)
        b.counts["joined"] += 1

    if old is not None and old != target:
        b.session.add(MergeEvent(kind="unmerge", survivor_id=old, absorbed_id=target, run_id=b.run_id,
                                 evidence={"record": f"{row.system}/{row.stream}/{row.external_id}",
                                           "reason": "its identifiers no longer tie it to this golden record"}))
        b.session.add(ChangeEvent(golden_id=old, kind="unmerged", detail={"moved_to": target}))
        b.touched.add(old)
        b.counts["moved"] += 1
    row.golden_id = target
    if target not in b.names or b.names[target] == (None, None):
        b.names[target] = name
    b.touched.add(target)
    return target


def resolve_profiles(session: Session, pairs: list[tuple[SourceRow, CustomerProfile]], *,
                     run_id: str | None = None) -> dict[str, int]:
    """Place each (source row, canonical profile) in a golden record; refresh what changed."""
    rules = load_rules()
    b = _Batch(session=session, rules=rules, run_id=run_id)
    prepared = []
    for row, profile in pairs:
        p = profile.model_dump(mode="json")
        prepared.append((row, p, profile_keys(row.system, row.external_id, p, rules)))
    b.load_keys(k for _, _, keys in prepared for k in keys)
    ids = [row.id for row, _, _ in prepared if row.id is not None]
    for i in range(0, len(ids), CHUNK):  # the rows' previous keys are replaced by what they carry now
        session.exec(delete(IdentityKey).where(IdentityKey.source_id.in_(ids[i:i + CHUNK])))
    gone = set(ids)
    for holders in b.holders.values():
        for sid in [s for s in holders if s in gone]:
            del holders[sid]

    for row, p, keys in prepared:
        if row.id is None:
            session.add(row)
            session.flush()
        target = _place(b, row, p, keys)
        session.add(row)
        for kind, value in keys:
            session.add(IdentityKey(kind=kind, value=value, source_id=row.id, golden_id=target))
            b.holders[(kind, value)][row.id] = target
    session.flush()
    b.counts.update(refresh(session, {b.find(g) for g in b.touched}, run_id=run_id))
    return dict(b.counts)


def detach_sources(session: Session, rows: list[SourceRow]) -> int:
    """Deleted or merged-away vendor records stop contributing; their golden records are recomputed."""
    touched = {r.golden_id for r in rows if r.golden_id}
    ids = [r.id for r in rows if r.id is not None]
    for i in range(0, len(ids), CHUNK):
        session.exec(delete(IdentityKey).where(IdentityKey.source_id.in_(ids[i:i + CHUNK])))
    session.flush()
    refresh(session, touched)
    return len(rows)


# --- interactions and consent follow their customer ----------------------------------------------

def _subject_keys(system: str, data: dict[str, Any], rules: Rules) -> list[tuple[str, str]]:
    raw = [(f"ext:{system}", data.get("customer_external_id")), ("email", data.get("customer_email")),
           ("phone", data.get("customer_phone"))]
    out = []
    for kind, value in raw:
        v = rules.match_key(kind, value)
        if v:
            out.append((kind, v[:255]))
    return out


def _link(session: Session, items: list[tuple[Any, str, dict[str, Any]]]) -> dict[int, str]:
    """For (row, system, canonical data) items, the golden id each belongs to (unambiguous keys only)."""
    rules = load_rules()
    b = _Batch(session=session, rules=rules, run_id=None)
    wanted = [(row, _subject_keys(system, data, rules)) for row, system, data in items]
    b.load_keys(k for _, keys in wanted for k in keys)
    out: dict[int, str] = {}
    for row, keys in wanted:
        for kind, value in keys:
            holders = b.holders.get((kind, value), {})
            if not holders or rules.overused(kind, len(holders)):
                continue
            goldens = set(holders.values())
            if len(goldens) == 1:  # a phone two people share links to neither
                out[id(row)] = goldens.pop()
                break
    return out


def link_interactions(session: Session, rows: list[InteractionRow]) -> int:
    """Attach interactions to their customer's golden record; a timeline change is a change event."""
    found = _link(session, [(r, r.system, r.data or {}) for r in rows])
    per_golden: Counter = Counter()
    for r in rows:
        gid = found.get(id(r))
        if gid and gid != r.golden_id:
            r.golden_id = gid
            session.add(r)
            per_golden[gid] += 1
    for gid, n in sorted(per_golden.items()):
        session.add(ChangeEvent(golden_id=gid, kind="timeline", detail={"interactions": n}))
    session.flush()
    return sum(per_golden.values())


def apply_consent(session: Session, rows: list[ConsentEventRow]) -> int:
    """Attach consent events to their customer and recompute that customer's consent."""
    found = _link(session, [(r, r.system, r.data or {}) for r in rows])
    touched = set()
    for r in rows:
        gid = found.get(id(r))
        if gid and gid != r.golden_id:
            r.golden_id = gid
            session.add(r)
            touched.add(gid)
    session.flush()
    refresh(session, touched)
    return sum(1 for r in rows if found.get(id(r)))


def relink_orphans(session: Session, *, limit: int = 5000) -> dict[str, int]:
    """Retry interactions and consent events that arrived before their customer's profile."""
    its = list(session.exec(select(InteractionRow).where(InteractionRow.golden_id.is_(None))
                            .order_by(InteractionRow.id).limit(limit)))
    evs = list(session.exec(select(ConsentEventRow).where(ConsentEventRow.golden_id.is_(None))
                            .order_by(ConsentEventRow.id).limit(limit)))
    return {"interactions_linked": link_interactions(session, its) if its else 0,
            "consent_applied": apply_consent(session, evs) if evs else 0}


# --- read-only lookups ---------------------------------------------------------------------------

def resolve_one(session: Session, system: str, external_id: str,
                profile: CustomerProfile | dict[str, Any]) -> tuple[str | None, list[str]]:
    """Which golden record this profile would join now, and the evidence (masked); writes nothing."""
    rules = load_rules()
    b = _Batch(session=session, rules=rules, run_id=None)
    p = profile if isinstance(profile, dict) else profile.model_dump(mode="json")
    keys = profile_keys(system, external_id, p, rules)
    b.load_keys(keys)
    found, _ = _evidence(b, None, keys, _name_of(p))
    if not found:
        return None, []
    gid, ks = sorted(found.items(), key=lambda kv: _strength(b, kv[1]) + (b.created_at(kv[0]), kv[0]))[0]
    return gid, [masked_key(k, v) for k, v in ks]


def lookup(session: Session, kind: str, value: str) -> list[str]:
    """Golden ids holding an identifier (``email``, ``phone``, ``cdp`` or ``ext:<system>``)."""
    rules = load_rules()
    v = rules.key_value(kind, value)
    if v is None:
        return []
    return sorted(set(session.exec(select(IdentityKey.golden_id).where(IdentityKey.kind == kind,
                                                                       IdentityKey.value == v))))
