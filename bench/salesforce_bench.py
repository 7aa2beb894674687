"""Salesforce: API calls used against the minimum the batch sizes allow, and records/s, for the REST
paths and the Bulk API 2.0 paths side by side.

For each N, one sandbox of N contacts over TLS and the real SDK:

* reads of the contacts stream (deleted and merged rows included): by REST, one queryAll and its
  queryMore batches of 2,000 (minimum ceil(rows / 2000)); by Bulk, the first REST page and, when more
  rows match, one queryAll job for the rest (minimum: 1 page + create + 1 status check +
  ceil(rest / 50,000) result pages); then an incremental read with nothing changed;
* upserts of N contacts on the external id, twice (all creates, then all updates), handed over
  10,000 at a time as the push flow does: by REST, sObject Collections of 200 (minimum
  ceil(N / 200)); by Bulk, one ingest job per 10,000 (minimum 5 calls a job: create, upload, close,
  one status check, the successful results; the failed results are skipped when there are none).

The sandbox finishes a Bulk job 0.05 s after it is closed; Salesforce takes seconds to minutes, so
Bulk's records/s here is an upper bound and its call count a minimum. "daily %" is the share of a
100,000-request daily allocation the whole run would use.
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

from connectors.base import chunks
from connectors.credentials import SalesforceCredentials
from connectors.http import RateBudget
from connectors.salesforce import BULK_MIN_CALLS, BULK_PAGE, COLLECTION, QUERY_BATCH, SalesforceConnector
from omnisync.records import OutboundRecord
from sandbox.framework import SandboxCluster
from sandbox.salesforce import DAILY_LIMIT, SalesforceSandbox

PATHS = {"REST": dict(bulk_threshold=None, bulk_write_threshold=None),
         "Bulk": dict(bulk_threshold=0, bulk_write_threshold=0)}


def read_minimum(path: str, rows: int) -> int:
    if path == "REST" or rows <= QUERY_BATCH:
        return math.ceil(rows / QUERY_BATCH)
    return 3 + math.ceil((rows - QUERY_BATCH) / BULK_PAGE)


def write_minimum(path: str, n: int) -> int:
    chunk = SalesforceConnector.streams["contacts"].write_batch
    if path == "REST":
        return sum(math.ceil(len(part) / COLLECTION) for part in chunks(range(n), chunk))
    return BULK_MIN_CALLS * math.ceil(n / chunk)


def measure(n: int) -> dict[str, Any]:
    # keep_alive: one TLS connection per client for the whole run, as against the real service.
    sb = SalesforceSandbox(size=n, seed=1, keep_alive=True)
    sb.daily_limit = 10**9  # measure the client's own cost, not the allocation
    out: dict[str, Any] = {"n": n}
    with SandboxCluster([sb], workdir=Path(tempfile.mkdtemp(prefix="sfbench"))) as cluster:
        info = cluster.info()["salesforce"]
        creds = SalesforceCredentials(instance_url=info["base_url"], ca_bundle=info["ca_cert"], **info["credentials"])
        c = sb.summary()["Contact"]
        out["rows"] = rows = c["live"] + c["deleted"] + c["merged"]
        chunk = SalesforceConnector.streams["contacts"].write_batch
        total_calls = 0
        for path, kw in PATHS.items():  # reads first: the writes below would fall in the overlap window
            conn_kw = dict(budget=RateBudget(1e9, 10**9), **kw)
            with SalesforceConnector(creds, **conn_kw) as conn:
                t0 = time.perf_counter()
                pages = list(conn.read("contacts"))
                read_s = time.perf_counter() - t0
                read = sum(len(p.records) for p in pages)
                out[f"{path}_read"] = {"calls": conn.api_calls, "min": read_minimum(path, rows), "s": read_s,
                                       "rps": read / read_s, "records": read}
            with SalesforceConnector(creds, **conn_kw) as conn:
                again = sum(len(p.records) for p in conn.read("contacts", pages[-1].cursor))
                out[f"{path}_incremental"] = {"calls": conn.api_calls, "records": again}
        for path, kw in PATHS.items():
            conn_kw = dict(budget=RateBudget(1e9, 10**9), **kw)
            recs = [OutboundRecord(key=f"G{i}|new", match={"Omnisync_Golden_Id__c": f"G-{path}-{i}"},
                                   payload={"LastName": f"Bench{i}", "Email": f"bench.{i}@example.org",
                                            "Omnisync_Golden_Id__c": f"G-{path}-{i}"}) for i in range(n)]
            for label in ("create", "update"):
                with SalesforceConnector(creds, **conn_kw) as w:
                    t0 = time.perf_counter()
                    ok = sum(o.ok for part in chunks(recs, chunk) for o in w.write("contacts", list(part)))
                    s = time.perf_counter() - t0
                    out[f"{path}_{label}"] = {"calls": w.api_calls, "min": write_minimum(path, n), "s": s,
                                              "rps": ok / s, "ok": ok}
            total_calls += sum(out[f"{path}_{k}"]["calls"] for k in ("read", "incremental", "create", "update"))
        out["daily_share"] = total_calls / DAILY_LIMIT
    return out


def main(quick: bool = False) -> dict[str, Any]:
    sizes = (1_000, 10_000) if quick else (10_000, 100_000)
    rows = [measure(n) for n in sizes]
    print("Reads of the contacts stream (deleted and merged rows included), then an incremental read")
    print(f"{'N':>8} {'path':>5} {'calls':>6} {'min':>5} {'ratio':>6} {'rec/s':>8} {'incr calls':>10}")
    for r in rows:
        for path in PATHS:
            x = r[f"{path}_read"]
            print(f"{r['n']:>8} {path:>5} {x['calls']:>6} {x['min']:>5} {x['calls'] / x['min']:>6.3f} "
                  f"{x['rps']:>8.0f} {r[f'{path}_incremental']['calls']:>10}")
    print("Upserts of N contacts on the golden id: all creates, then all updates (10,000 per write)")
    print(f"{'N':>8} {'path':>5} {'calls':>6} {'min':>5} {'ratio':>6} {'create/s':>9} {'update/s':>9} {'ok':>8}")
    for r in rows:
        for path in PATHS:
            c, u = r[f"{path}_create"], r[f"{path}_update"]
            print(f"{r['n']:>8} {path:>5} {c['calls']:>6} {c['min']:>5} {c['calls'] / c['min']:>6.3f} "
                  f"{c['rps']:>9.0f} {u['rps']:>9.0f} {min(c['ok'], u['ok']) / r['n']:>8.1%}")
    print("daily % (both paths): " + ", ".join(f"N={r['n']} {100 * r['daily_share']:.2f}%" for r in rows))
    small, big = rows
    growth = {f"{path}_{k}_{m}_x": big[f"{path}_{k}"][m] / small[f"{path}_{k}"][m]
              for path in PATHS for k in ("read", "update") for m in ("s", "calls")}
    print(f"10x data ({big['n'] / small['n']:.0f}x) -> " + ", ".join(f"{k} {v:.2f}" for k, v in growth.items()))
    return {"rows": rows, "growth": growth}


if __name__ == "__main__":
    main(quick=os.environ.get("OMNISYNC_BENCH_QUICK") == "1" or "--quick" in sys.argv)
