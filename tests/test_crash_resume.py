"""A sync killed with SIGKILL mid-stream and re-run leaves the store an uninterrupted run leaves.

The child process is the real sync loop against a sandbox over HTTP (bench/crashkit.py). The
parent waits until the child reports committed pages, keeps reading the store while the child
writes (every checkpoint it sees must already have its records on disk), pulls SIGKILL, checks
what survived on disk, re-runs, and compares against a second store filled by one uninterrupted
run of the same sandbox: same rows, same versions, same checkpoint, nothing lost or duplicated,
and the counts of the killed run's committed pages plus the re-run reconcile.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sqlmodel import Session, select

from bench.crashkit import start_child, store_snapshot
from identity.store import Checkpoint, SourceRow, dispose_engines, get_engine
from omnisync.records import Cursor, as_utc
from sandbox.framework import SandboxCluster
from sandbox.hubspot import HubSpotSandbox, Limits
from sandbox.twilio import TwilioSandbox

RECONCILE = ("stored", "unchanged", "echoes", "dead_lettered", "suppressed")


def hubspot_live(sb: HubSpotSandbox) -> dict[str, int]:
    return {str(oid): ts for ts, oid in sb.stores["contacts"].by_ts()}


def checkpoint_is_behind_durable_rows(url: str, live: dict[str, int]) -> int | None:
    """In one read snapshot: every live contact at or before the committed cursor is stored.

    Returns the number of contacts the cursor covers (None before the first checkpoint).
    """
    eng = get_engine(url)
    with Session(eng) as s:
        cp = s.get(Checkpoint, ("hubspot", "contacts", ""))
        if cp is None or not cp.cursor.get("modified_at"):
            return None
        stored = {r for r in s.exec(select(SourceRow.external_id).where(SourceRow.system == "hubspot",
                                                                        SourceRow.stream == "contacts"))}
    cursor = Cursor.model_validate(cp.cursor)
    mark = int(as_utc(cursor.modified_at).timestamp() * 1000)
    covered = {i for i, ts in live.items() if ts < mark} | {cursor.last_id}
    missing = covered - stored
    assert not missing, f"checkpoint at {cp.cursor} is ahead of the rows on disk: {len(missing)} contacts missing"
    return len(covered)


def add_counts(*runs: dict[str, dict[str, int]]) -> dict[str, Counter]:
    total: dict[str, Counter] = {}
    for counts in runs:
        for key, c in counts.items():
            total.setdefault(key, Counter()).update(c)
    return total


def assert_reconciles(total: dict[str, Counter]) -> None:
    for key, c in total.items():
        assert c["read"] == sum(c[k] for k in RECONCILE), f"{key}: read {c['read']} != {dict(c)}"


def crash_then_rerun(tmp_path: Path, crash_url: str, system: str, stream: str, info: Path, *, kill_after: int,
                     watch=None, after_kill=None) -> tuple[dict, dict]:
    env = {"OMNISYNC_DATABASE_URL": crash_url, "OMNISYNC_SANDBOX_INFO": str(info),
           "OMNISYNC_HOME": str(tmp_path / "home")}
    child = start_child(system, stream, env, run_id="crashed")
    first = child.wait_pages(1)
    assert not first.get("done"), "the stream is large enough to be killed mid-way"
    if watch:  # read the store while the child keeps writing
        seen = watch() or 0
        while not child.progress[-1].get("done") and child.progress[-1]["pages"] < kill_after:
            child.wait_pages(child.progress[-1]["pages"] + 1)
            seen = max(seen, watch() or 0)
        assert seen, "the watcher saw a committed checkpoint while the child ran"
    else:
        child.wait_pages(kill_after)
    assert not child.progress[-1].get("done"), "killed before the end of the stream"
    child.kill()
    killed = child.committed_counts()
    reported = [p for p in child.progress if "pages" in p][-1]["pages"]
    with Session(get_engine(crash_url)) as s:
        cp = s.exec(select(Checkpoint).where(Checkpoint.system == system, Checkpoint.stream == stream)).one()
        batches, records = cp.batches, cp.records
    dispose_engines()
    # A page committed in the microseconds between its commit and its progress line is on disk but
    # unreported; anything else must match the durable checkpoint exactly.
    assert batches - reported in (0, 1), f"{batches} batches on disk, {reported} reported"
    if batches == reported:
        assert records == sum(c["read"] for c in killed.values()), "every committed page counted, none more"
    if after_kill:
        after_kill()
    rerun = start_child(system, stream, env, run_id="rerun").finish()
    assert rerun["status"] == "ok"
    assert 0 < sum(c["read"] for c in rerun["counts"].values())
    with Session(get_engine(crash_url)) as s:
        final = s.exec(select(Checkpoint).where(Checkpoint.system == system, Checkpoint.stream == stream)).one()
    dispose_engines()
    if batches == reported:
        assert final.records == records + sum(c["read"] for c in rerun["counts"].values())
    return killed, rerun


def one_clean_run(tmp_path: Path, url: str, system: str, stream: str, info: Path) -> dict:
    env = {"OMNISYNC_DATABASE_URL": url, "OMNISYNC_SANDBOX_INFO": str(info), "OMNISYNC_HOME": str(tmp_path / "home")}
    done = start_child(system, stream, env, run_id="clean").finish()
    assert done["status"] == "ok"
    return done


def assert_same_store(crashed: dict, clean: dict, *, exact_cursor: bool = True) -> None:
    assert crashed["source_rows"] == len(crashed["sources"]), "no vendor record stored twice"
    assert crashed["sources"].keys() == clean["sources"].keys(), (
        f"lost: {len(clean['sources'].keys() - crashed['sources'].keys())}, "
        f"extra: {len(crashed['sources'].keys() - clean['sources'].keys())}")
    diff = [k for k in clean["sources"] if crashed["sources"][k] != clean["sources"][k]]
    assert not diff, f"{len(diff)} records stored at another version than the uninterrupted run, e.g. {diff[:3]}"
    assert crashed["interactions"] == clean["interactions"]
    assert crashed["consent"] == clean["consent"]
    assert crashed["dead_letters"] == clean["dead_letters"], "the same dead letters, each once"
    assert crashed["cursors"].keys() == clean["cursors"].keys()
    if exact_cursor:
        assert crashed["cursors"] == clean["cursors"], "the checkpoint ends where the uninterrupted run's does"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.slow])])
def test_hubspot_contacts_sync_killed_mid_stream_resumes_to_the_uninterrupted_store(tmp_path, request, backend):
    store_url = f"sqlite:///{tmp_path / 'crash.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    kill_after = 2
    sb = HubSpotSandbox(size=1500, seed=5, limits=Limits(enabled=False))
    with SandboxCluster([sb], workdir=tmp_path / "sb") as cluster:
        info = tmp_path / "sandbox.json"
        cluster.write_info(info)
        sb.set_faults(latency_ms=15)  # slow enough that the kill lands between pages, not after the end
        live = hubspot_live(sb)
        def on_disk_after_kill():
            covered = checkpoint_is_behind_durable_rows(store_url, live)
            assert covered and covered < len(live), "the kill left a checkpoint part-way through the stream"

        killed, rerun = crash_then_rerun(tmp_path, store_url, "hubspot", "contacts", info, kill_after=kill_after,
                                         watch=lambda: checkpoint_is_behind_durable_rows(store_url, live),
                                         after_kill=on_disk_after_kill)
        crashed = store_snapshot(store_url)
        dispose_engines()
        clean_url = f"sqlite:///{tmp_path / 'clean.db'}"
        one_clean_run(tmp_path, clean_url, "hubspot", "contacts", info)
    clean = store_snapshot(clean_url)
    assert_same_store(crashed, clean)
    alive = {k[2] for k, v in crashed["sources"].items() if not v[1]}
    assert alive == set(live), "every live contact is stored exactly once, none lost"
    total = add_counts(killed, rerun["counts"])
    assert_reconciles(total)
    assert sum(c["read"] for c in rerun["counts"].values()) < len(live), "the re-run resumed, it did not start over"


def test_twilio_messages_sync_killed_mid_stream_resumes_to_the_uninterrupted_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    sb = TwilioSandbox(size=1500, seed=4)
    with SandboxCluster([sb], workdir=tmp_path / "sb") as cluster:
        info = tmp_path / "sandbox.json"
        cluster.write_info(info)
        sb.set_faults(latency_ms=15)
        killed, rerun = crash_then_rerun(tmp_path, url, "twilio", "messages", info, kill_after=2)
        crashed = store_snapshot(url)
        clean_url = f"sqlite:///{tmp_path / 'clean.db'}"
        one_clean_run(tmp_path, clean_url, "twilio", "messages", info)
        total_messages = sb.summary()["messages"]
        # Time-window cursors end on a window edge that depends on how the windows fell, so the two
        # checkpoints may differ; both must be safe: a further run from either finds nothing new.
        for u in (url, clean_url):
            again = one_clean_run(tmp_path, u, "twilio", "messages", info)["counts"].get("twilio/messages", {})
            assert again.get("stored", 0) == 0 and again.get("dead_lettered", 0) == 0, again
    clean = store_snapshot(clean_url)
    assert_same_store(crashed, clean, exact_cursor=False)
    assert len(clean["interactions"]) > 0 and len(crashed["sources"]) <= total_messages
    assert_reconciles(add_counts(killed, rerun["counts"]))
