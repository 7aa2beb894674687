"""The push planner: what each connected system must receive so it agrees with the golden record.

Planning is pure: it reads the golden store and the outbound ledger and returns a :class:`PushPlan`
of vendor-shaped :class:`~omnisync.records.OutboundRecord` batches. ``flows/push.py`` executes a plan
through the connectors and hands the outcomes back to :func:`record_outcomes`, which updates the
ledger. The rules it applies:

* Only fields whose mapping ``direction`` is ``out`` or ``both`` are written, and only the leaves
  that differ both from what the target currently holds and from what we last wrote (the ledger),
  so a re-run writes nothing (invariant 3) and a push never rewrites what did not change.
* Echo suppression (invariant 4): per target record the ledger keeps what we wrote *since* the
  version of it we last read (``since``, keyed by that version's fingerprint ``since_fp``), composed
  over every write planned against that version (one in this run, one in the last run that a quota
  stopped before the record was read again...). It is recorded before the write goes out
  (:func:`record_attempts`), so a write whose answer was lost (quota, crash) is known too. Ingest
  takes a record coming back as our echo when it differs from the version we last read only in
  values we wrote since (:mod:`identity.ingest`); ``inbound_fingerprint`` is the canonical
  fingerprint of that version plus all of ``since``.
* What is planned: golden records in the change feed since the system's last push, and those
  whose record in the system was re-read with new facts since that push was planned (a user
  unticked an opt-out box we ticked: the golden record did not change, the target is put back in
  the same run). A field the target's read never returns (Zoom custom fields, the golden-id link)
  is unknown there: what the ledger says we wrote, at creation or since, is not written again.
* A record re-written run after run (two systems fighting over a field) raises a loop alarm
  after ``loop_threshold`` runs: it is dead-lettered and the run flagged, never ping-ponged.
* A circuit breaker refuses a push that would overwrite more than ``breaker_share`` of a system's
  records unless forced (filling blanks and writing the golden id link do not count).
* Consent: opt-outs travel with the profile fields (CRM checkboxes) and to consent streams
  (SendGrid suppressions); an erased person is never pushed.
* The timeline: interactions from other systems are written once each as activities (Salesforce
  Tasks, HubSpot engagements, Segment track events), associated to the target's record.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from sqlmodel import Session, func, select

from identity.store import (
    ChangeEvent,
    Checkpoint,
    GoldenRecord,
    InteractionRow,
    OutboundLedger,
    SourceRow,
)
from mappings.engine import Mapping, MappingConfigError, dig, flatten_profile, load_mapping, mappings_for
from omnisync.records import OutboundRecord, SourceRecord, WriteOutcome, WriteStatus, as_utc, fingerprint, utcnow

OWNERSHIP = Path(__file__).resolve().parent.parent / "mappings" / "ownership.yaml"


class CircuitOpen(RuntimeError):
    """A push would change too much of one system at once; re-run with force to proceed."""


@lru_cache(maxsize=1)
def ownership() -> dict[str, Any]:
    return yaml.safe_load(OWNERSHIP.read_text())


def policy(system: str) -> dict[str, Any]:
    return {**ownership()["defaults"], **ownership()["systems"].get(system, {})}


@dataclass
class LoopAlarm:
    system: str
    stream: str
    external_id: str | None
    golden_id: str
    fields: list[str]


@dataclass
class StreamPlan:
    system: str
    stream: str
    records: list[OutboundRecord] = field(default_factory=list)
    fields: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    overwrites: int = 0
    creates: int = 0
    population: int = 0
    # key -> (ledger payload to store after success)
    ledger: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.overwrites / self.population if self.population else 0.0


@dataclass
class PushPlan:
    streams: dict[tuple[str, str], StreamPlan] = field(default_factory=dict)
    alarms: list[LoopAlarm] = field(default_factory=list)
    merges: list[tuple[str, str, str]] = field(default_factory=list)  # (system, survivor, merged)
    merge_golden: dict[tuple[str, str], str] = field(default_factory=dict)  # (system, merged) -> golden id
    # (system, merged) -> (survivor's fingerprint, vendor leaves of ours the merged record holds):
    # a merge copies them into the survivor, where they are still our writes (see note_merge).
    merge_since: dict[tuple[str, str], tuple[str, dict[str, Any]]] = field(default_factory=dict)
    seq: int = 0  # change-feed position this plan covers
    planned_at: datetime | None = None  # records resolved before this are covered (None: a chosen few only)

    def stream(self, system: str, stream: str) -> StreamPlan:
        return self.streams.setdefault((system, stream), StreamPlan(system, stream))

    def summary(self) -> list[dict[str, Any]]:
        rows = []
        for (system, stream), sp in sorted(self.streams.items()):
            for f, n in sorted(sp.fields.items()):
                rows.append({"system": system, "stream": stream, "field": f, "records": n})
        return rows

    @property
    def total(self) -> int:
        return sum(len(sp.records) for sp in self.streams.values())


# --- payload helpers -----------------------------------------------------------------------------

def leaves(payload: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in payload.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(leaves(v, path + "."))
        else:
            out[path] = v
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, v in flat.items():
        cur = out
        parts = path.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = v
    return out


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for path, v in leaves(patch).items():
        cur = out
        parts = path.split(".")
        for p in parts[:-1]:
            nxt = cur.get(p)
            if not isinstance(nxt, dict):
                nxt = cur[p] = {}
            cur = nxt
        cur[parts[-1]] = v
    return out


def _norm(v: Any) -> Any:
    # Vendors hand strings back for everything; compare on the text form so "true"/True match.
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return ""
    return str(v)


def golden_flat(golden: GoldenRecord) -> dict[str, Any]:
    flat = flatten_profile(golden.profile or {})
    flat["golden_id"] = golden.golden_id
    return flat


def without_placeholders(flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` without placeholder addresses and numbers (``test@test.com``, ``noemail@...``,
    ``+15555555555``: the identity rules' protected values).

    They stay in the golden record (a source holds them), but are never written as the person's
    address: a target that keys or merges on them (HubSpot's unique email, Segment's email
    external id) would tie strangers together, or refuse the write, depending on who came first.
    """
    from identity.rules import load_rules

    rules = load_rules()
    out = dict(flat)
    for field_, kind in (("emails", "email"), ("phones", "phone")):
        values = flat.get(field_)
        if values:
            out[field_] = [v for v in values if not rules.is_protected(kind, rules.key_value(kind, v) or "")]
    return out


