"""Prefect artifacts for admins: counts per system and stream, push plans, merges. No personal data.

Artifacts carry only counts, system names, field names and opaque golden ids; evidence is described
by kind ("email", "phone", "name+dob") never by value.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from sqlalchemy.engine import Engine
from sqlmodel import select

from identity.ingest import Counts
from identity.store import MergeEvent, session_scope
from omnisync.privacy import mask_text

# Read rows: what came in (``merged`` = records the vendor merged away). Push rows ("<stream>
# (push)"): what went out (``created``/``updated`` in the vendor, ``merged`` = CRM merges done).
COLUMNS = ["read", "stored", "unchanged", "echoes", "dead_lettered", "suppressed", "deleted", "merged",
           "created", "updated", "retry_next_run", "api_calls"]


def counts_rows(counts: Counts, pushed: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rows = []
    for (system, stream), c in sorted(counts.by_stream.items()):
        row = {k: int(c.get(k, 0)) for k in COLUMNS}
        row["merged"] = int(c.get("merged_away", 0))
        rows.append({"system": system, "stream": stream, **row})
    for key, c in sorted(((pushed or {}).get("counts") or {}).items()):
        system, stream = key.split("/", 1)
        row = {k: 0 for k in COLUMNS}
        row.update(created=int(c.get("created", 0)), updated=int(c.get("updated", 0)),
                   stored=int(c.get("created", 0)) + int(c.get("updated", 0)), unchanged=int(c.get("unchanged", 0)),
                   dead_lettered=int(c.get("failed", 0)) - int(c.get("retry_next_run", 0)),
                   retry_next_run=int(c.get("retry_next_run", 0)), deleted=int(c.get("deleted", 0)),
                   api_calls=int(((pushed or {}).get("api_calls") or {}).get(system, 0)))
        rows.append({"system": system, "stream": f"{stream} (push)", **row})
    merges = int((pushed or {}).get("merges") or 0)
    if merges:
        rows.append({"system": "*", "stream": "CRM merges (push)", **{k: 0 for k in COLUMNS}, "merged": merges})
    return rows


def counts_artifact(counts: Counts, *, key: str, title: str, pushed: dict[str, Any] | None = None,
                    resolved: dict[str, int] | None = None, failed: list[dict[str, Any]] | None = None) -> None:
    rows = counts_rows(counts, pushed)
    extra = ""
    if resolved:
        extra = " | ".join(f"{k}: {v}" for k, v in sorted(resolved.items()))
    for f in failed or []:
        rows.append({"system": f["system"], "stream": f"{f['stream']} (FAILED)", **{k: 0 for k in COLUMNS}})
        extra += f"\n\n**{f['system']}/{f['stream']} failed:** {mask_text(f['message'])}"
    create_table_artifact(table=rows, key=_key(key),
                          description=f"**{title}**. Reconciles: {counts.reconciles()}. {extra}")


def plan_artifact(plan: Any) -> None:
    lines = ["| system | stream | field | records |", "|---|---|---|---|"]
    for r in plan.summary():
        lines.append(f"| {r['system']} | {r['stream']} | {r['field']} | {r['records']} |")
    if plan.alarms:
        lines.append(f"\n**Loop alarms:** {len(plan.alarms)} record(s) held back (dead-lettered, stage loop).")
    if plan.merges:
        lines.append(f"\n**CRM merges planned:** {len(plan.merges)}.")
    create_markdown_artifact(markdown="\n".join(lines) if plan.summary() else "Nothing to push.",
                             key="push-plan", description="What the push-back writes, per system and field")


RESOLUTION = [("placed_new", "records that founded a golden record"), ("joined", "records that joined one"),
              ("merged", "golden records merged"), ("moved", "records moved out (unmerge)"),
              ("unions_refused", "matches refused: conflicting names, protected or overused values"),
              ("refused_evidence", "identifiers not taken as evidence"), ("detached", "deleted records detached")]


def merge_summary(engine: Engine, run_id: str, resolved: dict[str, int] | None = None) -> str:
    """Markdown: what resolution did (counts, conflicts refused) and the merges with their evidence kinds."""
    with session_scope(engine) as s:
        events = list(s.exec(select(MergeEvent).where(MergeEvent.run_id == run_id)))
    head = []
    if resolved:
        head = ["**Resolution:** " + "; ".join(f"{label} {int(resolved.get(k, 0))}" for k, label in RESOLUTION
                                              if resolved.get(k)) or "**Resolution:** nothing to resolve", ""]
    if not events:
        return "\n".join(head + ["**Merges:** 0, **unmerges:** 0"])
    kinds = Counter(e.kind for e in events)
    evidence = Counter()
    for e in events:
        for k in (e.evidence or {}).get("keys", []) or (e.evidence or {}).get("kinds", []) or []:
            evidence[str(k).split(":")[0]] += 1
    lines = head + [f"**Merges:** {kinds.get('merge', 0)}, **unmerges:** {kinds.get('unmerge', 0)}", "",
             "| survivor | absorbed | evidence |", "|---|---|---|"]
    for e in events[:50]:
        ev = ", ".join(sorted({str(k).split(":")[0] for k in ((e.evidence or {}).get("keys") or
                                                               (e.evidence or {}).get("kinds") or [])})) or e.kind
        lines.append(f"| {e.survivor_id} | {e.absorbed_id} | {mask_text(ev)} |")
    if len(events) > 50:
        lines.append(f"| ... | {len(events) - 50} more | |")
    if evidence:
        lines.append("\nEvidence kinds: " + ", ".join(f"{k} x{v}" for k, v in evidence.most_common()))
    return "\n".join(lines)


def merge_summary_artifact(engine: Engine, run_id: str, resolved: dict[str, int] | None = None) -> None:
    create_markdown_artifact(markdown=merge_summary(engine, run_id, resolved), key="merge-summary",
                             description="Merges and conflicts of this run (no personal data)")


def journey_artifact(engine: Engine, *, days: int = 30) -> dict[str, Any]:
    from identity import analytics

    with session_scope(engine) as s:
        data = analytics.journey_metrics(s, days=days)
        md = analytics.journey_markdown(data)
    create_markdown_artifact(markdown=md, key="journey-report", description=f"Journey analytics, last {days} days")
    return data


def _key(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")
