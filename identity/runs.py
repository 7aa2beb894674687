"""Run bookkeeping in omnisync's own store: what each flow run did, for `omnisync status` and the API."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from identity.store import SyncRun
from omnisync.records import utcnow


def start_run(session: Session, run_id: str, flow: str) -> SyncRun:
    run = session.get(SyncRun, run_id)
    if run is None:
        run = SyncRun(run_id=run_id, flow=flow)
    run.status, run.finished_at = "running", None
    session.add(run)
    return run


def finish_run(session: Session, run_id: str, *, status: str, counts: dict[str, Any],
               flagged: str | None = None) -> None:
    run = session.get(SyncRun, run_id) or SyncRun(run_id=run_id, flow="unknown")
    run.status, run.counts, run.finished_at = status, counts, utcnow()
    if flagged:
        run.flagged = flagged if not run.flagged else f"{run.flagged}; {flagged}"
    session.add(run)


def flag_run(session: Session, run_id: str, reason: str) -> None:
    run = session.get(SyncRun, run_id)
    if run is not None:
        run.flagged = reason if not run.flagged else f"{run.flagged}; {reason}"
        session.add(run)


def last_run(session: Session) -> SyncRun | None:
    return session.exec(select(SyncRun).order_by(SyncRun.started_at.desc()).limit(1)).first()