def oldest_first(rows: list[SourceRow], created: str | None = None) -> list[SourceRow]:
    """One system's duplicate records in the order a merge keeps them: a record the vendor held before
    the one omnisync ``created``, then the vendor's own id order (CRM ids grow with time), never
    the order we happened to read them in."""
    return sorted(rows, key=lambda r: (r.external_id == created, len(r.external_id), r.external_id))


def expected_fingerprint(mapping: Mapping, row: SourceRow | None, written: dict[str, Any]) -> str | None:
    """Fingerprint of the canonical profile the target will show after ``written`` is applied."""
    base = row.payload if row is not None else {}
    after = deep_merge(base, written)
    rec = SourceRecord(system=mapping.system, stream=mapping.stream,
                       external_id=row.external_id if row else "new", modified_at=utcnow(), payload=after)
    try:
        obj = mapping.inbound(rec)
    except ValueError:
        return None
    return canonical_fingerprint(obj.model_dump(mode="json") if obj is not None else None)


def canonical_fingerprint(profile: dict[str, Any] | None) -> str:
    flat = {k: v for k, v in flatten_profile(profile or {}).items()
            if v not in (None, [], {}) and not k.startswith("external_ids.")}
    return fingerprint(flat)


# --- planning ------------------------------------------------------------------------------------

def push_checkpoint(session: Session, system: str) -> int:
    row = session.get(Checkpoint, (f"push:{system}", "golden", ""))
    return int(row.cursor.get("seq", 0)) if row and row.cursor else 0


