"""Golden records: survivorship per field with lineage, and ``omnisync explain``.

A golden record's ``profile`` is recomputed from all of its live source records whenever one of
them changes (:func:`refresh`), so the result never depends on arrival order: the same sources
always give the same golden record, on the real-time path and after a batch re-resolution. What
a source contributes is what it says of its own (:func:`row_facts`): values omnisync pushed into
it are not evidence, so the golden record does not depend on the order of our own writes either.

Which value survives is declared per field in ``mappings/survivorship.yaml`` (source priority,
most recent, most complete, most frequent, "prefer X unless blank", union). Every field carries
its lineage -- system, record, observed time and the rule that chose it -- so an agent or an
auditor can ask why a value is what it is. Consent is the latest statement per channel and
purpose across profile checkboxes and consent events; at equal times an opt-out wins.

Each real change bumps the record's ``version`` and appends a ``ChangeEvent`` (``created`` or
``updated`` with the changed field names), which drives push-back and the API's change feed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.orm import defer
from sqlmodel import Session, select

from identity.store import (
    ConsentEventRow,
    GoldenAlias,
    GoldenRecord,
    IdentityKey,
    InteractionRow,
    MergeEvent,
    SourceRow,
    add_change_events,
)
from omnisync.model import CustomerProfile
from omnisync.records import as_utc, utcnow

SURVIVORSHIP_PATH = Path(__file__).resolve().parent.parent / "mappings" / "survivorship.yaml"
CHUNK = 500
_EPOCH = datetime(1970, 1, 1).astimezone()


@dataclass(frozen=True)
class FieldRule:
    rule: str
    order: tuple[str, ...] = ()
    system: str | None = None
    otherwise: str = "most_recent"


@dataclass(frozen=True)
class Survivorship:
    priority: tuple[str, ...]
    default: FieldRule
    fields: dict[str, FieldRule]

    def for_field(self, name: str) -> FieldRule:
        return self.fields.get(name, self.default)


RULES = ("source_priority", "most_recent", "most_complete", "most_frequent", "prefer", "union")


def _field_rule(raw: dict[str, Any], where: str) -> FieldRule:
    rule = raw.get("rule")
    if rule not in RULES:
        raise ValueError(f"{where}: unknown survivorship rule {rule!r}; use one of {', '.join(RULES)}")
    if rule == "prefer" and not raw.get("system"):
        raise ValueError(f"{where}: rule 'prefer' needs 'system' (the system whose value wins unless blank)")
    otherwise = raw.get("otherwise", "most_recent")
    if otherwise not in RULES or otherwise in ("prefer", "union"):
        raise ValueError(f"{where}: 'otherwise' must be one of source_priority, most_recent, most_complete, "
                         f"most_frequent")
    return FieldRule(rule=rule, order=tuple(raw.get("order") or ()), system=raw.get("system"), otherwise=otherwise)


@lru_cache(maxsize=4)
def load_survivorship(path: str = str(SURVIVORSHIP_PATH)) -> Survivorship:
    """Parse and check ``survivorship.yaml`` (unknown fields or rules fail loudly, naming the field)."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    known = set(CustomerProfile.model_fields)
    fields = {}
    for name, spec in (raw.get("fields") or {}).items():
        if name not in known:
            raise ValueError(f"survivorship.yaml: field {name!r} is not a canonical profile field")
        fields[name] = _field_rule(spec or {}, f"survivorship.yaml fields.{name}")
    return Survivorship(priority=tuple(raw.get("source_priority") or ()),
                        default=_field_rule(raw.get("default") or {"rule": "most_recent"}, "survivorship.yaml default"),
                        fields=fields)


# --- survivorship --------------------------------------------------------------------------------

@dataclass
class _Candidate:
    value: Any
    row: SourceRow
    observed: datetime


def row_facts(row: SourceRow) -> tuple[dict[str, Any], datetime]:
    """What a source record says of its own, and when it last said something new.

    That is its canonical profile, except for records omnisync has written to: ingest keeps
    their facts apart (``canonical["facts"]``: the profile minus the values we wrote, observed
    when the vendor last changed something itself). Our own writes coming back never vote, and
    never make a record look more recent, so survivorship gives the same golden record whenever
    and in however many pieces they landed.
    """
    canonical = row.canonical or {}
    facts = canonical.get("facts")
    if facts:
        return facts.get("profile") or {}, as_utc(datetime.fromisoformat(facts["observed_at"]))
    return canonical.get("profile") or {}, as_utc(row.modified_at) or _EPOCH


