"""`prefect deploy --all` against a real local Prefect server registers every deployment of
prefect.yaml as written (entrypoint, parameters, schedules, work pool, concurrency, the webhook
trigger), a deployment run executes on a process worker, the receiver's event starts a run, and
a backfill's windows are shared by two process workers over one PostgreSQL store.

One server per module (``prefect server start`` on a free port, SQLite under a temporary
PREFECT_HOME); everything talks to it through the CLI and its REST API, so the session's
``prefect_harness`` in this process is never touched.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import yaml

from sandbox.framework import SandboxCluster
from sandbox.hubspot import HubSpotSandbox

pytestmark = pytest.mark.slow  # a real server, a deploy and workers: about two minutes

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
SPEC = yaml.safe_load((REPO / "prefect.yaml").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, home: Path):
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.update(PREFECT_HOME=str(home / "prefect"), PREFECT_API_URL=self.api,
                        PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
                        OMNISYNC_HOME=str(home / "omnisync"), OMNISYNC_PROJECT_DIR=str(REPO))
        self.log = open(home / "server.log", "wb")
        self.proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--no-ui"], env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=home, start_new_session=True)
        self.http = httpx.Client(base_url=self.api, timeout=30)
        deadline = time.time() + 90
        while True:
            try:
                if self.http.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)

    def cli(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> str:
        out = subprocess.run([PREFECT, "--no-prompt", *args], env={**self.env, **(env or {})}, cwd=REPO,
                             capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out.stdout

    def deployments(self) -> dict[str, dict]:
        rows = self.http.post("/deployments/filter", json={}).json()
        return {d["name"]: d for d in rows}

    def flow_runs(self, deployment_id: str) -> list[dict]:
        body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}}
        return self.http.post("/flow_runs/filter", json=body).json()

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("prefect-server"))
    try:
        server.cli("work-pool", "create", "omnisync", "--type", "process")
        server.cli("deploy", "--all", timeout=300)
        yield server
    finally:
        server.stop()


def test_deploy_all_registers_every_deployment_of_prefect_yaml(deployed):
    got = deployed.deployments()
    expected = {d["name"]: d for d in SPEC["deployments"]}
    assert set(got) == set(expected), "every deployment in prefect.yaml is registered, and nothing else"
    for name, want in expected.items():
        d = got[name]
        assert d["entrypoint"] == want["entrypoint"], name
        assert d["work_pool_name"] == want["work_pool"]["name"] == "omnisync", name
        assert d["work_queue_name"] == want["work_pool"]["work_queue_name"], name
        assert d["parameters"] == want.get("parameters", {}), f"{name}: parameters as in prefect.yaml"
        crons = sorted((s["schedule"]["cron"], s["schedule"]["timezone"], s["active"]) for s in d["schedules"])
        assert crons == sorted((s["cron"], s["timezone"], s["active"]) for s in want.get("schedules", [])), name
        if "concurrency_limit" in want:
            assert d["global_concurrency_limit"]["limit"] == want["concurrency_limit"], name
        # `{{ $OMNISYNC_PROJECT_DIR }}` is resolved by `prefect deploy`: workers run from that checkout.
        assert d["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}], name
    schema = got["backfill"]["parameter_openapi_schema"]["properties"]
    assert {"system", "stream", "start", "partitions", "deployment"} <= set(schema), "parameters show in the UI"
    pool = deployed.http.get("/work_pools/omnisync").json()
    assert pool["type"] == "process"


def test_webhook_trigger_is_an_automation_and_the_receivers_event_starts_drain_webhooks(deployed):
    drain = deployed.deployments()["drain-webhooks"]
    autos = deployed.http.post("/automations/filter", json={}).json()
    mine = [a for a in autos if any(act.get("deployment_id") == drain["id"] for act in a["actions"])]
    assert len(mine) == 1, "one automation runs drain-webhooks"
    trigger = mine[0]["trigger"]
    assert trigger["expect"] == ["omnisync.webhook.received"] and trigger["posture"] == "Reactive"

    assert deployed.flow_runs(drain["id"]) == []
    deployed.cli("event", "emit", "omnisync.webhook.received", "--resource-id", "omnisync.webhook.hubspot",
                 "--payload", '{"events": 3}')
    deadline = time.time() + 60
    while not (runs := deployed.flow_runs(drain["id"])) and time.time() < deadline:
        time.sleep(0.5)
    assert len(runs) == 1, "the event scheduled exactly one drain-webhooks run"
    assert runs[0]["state_type"] in ("SCHEDULED", "PENDING", "RUNNING", "COMPLETED")
    # Leave nothing for the worker test to pick up by accident.
    deployed.http.post(f"/flow_runs/{runs[0]['id']}/set_state",
                       json={"state": {"type": "CANCELLED", "name": "Cancelled"}, "force": True})


def test_a_deployment_run_executes_on_a_process_worker_and_stores_the_vendor_records(deployed, tmp_path):
    sb = HubSpotSandbox(size=150, seed=3)
    with SandboxCluster([sb], workdir=tmp_path / "sb") as cluster:
        info = tmp_path / "sandbox.json"
        cluster.write_info(info)
        out = deployed.cli("deployment", "run", "sync-system/sync-system", "--param", "system=hubspot",
                           "--param", 'streams=["contacts"]')
        assert "Created flow run" in out
        # --run-once: poll the pool once, execute what is due, exit when it finished.
        deployed.cli("worker", "start", "--pool", "omnisync", "--type", "process", "--run-once",
                     env={"OMNISYNC_SANDBOX_INFO": str(info)}, timeout=240)
        live = sb.summary()["contacts"]["live"]
    d = deployed.deployments()["sync-system"]
    runs = deployed.flow_runs(d["id"])
    assert [r["state_type"] for r in runs] == ["COMPLETED"], "the run executed and completed on the worker"
    assert runs[0]["parameters"]["system"] == "hubspot"

    import sqlalchemy as sa

    db = Path(deployed.env["OMNISYNC_HOME"]) / "omnisync.db"
    assert db.exists(), "the worker's flow run wrote omnisync's store"
    eng = sa.create_engine(f"sqlite:///{db}")
    with eng.connect() as c:
        stored = c.exec_driver_sql(
            "select count(*) from source_record where system='hubspot' and stream='contacts' and not deleted").scalar()
        batches = c.exec_driver_sql(
            "select batches from checkpoint where system='hubspot' and stream='contacts'").scalar()
    eng.dispose()
    assert stored == live and batches >= 1
    tasks = deployed.http.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [runs[0]["id"]]}}}).json()
    assert [t["name"] for t in tasks] == ["sync hubspot/contacts"], "task names tell admins what ran"
    arts = deployed.http.post("/artifacts/filter", json={"artifacts": {"key": {"any_": ["sync-hubspot"]}}}).json()
    assert arts and arts[0]["type"] == "table", "the run published its counts table"


@pytest.mark.postgres
def test_a_backfill_spreads_its_windows_over_two_process_workers_on_one_postgres_store(deployed, tmp_path, pg_url):
    sb = HubSpotSandbox(size=800, seed=8)
    stamps = [ts for ts, _ in sb.stores["contacts"].by_ts()]
    start = datetime.fromtimestamp(min(stamps) // 1000, timezone.utc)
    end = datetime.fromtimestamp(max(stamps) // 1000 + 1, timezone.utc)
    workers = []
    with SandboxCluster([sb], workdir=tmp_path / "sb") as cluster:
        info = tmp_path / "sandbox.json"
        cluster.write_info(info)
        env = {**deployed.env, "OMNISYNC_SANDBOX_INFO": str(info), "OMNISYNC_DATABASE_URL": pg_url,
               "PREFECT_WORKER_QUERY_SECONDS": "1"}
        deployed.cli("deployment", "run", "backfill/backfill", "--param", "system=hubspot", "--param", "stream=contacts",
                     "--param", f"start={start.isoformat()}", "--param", f"end={end.isoformat()}",
                     "--param", "partitions=8")
        try:
            for name in ("worker-a", "worker-b"):  # two slots each: the parent waits in one of them
                log = open(tmp_path / f"{name}.log", "wb")
                workers.append((name, log, subprocess.Popen(
                    [PREFECT, "worker", "start", "--pool", "omnisync", "--type", "process", "--name", name,
                     "--limit", "2"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)))
            parent_dep = deployed.deployments()["backfill"]["id"]
            deadline = time.time() + 240
            while time.time() < deadline:
                runs = deployed.flow_runs(parent_dep)
                if runs and runs[0]["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    break
                time.sleep(1)
        finally:
            for _, log, proc in workers:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                log.close()
        live = sb.summary()["contacts"]["live"]
    assert runs[0]["state_type"] == "COMPLETED", runs[0]["state_name"]
    parts = deployed.flow_runs(deployed.deployments()["backfill-partition"]["id"])
    assert len(parts) == 8 and all(p["state_type"] == "COMPLETED" for p in parts)
    assert len({p["parameters"]["partition"] for p in parts}) == 8, "each window ran exactly once"
    # Both workers may claim a run; the server lets one submit it, the other aborts.
    ran_by = {name: [p["name"] for p in parts
                     if f"Flow run '{p['name']}' submitted to infrastructure" in (tmp_path / f"{name}.log").read_text(errors="replace")]
              for name, _, _ in workers}
    assert all(ran_by.values()), f"both workers took windows: {ran_by}"
    assert not set(ran_by["worker-a"]) & set(ran_by["worker-b"]), "no window ran on both workers"

    import sqlalchemy as sa

    eng = sa.create_engine(pg_url)
    with eng.connect() as c:
        rows = c.exec_driver_sql("select count(*), count(distinct external_id) from source_record "
                                 "where system='hubspot' and stream='contacts' and not deleted").one()
        windows = c.exec_driver_sql("select count(*) from checkpoint where system='hubspot' and partition <> ''").scalar()
    eng.dispose()
    assert rows[0] == rows[1] == live, "every contact stored once in the shared store"
    assert windows == 8, "one checkpoint per window"
