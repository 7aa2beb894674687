"""Vendor rate budgets shared through the store: workers in different processes stay within one
vendor limit together, where budgets of their own would overrun it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from connectors.http import RateBudget
from flows.budget import SharedRateBudget
from identity.store import dispose_engines, get_engine, make_engine
from sandbox.framework import SandboxCluster
from sandbox.hubspot import HubSpotSandbox, Limits

ROOT = Path(__file__).resolve().parents[1]


def _draw(budgets: list[RateBudget], each: int) -> float:
    go = threading.Barrier(len(budgets))

    def work(b: RateBudget):
        go.wait()
        for _ in range(each):
            b.acquire()

    threads = [threading.Thread(target=work, args=(b,)) for b in budgets]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - t0


def test_budgets_on_one_store_pace_all_their_holders_together(store_url):
    get_engine(store_url)  # migrated
    engines = [make_engine(store_url) for _ in range(3)]  # as three worker processes would connect
    try:
        shared = [SharedRateBudget(e, "acme", rate=40.0, burst=4) for e in engines]
        took = _draw(shared, 20)  # 60 calls at 40/s after a burst of 4: at least 1.4 s
        private = _draw([RateBudget(40.0, 4) for _ in engines], 20)  # each alone: about 0.4 s
    finally:
        for e in engines:
            e.dispose()
    assert took >= (60 - 4) / 40 * 0.95, took
    assert private < took / 2, (private, took)


def test_the_vendors_usage_headers_slow_down_every_holder(store_url):
    get_engine(store_url)
    a, b = (SharedRateBudget(make_engine(store_url), "acme", rate=100.0, burst=100) for _ in range(2))
    slept: list[float] = []
    b._sleep = slept.append
    a.observe(0, window_reset_s=0.5)  # a's call learned the window is spent for half a second
    b.acquire()
    assert slept and slept[0] >= 0.45, "b waits for the window a was told about"
    a.engine.dispose()
    b.engine.dispose()


WORKER = """
import json, sys, time
from connectors.credentials import HubSpotCredentials
from connectors.http import RateBudget, RetryPolicy
from connectors.hubspot import HubSpotConnector
from flows.connect import budget_for
info, shared = json.loads(sys.argv[1]), sys.argv[2] == "shared"
search = budget_for("hubspot", "hubspot-search", (4.0, 1)) if shared else RateBudget(4.0, 1)
conn = HubSpotConnector(HubSpotCredentials(host=info["base_url"], **info["credentials"]), search_budget=search,
                        policy=RetryPolicy(attempts=10, backoff_initial=0.05, backoff_max=0.5))
n = sum(len(p.records) for p in conn.read("contacts"))
print(json.dumps({"records": n, "retries": conn.retries if hasattr(conn, "retries") else None}))
"""


@pytest.mark.postgres
def test_two_worker_processes_stay_within_the_search_limit_only_with_the_shared_budget(pg_url, tmp_path):
    sb = HubSpotSandbox(size=1000, seed=4, limits=Limits(search_per_second=5))
    get_engine(pg_url)  # migrated before the workers start
    dispose_engines()
    with SandboxCluster([sb], workdir=tmp_path / "sb") as cluster:
        info = json.dumps(cluster.info()["hubspot"])

        def run(mode: str) -> int:
            sb.log.clear()
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMNISYNC_DATABASE_URL": pg_url,
                   "OMNISYNC_HOME": str(tmp_path / "home"), "OMNISYNC_SHARED_BUDGETS": "true"}
            procs = [subprocess.Popen([sys.executable, "-c", WORKER, info, mode], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
            for p in procs:
                out, err = p.communicate(timeout=180)
                assert p.returncode == 0, err[-2000:]
                assert json.loads(out.strip().splitlines()[-1])["records"] > 0
            return sum(1 for e in sb.log.entries if e[3] == 429)

        private_429 = run("private")
        shared_429 = run("shared")
    assert private_429 > 0, "two budgets of their own together overrun the search limit"
    # One 429 can be a request held up in flight on a loaded machine (see test_flows); more is an overrun.
    assert shared_429 <= 1 < private_429, "one budget in the store keeps both workers within it"
