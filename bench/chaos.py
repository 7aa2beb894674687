"""`make chaos`: the omnichannel run under faults, SIGKILLs and quota exhaustion, judged by content.

Every trial starts six fresh sandboxes (same population seed as its baseline) and a fresh store.
The baseline is an uninterrupted run repeated until it reaches its fixpoint (a run that pushes
nothing). A trial is then compared with it by *content*, never by the pipeline's own counters:

* the store: :func:`bench.crashkit.store_snapshot` (vendor records, interactions, consent, dead
  letters) plus how source records are grouped into golden records (the partition, not the ids);
* the vendors: each sandbox's ``/_sandbox/export``, normalized to drop what differs between two
  uninterrupted runs anyway (wall-clock timestamps, generated ids, golden-id values), counted per
  table and compared as multisets, so one activity or message pushed twice is one "duplicated".
  Two things legitimately differ between correct runs whose data arrived in different steps, and
  are compared by what they amount to (:func:`_comparable`): a Segment profile's log of
  ``identify`` calls (its traits and external ids, their net effect, are compared), and the ids of
  contacts omnisync created listed in HubSpot's ``hs_merged_object_ids`` (minted in creation order).

Scenarios:

* ``faults-20%`` – every sandbox answers 20% of requests with 429, 5xx, a stall then 5xx,
  a truncated body, or slowly. The faulty run must end with every stream either synced or
  reported failed/quota with a reason (its checkpoint kept): every vendor record the baseline's
  *first* run stored is stored, once, outside reported streams (:func:`synced_once`; what the
  push adds is read back by the next run, so it is not expected yet). Clean runs to the fixpoint
  (resume) then reach the baseline.
* ``sigkill`` – the plain pipeline (``python -m flows.orchestrate``) in a child process, killed
  with SIGKILL at a seeded random moment, then re-run to its fixpoint.
* ``quota`` – HubSpot and Zoom run out of daily quota part-way: the run must be ``partial`` with
  a ``resume_at`` per stopped stream (a quota that outlasts the sync runs out in the push, which
  reports it as the system's push failure); after the quota resets the next runs reach the baseline.
* ``concurrent-2`` / ``concurrent-4`` – two or four sync+resolve runs (``python -m flows.orchestrate
  --no-push`` children, started a few hundred ms apart) over the same sandboxes and one PostgreSQL
  store (a fresh schema per trial): every child must finish (a deadlock that is not retried fails
  it), then runs to the fixpoint must reach the baseline: same records, same golden partition (no
  duplicate golden record), same vendor contents. Skipped with a note when PostgreSQL is unreachable.

``python -m bench.chaos [--quick] [--trials N] [--size N] [--scenarios a,b]``; ``main(quick)`` for ``python -m bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.stores import PG_URL, create_pg_schema, drop_pg_schema

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ["salesforce", "hubspot", "zoom", "twilio", "sendgrid", "segment"]
SEED = 3
MAX_RUNS = 4  # runs to reach the fixpoint; the pipeline needs two (the second reads the echoes back)

# Fields that differ between two uninterrupted runs of the same population: wall-clock stamps and
# ids the vendor or omnisync mints. Everything else must be equal.
VOLATILE_KEY = re.compile(r"(^id$|_id$|Id$|^hs_object_id$|date|Date|time|Time|_at$|_ts$|stamp|modified|Modified|"
                          r"created|Created|updated|Updated|^sid$|uri$|^correlationId$|^messageId$|golden|"
                          r"^hs_lastmodifieddate$|^url$|^sg_message_id$|^msg_id$|^api_version$)", re.I)
VOLATILE_VALUE = re.compile(r"\bg-[0-9a-f]{20}\b|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\b\d{4}-\d\d-\d\dT[\d:.]+")
SKIP_TABLES = {"webhook_outbox", "webhook_posts", "events"}  # delivery logs: their length follows timing


# --- sandboxes and runs --------------------------------------------------------------------------

def start_cluster(workdir: Path, size: int, seed: int = SEED):
    from sandbox.framework import SandboxCluster
    from sandbox.registry import build

    cluster = SandboxCluster([build(n, size=size, seed=seed) for n in SYSTEMS], workdir=workdir / "sb").start()
    cluster.write_info(workdir / "sandboxes.json")
    return cluster


def use_store(workdir: Path, name: str) -> str:
    """Point this process at a fresh SQLite store (and the sandboxes of ``workdir``)."""
    from identity.store import dispose_engines
    from omnisync.settings import reset_settings

    url = f"sqlite:///{workdir / name}.db"
    dispose_engines()
    os.environ.update(OMNISYNC_DATABASE_URL=url, OMNISYNC_SANDBOX_INFO=str(workdir / "sandboxes.json"),
                      OMNISYNC_HOME=str(workdir / "home"))
    reset_settings()
    return url


def use_pg_store(workdir: Path, schema: str) -> str | None:
    """Point this process at a fresh PostgreSQL schema (None when the server is unreachable)."""
    from identity.store import dispose_engines
    from omnisync.settings import reset_settings

    url = create_pg_schema(schema)
    if url is None:
        return None
    dispose_engines()
    os.environ.update(OMNISYNC_DATABASE_URL=url, OMNISYNC_SANDBOX_INFO=str(workdir / "sandboxes.json"),
                      OMNISYNC_HOME=str(workdir / "home"))
    reset_settings()
    return url


def drop_store_schema(schema: str) -> None:
    from identity.store import dispose_engines

    dispose_engines()
    drop_pg_schema(schema)


def pushed_writes(summary: dict[str, Any]) -> int:
    return sum(v for c in ((summary.get("pushed") or {}).get("counts") or {}).values()
               for k, v in c.items() if k in ("created", "updated", "deleted"))


def run_to_fixpoint(first: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Plain omnichannel runs in this process until one completes and pushes nothing."""
    from flows.orchestrate import omnichannel

    runs = [first] if first else []
    while len(runs) < MAX_RUNS and not (runs and runs[-1]["status"] == "completed" and pushed_writes(runs[-1]) == 0):
        runs.append(omnichannel(systems=SYSTEMS))
    return runs