def push_time(session: Session, system: str) -> datetime | None:
    """When the plan of the system's last completed push was made (None: never, or not recorded)."""
    row = session.get(Checkpoint, (f"push:{system}", "golden", ""))
    at = (row.cursor or {}).get("at") if row else None
    return as_utc(datetime.fromisoformat(at)) if at else None


_NOW = object()


def save_push_checkpoint(session: Session, system: str, seq: int, at: Any = _NOW) -> None:
    """The system is in line with the change feed up to ``seq`` and with its records as resolved
    before ``at`` (when the plan was made; default now; None keeps the time recorded before)."""
    row = session.get(Checkpoint, (f"push:{system}", "golden", "")) or Checkpoint(
        system=f"push:{system}", stream="golden", partition="")
    at = utcnow() if at is _NOW else at
    before = (row.cursor or {}).get("at")
    row.cursor = {"seq": seq, **({"at": as_utc(at).isoformat()} if at is not None else {"at": before} if before else {})}
    row.batches += 1
    row.updated_at = utcnow()
    session.add(row)


def reread_golden_ids(session: Session, system: str, stream: str, after: datetime) -> list[str]:
    """Golden records whose record in ``system``/``stream`` was read with new facts (changed there,
    not our echo: echoes are not resolved) after ``after``. A target changed by its users may now
    disagree with its golden record although the golden record did not change -- a box unticked
    after we ticked it: opt-out wins, so it is planned again in the same run."""
    return list(session.exec(select(SourceRow.golden_id).where(
        SourceRow.system == system, SourceRow.stream == stream, SourceRow.kind == "profile",
        SourceRow.deleted.is_(False), SourceRow.golden_id.is_not(None), SourceRow.resolved_at > after).distinct()))


def changed_golden_ids(session: Session, since: int) -> tuple[list[str], int]:
    rows = session.exec(select(ChangeEvent.golden_id, ChangeEvent.seq).where(ChangeEvent.seq > since)
                        .order_by(ChangeEvent.seq)).all()
    top = max((s for _, s in rows), default=since)
    return list(dict.fromkeys(g for g, _ in rows)), top


def plan_push(session: Session, systems: list[str], *, full: bool = False,
              golden_ids: list[str] | None = None) -> PushPlan:
    """Plan the writes that bring ``systems`` in line with the golden records that changed.

    ``full`` plans against every active golden record (reconciliation); otherwise those in the
    change feed since each system's last push, and those whose record in the system was re-read
    with new facts since that push was planned (:func:`reread_golden_ids`).
    """
    plan = PushPlan(planned_at=None if golden_ids is not None else utcnow())
    ledger_cache: dict[tuple[str, str], dict[str, OutboundLedger]] = {}
    for system in systems:
        pol = policy(system)
        since = 0 if full else push_checkpoint(session, system)
        if golden_ids is not None:
            ids, top = golden_ids, since
        elif full:
            ids = list(session.exec(select(GoldenRecord.golden_id).where(GoldenRecord.status == "active")))
            top = session.exec(select(func.max(ChangeEvent.seq))).one() or 0
        else:
            ids, top = changed_golden_ids(session, since)
            last = push_time(session, system)
            if last is not None and pol.get("profile_stream"):
                ids = list(dict.fromkeys(ids + reread_golden_ids(session, system, pol["profile_stream"], last)))
        plan.seq = max(plan.seq, top)
        if not ids:
            continue
        goldens = _load(session, GoldenRecord, GoldenRecord.golden_id, ids)
        if pol.get("profile_stream"):
            _plan_profiles(session, plan, system, pol, goldens, ledger_cache)
        if pol.get("consent_stream"):
            _plan_consent(session, plan, system, pol, goldens, ledger_cache)
        if pol.get("activities"):  # an erased or merged-away person's timeline is never written
            _plan_activities(session, plan, system, pol, [g.golden_id for g in goldens if g.status == "active"],
                             ledger_cache)
    return plan


def _load(session: Session, model, column, ids: list[str]) -> list:
    out = []
    for i in range(0, len(ids), 500):
        out += list(session.exec(select(model).where(column.in_(ids[i:i + 500]))))
    return out


