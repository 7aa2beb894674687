"""Prefect flows: thin orchestration over the plain functions in flows/sync.py, flows/push.py and identity/.

Flows (names as they appear in the Prefect UI and prefect.yaml):

* ``sync-system`` -- incremental read of one system's streams into the store;
* ``resolve-identities`` -- resolve everything ingest left pending into golden records;
* ``push-back`` -- plan and write the golden record back to every system (``dry_run`` = plan only);
* ``omnichannel-sync`` -- the parent: drain webhooks, sync every system, resolve, push;
* ``backfill`` -- a first load split into time-window partitions (run in-process or as deployment
  runs that several workers share);
* ``reconcile`` -- sweeps what no cursor shows (hard deletes, merges, formula/association changes);
* ``replay-dead-letters``, ``erase-person``, ``journey-report``, ``drain-webhooks``.

A system that fails does not stop the others: ``omnichannel-sync`` then ends in a completed state
named ``Partial`` whose message says what failed (or stopped on a quota), and its counts table
shows the failed stream. Every task handles a batch (a stream page loop, a resolution batch, a push chunk), never one record.
Retries are layered: tenacity inside connectors for transient HTTP faults; Prefect task retries only
for coarse failures, refused for client errors (4xx) by :func:`retry_unless_client_error`.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Completed, Failed

from connectors.errors import ConnectorError
from flows import orchestrate, report
from flows.connect import CONNECTORS, make_connector
from identity.push import CircuitOpen
from identity.store import get_engine, run_in_transaction
from omnisync.privacy import install_log_masking, mask_text
from omnisync.records import Cursor

ALL_SYSTEMS = orchestrate.ALL_SYSTEMS
PUSH_SYSTEMS = orchestrate.PUSH_SYSTEMS


def retry_unless_client_error(task, task_run, state) -> bool:
    """Prefect retry condition: retry coarse failures, never a 4xx, a bad mapping or an open push breaker."""
    try:
        state.result()
    except ConnectorError as e:
        return e.retryable
    except (ValueError, TypeError, KeyError, CircuitOpen):  # a retry would fail the same way
        return False
    except Exception:
        return True
    return True


def _run_id() -> str:
    rid = current_flow_run.get_id()
    return str(rid) if rid else f"local-{uuid.uuid4().hex[:12]}"


def _masked_logger() -> logging.Logger | logging.LoggerAdapter:
    install_log_masking(("", "omnisync", "prefect", "prefect.flow_runs", "prefect.task_runs"))
    return get_run_logger()


# --- tasks ---------------------------------------------------------------------------------------

@task(name="sync-stream", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_client_error,
      task_run_name="sync {system}/{stream}{partition}")
def sync_stream_task(system: str, stream: str, partition: str = "", start: datetime | None = None,
                     until: datetime | None = None, run_id: str | None = None) -> dict[str, Any]:
    if partition and start is not None:
        _seed_partition(system, stream, partition, start, run_id)
    return orchestrate.sync_stage(system, stream, partition=partition, until=until, run_id=run_id)


def _seed_partition(system: str, stream: str, partition: str, start: datetime, run_id: str | None) -> None:
    """A partition starts at its window's lower bound the first time it runs."""
    from identity.ingest import load_cursor, save_cursor

    def seed(s):
        if load_cursor(s, system, stream, partition) is None:
            save_cursor(s, system, stream, Cursor(modified_at=start), records=0, partition=partition, run_id=run_id)
    run_in_transaction(seed, get_engine())


resolve_task = task(name="resolve-batch", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
                    retry_condition_fn=retry_unless_client_error)(orchestrate.resolve_stage)


@task(name="plan-push", cache_policy=NO_CACHE)
def plan_task(systems: list[str], full: bool = False) -> Any:
    plan = orchestrate.plan_stage(systems, full=full)
    report.plan_artifact(plan)  # every flow that plans a push shows what it will write
    return plan


push_task = task(name="write-push", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5,
                 retry_condition_fn=retry_unless_client_error)(orchestrate.push_stage)
