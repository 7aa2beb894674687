"""The omnichannel pipeline end to end: records/s, Prefect's share of the wall time, peak memory.

For each population size the six sandboxes are served by one child process (vendor rate limits
lifted, faults off), and the pipeline runs twice against them, each time in a fresh child process
with a fresh SQLite store: once through the plain stages of flows/orchestrate.py, once as the
``omnichannel-sync`` Prefect flow (tasks, artifacts, a local Prefect server). Client-side budgets
are lifted too, so the figure is omnisync's own cost, not the vendors' published limits (at those
limits a first load is bound by calls: see hubspot_bench and push_bench).

The run is drain, sync every stream, resolve, enrich from the CDP; the push-back is measured by
push_bench. "records" are the vendor records read (contacts, leads, profiles and interactions).
Peak memory is the measuring child's high-water RSS (sandboxes live in their own process). CPU is
split: the measuring child's own CPU seconds during the run (omnisync: HTTP clients, mapping, store,
resolution, Prefect) and the sandbox process's (the vendors' side, which shares the two cores); the
plain run also gives each stage's wall, both CPUs and the RSS high-water after it. "cores" is both
CPUs over the wall time (how much of the machine the run kept busy); the verdict line adds the
records/s the same CPU would give with every core busy, the most that more parallelism could reach
without spending less CPU per record. A last, plain-only run sizes the population for about
1,000,000 contacts (``OMNISYNC_BENCH_PIPELINE_CONTACTS``, 0 to skip) to show memory stays flat.
``OMNISYNC_BENCH_PIPELINE_SIZES=small,large`` sets the two sizes (people per sandbox): by default
10,000 and 100,000, the larger being about 280,000 contacts and 310,000 interactions, the issue's
300,000 interactions (the sandboxes make about one interaction per contact, so the contacts come
out more than the issue's 100,000).
Run: ``python -m bench.pipeline_bench [--quick]``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.memory import peak_rss_mb

REPO = Path(__file__).resolve().parents[1]
TARGET_RPS = 5_000  # issue 8: records/s end to end at 100,000 contacts and 300,000 interactions
TARGET_MB = 500  # issue 8: peak memory at 1,000,000 contacts
INTERACTION_STREAMS = {"calls", "emails", "communications", "engagements", "messages", "tasks", "notes"}


def serve(size: int, info: str) -> int:
    """Child: every sandbox at ``size`` people, vendor limits off, until SIGTERM."""
    from sandbox.framework import SandboxCluster
    from sandbox.hubspot import HubSpotSandbox, Limits
    from sandbox.registry import SANDBOXES, build
    from sandbox.zoom import ZoomSandbox

    lifted = {"hubspot": lambda: HubSpotSandbox(size=size, seed=1, limits=Limits(enabled=False)),
              "zoom": lambda: ZoomSandbox(size=size, seed=1, qps_limit=10**9)}
    sbs = [lifted[n]() if n in lifted else build(n, size=size, seed=1) for n in SANDBOXES]
    cluster = SandboxCluster(sbs, workdir=Path(info).parent / "sb").start()
    cluster.write_info(Path(info))
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    while not stop["now"]:
        time.sleep(0.2)
    cluster.stop()
    return 0


def _lift_client_budgets() -> None:
    import connectors.hubspot as hubspot
    from connectors.http import RateBudget
    from flows import connect

    for k in connect.BUDGETS:
        connect.BUDGETS[k] = (1e9, 10**9)
    connect.SEARCH_BUDGET = (1e9, 10**9)
    hubspot.search_budget_for = lambda host: RateBudget(1e9, 10**9)


def _cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system, every thread) of this process or of ``pid``."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    """CPU seconds of this process's live descendants (a server it started, and theirs)."""
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            for kid in kids:
                try:
                    total += _cpu_s(kid)
                except OSError:
                    continue
                todo.append(kid)
    return total