def _ledger(session: Session, cache, system: str, stream: str, keys: list[str]) -> dict[str, OutboundLedger]:
    got = cache.setdefault((system, stream), {})
    missing = [k for k in keys if k not in got]
    for i in range(0, len(missing), 500):
        for row in session.exec(select(OutboundLedger).where(OutboundLedger.target_system == system,
                                                             OutboundLedger.target_stream == stream,
                                                             OutboundLedger.key.in_(missing[i:i + 500]))):
            got[row.key] = row
    return got


def _plan_profiles(session: Session, plan: PushPlan, system: str, pol: dict[str, Any],
                   goldens: list[GoldenRecord], cache) -> None:
    stream = pol["profile_stream"]
    try:
        mapping = load_mapping(system, stream)
    except MappingConfigError:
        return
    if not mapping.outbound_fields():
        return
    sp = plan.stream(system, stream)
    sp.population = session.exec(select(func.count()).select_from(SourceRow).where(
        SourceRow.system == system, SourceRow.stream == stream, SourceRow.deleted.is_(False))).one()
    active = [g for g in goldens if g.status == "active"]
    rows_by_golden: dict[str, list[SourceRow]] = defaultdict(list)
    for row in _load(session, SourceRow, SourceRow.golden_id, [g.golden_id for g in active]):
        if row.system == system and row.stream == stream and not row.deleted:
            rows_by_golden[row.golden_id].append(row)
    keys = [ledger_key(g.golden_id, r.external_id) for g in active for r in rows_by_golden[g.golden_id]]
    keys += [ledger_key(g.golden_id, None) for g in active]  # creations, also once the record is read back
    ledger = _ledger(session, cache, system, stream, keys)
    linked_ids = {f.target for f in mapping.outbound_fields()} & {"golden_id"}
    keep_theirs = {fm.sources[0] for fm in mapping.outbound_fields()
                   if field_rule(system, fm.target) == "fill_blank"}
    consent_paths = {fm.sources[0]: fm.target for fm in mapping.outbound_fields() if fm.target.startswith("consent.")}

    links = _link_paths(mapping, linked_ids)
    list_paths = {fm.sources[0]: fm.target for fm in mapping.outbound_fields() if fm.target in ("emails", "phones")}
    for g in active:
        flat = golden_flat(g)
        written = without_placeholders(flat)
        desired = leaves(mapping.outbound(written))
        made = ledger.get(ledger_key(g.golden_id, None))
        targets = oldest_first(rows_by_golden[g.golden_id], made.external_id if made is not None else None)
        if not targets:
            if not pol.get("create"):
                continue
            need = pol.get("create_requires")
            if need and not written.get(need):
                continue
            key = ledger_key(g.golden_id, None)
            led = ledger.get(key)
            payload = {k: v for k, v in desired.items() if v not in (None, "")}
            if led is not None and led.fingerprint == fingerprint(payload):
                continue  # created already; it shows up as a target once the next sync reads it
            rec = OutboundRecord(key=key, payload=unflatten(payload), match=_match(mapping, written, pol))
            _add(sp, rec, payload, mapping, None, creates=True)
            continue
        if len(targets) > 1 and pol.get("duplicates") == "merge":
            done = _ledger(session, cache, system, MERGE_STREAM,
                           [merge_key(g.golden_id, r.external_id) for r in targets[1:]])
            writable = {fm.sources[0] for fm in mapping.outbound_fields()}
            for loser in targets[1:]:
                if merge_key(g.golden_id, loser.external_id) not in done:
                    plan.merges.append((system, targets[0].external_id, loser.external_id))
                    plan.merge_golden[(system, loser.external_id)] = g.golden_id
                    if made is not None and loser.external_id == made.external_id:
                        ours = {p: v for p, v in leaves(loser.payload or {}).items() if p in writable}
                    else:
                        led = ledger.get(ledger_key(g.golden_id, loser.external_id))
                        ours = dict((led.payload or {}).get("vendor") or {}) if led is not None else {}
                    plan.merge_since[(system, loser.external_id)] = (targets[0].fingerprint, ours)
            # The merged-away records vanish at the next read: write to the survivor only.
            targets = targets[:1]
        for row in targets:
            current = leaves(mapping.outbound(_row_flat(row, mapping)))
            held = _opted_out(row)
            key = ledger_key(g.golden_id, row.external_id)
            led = ledger.get(key)
            made = ledger.get(ledger_key(g.golden_id, None))
            made = made if made is not None and made.external_id == row.external_id else None
            if led is None:  # a record omnisync created: what it wrote is under the creation key
                led = made
            # What we wrote to this record: when we created it, then since (later writes win).
            wrote = {**((made.payload or {}).get("vendor", {}) if made is not None and made is not led else {}),
                     **((led.payload or {}).get("vendor", {}) if led else {})}
            # Writes planned against this same version and not read back yet compose with this one.
            since = dict((led.payload or {}).get("since") or {}) \
                if led is not None and (led.payload or {}).get("since_fp") == row.fingerprint else {}
            # Until the target has been read again since our write, its stored state is stale:
            # what we wrote is not repeated. Once re-read, a value still differing was changed back.
            not_back_yet = led is not None and (led.payload or {}).get("row_fp") == row.fingerprint
            change = {}
            overwrite = False
            for path, value in desired.items():
                if value in (None, ""):
                    continue  # never blank a field the target has: absence is not a fact
                if _norm(current.get(path)) == _norm(value):
                    continue
                if not_back_yet and path in wrote and _norm(wrote[path]) == _norm(value):
                    continue
                canon = list_paths.get(path)
                theirs = ((row.canonical or {}).get("profile") or {}).get(canon) if canon else None
                if theirs and set(theirs) <= set(flat.get(canon) or []):
                    continue  # the record holds the person's own addresses/numbers: nothing to correct
                if (path in links or not _carried(row.payload, path)) and current.get(path) in (None, "") \
                        and _norm(wrote.get(path)) == _norm(value):
                    # a field the target's read does not return (a link, a Zoom custom field, one the connector
                    # does not select): what it holds is unknown, and the ledger knows we set it
                    continue
                if path in keep_theirs and current.get(path) not in (None, ""):
                    continue  # the system owns this field once it has a value: golden fills blanks only
                target_field = consent_paths.get(path)
                if target_field and target_field in held and _status(flat, target_field) != "opted_out":
                    continue  # opt-out wins: never turn a target's opt-out back into an opt-in
                change[path] = value
                if current.get(path) not in (None, "") and path not in _link_paths(mapping, linked_ids):
                    overwrite = True
            if not change:
                if led is not None and led.bounces:
                    led.bounces = 0
                    session.add(led)
                continue
            if led is not None and wrote and any(p in wrote for p in change):
                if led.bounces + 1 >= int(pol["loop_threshold"]):
                    plan.alarms.append(LoopAlarm(system, stream, row.external_id, g.golden_id, sorted(change)))
                    continue
            rec = OutboundRecord(key=key, payload=unflatten(change), external_id=row.external_id,
                                 match=_match(mapping, written, pol))
            _add(sp, rec, change, mapping, row, overwrite=overwrite, seen=current, since={**since, **change})


