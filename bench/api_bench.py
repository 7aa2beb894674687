"""API latency: screen-pop lookup, profile and timeline, in process and over loopback at a fixed rate.

For each store size (default 100,000 and 1,000,000 golden records, 1,000 and 10,000 with
``--quick``; ``OMNISYNC_BENCH_API_SIZES`` e.g. ``10000,100000`` for others) the store is filled with golden records, two identity keys
each (email and phone), a few interactions each, and one customer with 1,000 interactions. Then:

* in process (httpx over ASGI transport, no network): lookup by phone, profile, timeline page of 50
  for the 1,000-interaction customer; p50/p99 over random customers;
* over loopback: the API in its own uvicorn process (``OMNISYNC_BENCH_API_WORKERS`` processes), and
  :mod:`bench.loadgen` in another, sending lookups at a fixed rate (default 500/s,
  ``OMNISYNC_BENCH_API_RPS``) for 20 s (10,000 lookups: p99 is the 100th slowest); latency is
  measured from each request's scheduled send time, so a server falling behind shows up as
  queueing instead of being hidden.

The store is PostgreSQL when reachable (the issue's target: p99 under 10 ms at 500 requests/s),
else SQLite, on two servers side by side: ``shared``, the machine's server as it is configured
(128 MB of buffers), and ``serving``, a private server with the buffers a serving store is given
(:func:`bench.stores.serving_postgres`). Growth is the ratio of the largest size's p99 to the
smallest's.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench import loadgen
from bench.stores import PG_URL, pg_reachable, scratch_store, serving_postgres
from sandbox.framework import free_port

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
CHUNK = 5_000


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def _ms(xs: list[float]) -> dict[str, float]:
    return {"p50_ms": round(_pct(xs, 50) * 1000, 2), "p99_ms": round(_pct(xs, 99) * 1000, 2),
            "mean_ms": round(statistics.fmean(xs) * 1000, 2), "n": len(xs)}


def _phone(i: int) -> str:
    return f"+1415{i:07d}"


def seed(engine: sa.engine.Engine, n: int, per_customer: int = 2, heavy: int = 1_000) -> str:
    """Fill the store with ``n`` golden records; return the id of the customer with ``heavy`` interactions."""
    from identity.store import GoldenRecord, IdentityKey, InteractionRow

    gt, kt, it = GoldenRecord.__table__, IdentityKey.__table__, InteractionRow.__table__
    rnd = random.Random(7)
    channels = ("voice", "chat", "bot", "sms", "email")
    with engine.begin() as c:
        for lo in range(0, n, CHUNK):
            hi = min(n, lo + CHUNK)
            golden, ident, inter = [], [], []
            for i in range(lo, hi):
                gid = f"g{i:09d}"
                email = f"person{i}@example.com"
                golden.append({"golden_id": gid, "status": "active", "merged_into": None, "version": 1,
                               "created_at": T0, "updated_at": T0,
                               "profile": {"first_name": f"First{i}", "last_name": f"Last{i}", "emails": [email],
                                           "phones": [_phone(i)], "locale": "en-US", "value_tier": "silver",
                                           "consent": [{"channel": "sms", "purpose": "marketing",
                                                        "status": "opted_in", "observed_at": T0.isoformat(),
                                                        "source_system": "twilio"}],
                                           "external_ids": {"hubspot": str(i)}},
                               "lineage": {"first_name": {"system": "hubspot", "record": str(i), "rule": "most_recent"}}})
                ident += [{"kind": "email", "value": email, "source_id": 2 * i, "golden_id": gid},
                          {"kind": "phone", "value": _phone(i), "source_id": 2 * i + 1, "golden_id": gid}]
                for k in range(per_customer):
                    at = T0 + timedelta(minutes=rnd.randrange(0, 60 * 24 * 300))
                    inter.append({"system": "zoom", "external_id": f"{i}-{k}", "golden_id": gid,
                                  "channel": rnd.choice(channels), "direction": "inbound", "started_at": at,
                                  "ended_at": at + timedelta(minutes=5), "queue": "Support", "agent": "Agent",
                                  "summary": "asked about an order", "fingerprint": "f", "ingested_at": T0,
                                  "data": {"status": "completed"}})
            c.execute(gt.insert(), golden)
            c.execute(kt.insert(), ident)
            c.execute(it.insert(), inter)
        heavy_id = "g000000000"
        rows = [{"system": "twilio", "external_id": f"heavy-{k}", "golden_id": heavy_id,
                 "channel": channels[k % 5], "direction": "inbound" if k % 2 else "outbound",
                 "started_at": T0 + timedelta(minutes=7 * k), "ended_at": None, "queue": None, "agent": None,
                 "summary": f"message {k}", "fingerprint": "f", "ingested_at": T0, "data": {"status": "delivered"}}
                for k in range(heavy)]
        c.execute(it.insert(), rows)
    if engine.dialect.name == "postgresql":
        # A serving store has been vacuumed and checkpointed since its bulk load; without this,
        # autovacuum and the checkpoint of the load run during the measurement and are its tail.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql("VACUUM (ANALYZE) golden_record, identity_key, interaction, golden_alias")
            c.exec_driver_sql("CHECKPOINT")
    return heavy_id


def _in_process(engine: sa.engine.Engine, key: str, n: int, heavy: str, requests: int) -> dict[str, Any]:
    import asyncio

    from api.app import create_app

    app = create_app(engine)
    rnd = random.Random(11)
    out: dict[str, list[float]] = {"lookup": [], "profile": [], "timeline": []}

    async def run() -> None:
        headers = {"X-API-Key": key}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench",
                                     headers=headers) as c:
            for _ in range(20):  # warm the key cache, the pool and the query plans
                await c.get("/v1/lookup", params={"phone": _phone(rnd.randrange(n))})
            for _ in range(requests):
                i = rnd.randrange(n)
                for name, path, params in (("lookup", "/v1/lookup", {"phone": _phone(i)}),
                                           ("profile", f"/v1/profiles/g{i:09d}", None),
                                           ("timeline", f"/v1/profiles/{heavy}/timeline", {"limit": 50})):
                    t = time.perf_counter()
                    r = await c.get(path, params=params)
                    out[name].append(time.perf_counter() - t)
                    if r.status_code != 200:
                        raise RuntimeError(f"{path} answered {r.status_code}: {r.text[:200]}")

    asyncio.run(run())
    return {k: _ms(v) for k, v in out.items()}


def _loopback(url: str, key: str, n: int, rps: int, seconds: float) -> dict[str, Any]:
    """Open-loop lookups at ``rps`` against a uvicorn process; latency from the scheduled send time."""
    port = free_port()
    env = {**os.environ, "OMNISYNC_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    workers = int(os.environ.get("OMNISYNC_BENCH_API_WORKERS", "1"))
    code = f"from api.server import serve; serve('127.0.0.1', {port}, workers={workers})"
    # the server's log goes to a file: a pipe nobody reads would fill and stall it
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError("API server did not start: " + log.read().decode(errors="replace")[-500:])
            time.sleep(0.1)
        total = int(rps * seconds)
        rnd = random.Random(5)
        phones = [_phone(rnd.randrange(n)) for _ in range(total)]
        cpu0 = _cpu_seconds(proc.pid)
        lat, errors, elapsed = _open_loop(port, key, phones, rps)
        cpu1 = _cpu_seconds(proc.pid)
        per = None if cpu0 is None or cpu1 is None else round((cpu1 - cpu0) * 1000 / (total + loadgen.WARMUP), 3)
        return {**_ms(lat), "target_rps": rps, "achieved_rps": round(total / elapsed, 1), "errors": errors,
                "server_cpu_ms_per_request": per}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.seek(0)
        tail = log.read().decode(errors="replace").splitlines()[-5:]
        log.close()
        if os.environ.get("OMNISYNC_BENCH_VERBOSE"):
            print("\n".join(tail))


def _cpu_seconds(pid: int) -> float | None:
    """CPU time the server process and its worker processes have used so far (Linux)."""
    try:
        pids = [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        total = 0
        for p in pids:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _open_loop(port: int, key: str, phones: list[str], rps: int) -> tuple[list[float], int, float]:
    """Lookups of ``phones`` at ``rps`` from the lean load generator (:mod:`bench.loadgen`)."""
    from urllib.parse import quote

    paths = [f"/v1/lookup?phone={quote(p)}" for p in phones]
    done = subprocess.run([sys.executable, "-m", "bench.loadgen", str(port), str(rps), "X-API-Key"],
                          input=json.dumps(paths), capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMNISYNC_LOADGEN_HEADER_VALUE": key})
    if done.returncode:
        raise RuntimeError("load generator failed: " + done.stderr[-1000:])
    out = json.loads(done.stdout)
    return out["latencies"], out["errors"], out["elapsed"]


def run_size(backend: str, n: int, *, requests: int, rps: int, seconds: float, pg_base: str = PG_URL
             ) -> dict[str, Any]:
    from api import keys
    from identity.store import dispose_engines, get_engine
    from omnisync.settings import reset_settings

    url, cleanup = scratch_store(backend, "bench_api", pg_base)
    saved = os.environ.get("OMNISYNC_DATABASE_URL")
    try:
        engine = get_engine(url)
        t = time.perf_counter()
        heavy = seed(engine, n)
        seeded = time.perf_counter() - t
        key = keys.create_key("bench", ["lookup", "profile:read", "pii:read"], engine=engine)
        res: dict[str, Any] = {"golden_records": n, "seed_s": round(seeded, 1)}
        # the app's store is the settings' store, as under `omnisync api` (see api.app._is_settings_store)
        os.environ["OMNISYNC_DATABASE_URL"] = url
        reset_settings()
        res["in_process"] = _in_process(engine, key, n, heavy, requests)
        res["loopback_lookup"] = _loopback(url, key, n, rps, seconds)
        return res
    finally:
        if saved is None:
            os.environ.pop("OMNISYNC_DATABASE_URL", None)
        else:
            os.environ["OMNISYNC_DATABASE_URL"] = saved
        reset_settings()
        dispose_engines()
        cleanup()


def _report(server: str, runs: list[dict[str, Any]], rps: int) -> dict[str, Any]:
    print(f"{'server':>8} {'golden':>10} {'seed s':>7} | {'lookup p50/p99':>15} {'profile p50/p99':>16} "
          f"{'timeline p50/p99':>17} | {'loopback p50/p99 ms':>20} {'rps':>6} {'err':>4} {'srv cpu ms':>10}")
    for r in runs:
        ip, lb = r["in_process"], r["loopback_lookup"]
        print(f"{server:>8} {r['golden_records']:>10,} {r['seed_s']:>7.1f} | "
              f"{ip['lookup']['p50_ms']:>6.2f}/{ip['lookup']['p99_ms']:<8.2f} "
              f"{ip['profile']['p50_ms']:>6.2f}/{ip['profile']['p99_ms']:<9.2f} "
              f"{ip['timeline']['p50_ms']:>6.2f}/{ip['timeline']['p99_ms']:<10.2f} | "
              f"{lb['p50_ms']:>9.2f}/{lb['p99_ms']:<10.2f} {lb['achieved_rps']:>6.0f} {lb['errors']:>4} "
              f"{lb['server_cpu_ms_per_request'] or float('nan'):>10.2f}")
    small, big = runs[0], runs[-1]
    growth = {name: round(big["in_process"][name]["p99_ms"] / max(small["in_process"][name]["p99_ms"], 1e-6), 2)
              for name in ("lookup", "profile", "timeline")}
    growth["loopback_lookup"] = round(big["loopback_lookup"]["p99_ms"] / max(small["loopback_lookup"]["p99_ms"], 1e-6), 2)
    factor = big["golden_records"] / small["golden_records"]
    print(f"{server}: p99 growth with {factor:.0f}x data: " + ", ".join(f"{k} x{v}" for k, v in growth.items()))
    target = all(r["loopback_lookup"]["p99_ms"] < 10 and r["loopback_lookup"]["errors"] == 0 for r in runs)
    print(f"{server}: target (p99 < 10 ms at {rps}/s, every size): {'met' if target else 'NOT met'}")
    return {"runs": runs, "growth_p99": growth, "target_met": target}


def main(quick: bool = False) -> dict[str, Any]:
    """Each store size on each PostgreSQL server (``OMNISYNC_BENCH_API_SERVERS``, default both):
    ``shared``, the machine's server as configured (``OMNISYNC_TEST_PG_URL``), and ``serving``, a
    private server with the buffers a serving store is given (:func:`bench.stores.serving_postgres`).
    SQLite when no PostgreSQL is reachable."""
    env_sizes = os.environ.get("OMNISYNC_BENCH_API_SIZES")
    sizes = [int(x) for x in env_sizes.split(",")] if env_sizes else ([1_000, 10_000] if quick else [100_000, 1_000_000])
    rps = int(os.environ.get("OMNISYNC_BENCH_API_RPS", "500"))
    requests, seconds = (200, 2.0) if quick else (1_000, 20.0)
    servers = os.environ.get("OMNISYNC_BENCH_API_SERVERS", "shared" if quick else "shared,serving").split(",")
    if not pg_reachable():
        servers = ["sqlite"]
    print(f"servers: {', '.join(servers)}; sizes {', '.join(f'{s:,}' for s in sizes)}; "
          f"loopback at {rps} lookups/s for {seconds:.0f} s")
    out: dict[str, Any] = {}
    for server in servers:
        if server == "serving":
            with serving_postgres() as base:
                if base is None:
                    print("serving: skipped (no PostgreSQL server binaries, or the private server did not start)")
                    continue
                runs = [run_size("postgresql", n, requests=requests, rps=rps, seconds=seconds, pg_base=base)
                        for n in sizes]
        else:
            backend = "sqlite" if server == "sqlite" else "postgresql"
            runs = [run_size(backend, n, requests=requests, rps=rps, seconds=seconds) for n in sizes]
        out[server] = _report(server, runs, rps)
    return out


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
