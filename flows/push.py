"""Executing a push plan through the connectors (plain functions; the push-back flow wraps them).

Writes go out in chunks; after each chunk its outcomes are recorded in the outbound ledger in one
transaction, so a crash loses at most one chunk of idempotent upserts. Before a chunk goes out,
what it may change is noted in the ledger (write-ahead), so a write whose answer was lost still
reads back as our echo. Records the vendor refused (bad data) are dead-lettered with the vendor's
reason; loop alarms are dead-lettered and flag the run. Records left unconfirmed by a retryable
failure (quota spent, a 5xx that outlived its retries, a locked row) are not bad input: the push to
that system stops there, is reported, and its push checkpoint (change-feed position) stays put, so
the next run plans them again (the ledger makes what did succeed a no-op). The checkpoint advances
only when all the system's streams did.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlmodel import select

from connectors.base import Connector, chunks
from connectors.errors import AuthError, ConnectorError, QuotaExhaustedError
from identity.ingest import dead_letter, letter_id, letter_reason
from identity.push import (
    MERGE_STREAM,
    PushPlan,
    StreamPlan,
    check_breaker,
    merge_key,
    note_merge,
    record_attempts,
    record_outcomes,
    save_push_checkpoint,
)
from identity.runs import flag_run
from identity.store import DeadLetter, OutboundLedger, run_in_transaction
from omnisync.privacy import mask_text
from omnisync.records import fingerprint

log = logging.getLogger("omnisync.push")
CHUNK = 1000


class PushIncomplete(ConnectorError):
    """Some records of a chunk were not confirmed for a reason that may pass: stop this system."""


@dataclass
class PushResult:
    counts: dict[str, Counter] = field(default_factory=dict)
    api_calls: dict[str, int] = field(default_factory=dict)
    failed_systems: dict[str, str] = field(default_factory=dict)
    alarms: int = 0
    merges: int = 0

    def bump(self, system: str, stream: str, key: str, n: int = 1) -> None:
        self.counts.setdefault(f"{system}/{stream}", Counter())[key] += n


def _dead_letter_once(session, *, system: str, stream: str, external_id: str | None, stage: str, reason: str,
                      payload=None, run_id: str | None = None) -> None:
    """One open letter per record and reason: a write refused again (planned again because the golden
    record changed, or a loop alarm raised run after run) is one more attempt on the same letter,
    so the dead-letter table does not depend on how many runs it took."""
    # Compared in the forms the letter keeps (masked reason, masked or shortened id: letter_id).
    masked = letter_reason(reason)
    q = select(DeadLetter).where(DeadLetter.resolved_at.is_(None), DeadLetter.system == system,
                                 DeadLetter.stream == stream, DeadLetter.stage == stage, DeadLetter.reason == masked,
                                 DeadLetter.external_id.is_(None) if external_id is None
                                 else DeadLetter.external_id == letter_id(external_id))
    letter = session.exec(q.limit(1)).first()
    if letter is None:
        dead_letter(session, system=system, stream=stream, external_id=external_id, stage=stage, reason=reason,
                    payload=payload, run_id=run_id)
        return
    letter.attempts += 1
    letter.run_id = run_id or letter.run_id
    session.add(letter)


def execute_plan(engine: Engine, plan: PushPlan, connectors: dict[str, Connector], *, run_id: str | None = None,
                 force: bool = False, on_chunk: Callable[[PushResult], None] | None = None) -> PushResult:
    check_breaker(plan, force=force)
    result = PushResult()
    if plan.alarms:
        def alarm(session):
            for a in plan.alarms:
                _dead_letter_once(
                    session, system=a.system, stream=a.stream, external_id=a.external_id, stage="loop",
                    reason=f"{a.system}/{a.stream}/{a.external_id}: loop alarm: fields {', '.join(a.fields)} "
                           f"re-written on consecutive runs; another system keeps changing them back. Not written "
                           f"again: fix the field's direction (mappings/) or survivorship rule; the record is "
                           f"planned again when its golden record or this record next changes, or by "
                           f"`omnisync push --full` (a loop alarm is not replayed).",
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
            # Merges first: a duplicate still holding a unique value (the golden-id link of a record
            # we created) would make the survivor's write fail until the next change.
            merges = [(survivor, merged) for s, survivor, merged in plan.merges if s == system]
            if merges:
                result.merges += _merge(engine, conn, system, merges, plan, run_id)
            for (s, stream), sp in sorted(plan.streams.items()):
                if s == system and sp.records:
                    _write_stream(engine, conn, sp, result, run_id, on_chunk)
        except (QuotaExhaustedError, ConnectorError) as e:  # PushIncomplete included
            result.failed_systems[system] = str(e)
            log.error("push to %s stopped: %s", system, e)
            continue
        finally:
            result.api_calls[system] = conn.api_calls - before
        run_in_transaction(lambda s, system=system: save_push_checkpoint(s, system, plan.seq, plan.planned_at), engine)
    return result


def _merge(engine: Engine, conn: Connector, system: str, merges: list[tuple[str, str]], plan: PushPlan,
           run_id: str | None) -> int:
    """CRM merges through the vendor's merge API, each recorded once in the ledger (a merge done is
    never asked again, even before the next read shows the merged record gone). A refused merge is
    dead-lettered with the vendor's reason; the other merges and the system's writes go on."""
    merge = getattr(conn, "merge", None)
    if merge is None:
        return 0
    golden_of = plan.merge_golden
    done = 0
    for survivor, merged in merges:
        gid = golden_of.get((system, merged), "")
        since_fp, ours = plan.merge_since.get((system, merged), (None, {}))
        if ours:
            run_in_transaction(lambda s, gid=gid, survivor=survivor, since_fp=since_fp, ours=ours: note_merge(
                s, system, gid, survivor, since_fp, ours), engine)
        try:
            merge(survivor, merged)
        except (QuotaExhaustedError, AuthError):
            raise
        except ConnectorError as e:
            run_in_transaction(lambda s, e=e, merged=merged: _dead_letter_once(
                s, system=system, stream=MERGE_STREAM, external_id=merged, stage="push", run_id=run_id,
                reason=f"{system}/merge/{merged} into {survivor}: {e}"), engine)
            continue

        def record(s, survivor=survivor, merged=merged, gid=gid):
            s.add(OutboundLedger(target_system=system, target_stream=MERGE_STREAM, key=merge_key(gid, merged),
                                 external_id=merged, fingerprint=fingerprint({"survivor": survivor}),
                                 payload={"survivor": survivor}))
        run_in_transaction(record, engine)
        done += 1
    return done


def _write_stream(engine: Engine, conn: Connector, sp: StreamPlan, result: PushResult, run_id: str | None,
                  on_chunk: Callable[[PushResult], None] | None) -> None:
    # Chunks never split a vendor batch: a vendor packing more per call (Segment, 10,000 messages
    # up to 500 KB) gets whole batches, so the ledger's chunking costs no extra calls.
    spec = conn.streams.get(sp.stream)
    for batch in chunks(sp.records, max(CHUNK, spec.write_batch if spec else 0)):
        # Write-ahead: what the chunk may change is in the ledger before it goes out, so a record
        # showing our values after a lost answer (quota, crash) still reads back as our echo.
        run_in_transaction(lambda s, batch=batch: record_attempts(s, sp, list(batch)), engine)
        outcomes = conn.write(sp.stream, list(batch))
        by_key = {r.key: r for r in batch}

        def record(session, outcomes=outcomes):
            counts = record_outcomes(session, sp, outcomes)
            for o in outcomes:
                if not o.ok and not o.retryable:
                    rec = by_key.get(o.key)
                    reason = f"{sp.system}/{sp.stream}/{o.external_id or o.key}: {o.error}"
                    _dead_letter_once(session, system=sp.system, stream=sp.stream, external_id=o.external_id,
                                      stage="push", reason=reason, payload=rec.payload if rec else None, run_id=run_id)
            return counts

        for status, n in run_in_transaction(record, engine).items():
            result.bump(sp.system, sp.stream, status, n)
        retry = [o for o in outcomes if not o.ok and o.retryable]
        if retry:
            result.bump(sp.system, sp.stream, "retry_next_run", len(retry))
        if on_chunk:
            on_chunk(result)
        if retry:
            raise PushIncomplete(f"{sp.stream}: {len(retry)} record(s) not confirmed: {mask_text(str(retry[0].error))}",
                                 system=sp.system, action="They are planned again by the next run.")