def canonical_facts(canonical: dict[str, Any] | None) -> dict[str, Any] | None:
    """The profile a stored record's matching and survivorship see: its facts (:func:`row_facts`),
    or None when it holds no profile."""
    canonical = canonical or {}
    facts = canonical.get("facts")
    if facts:
        return facts.get("profile") or {}
    return canonical.get("profile")


def created_for(canonical: dict[str, Any] | None) -> str | None:
    """The golden id a record omnisync created was made for (ingest notes it when it first reads the
    record back, from the creation's ledger entry), else None. Such a record is a copy of that
    golden record: it is placed there, never matched (:mod:`identity.resolve`)."""
    value = (canonical or {}).get("created_for")
    return value if isinstance(value, str) and value else None


def _blank(v: Any) -> bool:
    return v is None or v == "" or v == [] or v == {}


def _lineage(c: _Candidate, rule: str) -> dict[str, Any]:
    return {"system": c.row.system, "stream": c.row.stream, "record": c.row.external_id,
            "observed_at": c.observed.isoformat(), "rule": rule}


def _completeness(v: Any) -> int:
    if isinstance(v, dict):
        return sum(_completeness(x) for x in v.values())
    if isinstance(v, list):
        return sum(_completeness(x) for x in v)
    return 0 if _blank(v) else 1


def _rank(priority: tuple[str, ...]) -> Callable[[_Candidate], tuple]:
    def key(c: _Candidate) -> tuple:
        pos = priority.index(c.row.system) if c.row.system in priority else len(priority)
        return (pos, -c.observed.timestamp(), _identity(c.row))
    return key


def _recent(c: _Candidate) -> tuple:
    return (-c.observed.timestamp(), _identity(c.row))


def _identity(row: SourceRow) -> tuple[str, str, str]:
    # Ties go by the vendor's identity of the record, not the store's surrogate id: that one
    # follows the order records happened to be read in.
    return (row.system, row.stream, row.external_id)


def _pick(rule: str, cands: list[_Candidate], fr: FieldRule, sv: Survivorship) -> _Candidate:
    if rule == "source_priority":
        return min(cands, key=_rank(fr.order or sv.priority))
    if rule == "most_complete":
        return min(cands, key=lambda c: (-_completeness(c.value),) + _recent(c))
    if rule == "most_frequent":
        votes = Counter(repr(c.value) for c in cands)
        return min(cands, key=lambda c: (-votes[repr(c.value)],) + _recent(c))
    return min(cands, key=_recent)  # most_recent