def measure(mode: str) -> int:
    """Child: one pipeline run ('plain' or 'prefect'); prints one JSON line."""
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    _lift_client_budgets()
    # stage -> [wall s, omnisync CPU s, vendor CPU s, RSS high-water MB after its last call]
    stage_s: dict[str, list[float]] = {}
    vendor = int(os.environ.get("OMNISYNC_BENCH_VENDOR_PID", "0")) or None
    prefect_server_cpu = 0.0
    if mode == "plain":
        from flows import orchestrate

        def timed(name, fn):
            def run(*a, **kw):
                t, c, v = time.perf_counter(), _cpu_s(), _cpu_s(vendor) if vendor else 0.0
                try:
                    return fn(*a, **kw)
                finally:
                    key = f"sync {a[0]}" if name == "sync" else name
                    spent = stage_s.setdefault(key, [0.0, 0.0, 0.0, 0.0])
                    spent[0] += time.perf_counter() - t
                    spent[1] += _cpu_s() - c
                    spent[2] += (_cpu_s(vendor) - v) if vendor else 0.0
                    spent[3] = peak_rss_mb()
            return run

        plain = orchestrate.Stages()
        stages = orchestrate.Stages(**{k: timed(k, getattr(plain, k)) for k in vars(plain)})
        cpu0, t0 = _cpu_s(), time.perf_counter()
        summary = orchestrate.omnichannel(push=False, stages=stages)
    else:
        from prefect.testing.utilities import prefect_test_harness

        from flows.pipeline import omnichannel_sync

        with prefect_test_harness(server_startup_timeout=120):  # server start is not the flow's cost
            # the harness serves the Prefect API from a child process: its CPU is Prefect's cost too
            cpu0, server0, t0 = _cpu_s(), _children_cpu_s(), time.perf_counter()
            state = omnichannel_sync(push=False, return_state=True)
            summary = state.result()
            wall = time.perf_counter() - t0
            prefect_server_cpu = _children_cpu_s() - server0
            cpu = _cpu_s() - cpu0 + prefect_server_cpu
    if mode == "plain":
        wall = time.perf_counter() - t0
        cpu = _cpu_s() - cpu0
    contacts = interactions = 0
    for key, c in summary["counts"].items():
        if key.split("/", 1)[1] in INTERACTION_STREAMS:
            interactions += c.get("read", 0)
        else:
            contacts += c.get("read", 0)
    print(json.dumps({"mode": mode, "wall_s": wall, "cpu_s": round(cpu, 2), "contacts": contacts, "interactions": interactions,
                      "records": contacts + interactions, "status": summary["status"],
                      "reconciles": summary["reconciles"], "golden": summary["resolved"].get("new_golden", 0),
                      "peak_rss_mb": peak_rss_mb(),
                      "lookups": (summary.get("enriched") or {}).get("lookups", 0),
                      "prefect_server_cpu_s": round(prefect_server_cpu, 2),
                      "stage_s": {k: [round(x, 1) for x in v] for k, v in sorted(stage_s.items(), key=lambda kv: -kv[1][0])}}),
          flush=True)
    return 0


def _child(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.pipeline_bench", *args], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env}, **kw)


@contextmanager
def served_sandboxes(size: int, info: Path) -> Iterator[subprocess.Popen]:
    """The six sandboxes with ``size`` people each, in a child process, until the block ends."""
    server = _child(["--serve", str(size), str(info)], {}, start_new_session=True)
    try:
        deadline = time.time() + 1800
        while not info.exists():
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError("sandboxes did not start")
            time.sleep(0.5)
        yield server
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def run_size(size: int, modes: tuple[str, ...] = ("plain", "prefect")) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"pipebench{size}-"))
    info = work / "sandbox.json"
    with served_sandboxes(size, info) as server:
        out: dict[str, Any] = {"size": size}
        for mode in modes:
            env = {"OMNISYNC_SANDBOX_INFO": str(info), "OMNISYNC_HOME": str(work / mode),
                   "OMNISYNC_BENCH_VENDOR_PID": str(server.pid),
                   "OMNISYNC_DATABASE_URL": f"sqlite:///{work / mode / 'store.db'}"}
            (work / mode).mkdir()
            vendor0 = _cpu_s(server.pid)
            done = subprocess.run([sys.executable, "-m", "bench.pipeline_bench", "--measure", mode], cwd=REPO,
                                  env={**os.environ, "PYTHONPATH": str(REPO), **env}, capture_output=True, text=True)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            if done.returncode or not lines:
                raise RuntimeError(f"{mode} run at {size} failed:\n{done.stderr[-3000:]}")
            out[mode] = json.loads(lines[-1])
            out[mode]["sandbox_cpu_s"] = round(_cpu_s(server.pid) - vendor0, 2)
        return out


def _row(size: int, mode: str, m: dict[str, Any]) -> str:
    per = 1000 / max(1, m["records"])
    return (f"{size:>8} {mode:>7} {m['contacts']:>9} {m['interactions']:>9} {m['wall_s']:>8.1f} {m['rps']:>8.0f} "
            f"{m['peak_rss_mb']:>8.0f} {m['cpu_s'] * per:>10.2f} {m['sandbox_cpu_s'] * per:>13.2f} "
            f"{_cores(m):>6.2f} {str(m['reconciles']):>10}")


def _cores(m: dict[str, Any]) -> float:
    """Cores kept busy on average: omnisync's CPU and the sandboxes' over the wall time."""
    return (m["cpu_s"] + m["sandbox_cpu_s"]) / max(1e-9, m["wall_s"])


def _ceiling(records: int, cpu_s: float, cores: int) -> float:
    """Records/s if ``cpu_s`` of CPU kept every core busy throughout: the most this machine gives
    without cutting CPU per record."""
    return records / max(1e-9, cpu_s / cores)


