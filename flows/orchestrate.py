"""The omnichannel run as one plain function, parametrized by how each stage is executed.

``flows.pipeline.omnichannel_sync`` passes Prefect tasks as the stages, so each appears in the UI
with retries; tests, benchmarks and chaos trials pass the plain functions below (no Prefect), so
the order of stages, the run bookkeeping and the status rules exist exactly once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flows.connect import make_connector
from flows.push import execute_plan
from flows.sync import readable_streams, resolve_all, sync_stream
from identity.ingest import Counts
from identity.push import plan_push
from identity.runs import finish_run, start_run
from identity.store import get_engine, run_in_transaction, session_scope
from omnisync.privacy import mask_text

log = logging.getLogger("omnisync.orchestrate")

ALL_SYSTEMS = ["salesforce", "hubspot", "zoom", "twilio", "sendgrid", "segment"]
PUSH_SYSTEMS = ["salesforce", "hubspot", "zoom", "segment", "sendgrid"]


# --- the stages as plain functions (same signatures as the Prefect tasks) ------------------------

def sync_stage(system: str, stream: str, partition: str = "", start=None, until=None,
               run_id: str | None = None) -> dict[str, Any]:
    conn = make_connector(system)
    try:
        res = sync_stream(get_engine(), conn, stream, run_id=run_id, partition=partition, until=until)
    finally:
        conn.close()
    return {"system": system, "stream": stream, "status": res.status, "message": res.message,
            "resume_at": res.resume_at.isoformat() if res.resume_at else None,
            "counts": res.counts.as_dict(), "pages": res.pages, "api_calls": res.api_calls}


def resolve_stage(run_id: str | None = None) -> dict[str, int]:
    return resolve_all(get_engine(), run_id=run_id)


def plan_stage(systems: list[str], full: bool = False) -> Any:
    with session_scope(get_engine()) as s:
        return plan_push(s, systems, full=full)


def push_stage(plan: Any, systems: list[str], force: bool = False, run_id: str | None = None) -> dict[str, Any]:
    conns = {s: make_connector(s) for s in systems
             if any(k[0] == s for k in plan.streams) or any(m[0] == s for m in plan.merges)}
    try:
        result = execute_plan(get_engine(), plan, conns, run_id=run_id, force=force)
    finally:
        for c in conns.values():
            c.close()
    return {"counts": {k: dict(v) for k, v in result.counts.items()}, "api_calls": result.api_calls,
            "failed": result.failed_systems, "alarms": result.alarms, "merges": result.merges}


def enrich_stage(run_id: str | None = None) -> dict[str, Any]:
    from flows.enrich import enrich_from_cdp

    conn = make_connector("segment")
    try:
        out = enrich_from_cdp(get_engine(), conn, run_id=run_id)
        if conn.api_calls:  # lookups cost calls like reads do: the counts table shows them
            out["counts"].setdefault("segment/profiles", {})["api_calls"] = conn.api_calls
        return out
    finally:
        conn.close()


def drain_stage(vendor: str | None = None, run_id: str | None = None) -> dict[str, Any]:
    from flows.webhooks import drain

    return drain(get_engine(), vendor=vendor, run_id=run_id)


@dataclass
class Stages:
    sync: Callable[..., dict[str, Any]] = sync_stage
    resolve: Callable[..., dict[str, int]] = resolve_stage
    plan: Callable[..., Any] = plan_stage
    push: Callable[..., dict[str, Any]] = push_stage
    drain: Callable[..., dict[str, Any]] = drain_stage
    enrich: Callable[..., dict[str, Any]] = enrich_stage


def collect(results: list[dict[str, Any]]) -> Counts:
    total = Counts()
    for r in results:
        for key, c in (r.get("counts") or {}).items():
            system, stream = key.split("/", 1)
            for k, v in c.items():
                total.bump(system, stream, k, v)
    return total


def streams_of(system: str) -> list[str]:
    conn = make_connector(system)
    try:
        return readable_streams(conn)
    finally:
        conn.close()


def _sync_system(stages: Stages, system: str, run_id: str) -> list[dict[str, Any]]:
    """Every stream of ``system``; one that fails (after its retries) is reported, and the other
    streams and systems go on: one vendor's outage must not stop the rest of the run."""
    try:
        streams = streams_of(system)
    except Exception as e:  # no credentials, unknown system: the system fails, not the run
        return [_failed(system, "*", e)]
    out = []
    for stream in streams:
        try:
            out.append(stages.sync(system, stream, run_id=run_id))
        except Exception as e:
            out.append(_failed(system, stream, e))
    return out


def _failed(system: str, stream: str, error: BaseException) -> dict[str, Any]:
    message = mask_text(f"{type(error).__name__}: {error}")[:500]
    log.error("%s/%s failed, the other streams go on: %s", system, stream, message)
    return {"system": system, "stream": stream, "status": "failed", "message": message, "resume_at": None,
            "counts": {}, "pages": 0, "api_calls": 0}


def omnichannel(*, systems: list[str] | None = None, push: bool = True, force_push: bool = False,
                run_id: str | None = None, stages: Stages | None = None,
                flow: str = "omnichannel-sync") -> dict[str, Any]:
    """Drain webhooks, sync every system's streams, resolve, push back; record the run."""
    stages = stages or Stages()
    run_id = run_id or f"local-{uuid.uuid4().hex[:12]}"
    systems = systems or ALL_SYSTEMS
    engine = get_engine()
    run_in_transaction(lambda s: start_run(s, run_id, flow), engine)
    webhooks = stages.drain(run_id=run_id)
    results = [r for system in systems for r in _sync_system(stages, system, run_id)]
    counts = collect(results).merge(collect([webhooks]))
    resolved = stages.resolve(run_id=run_id)
    enriched = None
    if "segment" in systems:  # the CDP answers lookups only: ask it about the people who changed
        try:
            enriched = stages.enrich(run_id=run_id)
        except Exception as e:  # like a failed stream: reported, its checkpoint kept, the run goes on
            results.append(_failed("segment", "profiles", e))
        else:
            counts.merge(collect([enriched]))
            for k, v in stages.resolve(run_id=run_id).items():
                resolved[k] = resolved.get(k, 0) + v
    pushed = None
    if push:
        targets = [s for s in PUSH_SYSTEMS if s in systems]
        pushed = stages.push(stages.plan(targets), targets, force=force_push, run_id=run_id)
    quota = [r for r in results if r["status"] == "quota"]
    failed = [{"system": r["system"], "stream": r["stream"], "message": r["message"]}
              for r in results if r["status"] == "failed"]
    status = "partial" if quota or failed or (pushed and pushed["failed"]) else "completed"
    summary = {"run_id": run_id, "status": status, "counts": counts.as_dict(), "resolved": resolved,
               "enriched": {"lookups": enriched["lookups"]} if enriched else None, "pushed": pushed,
               "webhooks": {k: v for k, v in webhooks.items() if k != "counts"},
               "reconciles": counts.reconciles(),
               "quota_stops": [{"system": r["system"], "stream": r["stream"], "resume_at": r["resume_at"]}
                               for r in quota],
               "failed": failed}
    run_in_transaction(lambda s: finish_run(s, run_id, status=status, counts=summary,
                                            flagged="loop alarm" if pushed and pushed["alarms"] else None), engine)
    return summary


if __name__ == "__main__":  # a plain run without Prefect (crash tests and chaos trials use this)
    import json
    import sys

    args = sys.argv[1:]
    out = omnichannel(systems=args[0].split(",") if args else None, push="--no-push" not in args)
    print(json.dumps({"status": out["status"], "reconciles": out["reconciles"]}))
