"""Dead-letter replay: run dead-lettered records through the current mappings again.

A letter is closed (``resolved_at``) when its record now ingests cleanly; otherwise its attempt
count goes up and it stays open with its original reason. Replaying never creates a second
letter for the same record.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import select

from identity.ingest import ingest_records
from identity.store import DeadLetter, run_in_transaction
from omnisync.records import SourceRecord, utcnow
from omnisync.sealing import unseal


def replay(engine: Engine, *, system: str | None = None, stage: str = "map", limit: int = 10_000,
           run_id: str | None = None) -> dict[str, int]:
    def work(session):
        q = select(DeadLetter).where(DeadLetter.resolved_at.is_(None), DeadLetter.stage == stage)
        if system:
            q = q.where(DeadLetter.system == system)
        letters = list(session.exec(q.order_by(DeadLetter.id).limit(limit)))
        out = {"replayed": 0, "resolved": 0, "still_failing": 0, "not_replayable": 0}
        for letter in letters:
            try:
                record = SourceRecord.model_validate(unseal(letter.payload)["record"])
            except (ValueError, KeyError, TypeError):
                out["not_replayable"] += 1
                continue
            out["replayed"] += 1
            nested = session.begin_nested()
            counts = ingest_records(session, [record], run_id=run_id)
            if counts.total("dead_lettered"):
                nested.rollback()  # drop the duplicate letter the failed attempt wrote
                letter.attempts += 1
                out["still_failing"] += 1
            else:
                nested.commit()
                letter.resolved_at = utcnow()
                out["resolved"] += 1
            session.add(letter)
        return out

    return run_in_transaction(work, engine)
