"""`make bench`: run every benchmark in one process and print their figures side by side.

Each module under bench/ exposes ``main(quick: bool) -> dict``. ``OMNISYNC_BENCH`` selects modules
(comma-separated names, default all) and ``OMNISYNC_BENCH_QUICK=1`` shrinks sizes for a smoke run.
Results are also written to bench/results/<timestamp>.json (not committed).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

MODULES = ["salesforce_bench", "hubspot_bench", "resync_bench", "pipeline_bench", "push_bench", "identity_bench",
           "webhook_bench", "api_bench"]


def main() -> int:
    wanted = os.environ.get("OMNISYNC_BENCH")
    quick = os.environ.get("OMNISYNC_BENCH_QUICK") == "1"
    names = [m for m in MODULES if not wanted or m in wanted.split(",")]
    results: dict[str, object] = {}
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(f"bench.{name}")
            results[name] = mod.main(quick=quick)
        except ModuleNotFoundError as e:
            if e.name == f"bench.{name}":
                print(f"(no module bench/{name}.py yet)")
                continue
            failed.append(name)
            traceback.print_exc()
        except Exception:
            failed.append(name)
            traceback.print_exc()
        print(f"--- {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults written to {path}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
