"""Executing a push plan through the connectors (plain functions; the push-back flow wraps them).

Writes go out in chunks; after each chunk its outcomes are recorded in the outbound ledger in one
transaction, so a crash loses at most one chunk of idempotent upserts. Failed records are
dead-lettered with the vendor's reason; loop alarms are dead-lettered and flag the run. The
system's push checkpoint (change-feed position) advances only when all its streams succeeded.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from connectors.base import Connector, chunks
from connectors.errors import ConnectorError, QuotaExhaustedError
from identity.ingest import dead_letter
from identity.push import PushPlan, StreamPlan, check_breaker, record_outcomes, save_push_checkpoint
from identity.runs import flag_run
from identity.store import run_in_transaction

log = logging.getLogger("omnisync.push")
CHUNK = 1000


@dataclass
class PushResult:
    counts: dict[str, Counter] = field(default_factory=dict)
    api_calls: dict[str, int] = field(default_factory=dict)
    failed_systems: dict[str, str] = field(default_factory=dict)
    alarms: int = 0
    merges: int = 0

    def bump(self, system: str, stream: str, key: str, n: int = 1) -> None:
        self.counts.setdefault(f"{system}/{stream}", Counter())[key] += n


def execute_plan(engine: Engine, plan: PushPlan, connectors: dict[str, Connector], *, run_id: str | None = None,
                 force: bool = False, on_chunk: Callable[[PushResult], None] | None = None) -> PushResult:
    check_breaker(plan, force=force)
    result = PushResult()
    if plan.alarms:
        def alarm(session):
            for a in plan.alarms:
                dead_letter(session, system=a.system, stream=a.stream, external_id=a.external_id, stage="loop",
                            reason=f"{a.system}/{a.stream}/{a.external_id}: loop alarm: fields {', '.join(a.fields)} "
                                   f"re-written on consecutive runs; another system keeps changing them back. "
                                   f"Fix the field's direction or survivorship rule, then replay.",
                            run_id=run_id)
            if run_id:
                flag_run(session, run_id, f"loop alarm on {len(plan.alarms)} record(s)")
        run_in_transaction(alarm, engine)
        result.alarms = len(plan.alarms)

    systems = sorted({s for s, _ in plan.streams} | {m[0] for m in plan.merges})
    for system in systems:
        conn = connectors.get(system)
        if conn is None:
            continue
        before = conn.api_calls
        try:
            for (s, stream), sp in sorted(plan.streams.items()):
                if s == system and sp.records:
                    _write_stream(engine, conn, sp, result, run_id, on_chunk)
            for s, survivor, merged in plan.merges:
                if s == system and hasattr(conn, "merge"):
                    conn.merge(survivor, merged)
                    result.merges += 1
        except (QuotaExhaustedError, ConnectorError) as e:
            result.failed_systems[system] = str(e)
            log.error("push to %s stopped: %s", system, e)
            continue
        finally:
            result.api_calls[system] = conn.api_calls - before
        run_in_transaction(lambda s, system=system: save_push_checkpoint(s, system, plan.seq), engine)
    return result


def _write_stream(engine: Engine, conn: Connector, sp: StreamPlan, result: PushResult, run_id: str | None,
                  on_chunk: Callable[[PushResult], None] | None) -> None:
    for batch in chunks(sp.records, CHUNK):
        outcomes = conn.write(sp.stream, list(batch))
        by_key = {r.key: r for r in batch}

        def record(session, outcomes=outcomes):
            counts = record_outcomes(session, sp, outcomes)
            for o in outcomes:
                if not o.ok:
                    rec = by_key.get(o.key)
                    dead_letter(session, system=sp.system, stream=sp.stream, external_id=o.external_id,
                                stage="push", reason=f"{sp.system}/{sp.stream}/{o.external_id or o.key}: {o.error}",
                                payload=rec.payload if rec else None, run_id=run_id)
            return counts

        for status, n in run_in_transaction(record, engine).items():
            result.bump(sp.system, sp.stream, status, n)
        if on_chunk:
            on_chunk(result)