drain_webhooks_task = task(name="drain-webhooks", cache_policy=NO_CACHE)(orchestrate.drain_stage)
enrich_task = task(name="enrich-from-cdp", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5,
                   retry_condition_fn=retry_unless_client_error)(orchestrate.enrich_stage)
PREFECT_STAGES = orchestrate.Stages(sync=sync_stream_task, resolve=resolve_task, plan=plan_task, push=push_task,
                                    drain=drain_webhooks_task, enrich=enrich_task)


# --- flows ---------------------------------------------------------------------------------------

@flow(name="sync-system", log_prints=False)
def sync_system(system: str, streams: list[str] | None = None) -> dict[str, Any]:
    """Incremental read of one system's streams into the golden store."""
    logger = _masked_logger()
    run_id = _run_id()
    names = streams or orchestrate.streams_of(system)
    results = [sync_stream_task(system, s, run_id=run_id) for s in names]
    counts = orchestrate.collect(results)
    report.counts_artifact(counts, key=f"sync-{system}", title=f"{system} sync")
    for r in results:
        if r["status"] == "quota":
            logger.warning("%s/%s stopped at its checkpoint: quota exhausted; resume after %s",
                           system, r["stream"], r["resume_at"] or "the quota resets")
    return {"results": results, "counts": counts.as_dict()}


@flow(name="resolve-identities")
def resolve_identities() -> dict[str, int]:
    """Resolve every pending source record into golden records (merges, survivorship, timeline links)."""
    _masked_logger()
    return resolve_task(run_id=_run_id())


@flow(name="push-back")
def push_back(systems: list[str] | None = None, force: bool = False, full: bool = False,
              dry_run: bool = False) -> dict[str, Any]:
    """Write changed golden fields, opt-outs and the timeline back to every connected system."""
    logger = _masked_logger()
    run_id = _run_id()
    systems = systems or PUSH_SYSTEMS
    plan = plan_task(systems, full=full)
    if dry_run:
        return {"planned": plan.total, "rows": plan.summary()}
    out = push_task(plan, systems, force=force, run_id=run_id)
    if out["alarms"]:
        logger.warning("loop alarm on %d record(s): see dead letters (stage loop)", out["alarms"])
    return out


@flow(name="omnichannel-sync")
def omnichannel_sync(systems: list[str] | None = None, push: bool = True, force_push: bool = False) -> dict[str, Any]:
    """The whole loop: drain webhooks, sync every system, resolve identities, push back."""
    logger = _masked_logger()
    run_id = _run_id()
    summary = orchestrate.omnichannel(systems=systems, push=push, force_push=force_push, run_id=run_id,
                                      stages=PREFECT_STAGES)
    report.counts_artifact(orchestrate.collect([summary]), key="omnichannel-counts",
                           title="Records per system and stream", pushed=summary["pushed"],
                           resolved=summary["resolved"], failed=summary["failed"])
    report.merge_summary_artifact(get_engine(), run_id, summary["resolved"])
    for q in summary["quota_stops"]:
        logger.warning("%s/%s stopped at its checkpoint (quota); resume after %s", q["system"], q["stream"],
                       q["resume_at"] or "the quota resets")
    for f in summary["failed"]:
        logger.error("%s/%s failed (the other systems ran): %s", f["system"], f["stream"], f["message"])
    if summary["status"] == "partial":
        # Completed (callers and schedules carry on) but named Partial, with what failed as its message.
        return Completed(name="Partial", message=_partial_message(summary), data=summary)
    return summary


def _partial_message(summary: dict[str, Any]) -> str:
    parts = [f"{f['system']}/{f['stream']} failed" for f in summary["failed"]]
    parts += [f"{q['system']}/{q['stream']} stopped on quota" for q in summary["quota_stops"]]
    parts += [f"push to {s} failed" for s in ((summary.get("pushed") or {}).get("failed") or {})]
    return "; ".join(parts)[:1000]


