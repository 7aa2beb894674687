"""Push-back: write calls per changed record against the minimum the batch sizes allow, and the echo rate.

One run, real connectors against in-process sandboxes (HubSpot with its limits lifted, Zoom, Segment,
SendGrid) and a SQLite store:

1. HubSpot contacts and Zoom address-book contacts are synced into the store; each becomes one
   golden record (the benchmark shapes them so each lives in one CRM: no cross-system creates).
2. N changes are spread over the systems: job titles changed on golden records of both CRMs, and
   email opt-outs on some HubSpot ones (HubSpot's checkbox plus a SendGrid global unsubscribe).
   Every changed golden record is also identified to Segment.
3. The planner plans, ``execute_plan`` writes. Per system and stream: records written, API calls
   made, and the minimum the vendor's batch maximum allows (HubSpot 100 per batch update, Zoom one
   per contact, SendGrid 1,000 addresses per suppression call, Segment 500 KB per batch).
4. HubSpot and Zoom are read again and ingested: every record we wrote must come back as our echo.
   The echo rate is the share of them ingest took for a new fact (target 0). Then a second plan
   must be empty (a re-run writes nothing).

Run: ``python -m bench.push_bench`` (``--quick`` for 1,000 changes instead of 10,000).
"""

from __future__ import annotations

import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from connectors.http import RateBudget
from flows.connect import connector_class
from omnisync.credentials import from_sandbox_info
from flows.push import execute_plan
from flows.sync import sync_stream
from identity.push import plan_push
from identity.store import ChangeEvent, GoldenRecord, SourceRow, get_engine, session_scope
from sandbox.framework import SandboxCluster
from sandbox.hubspot import HubSpotSandbox, Limits
from sandbox.segment import SegmentSandbox
from sandbox.sendgrid import SendGridSandbox
from sandbox.zoom import ZoomSandbox
from sqlmodel import select

SYSTEMS = ["hubspot", "zoom", "segment", "sendgrid"]
SEGMENT_BATCH_BYTES = 500 * 1024
TITLES = ["Head of Care", "Operations Lead", "Buyer", "Account Manager", "Founder", "Analyst"]


def _connectors(info: dict[str, Any]) -> dict[str, Any]:
    unlimited = RateBudget(1e9, 10**9)
    out = {}
    for name in SYSTEMS:
        kw: dict[str, Any] = {"budget": unlimited}
        if name == "hubspot":
            kw["search_budget"] = unlimited
        out[name] = connector_class(name)(from_sandbox_info(name, info), **kw)
    return out


def _goldens(engine) -> dict[str, list[str]]:
    """One golden record per CRM record, shaped so it lives in that CRM only (no cross-creates)."""
    by_system: dict[str, list[str]] = {"hubspot": [], "zoom": []}
    with session_scope(engine) as s:
        for row in s.exec(select(SourceRow).where(SourceRow.kind == "profile", SourceRow.deleted.is_(False))):
            if row.system not in by_system:
                continue
            prof = dict((row.canonical or {}).get("profile") or {})
            prof.pop("external_ids", None)
            # HubSpot creates need an email, Zoom creates a phone: without them nothing is created.
            prof.pop("phones" if row.system == "hubspot" else "emails", None)
            gid = f"G-{row.system}-{row.external_id}"
            s.add(GoldenRecord(golden_id=gid, profile=prof))
            row.golden_id, row.pending = gid, False
            s.add(row)
            by_system[row.system].append(gid)
    return by_system


def _change(engine, ids: list[str], opt_out: set[str], rng: random.Random) -> None:
    with session_scope(engine) as s:
        for i in range(0, len(ids), 500):
            for g in s.exec(select(GoldenRecord).where(GoldenRecord.golden_id.in_(ids[i:i + 500]))):
                prof = dict(g.profile)
                prof["title"] = rng.choice([t for t in TITLES if t != prof.get("title")])
                if g.golden_id in opt_out:
                    prof["consent"] = [c for c in prof.get("consent") or [] if c.get("channel") != "email"] + [
                        {"channel": "email", "purpose": "marketing", "status": "opted_out",
                         "observed_at": "2026-11-20T10:00:00+00:00", "source_system": "sendgrid",
                         "source_record": f"bench-{g.golden_id}"}]
                g.profile = prof
                s.add(g)
                s.add(ChangeEvent(golden_id=g.golden_id, kind="updated"))


def _minimum(system: str, stream: str, records: list, conn) -> int:
    if system == "segment":
        # Segment batches by bytes: the minimum packs the very messages sent (each plus a comma).
        from connectors.segment import _size

        size = sum(_size(conn._message(stream, r)) + 1 for r in records)
        return max(math.ceil(size / SEGMENT_BATCH_BYTES), math.ceil(len(records) / conn.streams[stream].write_batch))
    return math.ceil(len(records) / max(1, conn.streams[stream].write_batch))


