"""One customer's story, told from the golden store: record with lineage, timeline, consent, push-backs.

Used by the demo to show a newcomer what omnisync did for one person. It prints personal data
deliberately (it is the operator's own terminal, like ``omnisync explain``); nothing here is logged.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlmodel import Session, select

from identity.store import (ConsentEventRow, GoldenAlias, GoldenRecord, IdentityKey, InteractionRow, OutboundLedger,
                            SourceRow)
from mappings.engine import MappingConfigError, load_mapping
from omnisync.model import normalize_email

SYSTEM_NAMES = {"salesforce": "Salesforce", "hubspot": "HubSpot", "zoom": "Zoom CC", "twilio": "Twilio",
                "sendgrid": "SendGrid", "segment": "Segment"}


def find_by_email(session: Session, email: str) -> str | None:
    gid = session.exec(select(IdentityKey.golden_id).where(IdentityKey.kind == "email",
                                                           IdentityKey.value == normalize_email(email)).limit(1)).first()
    if gid is None:
        return None
    alias = session.get(GoldenAlias, gid)
    return alias.golden_id if alias else gid


def _value(profile: dict[str, Any], field: str) -> str:
    v = profile.get(field)
    if isinstance(v, list):
        if v and isinstance(v[0], dict):
            return "; ".join(", ".join(str(x) for x in item.values() if x) for item in v)
        return ", ".join(str(x) for x in v)
    return "" if v is None else str(v)


def golden_section(g: GoldenRecord) -> list[str]:
    lines = [f"Golden record {g.golden_id}  (status {g.status}, version {g.version})"]
    lineage = g.lineage or {}
    fields = [f for f in ("first_name", "last_name", "emails", "phones", "company", "title", "birth_date",
                          "addresses", "locale", "timezone", "value_tier", "cdp_user_id") if g.profile.get(f)]
    for f in fields:
        src = lineage.get(f) or {}
        origin = ""
        if src:
            origin = f"<- {SYSTEM_NAMES.get(src.get('system'), src.get('system'))} {src.get('record', '')}" \
                     f" ({src.get('rule', '')})"
        lines.append(f"  {f:12s} {_value(g.profile, f)[:60]:60s} {origin}")
    ext = g.profile.get("external_ids") or {}
    if ext:
        lines.append("  known as     " + ", ".join(f"{SYSTEM_NAMES.get(k, k)} {v}" for k, v in sorted(ext.items())))
    return lines


def timeline_section(rows: list[InteractionRow]) -> list[str]:
    lines = [f"Timeline ({len(rows)} interactions, {len({r.system for r in rows})} systems)"]
    for it in rows:
        who = " / ".join(x for x in (it.queue, it.agent) if x)
        text = it.summary or (it.data or {}).get("subject") or it.disposition or ""
        lines.append(f"  {it.started_at:%Y-%m-%d %H:%M}  {it.channel:6s} {it.direction:8s} "
                     f"{SYSTEM_NAMES.get(it.system, it.system):10s} {who[:28]:28s} {text[:60]}")
        handoff = (it.data or {}).get("handoff")
        if handoff:
            ctx = ", ".join(f"{k}={v}" for k, v in (handoff.get("context") or {}).items())
            lines.append(f"      bot hand-off from {handoff.get('from_bot')}: intent {handoff.get('intent')}; "
                         f"{handoff.get('summary') or ''} [{ctx}]")
    return lines


def consent_section(g: GoldenRecord, held: dict[tuple[str, str], set[str]] | None = None) -> list[str]:
    """Golden consent per channel and purpose; under each opt-out, every system that holds it."""
    items = g.profile.get("consent") or []
    if not items:
        return ["Consent: nothing recorded"]
    lines = ["Consent"]
    for c in sorted(items, key=lambda c: (c["channel"], c["purpose"])):
        lines.append(f"  {c['channel']:6s} {c['purpose']:13s} {c['status']:10s} since {c['observed_at'][:16]} "
                     f"(from {SYSTEM_NAMES.get(c['source_system'], c['source_system'])})")
        where = (held or {}).get((c["channel"], c["purpose"]))
        if c["status"] == "opted_out" and where:
            lines.append("         opted out in " + ", ".join(SYSTEM_NAMES.get(x, x) for x in sorted(where)))
    return lines


def opt_outs_held(session: Session, golden_id: str) -> dict[tuple[str, str], set[str]]:
    """Per (channel, purpose), the systems that hold the person's opt-out: those that told us (their
    records and consent events) and those omnisync wrote it to (the outbound ledger, read through each
    target's mapping file, and SendGrid's suppressions)."""
    held: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in session.exec(select(SourceRow).where(SourceRow.golden_id == golden_id, SourceRow.kind == "profile",
                                                    SourceRow.deleted.is_(False))):
        for c in ((row.canonical or {}).get("profile") or {}).get("consent") or []:
            if c.get("status") == "opted_out":
                held[(c["channel"], c["purpose"])].add(row.system)
    for ev in session.exec(select(ConsentEventRow).where(ConsentEventRow.golden_id == golden_id,
                                                         ConsentEventRow.status == "opted_out")):
        held[(ev.channel, ev.purpose)].add(ev.system)
    for led in session.exec(select(OutboundLedger).where(OutboundLedger.key.like(f"{golden_id}|%"))):
        vendor = (led.payload or {}).get("vendor") or {}
        if led.target_stream == "suppressions":
            held[("email", "marketing")].add(led.target_system)
            continue
        try:
            mapping = load_mapping(led.target_system, led.target_stream)
        except MappingConfigError:
            continue
        for fm in mapping.outbound_fields():
            if fm.target.startswith("consent.") and str(vendor.get(fm.sources[0])).lower() == "true":
                _, channel, purpose = fm.target.split(".")
                held[(channel, purpose)].add(led.target_system)
    return held


def pushed_section(session: Session, golden_id: str, interaction_keys: list[str]) -> list[str]:
    rows = list(session.exec(select(OutboundLedger).where(OutboundLedger.key.like(f"{golden_id}|%"))))
    if interaction_keys:
        rows += list(session.exec(select(OutboundLedger).where(OutboundLedger.key.in_(interaction_keys))))
    if not rows:
        return ["Pushed back: nothing yet"]
    by_target: dict[str, list[OutboundLedger]] = defaultdict(list)
    for r in rows:
        by_target[f"{SYSTEM_NAMES.get(r.target_system, r.target_system)} {r.target_stream}"].append(r)
    lines = ["Pushed back"]
    for target, items in sorted(by_target.items()):
        fields = sorted({k for r in items for k in ((r.payload or {}).get("vendor") or {})})
        what = f"fields {', '.join(fields)}" if fields else f"{len(items)} record(s)"
        lines.append(f"  {target:34s} {what}")
    return lines


def story(session: Session, email: str) -> str:
    gid = find_by_email(session, email)
    if gid is None:
        return f"No golden record has {email}."
    g = session.get(GoldenRecord, gid)
    sources = list(session.exec(select(SourceRow).where(SourceRow.golden_id == gid)))
    its = list(session.exec(select(InteractionRow).where(InteractionRow.golden_id == gid)
                            .order_by(InteractionRow.started_at)))
    lines = golden_section(g)
    lines.append(f"  from {len(sources)} source records: " + ", ".join(
        sorted({f"{SYSTEM_NAMES.get(s.system, s.system)} {s.stream}" for s in sources})))
    lines += [""] + timeline_section(its) + [""] + consent_section(g, opt_outs_held(session, gid)) + [""]
    lines += pushed_section(session, gid, [f"{i.system}:{i.external_id}" for i in its])
    return "\n".join(lines)
