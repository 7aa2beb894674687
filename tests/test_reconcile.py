"""The reconciliation sweep catches what no cursor shows, and dead-letter replay closes what a fix
repaired. Real HubSpot SDK against the HubSpot sandbox, plain functions, no Prefect."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from connectors.base import StreamSpec
from connectors.credentials import HubSpotCredentials
from connectors.http import RateBudget, RetryPolicy
from connectors.hubspot import HubSpotConnector
from flows.reconcile import sweep
from flows.replay import replay
from flows.sync import resolve_all, sync_stream
from identity import ingest
from identity.store import DeadLetter, InteractionRow, SourceRow, get_engine, session_scope
from mappings.engine import parse_mapping
from omnisync.records import SourceRecord, utcnow
from sandbox.framework import SandboxCluster
from sandbox.hubspot import HubSpotSandbox
from tests.fakes import FakeConnector

FAST = RetryPolicy(attempts=6, backoff_initial=0.02, backoff_max=0.2)


@pytest.fixture
def hubspot(tmp_path, store_url):
    sb = HubSpotSandbox(size=120, seed=9)
    with SandboxCluster([sb], workdir=tmp_path / "sb") as cluster:
        info = cluster.info()["hubspot"]

        def connect() -> HubSpotConnector:
            return HubSpotConnector(HubSpotCredentials(host=info["base_url"], **info["credentials"]), policy=FAST,
                                    search_budget=RateBudget(1000.0, 1000))

        engine = get_engine(store_url)
        for stream in ("contacts", "calls"):
            sync_stream(engine, connect(), stream)
        resolve_all(engine)
        yield sb, connect, engine


def _call_on_a_contact(sb, engine) -> tuple[int, int, str]:
    """A call linked to one contact, and another contact on a different golden record."""
    with session_scope(engine) as s:
        calls = {r.external_id: r for r in s.exec(select(InteractionRow).where(InteractionRow.system == "hubspot",
                                                                              InteractionRow.golden_id.is_not(None)))}
        goldens = {r.external_id: r.golden_id for r in s.exec(select(SourceRow).where(
            SourceRow.system == "hubspot", SourceRow.stream == "contacts", SourceRow.deleted.is_(False)))}
    for cid, call in sorted(calls.items()):
        (owner,) = sb.associated("calls", int(cid), "contacts") or (None,)
        other = next((c for c, g in sorted(goldens.items()) if g and g != call.golden_id), None)
        if owner is not None and other is not None:
            return int(cid), owner, other
    raise AssertionError("the seeded portal has no call on a resolved contact")


def test_an_activity_moved_to_another_contact_is_found_by_the_sweep_and_follows_it(hubspot):
    sb, connect, engine = hubspot
    call, owner, other = _call_on_a_contact(sb, engine)
    sb.unlink("calls", call, "contacts", owner)  # an association edit moves no modification date
    sb.link("calls", call, "contacts", int(other))

    quiet = sync_stream(engine, connect(), "calls")
    assert quiet.counts.total("stored") == 0, "the incremental read cannot see an association edit"
    out = sweep(engine, connect(), streams=["calls"])
    assert out["calls"]["stored"] == 1 and out["calls"]["hard_deleted"] == 0
    resolve_all(engine)
    with session_scope(engine) as s:
        moved = s.exec(select(InteractionRow).where(InteractionRow.system == "hubspot",
                                                    InteractionRow.external_id == str(call))).one()
        target = s.exec(select(SourceRow.golden_id).where(SourceRow.system == "hubspot", SourceRow.stream == "contacts",
                                                          SourceRow.external_id == other)).one()
    assert moved.golden_id == target


def test_a_contact_purged_without_a_trace_is_marked_deleted_by_the_sweep(hubspot):
    sb, connect, engine = hubspot
    with session_scope(engine) as s:
        victim = s.exec(select(SourceRow.external_id).where(SourceRow.system == "hubspot",
                                                            SourceRow.stream == "contacts",
                                                            SourceRow.deleted.is_(False))).first()
    store = sb.stores["contacts"]
    store.purge(store.get(int(victim)))  # no archived copy, no merge redirect: gone

    out = sweep(engine, connect(), streams=["contacts"])
    assert out["contacts"]["hard_deleted"] == 1
    resolve_all(engine)
    with session_scope(engine) as s:
        row = s.exec(select(SourceRow).where(SourceRow.system == "hubspot", SourceRow.external_id == victim)).one()
    assert row.deleted and not row.pending
    assert sweep(engine, connect(), streams=["contacts"])["contacts"]["hard_deleted"] == 0, "a second sweep is quiet"


class _ShortMemory(FakeConnector):
    """A vendor that keeps a week of history: a full read returns only the last week."""

    streams = {"people": StreamSpec("people", "profile", "Person", page_size=10, overlap=timedelta(0),
                                    retention=timedelta(days=7))}


def test_records_older_than_the_vendors_retention_are_not_judged_deleted(store_url, monkeypatch):
    from tests.test_ingest import PROFILE

    monkeypatch.setattr(ingest, "mappings_for", lambda system, stream: (PROFILE,))
    engine = get_engine(store_url)
    old, new = utcnow() - timedelta(days=30), utcnow() - timedelta(hours=1)
    with session_scope(engine) as s:
        ingest.ingest_records(s, [SourceRecord(system="acme", stream="people", external_id="aged", modified_at=old,
                                               payload={"first": "Ann", "email": "ann@example.com"}),
                                  SourceRecord(system="acme", stream="people", external_id="recent", modified_at=new,
                                               payload={"first": "Bo", "email": "bo@example.com"})])
    conn = _ShortMemory({})  # both aged out or deleted: only the recent one can be judged
    out = sweep(engine, conn, streams=["people"])
    assert out["people"]["hard_deleted"] == 1
    with session_scope(engine) as s:
        deleted = {r.external_id: r.deleted for r in s.exec(select(SourceRow))}
    assert deleted == {"aged": False, "recent": True}


def test_replay_closes_letters_a_fixed_mapping_now_ingests_and_keeps_the_rest_open(store_url, monkeypatch):
    strict = parse_mapping({"system": "acme", "stream": "people", "kind": "profile", "fields": {
        "first_name": {"source": "first", "transform": "text"},
        "birth_date": {"source": "born", "transform": "date"}}})
    lenient = parse_mapping({"system": "acme", "stream": "people", "kind": "profile", "fields": {
        "first_name": {"source": "first", "transform": "text"}}})
    current = {"mapping": strict}
    monkeypatch.setattr(ingest, "mappings_for", lambda system, stream: (current["mapping"],))
    engine = get_engine(store_url)
    recs = [SourceRecord(system="acme", stream="people", external_id=f"p{i}", modified_at=utcnow(),
                         payload={"first": f"Ann{i}", "born": "1990-02-30" if i < 2 else "1990-02-03"})
            for i in range(3)]
    with session_scope(engine) as s:
        assert ingest.ingest_records(s, recs).total("dead_lettered") == 2
    assert replay(engine) == {"replayed": 2, "resolved": 0, "still_failing": 2, "not_replayable": 0}
    current["mapping"] = lenient  # the fix: birth dates are no longer mapped from this system
    assert replay(engine) == {"replayed": 2, "resolved": 2, "still_failing": 0, "not_replayable": 0}
    with session_scope(engine) as s:
        letters = list(s.exec(select(DeadLetter)))
        stored = {r.external_id for r in s.exec(select(SourceRow))}
    assert len(letters) == 2 and all(letter.resolved_at and letter.attempts == 2 for letter in letters)  # ingest, one failed replay
    assert stored == {"p0", "p1", "p2"}
    assert replay(engine)["replayed"] == 0, "closed letters are not replayed again"