def survive(rows: list[SourceRow], consent: Iterable[ConsentEventRow] = (),
            sv: Survivorship | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The golden profile and its lineage from live profile rows and consent events."""
    sv = sv or load_survivorship()
    facts = [(r, *row_facts(r)) for r in rows]
    profiles = [(r, p) for r, p, _ in facts]
    seen_at = {id(r): t for r, _, t in facts}
    out: dict[str, Any] = {}
    lineage: dict[str, Any] = {}
    for name in CustomerProfile.model_fields:
        if name in ("consent", "external_ids", "attributes"):
            continue
        cands = [_Candidate(p.get(name), r, t) for r, p, t in facts if not _blank(p.get(name))]
        if not cands:
            continue
        fr = sv.for_field(name)
        if fr.rule == "union":
            ordered = sorted(cands, key=_rank(fr.order or sv.priority))
            values, seen, sources = [], set(), []
            for c in ordered:
                for v in (c.value if isinstance(c.value, list) else [c.value]):
                    if repr(v) not in seen:
                        seen.add(repr(v))
                        values.append(v)
                        sources.append({"system": c.row.system, "record": c.row.external_id})
            out[name] = values
            lineage[name] = {**_lineage(ordered[0], "union"), "sources": sources}
            continue
        if fr.rule == "prefer":
            own = [c for c in cands if c.row.system == fr.system]
            chosen = _pick("most_recent", own, fr, sv) if own else _pick(fr.otherwise, cands, fr, sv)
            rule = f"prefer {fr.system}" if own else f"prefer {fr.system} (blank there): {fr.otherwise}"
        else:
            chosen, rule = _pick(fr.rule, cands, fr, sv), fr.rule
        out[name] = chosen.value
        lineage[name] = _lineage(chosen, rule)

    ext: dict[str, str] = {}
    attrs: dict[str, str] = {}
    for r, p in sorted(profiles, key=lambda rp: (seen_at[id(rp[0])], _identity(rp[0]))):
        ext.update(p.get("external_ids") or {})
        ext.setdefault(r.system, r.external_id)
        attrs.update(p.get("attributes") or {})
    out["external_ids"], out["attributes"] = ext, attrs

    latest: dict[tuple[str, str], tuple[tuple, dict[str, Any]]] = {}

    def offer(state: dict[str, Any]) -> None:
        k = (state["channel"], state["purpose"])
        # at equal times an opt-out wins: the safe reading of a tie
        rank = (as_utc(datetime.fromisoformat(state["observed_at"])), state["status"] == "opted_out")
        if k not in latest or rank > latest[k][0]:
            latest[k] = (rank, state)

    for r, p in profiles:
        for c in p.get("consent") or []:
            offer({**c, "source_system": c.get("source_system") or r.system,
                   "source_record": c.get("source_record") or r.external_id})
    for ev in consent:
        offer({"channel": ev.channel, "purpose": ev.purpose, "status": ev.status,
               "observed_at": as_utc(ev.occurred_at).isoformat(), "source_system": ev.system,
               "source_record": ev.external_id})
    out["consent"] = [s for _, (_, s) in sorted(latest.items())]
    if out["consent"]:
        lineage["consent"] = {"rule": "latest statement per channel and purpose; opt-out wins a tie"}
    profile = CustomerProfile.model_validate(out).model_dump(mode="json")
    return profile, lineage


def _in_chunks(session: Session, stmt_for: Callable[[list[str]], Any], ids: list[str]) -> list:
    out = []
    for i in range(0, len(ids), CHUNK):
        out += list(session.exec(stmt_for(ids[i:i + CHUNK])))
    return out


def refresh(session: Session, golden_ids: Iterable[str], *, run_id: str | None = None) -> dict[str, int]:
    """Recompute the given golden records from their sources; record a ChangeEvent for each real change."""
    ids = sorted(set(golden_ids))
    if not ids:
        return {}
    sv = load_survivorship()
    rows_by: dict[str, list[SourceRow]] = defaultdict(list)
    # survivorship reads what ingest mapped (canonical), never the vendor payload: not loaded
    for r in _in_chunks(session, lambda part: select(SourceRow).options(defer(SourceRow.payload)).where(
            SourceRow.golden_id.in_(part), SourceRow.kind == "profile", SourceRow.deleted.is_(False)), ids):
        rows_by[r.golden_id].append(r)
    consent_by: dict[str, list[ConsentEventRow]] = defaultdict(list)
    for ev in _in_chunks(session, lambda part: select(ConsentEventRow).where(ConsentEventRow.golden_id.in_(part)), ids):
        consent_by[ev.golden_id].append(ev)
    goldens = {g.golden_id: g for g in _in_chunks(
        session, lambda part: select(GoldenRecord).where(GoldenRecord.golden_id.in_(part)), ids)}
    counts: Counter = Counter()
    events: list[tuple[str, str, dict[str, Any]]] = []
    for gid in ids:
        g = goldens.get(gid)
        if g is None or g.status != "active":
            continue
        rows = rows_by.get(gid, [])
        if not rows or all(created_for(r.canonical) for r in rows):
            # every source is gone (deleted upstream; copies omnisync made of the record are no
            # source): keep the id resolvable, with nothing to show
            if g.profile:
                g.profile, g.lineage, g.version, g.updated_at = {}, {}, g.version + 1, utcnow()
                g.status = "retired"
                session.add(g)
                events.append((gid, "updated", {"fields": ["*"], "retired": True}))
                counts["retired"] += 1
            continue
        profile, lineage = survive(rows, consent_by.get(gid, []), sv)
        if profile == g.profile and lineage == g.lineage:
            continue
        new = not g.profile
        changed = sorted(k for k in profile.keys() | g.profile.keys() if profile.get(k) != g.profile.get(k))
        g.profile, g.lineage, g.updated_at = profile, lineage, utcnow()
        if not new:
            g.version += 1
        session.add(g)
        if new:
            events.append((gid, "created", {"sources": len(rows)}))
            counts["created"] += 1
        elif changed:
            events.append((gid, "consent" if changed == ["consent"] else "updated", {"fields": changed}))
            counts["updated"] += 1
    add_change_events(session, events)
    return dict(counts)


# --- explain -------------------------------------------------------------------------------------

def current_id(session: Session, golden_id: str) -> str | None:
    """The live golden id for ``golden_id`` (itself, or the survivor it was merged into)."""
    alias = session.get(GoldenAlias, golden_id)
    if alias is not None:
        return alias.golden_id
    return golden_id if session.get(GoldenRecord, golden_id) is not None else None


def _show(v: Any) -> str:
    if isinstance(v, list):
        if v and isinstance(v[0], dict):
            return "; ".join(", ".join(str(x) for x in item.values() if x) for item in v)
        return ", ".join(str(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in sorted(v.items()))
    return str(v)


def _pair_line(pair: dict[str, Any]) -> str:
    """One matched pair: records, match weight and probability, comparisons that agreed and did not."""
    a, b = pair.get("records", ["?", "?"])
    p = pair.get("probability")
    prob = f", probability {p:.6f}" if p is not None else ""
    agreed = ", ".join(pair.get("agreed", [])) or "-"
    out = f"{a} ~ {b}: match weight {pair.get('weight', 0):.1f}{prob}; agreed: {agreed}"
    if pair.get("disagreed"):
        out += f"; disagreed: {', '.join(pair['disagreed'])}"
    return out


def explain(session: Session, golden_id: str) -> str:
    """Which records were merged into a golden record, on what evidence, and why each field has its value.

    Prints personal data on purpose: it is the operator's terminal (like ``omnisync explain``), never a log.
    """
    gid = current_id(session, golden_id)
    if gid is None:
        raise LookupError(f"no golden record {golden_id!r} (nor an alias of one)")
    g = session.get(GoldenRecord, gid)
    lines = []
    if gid != golden_id:
        lines.append(f"{golden_id} was merged into {gid}.")
    lines.append(f"Golden record {gid}: status {g.status}, version {g.version}, created {g.created_at:%Y-%m-%d %H:%M}")
    aliases = list(session.exec(select(GoldenAlias.alias_id).where(GoldenAlias.golden_id == gid)))
    if aliases:
        lines.append(f"  also known as: {', '.join(sorted(aliases))}")

    sources = list(session.exec(select(SourceRow).where(SourceRow.golden_id == gid).order_by(SourceRow.id)))
    keys: dict[int, list[str]] = defaultdict(list)
    for k in session.exec(select(IdentityKey).where(IdentityKey.golden_id == gid,
                                                    IdentityKey.kind.not_in(("blk", "tf")))):
        keys[k.source_id].append(f"{k.kind}={k.value}")
    counts = Counter(k for ks in keys.values() for k in ks)
    lines += ["", f"Source records ({len(sources)})"]
    for s in sources:
        state = " (deleted)" if s.deleted else ""
        lines.append(f"  {s.system}/{s.stream} {s.external_id}{state}, modified {as_utc(s.modified_at):%Y-%m-%d %H:%M}")
        if keys.get(s.id):
            lines.append(f"      identifiers: {', '.join(sorted(keys[s.id]))}")
        shared = sorted({k for k in keys.get(s.id, []) if counts[k] > 1})
        if shared:
            lines.append(f"      shares with other records here: {', '.join(shared)}")

    events = list(session.exec(select(MergeEvent).where((MergeEvent.survivor_id == gid) | (MergeEvent.absorbed_id == gid))
                               .order_by(MergeEvent.id)))
    if events:
        lines += ["", "Merges"]
        for e in events:
            ev = e.evidence or {}
            if e.kind == "unmerge":
                lines.append(f"  {e.at:%Y-%m-%d %H:%M} unmerge: {', '.join(ev.get('records', [])) or ev.get('record', '?')}"
                             f" left {e.survivor_id} for {e.absorbed_id} ({ev.get('reason', '')})")
                continue
            lines.append(f"  {e.at:%Y-%m-%d %H:%M} {e.kind}: {e.absorbed_id} -> {e.survivor_id} "
                         f"on {', '.join(ev.get('keys', [])) or 'names, birth date, address'} ({ev.get('reason', '')})")
            for pair in ev.get("pairs", []):
                lines.append(f"      {_pair_line(pair)}")

    from identity.resolve import links  # resolve imports this module

    together = links(session, gid)
    if together:
        lines += ["", "Why these records are together (the pairs that tie them, scored now)"]
        for pair in together:
            lines.append(f"  {_pair_line(pair)}")

    lines += ["", "Fields"]
    lineage = g.lineage or {}
    for name, value in (g.profile or {}).items():
        if _blank(value):
            continue
        src = lineage.get(name) or {}
        why = ""
        if src.get("system"):
            why = f"  <- {src['system']}/{src.get('stream', '')} {src.get('record', '')} " \
                  f"observed {str(src.get('observed_at', ''))[:16]} by rule {src.get('rule')}"
            if src.get("sources") and len(src["sources"]) > 1:
                why += f" (from {len(src['sources'])} values)"
        elif src.get("rule"):
            why = f"  <- {src['rule']}"
        lines.append(f"  {name:12s} {_show(value)[:70]}{why}")
    n_its = len(list(session.exec(select(InteractionRow.id).where(InteractionRow.golden_id == gid))))
    n_consent = len(list(session.exec(select(ConsentEventRow.id).where(ConsentEventRow.golden_id == gid))))
    lines += ["", f"Timeline: {n_its} interactions; consent events: {n_consent}"]
    return "\n".join(lines)