MERGE_STREAM = "_merges"  # ledger pseudo-stream: CRM merges already done (survivor, merged)


def merge_key(golden_id: str, merged_id: str) -> str:
    return f"{golden_id}|merge|{merged_id}"


def field_rule(system: str, target: str) -> str:
    """How a system's field takes golden values: ``overwrite`` (golden wins, the default) or
    ``fill_blank`` (the system owns the field once it holds a value), from ownership.yaml."""
    rules = policy(system).get("fields") or {}
    rule = rules.get(target, "overwrite")
    if rule not in ("overwrite", "fill_blank"):
        raise MappingConfigError(f"mappings/ownership.yaml: {system}: field {target}: rule must be overwrite or "
                                 f"fill_blank, not {rule!r}")
    return rule


def _carried(payload: dict[str, Any] | None, path: str) -> bool:
    """Whether the stored vendor record has ``path`` at all: a null counts (the vendor says it is
    empty); an absent key does not (the read never asked for it, or the vendor never returns it)."""
    cur: Any = payload or {}
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False
        cur = cur[part]
    return True


def _opted_out(row: SourceRow) -> set[str]:
    """Consent targets (``consent.<channel>.<purpose>``) the target record currently shows as opted out."""
    prof = (row.canonical or {}).get("profile") or {}
    return {f"consent.{c.get('channel')}.{c.get('purpose')}" for c in prof.get("consent") or []
            if c.get("status") == "opted_out"}


