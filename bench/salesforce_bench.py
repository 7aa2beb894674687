"""Salesforce: API calls used against the minimum the batch sizes allow, and records/s.

For each N, one sandbox of N contacts over TLS and the real SDK: a full read of the contacts stream
(one queryAll and its queryMore batches of 2,000; deleted and merged rows included), an incremental
read with nothing changed, then an upsert of N contacts on the external id twice (all creates, then
all updates, sObject Collections of 200). The minimum is ceil(rows / 2000) reads and ceil(N / 200)
writes. "daily %" is the share of a 100,000-request daily allocation the whole run would use.
Run: ``python -m bench.salesforce_bench`` (``--quick`` for 1,000 and 10,000).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from connectors.credentials import SalesforceCredentials
from connectors.http import RateBudget
from connectors.salesforce import SalesforceConnector
from omnisync.records import OutboundRecord
from sandbox.framework import SandboxCluster
from sandbox.salesforce import DAILY_LIMIT, SalesforceSandbox


def measure(n: int) -> dict[str, Any]:
    # keep_alive: one TLS connection per client for the whole run, as against the real service.
    sb = SalesforceSandbox(size=n, seed=1, keep_alive=True)
    sb.daily_limit = 10**9  # measure the client's own cost, not the allocation
    with SandboxCluster([sb], workdir=Path(tempfile.mkdtemp(prefix="sfbench"))) as cluster:
        info = cluster.info()["salesforce"]
        creds = SalesforceCredentials(instance_url=info["base_url"], ca_bundle=info["ca_cert"], **info["credentials"])
        unlimited = dict(budget=RateBudget(1e9, 10**9))
        c = sb.summary()["Contact"]
        rows = c["live"] + c["deleted"] + c["merged"]
        with SalesforceConnector(creds, **unlimited) as conn:
            t0 = time.perf_counter()
            pages = list(conn.read("contacts"))
            read_s = time.perf_counter() - t0
            read = sum(len(p.records) for p in pages)
            read_calls = conn.api_calls
        with SalesforceConnector(creds, **unlimited) as conn:
            again = sum(len(p.records) for p in conn.read("contacts", pages[-1].cursor))
            incremental_calls = conn.api_calls
        out = [OutboundRecord(key=f"G{i}|new", match={"Omnisync_Golden_Id__c": f"G-bench-{i}"},
                              payload={"LastName": f"Bench{i}", "Email": f"bench.{i}@example.org",
                                       "Omnisync_Golden_Id__c": f"G-bench-{i}"}) for i in range(n)]
        writes = {}
        for label in ("create", "update"):
            with SalesforceConnector(creds, **unlimited) as w:
                t0 = time.perf_counter()
                outcomes = w.write("contacts", out)
                writes[label] = (time.perf_counter() - t0, w.api_calls, sum(o.ok for o in outcomes))
    read_min, up_min = math.ceil(rows / 2000), math.ceil(n / 200)
    total_calls = read_calls + incremental_calls + sum(calls for _, calls, _ in writes.values())
    return {
        "n": n, "records_read": read, "rows": rows, "read_calls": read_calls, "read_min_calls": read_min,
        "read_ratio": read_calls / read_min, "read_s": read_s, "read_rps": read / read_s,
        "incremental_calls": incremental_calls, "incremental_records": again,
        **{f"upsert_{k}_{m}": v for k, (s, calls, ok) in writes.items()
           for m, v in (("calls", calls), ("ratio", calls / up_min), ("s", s), ("rps", ok / s), ("ok", ok))},
        "upsert_min_calls": up_min, "daily_share": total_calls / DAILY_LIMIT,
    }


def main(quick: bool = False) -> dict[str, Any]:
    sizes = (1_000, 10_000) if quick else (10_000, 100_000)
    rows = [measure(n) for n in sizes]
    print(f"{'N':>8} {'read calls':>10} {'min':>5} {'ratio':>6} {'rec/s':>8} {'incr':>5} | "
          f"{'upsert calls':>12} {'min':>5} {'ratio':>6} {'create/s':>9} {'update/s':>9} {'daily %':>8}")
    for r in rows:
        print(f"{r['n']:>8} {r['read_calls']:>10} {r['read_min_calls']:>5} {r['read_ratio']:>6.3f} "
              f"{r['read_rps']:>8.0f} {r['incremental_calls']:>5} | {r['upsert_create_calls']:>12} "
              f"{r['upsert_min_calls']:>5} {r['upsert_create_ratio']:>6.3f} {r['upsert_create_rps']:>9.0f} "
              f"{r['upsert_update_rps']:>9.0f} {100 * r['daily_share']:>7.2f}%")
    small, big = rows
    growth = {"data_x": big["n"] / small["n"], "read_time_x": big["read_s"] / small["read_s"],
              "read_calls_x": big["read_calls"] / small["read_calls"],
              "upsert_time_x": big["upsert_update_s"] / small["upsert_update_s"],
              "upsert_calls_x": big["upsert_update_calls"] / small["upsert_update_calls"]}
    print("10x data -> " + ", ".join(f"{k} {v:.2f}" for k, v in growth.items()))
    return {"rows": rows, "growth": growth}


if __name__ == "__main__":
    main(quick=os.environ.get("OMNISYNC_BENCH_QUICK") == "1" or "--quick" in sys.argv)