@flow(name="backfill")
def backfill(system: str, stream: str, start: datetime, end: datetime | None = None, partitions: int = 4,
             deployment: str | None = None) -> dict[str, Any]:
    """A first load split into time windows, each with its own checkpoint.

    With ``deployment`` (e.g. ``"backfill-partition/backfill-partition"``) each window becomes a
    flow run of that deployment, so every worker polling the work pool shares the load; otherwise
    windows run here as concurrent tasks. Either way a window killed midway resumes from its own
    checkpoint, and windows never overlap, so no work is duplicated or lost.
    """
    _masked_logger()
    run_id = _run_id()
    end = end or datetime.now(timezone.utc)
    windows = split_windows(start, end, partitions)
    progress = create_progress_artifact(progress=0.0, key=f"backfill-{system}-{stream}".replace("_", "-"),
                                        description=f"{system}/{stream} backfill: {len(windows)} windows")
    if deployment:
        from prefect.deployments import run_deployment

        runs = [run_deployment(deployment, parameters={"system": system, "stream": stream, "start": a, "until": b,
                                                        "partition": label}, timeout=0)
                for label, a, b in windows]
        results = _await_runs(runs, [label for label, _, _ in windows], progress, system, stream)
    else:
        futures = [sync_stream_task.submit(system, stream, partition=label, start=a, until=b, run_id=run_id)
                   for label, a, b in windows]
        results = []
        for i, ((label, _, _), f) in enumerate(zip(windows, futures), 1):
            f.wait()
            if f.state.is_completed():
                results.append({**f.state.result(), "partition": label})
            else:  # one window failing does not hide what the others did
                results.append({"system": system, "stream": stream, "partition": label, "status": "failed",
                                "message": mask_text(f.state.message or f.state.name or "failed")[:300],
                                "counts": {}})
            update_progress_artifact(progress, progress=100.0 * i / len(futures))
    counts = orchestrate.collect([r for r in results if r.get("counts")])
    incomplete = [r for r in results if r.get("status") not in ("ok", "completed")]
    report.counts_artifact(counts, key=f"backfill-{system}", title=f"{system}/{stream} backfill",
                           failed=[{"system": system, "stream": f"{stream} window {r['partition']}",
                                    "message": r.get("message") or r.get("status")} for r in incomplete])
    summary = {"windows": len(windows), "counts": counts.as_dict(),
               "incomplete": [{"partition": r["partition"], "status": r.get("status"), "message": r.get("message")}
                              for r in incomplete]}
    if incomplete:
        return Failed(message=f"{len(incomplete)} of {len(windows)} windows did not finish "
                              f"({', '.join(sorted({str(r.get('status')) for r in incomplete}))}); run the same "
                              "backfill again: each window resumes from its own checkpoint", data=summary)
    return summary


@flow(name="backfill-partition")
def backfill_partition(system: str, stream: str, start: datetime, until: datetime, partition: str) -> dict[str, Any]:
    """One backfill window (what each worker runs when a backfill is spread over a work pool)."""
    _masked_logger()
    out = sync_stream_task(system, stream, partition=partition, start=start, until=until, run_id=_run_id())
    if out["status"] != "ok":  # a window stopped short (quota, a failing stream): its run says so
        return Failed(message=f"window {partition}: {out['status']}: {mask_text(out.get('message') or '')[:300]}"
                              + (f" (resume after {out['resume_at']})" if out.get("resume_at") else ""), data=out)
    return out