def measure(changes: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pushbench"))
    os.environ.setdefault("OMNISYNC_HOME", str(work / "home"))
    hs_share, zoom_share = 0.7, 0.3
    hs_n = int(changes * hs_share)
    zoom_people = int(changes * zoom_share / 0.25) + 50  # about 30% of Zoom's people have an address-book entry
    sbs = [HubSpotSandbox(size=int(hs_n * 1.1) + 50, seed=1, limits=Limits(enabled=False)),
           ZoomSandbox(size=zoom_people, seed=1), SegmentSandbox(size=50, seed=1), SendGridSandbox(size=50, seed=1)]
    engine = get_engine(f"sqlite:///{work / 'bench.db'}")
    with SandboxCluster(sbs, workdir=work / "sb") as cluster:
        conns = _connectors(cluster.info())
        for system, stream in (("hubspot", "contacts"), ("zoom", "address_book_contacts")):
            sync_stream(engine, conns[system], stream)
        pools = _goldens(engine)
        rng = random.Random(7)
        hs_ids = rng.sample(pools["hubspot"], min(hs_n, len(pools["hubspot"])))
        zoom_ids = rng.sample(pools["zoom"], min(changes - len(hs_ids), len(pools["zoom"])))
        opt_out = set(rng.sample(hs_ids, len(hs_ids) // 5))
        _change(engine, hs_ids + zoom_ids, opt_out, rng)

        with session_scope(engine) as s:
            plan = plan_push(s, SYSTEMS)
        before = {n: c.api_calls for n, c in conns.items()}
        t0 = time.perf_counter()
        result = execute_plan(engine, plan, conns, force=True)  # a bulk change on purpose: past the breaker
        push_s = time.perf_counter() - t0
        rows = []
        for (system, stream), sp in sorted(plan.streams.items()):
            rows.append({"system": system, "stream": stream, "records": len(sp.records),
                         "min_calls": _minimum(system, stream, sp.records, conns[system])})
        calls = {n: conns[n].api_calls - before[n] for n in SYSTEMS}

        # Read back what we wrote: every written record must be recognized as our echo.
        echo = Counter()
        for system, stream in (("hubspot", "contacts"), ("zoom", "address_book_contacts")):
            res = sync_stream(engine, conns[system], stream)
            for k in ("read", "stored", "echoes", "unchanged", "deleted", "merged_away"):
                echo[f"{system}_{k}"] += res.counts.total(k)
        with session_scope(engine) as s:
            replan = plan_push(s, SYSTEMS)
        for c in conns.values():
            c.close()

    written = {s: sum(r["records"] for r in rows if r["system"] == s) for s in SYSTEMS}
    minimum = {s: sum(r["min_calls"] for r in rows if r["system"] == s) for s in SYSTEMS}
    crm_written = written["hubspot"] + written["zoom"]
    # A merged-away or deleted record re-stated (HubSpot lists the merged ids again when their
    # survivor changes) is not a field change: the echo rate counts live records taken as changed.
    stored_again = sum(echo[f"{s}_stored"] - echo[f"{s}_merged_away"] - echo[f"{s}_deleted"] for s in ("hubspot", "zoom"))
    return {
        "changes": len(hs_ids) + len(zoom_ids), "opt_outs": len(opt_out), "push_s": push_s,
        "streams": rows, "calls": calls, "min_calls": minimum, "written": written,
        "calls_per_record": {s: calls[s] / written[s] for s in SYSTEMS if written[s]},
        "ratio_to_min": {s: calls[s] / minimum[s] for s in SYSTEMS if minimum[s]},
        "total_calls": sum(calls.values()), "total_min": sum(minimum.values()),
        "failed": {k: dict(v) for k, v in result.counts.items() if v.get("failed")},
        "echo": dict(echo), "echo_rate": stored_again / crm_written if crm_written else 0.0,
        "replan_records": replan.total,
    }


def main(quick: bool = False) -> dict[str, Any]:
    r = measure(1_000 if quick else 10_000)
    print(f"{r['changes']:,} changed golden records ({r['opt_outs']:,} email opt-outs), pushed in {r['push_s']:.1f} s")
    print(f"{'system':10} {'stream':22} {'records':>8} {'min calls':>9}")
    for row in r["streams"]:
        print(f"{row['system']:10} {row['stream']:22} {row['records']:>8,} {row['min_calls']:>9,}")
    print(f"{'system':10} {'calls':>7} {'min':>7} {'ratio':>6} {'calls/record':>12}")
    for s in SYSTEMS:
        if r["written"][s]:
            print(f"{s:10} {r['calls'][s]:>7,} {r['min_calls'][s]:>7,} {r['ratio_to_min'][s]:>6.2f} "
                  f"{r['calls_per_record'][s]:>12.4f}")
    print(f"all: {r['total_calls']:,} calls vs {r['total_min']:,} minimum "
          f"({r['total_calls'] / max(1, r['total_min']):.2f}x); failed writes: {r['failed'] or 'none'}")
    print(f"read back: {r['echo']}; echo rate (re-read as changed after our push) {r['echo_rate']:.4f}; "
          f"second plan: {r['replan_records']} records")
    return r


if __name__ == "__main__":
    main(quick=os.environ.get("OMNISYNC_BENCH_QUICK") == "1" or "--quick" in sys.argv)