def _status(flat: dict[str, Any], target: str) -> str | None:
    value = flat.get(target)
    return value if isinstance(value, str) else None


def _link_paths(mapping: Mapping, linked: set[str]) -> set[str]:
    return {fm.sources[0] for fm in mapping.outbound_fields() if fm.target in linked}


def _match(mapping: Mapping, flat: dict[str, Any], pol: dict[str, Any]) -> dict[str, str]:
    """Unique property the vendor can upsert on: the golden id field, else the identifier required."""
    for fm in mapping.outbound_fields():
        if fm.target == "golden_id":
            return {fm.sources[0].split(".")[-1]: flat["golden_id"]}
    need = pol.get("create_requires")
    if need and flat.get(need):
        return {need.rstrip("s"): flat[need][0]}
    return {}


def _row_flat(row: SourceRow, mapping: Mapping | None = None) -> dict[str, Any]:
    """What the target record holds now, in flat canonical terms, including the golden-id link
    (write-only, so not in the canonical profile: read from the raw payload)."""
    flat = flatten_profile((row.canonical or {}).get("profile") or {})
    if mapping is not None:
        for fm in mapping.outbound_fields():
            if fm.target == "golden_id":
                held = dig(row.payload or {}, fm.sources[0])
                if held not in (None, ""):
                    flat["golden_id"] = held
    return flat


def ledger_key(golden_id: str, external_id: str | None) -> str:
    return f"{golden_id}|{external_id or 'new'}"


def _add(sp: StreamPlan, rec: OutboundRecord, change: dict[str, Any], mapping: Mapping, row: SourceRow | None,
         *, creates: bool = False, overwrite: bool = False, seen: dict[str, Any] | None = None,
         since: dict[str, Any] | None = None) -> None:
    sp.records.append(rec)
    for path in change:
        sp.fields[path] += 1
    sp.creates += creates
    sp.overwrites += overwrite
    since = dict(since if since is not None else change)
    # "seen"/"row_fp": the target's state before this write (see not_back_yet above).
    # "since"/"since_fp": everything written since that state was read, this write included.
    sp.ledger[rec.key] = {"vendor": change, "seen": dict(seen or {}), "row_fp": row.fingerprint if row else None,
                          "since": since, "since_fp": row.fingerprint if row else None,
                          "expected": expected_fingerprint(mapping, row, unflatten(since))}


def _plan_consent(session: Session, plan: PushPlan, system: str, pol: dict[str, Any],
                  goldens: list[GoldenRecord], cache) -> None:
    """Email opt-outs to a suppression list: one record per opted-out address, written once."""
    stream = pol["consent_stream"]
    sp = plan.stream(system, stream)
    wanted: dict[str, str] = {}
    for g in goldens:
        prof = g.profile or {}
        opted_out = any(c.get("channel") == "email" and c.get("status") == "opted_out"
                        for c in prof.get("consent", []))
        if opted_out or g.status == "erased":
            for email in prof.get("emails", []):
                wanted[f"{g.golden_id}|{email}"] = email
    ledger = _ledger(session, cache, system, stream, list(wanted))
    for key, email in wanted.items():
        if key in ledger:
            continue
        rec = OutboundRecord(key=key, payload={"email": email}, match={"email": email})
        sp.records.append(rec)
        sp.fields["suppression"] += 1
        sp.ledger[key] = {"vendor": {"email": email}, "seen": {}, "expected": None}