def split_windows(start: datetime, end: datetime, partitions: int) -> list[tuple[str, datetime, datetime]]:
    """Non-overlapping, gap-free [a, b) windows covering [start, end)."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    if end <= start:
        raise ValueError("end must be after start")
    step = (end - start) / partitions
    bounds = [start + step * i for i in range(partitions)] + [end]
    # The label names the window's checkpoint: to the microsecond, so windows narrower than a
    # second (a short incremental range split many ways) never share one.
    labels = [f"{b:%Y%m%dT%H%M%S.%f}" for b in bounds[:-1]]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{partitions} windows do not fit between {start:%Y-%m-%dT%H:%M:%S.%f} and "
                         f"{end:%Y-%m-%dT%H:%M:%S.%f}; use fewer partitions")
    return [(labels[i], bounds[i], bounds[i + 1]) for i in range(partitions)]


def _await_runs(runs, labels: list[str], progress, system: str, stream: str) -> list[dict[str, Any]]:
    """Wait for the windows' deployment runs; each window's records come from its checkpoint in the
    shared store (a worker's flow result is not persisted, the store is)."""
    import time

    from prefect import get_client
    from sqlmodel import select

    from identity.store import Checkpoint, session_scope

    pending = {r.id: label for r, label in zip(runs, labels)}
    states: dict[str, Any] = {}
    with get_client(sync_client=True) as client:
        while pending:
            for rid, label in list(pending.items()):
                fr = client.read_flow_run(rid)
                if fr.state and fr.state.is_final():
                    del pending[rid]
                    states[label] = fr.state
            update_progress_artifact(progress, progress=100.0 * len(states) / len(runs))
            if pending:
                time.sleep(2)
    with session_scope(get_engine()) as s:
        records = {c.partition: c.records for c in s.exec(select(Checkpoint).where(
            Checkpoint.system == system, Checkpoint.stream == stream, Checkpoint.partition.in_(labels)))}
    out = []
    for label in labels:
        state = states[label]
        ok = state.is_completed()
        out.append({"system": system, "stream": stream, "partition": label,
                    "status": "ok" if ok else "failed",
                    "message": None if ok else mask_text(state.message or state.name or "failed")[:300],
                    "counts": {f"{system}/{stream}": {"read": records.get(label, 0)}}})
    return out


@flow(name="reconcile")
def reconcile(systems: list[str] | None = None, kinds: list[str] | None = None) -> dict[str, Any]:
    """Full sweep: hard deletes, merges, formula and association changes that no cursor shows.

    ``kinds`` narrows the streams read in full (default: profiles and interactions)."""
    from flows.reconcile import KINDS, sweep

    _masked_logger()
    run_id = _run_id()
    out = {}
    for system in systems or ALL_SYSTEMS:
        out[system] = sweep(get_engine(), make_connector(system), run_id=run_id, kinds=tuple(kinds or KINDS))
    resolve_task(run_id=run_id)
    return out


@flow(name="replay-dead-letters")
def replay_dead_letters(system: str | None = None, stage: str = "map", limit: int = 10_000) -> dict[str, int]:
    """Re-run dead-lettered records through the (fixed) mappings; resolved letters are closed."""
    from flows.replay import replay

    _masked_logger()
    out = replay(get_engine(), system=system, stage=stage, limit=limit, run_id=_run_id())
    resolve_task(run_id=_run_id())
    return out


@flow(name="erase-person")
def erase_person(golden_id: str) -> dict[str, Any]:
    """Erase a person everywhere (idempotent, resumable) and leave a tombstone.

    Takes the golden id only: Prefect keeps a run's parameters in its history, which must not hold
    the email or phone of a person being erased. ``omnisync erase --email/--phone`` looks the golden
    id up first (also through the tombstone, so a resumed erasure finds its person)."""
    from flows.erase import erase

    _masked_logger()
    return erase(get_engine(), golden_id=golden_id, connector_factory=make_connector, systems=list(CONNECTORS))


@flow(name="journey-report")
def journey_report(days: int = 30) -> dict[str, Any]:
    """Journey analytics over the unified timeline, published as a Prefect artifact."""
    _masked_logger()
    return report.journey_artifact(get_engine(), days=days)


@flow(name="drain-webhooks")
def drain_webhooks(vendor: str | None = None) -> dict[str, Any]:
    """Ingest stored webhook events (the receiver stores first, then triggers this flow)."""
    _masked_logger()
    run_id = _run_id()
    out = drain_webhooks_task(vendor=vendor, run_id=run_id)
    resolve_task(run_id=run_id)
    return out
