"""HubSpot: API calls used against the minimum the batch sizes allow, and records/s.

For each N, one sandbox of N contacts (limits lifted so the client's own cost is measured) and the
real SDK: a full read of the contacts stream (search pages of 200, plus the archived list in pages
of 100), then an upsert of N contacts by a unique property twice (all creates, then all updates,
batches of 100). "at limits" is the time the same calls would take under HubSpot's published
limits (search about 4/s sustained, 100 requests per 10 s). Run: ``python -m bench.hubspot_bench``.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from connectors.credentials import HubSpotCredentials
from connectors.http import RateBudget
from connectors.hubspot import HubSpotConnector
from omnisync.records import OutboundRecord
from sandbox.framework import SandboxCluster
from sandbox.hubspot import HubSpotSandbox, Limits


def measure(n: int) -> dict[str, Any]:
    sb = HubSpotSandbox(size=n, seed=1, limits=Limits(enabled=False))
    with SandboxCluster([sb], workdir=Path(tempfile.mkdtemp(prefix="hsbench"))) as cluster:
        info = cluster.info()["hubspot"]
        unlimited = dict(budget=RateBudget(1e9, 10**9), search_budget=RateBudget(1e9, 10**9))
        creds = HubSpotCredentials(host=info["base_url"], **info["credentials"])
        summary = sb.summary()["contacts"]
        conn = HubSpotConnector(creds, **unlimited)
        t0 = time.perf_counter()
        read = sum(len(p.records) for p in conn.read("contacts"))
        read_s = time.perf_counter() - t0
        search_calls = conn.calls["POST /crm/v3/objects/contacts/search"]
        read_min = math.ceil(summary["live"] / 200) + max(1, math.ceil(summary["archived"] / 100))
        out = [OutboundRecord(key=f"G{i}|new", match={"omnisync_golden_id": f"G-bench-{i}"},
                              payload={"properties": {"email": f"bench.{i}@example.org", "firstname": f"Bench{i}",
                                                      "omnisync_golden_id": f"G-bench-{i}"}}) for i in range(n)]
        writes = {}
        for label in ("create", "update"):
            w = HubSpotConnector(creds, **unlimited)
            t0 = time.perf_counter()
            outcomes = w.write("contacts", out)
            writes[label] = (time.perf_counter() - t0, w.api_calls, sum(o.ok for o in outcomes))
    up_min = math.ceil(n / 100)
    return {
        "n": n, "records_read": read, "read_calls": conn.api_calls, "read_min_calls": read_min,
        "read_ratio": conn.api_calls / read_min, "read_s": read_s, "read_rps": read / read_s,
        "read_at_limits_s": search_calls / 4 + (conn.api_calls - search_calls) / 10,
        **{f"upsert_{k}_{m}": v for k, (s, calls, ok) in writes.items()
           for m, v in (("calls", calls), ("ratio", calls / up_min), ("s", s), ("rps", ok / s), ("ok", ok))},
        "upsert_min_calls": up_min, "upsert_at_limits_s": up_min / 10,
    }


def main(quick: bool = False) -> dict[str, Any]:
    sizes = (1_000, 10_000) if quick else (10_000, 100_000)
    rows = [measure(n) for n in sizes]
    print(f"{'N':>8} {'read calls':>10} {'min':>6} {'ratio':>6} {'rec/s':>8} {'@limits':>8} | "
          f"{'upsert calls':>12} {'min':>6} {'ratio':>6} {'create/s':>9} {'update/s':>9} {'@limits':>8}")
    for r in rows:
        print(f"{r['n']:>8} {r['read_calls']:>10} {r['read_min_calls']:>6} {r['read_ratio']:>6.3f} "
              f"{r['read_rps']:>8.0f} {r['read_at_limits_s']:>7.0f}s | {r['upsert_create_calls']:>12} "
              f"{r['upsert_min_calls']:>6} {r['upsert_create_ratio']:>6.3f} {r['upsert_create_rps']:>9.0f} "
              f"{r['upsert_update_rps']:>9.0f} {r['upsert_at_limits_s']:>7.0f}s")
    small, big = rows
    growth = {"data_x": big["n"] / small["n"], "read_time_x": big["read_s"] / small["read_s"],
              "read_calls_x": big["read_calls"] / small["read_calls"],
              "upsert_time_x": big["upsert_update_s"] / small["upsert_update_s"],
              "upsert_calls_x": big["upsert_update_calls"] / small["upsert_update_calls"]}
    print("10x data -> " + ", ".join(f"{k} {v:.2f}" for k, v in growth.items()))
    return {"rows": rows, "growth": growth}


if __name__ == "__main__":
    main(quick=os.environ.get("OMNISYNC_BENCH_QUICK") == "1" or "--quick" in sys.argv)