def main(quick: bool = False) -> dict[str, Any]:
    chosen = os.environ.get("OMNISYNC_BENCH_PIPELINE_SIZES")  # "small,large" people per sandbox
    sizes = tuple(int(x) for x in chosen.split(",")) if chosen else (1_000, 10_000) if quick else (10_000, 100_000)
    rows = []
    print(f"{'people':>8} {'mode':>7} {'contacts':>9} {'interact.':>9} {'wall s':>8} {'rec/s':>8} {'peak MB':>8} "
          f"{'cpu ms/rec':>10} {'vendor ms/rec':>13} {'cores':>6} {'reconciles':>10}")
    for size in sizes:
        r = run_size(size)
        for mode in ("plain", "prefect"):
            m = r[mode]
            m["rps"] = m["records"] / m["wall_s"]
            print(_row(size, mode, m), flush=True)
        r["prefect_overhead_share"] = max(0.0, (r["prefect"]["wall_s"] - r["plain"]["wall_s"]) / r["prefect"]["wall_s"])
        print(f"{'':>8} Prefect overhead: {r['prefect_overhead_share']:.1%} of the flow's wall time "
              f"(its API server's CPU: {r['prefect']['prefect_server_cpu_s']} s, in the Prefect row's cpu); "
              f"{r['plain']['lookups']:,d} CDP lookups; plain stages (wall s / omnisync CPU s / vendor CPU s): "
              + ", ".join(f"{k} {w}/{c}/{v}" for k, (w, c, v, _) in list(r["plain"]["stage_s"].items())[:6]), flush=True)
        rows.append(r)
    small, big = rows
    growth = {"data_x": big["size"] / small["size"],
              "records_x": big["plain"]["records"] / max(1, small["plain"]["records"]),
              "plain_time_x": big["plain"]["wall_s"] / small["plain"]["wall_s"],
              "prefect_time_x": big["prefect"]["wall_s"] / small["prefect"]["wall_s"],
              "peak_mem_x": big["plain"]["peak_rss_mb"] / small["plain"]["peak_rss_mb"]}
    print(f"{growth['data_x']:g}x data -> " + ", ".join(f"{k} {v:.2f}" for k, v in growth.items()))
    best = max(big[mode]["rps"] for mode in ("plain", "prefect"))
    plain, cores = big["plain"], os.cpu_count() or 1
    print(f"throughput target {TARGET_RPS:,d} records/s at {big['plain']['contacts']:,d} contacts and "
          f"{big['plain']['interactions']:,d} interactions: {'met' if best >= TARGET_RPS else 'NOT met'} "
          f"(plain {big['plain']['rps']:.0f}, Prefect {big['prefect']['rps']:.0f}); with all {cores} cores busy "
          f"the plain run's CPU would allow {_ceiling(plain['records'], plain['cpu_s'] + plain['sandbox_cpu_s'], cores):.0f} "
          f"records/s, the sandboxes' CPU alone {_ceiling(plain['records'], plain['sandbox_cpu_s'], cores):.0f}")
    result: dict[str, Any] = {"rows": rows, "growth": growth}
    # Peak memory at about 1,000,000 contacts (profiles read from every system): the population that
    # many people per contact the large run measured gives; plain stages only (Prefect adds no data).
    target = int(os.environ.get("OMNISYNC_BENCH_PIPELINE_CONTACTS", "0" if quick else "1000000"))
    if target:
        per_person = big["plain"]["contacts"] / big["size"]
        size = int(round(target / per_person, -3))
        m = run_size(size, modes=("plain",))["plain"]
        m["rps"] = m["records"] / m["wall_s"]
        print(_row(size, "plain", m), flush=True)
        result["memory_run"] = {"size": size, **m,
                                "peak_mem_x_vs_large": m["peak_rss_mb"] / big["plain"]["peak_rss_mb"]}
        print(f"peak memory at {m['contacts']:,d} contacts: {m['peak_rss_mb']:.0f} MB "
              f"({result['memory_run']['peak_mem_x_vs_large']:.2f}x the {big['plain']['contacts']:,d}-contact run; "
              f"target under {TARGET_MB} MB: {'met' if m['peak_rss_mb'] < TARGET_MB else 'NOT met'}); "
              "high-water after each stage (MB): "
              + ", ".join(f"{k} {hwm:.0f}" for k, (*_, hwm) in sorted(m["stage_s"].items(), key=lambda kv: kv[1][3])))
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        sys.exit(serve(int(sys.argv[2]), sys.argv[3]))
    if sys.argv[1:2] == ["--measure"]:
        sys.exit(measure(sys.argv[2]))
    main(quick="--quick" in sys.argv or os.environ.get("OMNISYNC_BENCH_QUICK") == "1")
