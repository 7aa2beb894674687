"""Re-sync with nothing changed: the write calls each system gets (target 0), run after run.

Six sandboxes (vendor limits lifted, as in pipeline_bench) and a fresh SQLite store; the plain
omnichannel run (drain, sync, resolve, enrich, push) is repeated until a run writes nothing. The
first runs do write: the golden id links, the records each system lacks, the timeline activities;
the next one reads those back as echoes and finishes what they made possible. The figure the
issue asks for is the write calls of the runs once nothing changed in any vendor, per system, with
the read calls those runs spend to find that out.

Run: ``python -m bench.resync_bench [--quick]`` (people per sandbox: 1,000 quick, 10,000 full).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.pipeline_bench import _lift_client_budgets, served_sandboxes

WRITES = ("created", "updated", "deleted")
RUNS = 5


def _runs(info: Path, work: Path) -> list[dict[str, Any]]:
    os.environ.update(OMNISYNC_SANDBOX_INFO=str(info), OMNISYNC_HOME=str(work),
                      OMNISYNC_DATABASE_URL=f"sqlite:///{work / 'store.db'}")
    from omnisync.settings import reset_settings

    reset_settings()
    _lift_client_budgets()
    from flows.orchestrate import omnichannel

    out = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        s = omnichannel()
        pushed = s["pushed"] or {}
        writes: dict[str, int] = {}
        for key, c in (pushed.get("counts") or {}).items():
            system = key.split("/", 1)[0]
            writes[system] = writes.get(system, 0) + sum(int(c.get(k, 0)) for k in WRITES)
        reads = {}
        for key, c in s["counts"].items():
            system = key.split("/", 1)[0]
            reads[system] = reads.get(system, 0) + int(c.get("api_calls", 0))
        out.append({"status": s["status"], "seconds": time.perf_counter() - t0, "records_written": writes,
                    "write_calls": {k: int(v) for k, v in (pushed.get("api_calls") or {}).items()},
                    "read_calls": reads, "echoes": sum(int(c.get("echoes", 0)) for c in s["counts"].values())})
        if out[-1]["status"] == "completed" and not any(writes.values()) and len(out) >= 2 \
                and not any(out[-2]["records_written"].values()):
            break  # two quiet runs in a row: the second is the re-sync the figure is about
    return out


def main(quick: bool = False) -> dict[str, Any]:
    size = 1_000 if quick else 10_000
    work = Path(tempfile.mkdtemp(prefix=f"resync{size}-"))
    info = work / "sandbox.json"
    saved = {k: os.environ.get(k) for k in ("OMNISYNC_SANDBOX_INFO", "OMNISYNC_HOME", "OMNISYNC_DATABASE_URL")}
    try:
        with served_sandboxes(size, info):
            runs = _runs(info, work)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    systems = sorted({s for r in runs for s in (*r["write_calls"], *r["read_calls"])})
    print(f"{size:,d} people per sandbox; per run: records written / write (push) calls, then read calls")
    print(f"{'run':>4} {'status':>10} {'s':>6} " + " ".join(f"{s[:10]:>16}" for s in systems) + f" {'echoes':>8}")
    for i, r in enumerate(runs, 1):
        cells = [f"{r['records_written'].get(s, 0)}/{r['write_calls'].get(s, 0)}/{r['read_calls'].get(s, 0)}"
                 for s in systems]
        print(f"{i:>4} {r['status']:>10} {r['seconds']:>6.1f} " + " ".join(f"{c:>16}" for c in cells)
              + f" {r['echoes']:>8}")
    last = runs[-1]
    quiet = sum(last["write_calls"].values())
    print(f"re-sync with no changes (run {len(runs)}): {quiet} write calls "
          f"({'target met' if quiet == 0 else 'target NOT met'}), {sum(last['read_calls'].values())} read calls")
    return {"size": size, "runs": runs, "resync_write_calls": quiet, "resync_write_calls_by_system": last["write_calls"]}


if __name__ == "__main__":
    main(quick="--quick" in sys.argv or os.environ.get("OMNISYNC_BENCH_QUICK") == "1")