def _plan_activities(session: Session, plan: PushPlan, system: str, pol: dict[str, Any],
                     golden_ids: list[str], cache) -> None:
    routes: dict[str, str] = pol["activities"]
    profile_stream = pol.get("profile_stream")
    its = [i for i in _load(session, InteractionRow, InteractionRow.golden_id, golden_ids) if i.system != system]
    if not its:
        return
    contact_of: dict[str, str] = {}
    if profile_stream and system != "segment":
        # The survivor of a CRM merge (oldest_first, as the profile plan picks it): activities hang on it.
        rows_of: dict[str, list[SourceRow]] = defaultdict(list)
        for row in _load(session, SourceRow, SourceRow.golden_id, golden_ids):
            if row.system == system and row.stream == profile_stream and not row.deleted:
                rows_of[row.golden_id].append(row)
        made = _ledger(session, cache, system, profile_stream, [ledger_key(g, None) for g in rows_of])
        for gid, rows in rows_of.items():
            created = made.get(ledger_key(gid, None))
            contact_of[gid] = oldest_first(rows, created.external_id if created is not None else None)[0].external_id
    by_stream: dict[str, list[InteractionRow]] = defaultdict(list)
    for it in its:
        stream = routes.get(it.channel)
        if stream:
            by_stream[stream].append(it)
    for stream, rows in by_stream.items():
        mapping = _activity_mapping(system, stream)
        if mapping is None:
            continue
        keys = [f"{it.system}:{it.external_id}" for it in rows]
        ledger = _ledger(session, cache, system, stream, keys)
        sp = plan.stream(system, stream)
        for it, key in zip(rows, keys):
            if key in ledger:
                continue
            assoc = {}
            if system != "segment":
                contact = contact_of.get(it.golden_id)
                if contact is None:
                    continue  # no record to hang it on yet; planned again once the contact exists
                assoc = {"contact": contact}
            flat = flatten_profile({k: v for k, v in (it.data or {}).items() if k != "handoff"})
            flat.update({f"handoff.{k}": v for k, v in ((it.data or {}).get("handoff") or {}).items()})
            flat.update({"golden_id": it.golden_id, "interaction_key": key})
            rec = OutboundRecord(key=key, payload=mapping.outbound(flat), associations=assoc)
            sp.records.append(rec)
            sp.fields["activity"] += 1
            sp.ledger[key] = {"vendor": {}, "seen": {}, "expected": None}


def _activity_mapping(system: str, stream: str) -> Mapping | None:
    try:
        found = [m for m in mappings_for(system, stream) if m.kind == "interaction"]
    except MappingConfigError:
        try:
            found = [load_mapping(system, stream)]
        except MappingConfigError:
            return None
    return found[0] if found and found[0].outbound_fields() else None


def check_breaker(plan: PushPlan, *, force: bool = False) -> None:
    if force:
        return
    for sp in plan.streams.values():
        pol = policy(sp.system)
        if sp.population >= int(pol["breaker_min_records"]) and sp.share > float(pol["breaker_share"]):
            raise CircuitOpen(
                f"push to {sp.system}/{sp.stream} would overwrite {sp.overwrites} of {sp.population} records "
                f"({sp.share:.0%} > {float(pol['breaker_share']):.0%}); review `omnisync plan` and re-run with --force")


# --- outcomes ------------------------------------------------------------------------------------

def _ledger_rows(session: Session, sp: StreamPlan, keys: list[str]) -> dict[str, OutboundLedger]:
    existing = {}
    for i in range(0, len(keys), 500):
        for row in session.exec(select(OutboundLedger).where(OutboundLedger.target_system == sp.system,
                                                             OutboundLedger.target_stream == sp.stream,
                                                             OutboundLedger.key.in_(keys[i:i + 500]))):
            existing[row.key] = row
    return existing


