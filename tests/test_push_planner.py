"""The push planner writes only what changed, recognizes its echo, and refuses runaway pushes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from flows.push import execute_plan
from identity import push as planner
from identity.ingest import ingest_records
from identity.push import CircuitOpen, plan_push
from identity.store import ChangeEvent, DeadLetter, GoldenRecord, OutboundLedger, SourceRow, get_engine, session_scope
from omnisync.model import CustomerProfile
from connectors.base import chunks
from omnisync.records import WriteOutcome, WriteStatus
from tests.fakes import T0, FakeConnector
from tests.test_ingest import PROFILE, _acme_mappings  # noqa: F401


@pytest.fixture(autouse=True)
def _acme_policy(monkeypatch):
    own = {"defaults": {"breaker_share": 0.25, "breaker_min_records": 20, "loop_threshold": 3},
           "systems": {"acme": {"profile_stream": "people", "create": True, "create_requires": "emails",
                                "duplicates": "link"}}}
    monkeypatch.setattr(planner, "ownership", lambda: own)
    monkeypatch.setattr(planner, "load_mapping", lambda system, stream: PROFILE)


def golden(s, gid, first, email, *, rows=()):
    s.add(GoldenRecord(golden_id=gid, profile=CustomerProfile(first_name=first, emails=[email]).model_dump(mode="json")))
    s.add(ChangeEvent(golden_id=gid, kind="created"))
    for ext, seen_first in rows:
        canon = {"profile": CustomerProfile(first_name=seen_first, emails=[email],
                                            external_ids={"acme": ext}).model_dump(mode="json")}
        s.add(SourceRow(system="acme", stream="people", external_id=ext, modified_at=T0, fingerprint="f",
                        payload={"first": seen_first, "email": email}, canonical=canon, golden_id=gid, pending=False))


def test_only_changed_fields_are_written_and_a_rerun_writes_nothing(store_url):
    engine = get_engine(store_url)
    conn = FakeConnector({"p1": {"first": "Amy", "email": "amara@example.com"}})
    with session_scope(engine) as s:
        golden(s, "G1", "Amara", "amara@example.com", rows=[("p1", "Amy")])
    with session_scope(engine) as s:
        plan = plan_push(s, ["acme"])
    (rec,) = plan.streams[("acme", "people")].records
    assert rec.payload == {"first": "Amara", "golden": "G1"}, "only the changed name and the link"
    execute_plan(engine, plan, {"acme": conn})
    assert conn.people["p1"]["first"] == "Amara"
    with session_scope(engine) as s:
        assert plan_push(s, ["acme"], full=True).total == 0, "what we wrote is not written again"


def test_our_write_read_back_is_an_echo_not_a_new_fact(store_url):
    engine = get_engine(store_url)
    conn = FakeConnector({"p1": {"first": "Amy", "email": "amara@example.com"}})
    with session_scope(engine) as s:
        golden(s, "G1", "Amara", "amara@example.com", rows=[("p1", "Amy")])
    with session_scope(engine) as s:
        plan = plan_push(s, ["acme"])
    execute_plan(engine, plan, {"acme": conn})
    conn.stamps["p1"] = T0 + timedelta(minutes=1)
    page = list(conn.read("people"))[0]
    with session_scope(engine) as s:
        counts = ingest_records(s, page.records)
        row = s.exec(select(SourceRow)).one()
    assert counts.total("echoes") == 1 and row.echo and not row.pending


def test_missing_records_are_created_once_by_unique_identifier(store_url):
    engine = get_engine(store_url)
    conn = FakeConnector({})
    with session_scope(engine) as s:
        golden(s, "G2", "Lee", "lee@example.com")
    with session_scope(engine) as s:
        plan = plan_push(s, ["acme"])
    (rec,) = plan.streams[("acme", "people")].records
    assert rec.match == {"email": "lee@example.com"} or rec.match == {"golden": "G2"}
    execute_plan(engine, plan, {"acme": conn})
    with session_scope(engine) as s:
        assert plan_push(s, ["acme"], full=True).total == 0
    assert len(conn.people) == 1


def test_circuit_breaker_refuses_a_mass_overwrite_unless_forced(store_url):
    engine = get_engine(store_url)
    with session_scope(engine) as s:
        for i in range(30):
            golden(s, f"G{i}", f"New{i}", f"p{i}@example.com", rows=[(f"p{i}", f"Old{i}")])
    with session_scope(engine) as s:
        plan = plan_push(s, ["acme"])
    conn = FakeConnector({f"p{i}": {"first": f"Old{i}"} for i in range(30)})
    with pytest.raises(CircuitOpen, match="--force"):
        execute_plan(engine, plan, {"acme": conn})
    assert conn.writes == []
    execute_plan(engine, plan, {"acme": conn}, force=True)
    assert all(conn.people[f"p{i}"]["first"] == f"New{i}" for i in range(30))


def test_a_record_changed_back_every_run_raises_a_loop_alarm(store_url):
    engine = get_engine(store_url)
    conn = FakeConnector({"p1": {"first": "Amy", "email": "amara@example.com"}})
    with session_scope(engine) as s:
        golden(s, "G1", "Amara", "amara@example.com", rows=[("p1", "Amy")])
    alarms = 0
    for run in range(4):
        with session_scope(engine) as s:
            plan = plan_push(s, ["acme"], full=True)
        alarms += len(plan.alarms)
        execute_plan(engine, plan, {"acme": conn}, run_id=None)
        # Someone in the target system sets the name back after every push.
        with session_scope(engine) as s:
            row = s.exec(select(SourceRow)).one()
            row.canonical = {"profile": {**row.canonical["profile"], "first_name": "Amy"}}
            row.fingerprint = f"reread-{run}"  # as a sync re-reading the reverted record would
            s.add(row)
    assert alarms >= 1
    with session_scope(engine) as s:
        letters = list(s.exec(select(DeadLetter).where(DeadLetter.stage == "loop")))
        led = s.exec(select(OutboundLedger)).one()
    assert letters and "loop alarm" in letters[0].reason and led.bounces >= 2
    # The letter says what brings the record back, and no step that does nothing (replay is for map letters).
    assert "omnisync push --full" in letters[0].reason and "then replay" not in letters[0].reason
    from flows.replay import replay

    assert replay(engine)["replayed"] == 0


class _QuotaMidWrite(FakeConnector):
    """Like the CRM connectors: once the daily quota is spent, the rest of a write comes back failed
    and retryable (never an exception that would lose the outcomes of the batches already sent)."""

    def write(self, stream, records):
        out = []
        for batch in chunks(list(records), 5):
            if self.quota is not None and self.calls >= self.quota:
                out += [WriteOutcome(r.key, WriteStatus.failed, retryable=True, error="[acme] daily quota spent")
                        for r in batch]
                continue
            out += super().write(stream, batch)
        return out


def test_a_push_cut_short_by_the_quota_is_finished_by_the_next_run_not_dead_lettered(store_url):
    engine = get_engine(store_url)
    people = {f"p{i}": {"first": "Old", "email": f"p{i}@example.com"} for i in range(12)}
    conn = _QuotaMidWrite(people, quota=1)
    with session_scope(engine) as s:
        for i in range(12):
            golden(s, f"G{i}", f"New{i}", f"p{i}@example.com", rows=[(f"p{i}", "Old")])
    with session_scope(engine) as s:
        plan = plan_push(s, ["acme"])
    assert len(plan.streams[("acme", "people")].records) == 12
    result = execute_plan(engine, plan, {"acme": conn}, force=True)
    assert "acme" in result.failed_systems and "not confirmed" in result.failed_systems["acme"]
    assert result.counts["acme/people"]["retry_next_run"] == 7
    assert sum(1 for p in conn.people.values() if p["first"].startswith("New")) == 5
    with session_scope(engine) as s:
        assert not s.exec(select(DeadLetter)).all(), "a spent quota is not bad input"
        again = plan_push(s, ["acme"])  # the push checkpoint did not move past the unsent records
    assert sorted(r.external_id for r in again.streams[("acme", "people")].records) == \
        sorted(k for k, p in conn.people.items() if p["first"] == "Old")
    conn.quota = None  # the next day
    assert not execute_plan(engine, again, {"acme": conn}, force=True).failed_systems
    assert all(p["first"] == f"New{k[1:]}" for k, p in conn.people.items())
    with session_scope(engine) as s:
        assert plan_push(s, ["acme"]).total == 0


class _Refuses(FakeConnector):
    """Refuses every create: the address already belongs to another record (as HubSpot answers)."""

    def write(self, stream, records):
        self.writes.append(list(records))
        return [WriteOutcome(r.key, WriteStatus.failed, error="email rejected (OBJECT_ALREADY_EXISTS)")
                for r in records]


def test_a_write_refused_again_is_one_more_attempt_on_the_same_dead_letter(store_url):
    engine = get_engine(store_url)
    conn = _Refuses({})
    with session_scope(engine) as s:
        golden(s, "G1", "Lee", "lee@example.com")
    for _ in range(2):  # planned again: the golden record changed in between, say
        with session_scope(engine) as s:
            plan = plan_push(s, ["acme"], full=True)
        execute_plan(engine, plan, {"acme": conn})
    assert len(conn.writes) == 2
    with session_scope(engine) as s:
        (letter,) = s.exec(select(DeadLetter)).all()
    assert letter.attempts == 2 and "OBJECT_ALREADY_EXISTS" in letter.reason


def test_placeholder_addresses_are_never_written_nor_used_to_create_a_record(store_url):
    engine = get_engine(store_url)
    with session_scope(engine) as s:
        golden(s, "G1", "Luna", "none@none.com")  # the only address is a placeholder: nothing to key on
        s.add(GoldenRecord(golden_id="G2", profile=CustomerProfile(
            first_name="Mateo", emails=["test@test.com", "mateo@example.org"]).model_dump(mode="json")))
    with session_scope(engine) as s:
        plan = plan_push(s, ["acme"], full=True)
    (rec,) = plan.streams[("acme", "people")].records
    assert rec.key == "G2|new" and rec.payload["email"] == "mateo@example.org"
    assert rec.match in ({"email": "mateo@example.org"}, {"golden": "G2"})


def test_duplicates_merge_into_the_record_the_vendor_had_before_ours_whatever_the_read_order(store_url, monkeypatch):
    engine = get_engine(store_url)
    with session_scope(engine) as s:
        golden(s, "G1", "Amara", "amara@example.com")
        # the record omnisync created (p2) happened to be read before the vendor's own (p10)
        for ext in ("p2", "p10"):
            s.add(SourceRow(system="acme", stream="people", external_id=ext, modified_at=T0, fingerprint=ext,
                            payload={"first": "Amara", "email": "amara@example.com", "golden": "G1"},
                            canonical={"profile": CustomerProfile(first_name="Amara", emails=["amara@example.com"],
                                                                  external_ids={"acme": ext}).model_dump(mode="json")},
                            golden_id="G1", pending=False))
        s.add(OutboundLedger(target_system="acme", target_stream="people", key="G1|new", external_id="p2",
                             fingerprint="f", payload={"vendor": {"first": "Amara"}}))
    own = planner.ownership()
    merging = {**own, "systems": {"acme": {**own["systems"]["acme"], "duplicates": "merge"}}}
    monkeypatch.setattr(planner, "ownership", lambda: merging)
    with session_scope(engine) as s:
        plan = plan_push(s, ["acme"], full=True)
    assert plan.merges == [("acme", "p10", "p2")]
    assert plan.merge_since[("acme", "p2")][1] == {"first": "Amara", "email": "amara@example.com", "golden": "G1"}, \
        "what the created record holds is ours: copied into the survivor by the merge, it is still our write"