def child_env(url: str, workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMNISYNC_", "PREFECT_"))}
    env.update(OMNISYNC_DATABASE_URL=url, OMNISYNC_SANDBOX_INFO=str(workdir / "sandboxes.json"),
               OMNISYNC_HOME=str(workdir / "home"), PYTHONPATH=str(REPO))
    return env


def run_child(url: str, workdir: Path, *, kill_after: float | None = None) -> tuple[bool, dict[str, Any] | None]:
    """``python -m flows.orchestrate`` in a child; SIGKILL after ``kill_after`` seconds if still running.

    Returns (killed, summary line or None)."""
    proc = subprocess.Popen([sys.executable, "-m", "flows.orchestrate"], cwd=REPO, env=child_env(url, workdir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=kill_after if kill_after is not None else 600)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)  # no finally, no atexit, no flush
        proc.communicate(timeout=30)
        return True, None
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline child failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    return False, json.loads(out.decode().strip().splitlines()[-1])


# --- content snapshots ---------------------------------------------------------------------------

def _norm(value: Any) -> Any:
    if isinstance(value, dict):
        return {VOLATILE_VALUE.sub("~", k): _norm(v) for k, v in sorted(value.items()) if not VOLATILE_KEY.search(k)}
    if isinstance(value, list):
        return sorted((_norm(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True, default=str))
    if isinstance(value, str):
        return VOLATILE_VALUE.sub("~", value)
    return value


def vendor_census(info_path: Path, seeded: set[str] = frozenset()) -> dict[str, Counter]:
    """Per ``system/table``: a multiset of normalized vendor records (what an admin export holds).

    ``seeded``: the ids fresh sandboxes hold; other ids found in id lists (HubSpot's
    ``hs_merged_object_ids``) were minted for records omnisync created and are compared as such."""
    info = json.loads(info_path.read_text())
    out: dict[str, Counter] = {}
    for system, entry in info.items():
        doc = httpx.get(entry["base_url"] + "/_sandbox/export", timeout=60, verify=entry.get("ca_cert") or True).json()
        for table, rows in doc.items():
            if table in SKIP_TABLES:
                continue
            items = rows.values() if isinstance(rows, dict) and table == "profiles" else rows
            if isinstance(items, dict):  # keyed by a minted id (Zoom's contact fields)
                items = list(items.values())
            out[f"{system}/{table}"] = Counter(json.dumps(_norm(_comparable(system, table, r, seeded)), sort_keys=True,
                                                      default=str) for r in items)
    return out


def _comparable(system: str, table: str, record: Any, seeded: set[str] = frozenset()) -> Any:
    """The part of a vendor record two correct runs must agree on.

    A Segment profile keeps every call it received: ``identify`` calls (profile updates) as well as
    ``track`` events (the timeline we write). omnisync sends an identify whenever the golden record
    changed, so *how many* identifies a profile got follows in how many steps its data arrived
    (a quota that moves a HubSpot create to the next run adds an intermediate identify). Their net
    effect, the profile's ``traits`` and ``external_ids``, is compared; the track events are
    compared one by one (a duplicate activity is a duplicate). A HubSpot contact that absorbed one
    omnisync created lists its id in ``hs_merged_object_ids``: that id is minted, so it is compared
    as "a created one".
    """
    if system == "segment" and table == "profiles" and isinstance(record, dict):
        return {**record, "events": [e for e in record.get("events") or [] if e.get("type") != "identify"]}
    merged = ((record.get("properties") or {}) if isinstance(record, dict) else {}).get("hs_merged_object_ids")
    if system == "hubspot" and merged:  # which ids a contact absorbed: a created one is known by its kind only
        ids = sorted(i if i in seeded else "<minted>" for i in str(merged).split(";") if i)
        return {**record, "properties": {**record["properties"], "hs_merged_object_ids": ";".join(ids)}}
    return record


ID_KEY = re.compile(r"(^id$|_id$|Id$|^sid$|^hs_object_id$|^msg_id$|^userId$)")


def seeded_ids(info_path: Path) -> set[str]:
    """Every id a fresh set of sandboxes holds (values of id-like keys, anywhere in the export)."""
    info = json.loads(info_path.read_text())
    out: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                if isinstance(x, (str, int)) and ID_KEY.search(str(k)):
                    out.add(str(x))
                out.add(str(k))  # tables keyed by id
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for entry in info.values():
        walk(httpx.get(entry["base_url"] + "/_sandbox/export", timeout=60, verify=entry.get("ca_cert") or True).json())
    return out


def store_census(url: str, seeded: set[str]) -> dict[str, Any]:
    """The store by content: vendor-keyed rows (crashkit's snapshot) plus the golden partition.

    Ids a vendor minted for records omnisync created (a HubSpot contact, a Zoom address-book
    entry) and ids that are golden ids (Segment's userId) depend on write order and uuid4, so they
    differ between two correct runs: they are the ids not among the ``seeded`` ones of fresh
    sandboxes. Such a record is keyed instead by the seeded records of its golden group (its
    *signature*) and compared as a multiset: one record created twice for one person still shows
    up as a duplicate. Echoes (our writes read back) are compared as counts.
    """
    import sqlalchemy as sa
    from sqlmodel import Session, select

    from bench.crashkit import store_snapshot
    from identity.store import GoldenRecord, SourceRow

    snap = store_snapshot(url)
    eng = sa.create_engine(url)
    try:
        with Session(eng) as s:
            golden_of = {(r.system, r.stream, r.external_id): r.golden_id for r in s.exec(select(SourceRow))}
            goldens = len(s.exec(select(GoldenRecord)).all())
    finally:
        eng.dispose()
    echo_ids = {(k[0], k[2]) for k, v in snap["sources"].items() if v[5]}

    def minted(k: tuple) -> bool:
        return k[2] is not None and k[2] not in seeded

    groups: dict[str, set] = {}
    for k, gid in golden_of.items():
        if gid:
            groups.setdefault(gid, set()).add(k)
    signature = {gid: tuple(sorted(m for m in members if not minted(m) and (m[0], m[2]) not in echo_ids))
                 for gid, members in groups.items()}

    def key(k: tuple) -> tuple:
        if (k[0], k[2]) in echo_ids:
            return (k[0], k[1], "<echo>")
        if minted(k):
            return (k[0], k[1], "<minted>", signature.get(golden_of.get(k) or "", ()))
        return k

    plain = {k: v for k, v in snap["sources"].items() if not v[5] and not minted(k)}
    stored = {k for k in snap["sources"] if not minted(k)}  # echoes included
    dead: Counter = Counter()
    for d, n in snap["dead_letters"].items():
        dead[(d[0], d[1], "<minted>" if minted(d) else d[2], d[3])] += n
    return {
        # modified_at and fingerprint follow the vendor's clock for records omnisync wrote back
        "sources": {k: (v[1], v[2], v[4]) for k, v in plain.items()},
        "stored": stored,
        "minted": Counter((key(k), v[1], v[4]) for k, v in snap["sources"].items() if not v[5] and minted(k)),
        "echoes": Counter((k[0], k[1], v[1], v[4]) for k, v in snap["sources"].items() if v[5]),
        "source_rows": snap["source_rows"] - sum(1 for k, v in snap["sources"].items() if v[5] or minted(k)),
        "interactions": Counter((k[0], "<echo>") if k in echo_ids else k for k in snap["interactions"]),
        "consent": snap["consent"],
        "dead_letters": dead,
        "partition": sorted((sorted(map(key, g), key=repr) for g in groups.values()), key=repr),
        "goldens": goldens,
    }


@dataclass
class Diff:
    records: int = 0
    lost: int = 0
    duplicated: int = 0
    changed: int = 0
    dead_lettered: int = 0
    notes: list[str] = field(default_factory=list)
    skipped: bool = False

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.changed)


def compare(base_store: dict, base_vendor: dict, store: dict, vendor: dict, *, excused: set[str] = frozenset()) -> Diff:
    """Trial vs baseline. ``excused``: ``system/stream`` keys reported checkpointed with a reason."""
    d = Diff(records=len(base_store["sources"]) + len(base_store["interactions"]),
             dead_lettered=sum(store["dead_letters"].values()))

    def excuse(key) -> bool:
        return f"{key[0]}/{key[1]}" in excused

    lost = [k for k in base_store["sources"].keys() - store["sources"].keys() if not excuse(k)]
    d.lost += len(lost)
    d.duplicated += store["source_rows"] - len(store["sources"])
    extra = store["sources"].keys() - base_store["sources"].keys()
    d.duplicated += len(extra)
    changed = [k for k in base_store["sources"].keys() & store["sources"].keys()
               if base_store["sources"][k] != store["sources"][k]]
    d.changed += len(changed)
    if lost or extra or changed:
        d.notes.append(f"store: lost {sorted(lost)[:3]} extra {sorted(extra)[:3]} changed {sorted(changed)[:3]}")
    for what in ("interactions", "echoes", "minted"):
        d.lost += sum((base_store[what] - store[what]).values())
        d.duplicated += sum((store[what] - base_store[what]).values())
    for what in ("consent", "dead_letters"):
        if store[what] != base_store[what]:
            d.changed += 1
            d.notes.append(f"store {what} differ")
    if not excused and store["partition"] != base_store["partition"]:
        d.changed += 1
        d.notes.append(f"golden partition differs ({store['goldens']} goldens vs {base_store['goldens']})")
    for table in sorted(base_vendor.keys() | vendor.keys()):
        b, t = base_vendor.get(table, Counter()), vendor.get(table, Counter())
        more, less = t - b, b - t
        n_more, n_less = sum(more.values()), sum(less.values())
        growth = sum(t.values()) - sum(b.values())
        d.duplicated += max(0, growth)
        d.lost += max(0, -growth)
        d.changed += min(n_more, n_less)
        if more or less:
            d.notes.append(f"{table}: +{n_more} -{n_less} e.g. {next(iter(more or less))[:200]}")
    return d


# --- scenarios -----------------------------------------------------------------------------------

@dataclass
class Baseline:
    store: dict
    vendor: dict
    seconds: float
    runs: int
    seeded: set[str]
    first: dict = field(default_factory=dict)  # the store after the first run


def baseline(root: Path, size: int) -> Baseline:
    work = root / "baseline"
    work.mkdir(parents=True)
    cluster = start_cluster(work, size)
    try:
        url = use_store(work, "store")
        seeded = seeded_ids(work / "sandboxes.json")  # every trial's sandboxes start from this seed
        from flows.orchestrate import omnichannel

        t0 = time.perf_counter()
        first_run = omnichannel(systems=SYSTEMS)
        secs = time.perf_counter() - t0
        first = store_census(url, seeded)
        t0 = time.perf_counter()
        runs = run_to_fixpoint(first_run)
        secs += time.perf_counter() - t0
        if runs[-1]["status"] != "completed" or pushed_writes(runs[-1]):
            raise RuntimeError(f"the baseline did not reach a fixpoint in {MAX_RUNS} runs")
        return Baseline(store_census(url, seeded), vendor_census(work / "sandboxes.json", seeded), secs, len(runs),
                        seeded, first)
    finally:
        cluster.stop()


def synced_once(first: dict, store: dict, *, excused: set[str]) -> Diff:
    """After one faulty run: every vendor record an uninterrupted first run stores is stored, once,
    unless its stream was reported failed or stopped with a reason.

    Only the vendors' own records count here. What the push adds (records we create, echoes of
    our writes, activities hung on records created in this run) is read by the *next* run in an
    uninterrupted run too, so it is judged after the runs to the fixpoint, against the baseline.
    """
    d = Diff(records=len(first["sources"]))
    lost = sorted(k for k in first["sources"].keys() - store["stored"] if f"{k[0]}/{k[1]}" not in excused)
    d.lost = len(lost)
    d.duplicated = store["source_rows"] - len(store["sources"])
    if lost:
        d.notes.append(f"after the faulty run, not stored and not reported: {lost[:3]}")
    return d


FAULTS_20 = dict(rate_429=0.05, rate_5xx=0.05, rate_timeout=0.04, timeout_stall_s=0.5, rate_truncate=0.06,
                 latency_ms=5)


def faults_trial(root: Path, size: int, base: Baseline, seed: int) -> Diff:
    work = root / f"faults-{seed}"
    work.mkdir(parents=True)
    cluster = start_cluster(work, size)
    try:
        url = use_store(work, "store")
        for name in SYSTEMS:
            cluster[name].set_faults(**FAULTS_20, seed=seed * 31 + SYSTEMS.index(name))
        from flows.orchestrate import omnichannel

        faulty = omnichannel(systems=SYSTEMS)
        stopped = faulty["failed"] + faulty["quota_stops"]
        notes = []
        unexplained = [s for s in faulty["failed"] if not s.get("message")]
        excused = {f"{s['system']}/{s['stream']}" for s in stopped}
        mid = synced_once(base.first, store_census(url, base.seeded), excused=excused)
        injected = sum(sum(cluster[n].log.faults_injected.values()) for n in SYSTEMS)
        notes.append(f"{injected} faults injected; {len(stopped)} streams checkpointed with a reason; "
                     f"lost outside them after the faulty run: {mid.lost}")
        for name in SYSTEMS:
            cluster[name].set_faults(**{k: 0 for k in ("rate_429", "rate_5xx", "rate_timeout", "rate_truncate",
                                                        "latency_ms")})
        run_to_fixpoint()
        d = compare(base.store, base.vendor, store_census(url, base.seeded),
                    vendor_census(work / "sandboxes.json", base.seeded))
        d.lost += mid.lost + len(unexplained)
        d.duplicated = max(d.duplicated, mid.duplicated)
        d.notes = notes + mid.notes + d.notes
        return d
    finally:
        cluster.stop()


def sigkill_trial(root: Path, size: int, base: Baseline, seed: int) -> Diff:
    work = root / f"sigkill-{seed}"
    work.mkdir(parents=True)
    cluster = start_cluster(work, size)
    try:
        url = use_store(work, "store")
        from identity.store import dispose_engines, get_engine

        get_engine(url)  # migrated before the child starts, so the kill lands in the pipeline, not DDL
        dispose_engines()
        # the child spends ~2-3 s importing; the kill point is spread over the whole first run
        kill_at = random.Random(seed).uniform(2.0, 2.0 + base.seconds / base.runs * 1.3)
        killed, _ = run_child(url, work, kill_after=kill_at)
        _, rerun = run_child(url, work)  # the re-run: a new process resumes from what the kill left
        # the child prints only its status: further runs to the fixpoint go in-process
        run_to_fixpoint()
        d = compare(base.store, base.vendor, store_census(url, base.seeded),
                    vendor_census(work / "sandboxes.json", base.seeded))
        d.notes.insert(0, f"kill at {kill_at:.2f} s ({'killed' if killed else 'finished first'})")
        return d
    finally:
        cluster.stop()


def quota_trial(root: Path, size: int, base: Baseline, seed: int) -> Diff:
    work = root / f"quota-{seed}"
    work.mkdir(parents=True)
    cluster = start_cluster(work, size)
    try:
        url = use_store(work, "store")
        rng = random.Random(seed)
        for name, low, high in (("hubspot", 3, 12), ("zoom", 10, 60)):
            cluster[name].set_faults(daily_quota=rng.randint(low, high))
        from flows.orchestrate import omnichannel

        first = omnichannel(systems=SYSTEMS)
        stops = first["quota_stops"]
        # A quota that outlasts the sync runs out in the push: reported as that system's push failure.
        push_stops = sorted(k for k, m in ((first.get("pushed") or {}).get("failed") or {}).items()
                            if "quota" in str(m).lower())
        d_notes = [f"quota stops: {[(s['system'], s['stream'], bool(s['resume_at'])) for s in stops]}"
                   + (f", in the push: {push_stops}" if push_stops else "")]
        problems = 0
        if first["status"] != "partial" or not (stops or push_stops) or not all(s["resume_at"] for s in stops):
            problems += 1
            d_notes.append(f"expected a partial run with resume_at per stop, got {first['status']} "
                           f"{first['failed']}")
        for name in ("hubspot", "zoom"):
            cluster[name].set_faults(daily_quota=None)  # the next day
            with cluster[name].lock:
                cluster[name].calls_used = 0
        run_to_fixpoint()
        d = compare(base.store, base.vendor, store_census(url, base.seeded),
                    vendor_census(work / "sandboxes.json", base.seeded))
        d.changed += problems
        d.notes = d_notes + d.notes
        return d
    finally:
        cluster.stop()


def concurrent_trial(root: Path, size: int, base: Baseline, seed: int, *, runs: int) -> Diff:
    work = root / f"concurrent{runs}-{seed}"
    work.mkdir(parents=True)
    schema = f"chaos_{os.getpid()}_{runs}_{seed}"
    cluster = start_cluster(work, size)
    try:
        url = use_pg_store(work, schema)
        if url is None:
            d = Diff(records=0)
            d.notes.append(f"skipped: PostgreSQL not reachable at {PG_URL}")
            d.skipped = True
            return d
        from identity.store import dispose_engines, get_engine

        get_engine(url)  # migrated once, before the children race
        dispose_engines()
        rng = random.Random(seed)
        procs = []
        for _ in range(runs):
            procs.append(subprocess.Popen([sys.executable, "-m", "flows.orchestrate", ",".join(SYSTEMS), "--no-push"],
                                          cwd=REPO, env=child_env(url, work), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, start_new_session=True))
            time.sleep(rng.uniform(0.0, 0.4))
        failures = []
        for p in procs:
            out, err = p.communicate(timeout=600)
            if p.returncode != 0:
                failures.append(err.decode(errors="replace").strip().splitlines()[-1:] or ["exit %d" % p.returncode])
        run_to_fixpoint()
        d = compare(base.store, base.vendor, store_census(url, base.seeded),
                    vendor_census(work / "sandboxes.json", base.seeded))
        d.changed += len(failures)
        d.notes.insert(0, f"{runs} concurrent runs, {len(failures)} failed"
                          + (f": {failures[0][0][:300]}" if failures else ""))
        return d
    finally:
        cluster.stop()
        drop_store_schema(schema)


SCENARIOS = {"faults-20%": faults_trial, "sigkill": sigkill_trial, "quota": quota_trial,
             "concurrent-2": lambda *a, **k: concurrent_trial(*a, **k, runs=2),
             "concurrent-4": lambda *a, **k: concurrent_trial(*a, **k, runs=4)}


def run(trials: dict[str, int], size: int, *, verbose: bool = True) -> list[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="omnisync-chaos-"))
    saved = {k: os.environ.get(k) for k in ("OMNISYNC_DATABASE_URL", "OMNISYNC_SANDBOX_INFO", "OMNISYNC_HOME")}
    try:
        base = baseline(root, size)
        if verbose:
            print(f"baseline: {len(base.store['sources'])} records, {base.runs} runs to the fixpoint, "
                  f"{base.seconds:.1f} s", flush=True)
        rows = []
        for name, n in trials.items():
            diffs = []
            for i in range(n):
                t0 = time.perf_counter()
                d = SCENARIOS[name](root, size, base, seed=1000 + i)
                diffs.append(d)
                if verbose:
                    print(f"  {name} #{i}: lost {d.lost} dup {d.duplicated} changed {d.changed} "
                          f"({time.perf_counter() - t0:.1f} s) {'; '.join(d.notes)[:600]}", flush=True)
            rows.append({"scenario": name, "trials": n, "records": sum(d.records for d in diffs),
                         "lost": sum(d.lost for d in diffs), "duplicated": sum(d.duplicated for d in diffs),
                         "changed": sum(d.changed for d in diffs),
                         "dead_lettered": sum(d.dead_lettered for d in diffs),
                         "expected_dead": sum(base.store["dead_letters"].values()) * n,
                         "verdict": "SKIP" if diffs and all(d.skipped for d in diffs)
                         else "PASS" if all(d.clean for d in diffs) else "FAIL",
                         "notes": [n for d in diffs if not d.clean or d.skipped for n in d.notes][:5]})
        return rows
    finally:
        from identity.store import dispose_engines

        dispose_engines()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(root, ignore_errors=True)


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'scenario':<12} {'trials':>6} {'records':>8} {'lost':>5} {'duplicated':>10} {'changed':>7} " \
           f"{'dead-lettered':>13} {'verdict':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        dead = f"{r['dead_lettered']}/{r['expected_dead']}"
        lines.append(f"{r['scenario']:<12} {r['trials']:>6} {r['records']:>8} {r['lost']:>5} {r['duplicated']:>10} "
                     f"{r['changed']:>7} {dead:>13} {r['verdict']:>7}")
    return "\n".join(lines)


def main(quick: bool = False, trials: int | None = None, size: int | None = None,
         scenarios: list[str] | None = None) -> dict[str, Any]:
    size = size or (40 if quick else 80)
    if trials is None:
        counts = ({"faults-20%": 1, "sigkill": 2, "quota": 1, "concurrent-2": 1, "concurrent-4": 1} if quick else
                  {"faults-20%": 5, "sigkill": 20, "quota": 5, "concurrent-2": 3, "concurrent-4": 3})
    else:
        counts = {name: trials for name in SCENARIOS}
    if scenarios:
        counts = {k: v for k, v in counts.items() if k in scenarios}
    t0 = time.perf_counter()
    rows = run(counts, size)
    print()
    print(table(rows))
    print(f"\n(dead-lettered: trials' dead letters / the baseline's times trials; {time.perf_counter() - t0:.0f} s, "
          f"population {size} per sandbox)")
    for r in rows:
        for n in r["notes"]:
            print(f"  {r['scenario']}: {n}")
    return {"rows": rows, "size": size}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--trials", type=int)
    ap.add_argument("--size", type=int)
    ap.add_argument("--scenarios", help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    a = ap.parse_args()
    result = main(quick=a.quick, trials=a.trials, size=a.size,
                  scenarios=a.scenarios.split(",") if a.scenarios else None)
    sys.exit(0 if all(r["verdict"] in ("PASS", "SKIP") for r in result["rows"]) else 1)