def record_attempts(session: Session, sp: StreamPlan, records: list[OutboundRecord]) -> int:
    """Before a chunk of profile writes goes out: note in the ledger what each may change.

    Write-ahead for echo suppression: if the answer is lost (a quota spent mid-batch, a crash, a
    timeout after the vendor applied the write), the record still comes back showing our values,
    and ingest must know them to see an echo rather than a new fact. Only ``since`` is touched:
    what the target confirmed (``vendor``, the fingerprint the planner and the loop alarm use)
    changes only in :func:`record_outcomes`. Returns the number of records noted.
    """
    todo = [r for r in records if "since" in sp.ledger.get(r.key, {})]
    if not todo:
        return 0
    existing = _ledger_rows(session, sp, [r.key for r in todo])
    for rec in todo:
        info = sp.ledger[rec.key]
        row = existing.get(rec.key) or OutboundLedger(target_system=sp.system, target_stream=sp.stream, key=rec.key,
                                                      fingerprint="", external_id=rec.external_id)
        row.payload = {**(row.payload or {}), "since": _since(row, info), "since_fp": info["since_fp"]}
        row.written_at = utcnow()
        session.add(row)
    return len(todo)


def _since(row: OutboundLedger, info: dict[str, Any]) -> dict[str, Any]:
    """What was written since the version ``info`` was planned against: what the ledger noted for
    that version meanwhile (a merge's write-ahead), then this write's own ``since``."""
    p = row.payload or {}
    noted = (p.get("since") or {}) if p.get("since_fp") == info.get("since_fp") else {}
    return {**noted, **(info.get("since") or {})}


def note_merge(session: Session, system: str, golden_id: str, survivor: str, since_fp: str | None,
               ours: dict[str, Any]) -> None:
    """Before asking a CRM to merge a duplicate into ``survivor``: what of ours the duplicate holds
    (all of it when omnisync created it) may be copied into the survivor, so it is noted as written
    to the survivor since the version we planned against (write-ahead, like record_attempts).
    What we wrote ourselves to the survivor wins over it."""
    stream = policy(system).get("profile_stream")
    if not stream or not ours:
        return
    key = ledger_key(golden_id, survivor)
    row = session.exec(select(OutboundLedger).where(OutboundLedger.target_system == system,
                                                    OutboundLedger.target_stream == stream,
                                                    OutboundLedger.key == key)).first()
    row = row or OutboundLedger(target_system=system, target_stream=stream, key=key, fingerprint="",
                                external_id=survivor)
    p = dict(row.payload or {})
    since = (p.get("since") or {}) if p.get("since_fp") == since_fp else {}
    row.payload = {**p, "since": {**ours, **since}, "since_fp": since_fp}
    row.written_at = utcnow()
    session.add(row)


def record_outcomes(session: Session, sp: StreamPlan, outcomes: list[WriteOutcome]) -> dict[str, int]:
    """Update the ledger with what the target accepted; return counts by status."""
    counts: dict[str, int] = defaultdict(int)
    existing = _ledger_rows(session, sp, [o.key for o in outcomes])
    for o in outcomes:
        counts[o.status.value] += 1
        if not o.ok:
            continue
        info = sp.ledger.get(o.key, {})
        row = existing.get(o.key) or OutboundLedger(target_system=sp.system, target_stream=sp.stream, key=o.key,
                                                    fingerprint="")
        vendor = {**((row.payload or {}).get("vendor", {})), **info.get("vendor", {})}
        bounced = bool(row.payload) and any(p in (row.payload or {}).get("vendor", {}) for p in info.get("vendor", {}))
        row.payload = {"vendor": vendor, "seen": info.get("seen", {}), "row_fp": info.get("row_fp"),
                       "expected": info.get("expected"), "since": _since(row, info),
                       "since_fp": info.get("since_fp")}
        row.fingerprint = fingerprint(vendor)
        row.inbound_fingerprint = info.get("expected")
        row.external_id = o.external_id or row.external_id
        row.bounces = row.bounces + 1 if bounced and o.status is not WriteStatus.unchanged else 0
        row.written_at = utcnow()
        session.add(row)
    return dict(counts)
