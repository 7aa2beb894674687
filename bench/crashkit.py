"""Crash kit: run a sync in a child process, SIGKILL it at a chosen moment, compare stores.

The child (``python -m bench.crashkit SYSTEM STREAM``) is the plain sync loop of flows/sync.py with
the connector flows use (credentials from ``OMNISYNC_SANDBOX_INFO``, the store from
``OMNISYNC_DATABASE_URL``). After every committed page it prints one JSON line, so the parent knows
a checkpoint is durable before it pulls the trigger; the last line says the run finished.

:func:`store_snapshot` reads what a run leaves behind in a comparable form (no surrogate ids, no
ingestion times), so "the store after crash + re-run equals the store of an uninterrupted run" is
one ``==``. Used by tests/test_crash_resume.py and the chaos trials.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]


# --- the child -----------------------------------------------------------------------------------

def child_main(argv: list[str]) -> int:
    from flows.connect import make_connector
    from flows.sync import sync_stream
    from identity.store import get_engine

    system, stream = argv[0], argv[1]
    run_id = argv[2] if len(argv) > 2 else f"crashkit-{os.getpid()}"

    def emit(doc: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    conn = make_connector(system)
    try:
        res = sync_stream(get_engine(), conn, stream, run_id=run_id,
                          on_page=lambda r: emit({"pages": r.pages, "counts": r.counts.as_dict()}))
    finally:
        conn.close()
    emit({"done": True, "status": res.status, "pages": res.pages, "counts": res.counts.as_dict()})
    return 0


# --- the parent ----------------------------------------------------------------------------------

@dataclass
class ChildRun:
    """One child sync; lines it printed so far are in ``progress``."""

    proc: subprocess.Popen
    lines: "queue.Queue[dict[str, Any] | None]" = field(default_factory=queue.Queue)
    progress: list[dict[str, Any]] = field(default_factory=list)
    killed: bool = False

    def _next(self, deadline: float) -> dict[str, Any] | None:
        try:
            doc = self.lines.get(timeout=max(0.01, deadline - time.time()))
        except queue.Empty:
            raise TimeoutError(f"child {self.proc.pid} printed nothing in time") from None
        if doc is not None:
            self.progress.append(doc)
        return doc

    def wait_pages(self, pages: int, timeout: float = 120) -> dict[str, Any]:
        """Block until the child reports ``pages`` committed pages (or finishes first)."""
        deadline = time.time() + timeout
        while True:
            doc = self._next(deadline)
            if doc is None:
                raise RuntimeError(f"child exited early: {self.stderr()}")
            if doc.get("done") or doc["pages"] >= pages:
                return doc

    def kill(self) -> None:
        """SIGKILL: no finally blocks, no atexit, no flush; whatever was not committed is gone."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.killed = True
        # Lines printed before death are still in the pipe: they are pages committed too.
        deadline = time.time() + 10
        while self._next(deadline) is not None:
            pass

    def finish(self, timeout: float = 300) -> dict[str, Any]:
        deadline = time.time() + timeout
        while True:
            doc = self._next(deadline)
            if doc is None:
                raise RuntimeError(f"child exited without finishing: {self.stderr()}")
            if doc.get("done"):
                self.proc.wait(timeout=30)
                return doc

    def committed_counts(self) -> dict[str, dict[str, int]]:
        """Counts of the pages this child reported committed (the last progress line)."""
        pages = [p for p in self.progress if "counts" in p]
        return pages[-1]["counts"] if pages else {}

    def stderr(self) -> str:
        try:
            return (self.proc.stderr.read() or b"").decode(errors="replace")[-3000:]
        except Exception:  # pragma: no cover - diagnostics only
            return ""


def start_child(system: str, stream: str, env: dict[str, str], run_id: str | None = None) -> ChildRun:
    """Start ``python -m bench.crashkit SYSTEM STREAM`` with ``env`` over the current environment."""
    cmd = [sys.executable, "-m", "bench.crashkit", system, stream] + ([run_id] if run_id else [])
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    run = ChildRun(proc)

    def pump() -> None:
        for raw in proc.stdout:
            try:
                run.lines.put(json.loads(raw))
            except ValueError:
                continue
        run.lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return run


# --- comparing stores ----------------------------------------------------------------------------

def store_snapshot(url: str) -> dict[str, Any]:
    """What a sync leaves in the store, keyed by vendor identity (comparable across runs and backends)."""
    from sqlmodel import Session, func, select

    from identity.store import Checkpoint, ConsentEventRow, DeadLetter, InteractionRow, SourceRow
    from omnisync.records import as_utc

    eng = sa.create_engine(url)
    try:
        with Session(eng) as s:
            sources = {(r.system, r.stream, r.external_id): (as_utc(r.modified_at).isoformat(), r.deleted,
                                                            r.merged_into, r.fingerprint, r.kind, r.echo)
                       for r in s.exec(select(SourceRow))}
            source_rows = s.exec(select(func.count()).select_from(SourceRow)).one()
            interactions = {(r.system, r.external_id): r.fingerprint for r in s.exec(select(InteractionRow))}
            consent = {(r.system, r.external_id): (r.channel, r.purpose, r.status)
                       for r in s.exec(select(ConsentEventRow))}
            dead = Counter((r.system, r.stream, r.external_id, r.stage) for r in s.exec(select(DeadLetter)))
            cursors = {(r.system, r.stream, r.partition): r.cursor for r in s.exec(select(Checkpoint))}
    finally:
        eng.dispose()
    return {"sources": sources, "source_rows": source_rows, "interactions": interactions, "consent": consent,
            "dead_letters": dead, "cursors": cursors}


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
