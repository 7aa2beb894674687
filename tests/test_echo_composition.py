"""Our own writes read back are one echo however they were split, and never outvote the facts.

Zoe's two records disagree on her address: the "acme" system has street, city and postcode, the
"zenith" system only state and country. ``addresses: most_complete`` picks acme's, the planner
writes the missing parts into zenith (only the leaves that differ), and zenith then holds a
composite of both. Whether those parts arrived in one write, in two writes before zenith was read
again, or in a write whose answer a quota swallowed, the composite read back is our echo and the
golden record keeps acme's address: the same fixpoint whichever way the writes were split.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from connectors.errors import QuotaExhaustedError
from flows.push import execute_plan
from identity import golden as golden_mod
from identity import ingest
from identity import push as planner
from identity.ingest import ingest_records
from identity.push import plan_push
from identity.store import GoldenRecord, SourceRow, get_engine, session_scope
from mappings.engine import MappingConfigError, parse_mapping
from tests.fakes import T0, FakeConnector


def _mapping(system: str) -> object:
    return parse_mapping({
        "system": system, "stream": "people", "kind": "profile",
        "fields": {
            "first_name": {"source": "first", "transform": "text", "direction": "both"},
            "emails": {"source": ["email"], "transform": "email", "direction": "both"},
            "address.line1": {"source": "street", "transform": "text", "direction": "both"},
            "address.city": {"source": "city", "transform": "text", "direction": "both"},
            "address.state": {"source": "state", "transform": "text", "direction": "both"},
            "address.postcode": {"source": "zip", "transform": "text", "direction": "both"},
            "address.country": {"source": "country", "transform": "text", "direction": "both"},
            "golden_id": {"source": "golden", "direction": "out"},
        },
    })


MAPPINGS = {"acme": _mapping("acme"), "zenith": _mapping("zenith"), "cdp": _mapping("cdp")}
GID = "g-zoe"
ACME = {"first": "Zoe", "email": "zoe@example.com", "street": "12 Elm St", "city": "Springfield", "zip": "62704",
        "golden": GID}  # linked already: only zenith has something to receive
ZENITH = {"first": "Zoe", "email": "zoe@example.com", "state": "IL", "country": "US"}


@pytest.fixture(autouse=True)
def _two_systems(monkeypatch):
    own = {"defaults": {"breaker_share": 1.0, "breaker_min_records": 20, "loop_threshold": 3},
           "systems": {"acme": {"profile_stream": "people", "create": False, "duplicates": "link"},
                       "zenith": {"profile_stream": "people", "create": False, "duplicates": "link"},
                       # like Segment: profiles written as "identify" calls, read back as "people"
                       "cdp": {"profile_stream": "identify", "create": True, "duplicates": "link"}}}
    monkeypatch.setattr(planner, "ownership", lambda: own)
    monkeypatch.setattr(planner, "load_mapping", lambda system, stream: MAPPINGS[system])

    def mappings_for(system, stream):
        if system not in MAPPINGS or stream != "people":
            raise MappingConfigError(f"no mapping for {system}/{stream}")
        return (MAPPINGS[system],)

    monkeypatch.setattr(ingest, "mappings_for", mappings_for)


class Zenith(FakeConnector):
    system = "zenith"


class LosesItsAnswer(Zenith):
    """Applies the write, then the quota runs out before the answer arrives (as a Zoom batch does)."""

    def write(self, stream, records):
        super().write(stream, records)
        raise QuotaExhaustedError("daily API quota spent", system=self.system, status=429,
                                  resume_at=T0 + timedelta(days=1))


def _seed(engine, acme: dict) -> None:
    """Zoe's two records, read and resolved into one golden record."""
    from identity.ingest import ingest_records as ingest_
    from omnisync.records import SourceRecord

    with session_scope(engine) as s:
        ingest_(s, [SourceRecord(system="acme", stream="people", external_id="a1", modified_at=T0, payload=acme),
                    SourceRecord(system="zenith", stream="people", external_id="z1", modified_at=T0, payload=ZENITH)])
    _all_into_one_golden(engine)


def _all_into_one_golden(engine) -> None:
    """Every stored record resolved into GID, as a resolution pass would leave them."""
    with session_scope(engine) as s:
        s.add(GoldenRecord(golden_id=GID, profile={}))
        for row in s.exec(select(SourceRow)):
            row.golden_id, row.pending = GID, False
            s.add(row)
    _refresh(engine)


def _refresh(engine) -> dict:
    """Recompute the golden record, as any later change to one of its sources would."""
    with session_scope(engine) as s:
        golden_mod.refresh(s, [GID])
    with session_scope(engine) as s:
        return s.get(GoldenRecord, GID).profile


def _set_acme(engine, acme: dict) -> None:
    """Someone edits the acme record (a new fact): read and resolved again."""
    from omnisync.records import SourceRecord

    with session_scope(engine) as s:
        ingest_records(s, [SourceRecord(system="acme", stream="people", external_id="a1",
                                        modified_at=T0 + timedelta(hours=1), payload=acme)])
        row = s.exec(select(SourceRow).where(SourceRow.system == "acme")).one()
        row.pending = False
        s.add(row)


def _push(engine, conn) -> None:
    with session_scope(engine) as s:
        plan = plan_push(s, ["zenith"], full=True)
    execute_plan(engine, plan, {"zenith": conn})


def _read_back(engine, conn, ext="z1"):
    with session_scope(engine) as s:
        counts = ingest_records(s, [r for page in conn.read("people") for r in page.records])
    with session_scope(engine) as s:
        row = s.exec(select(SourceRow).where(SourceRow.system == "zenith", SourceRow.external_id == ext)).one()
        return counts, row.echo, row.pending


def _address(profile: dict) -> dict:
    return {k: v for k, v in (profile.get("addresses") or [{}])[0].items() if v}


ACME_ADDRESS = {"line1": "12 Elm St", "city": "Springfield", "postcode": "62704"}
COMPOSITE = {**ZENITH, "street": "12 Elm St", "city": "Springfield", "zip": "62704", "golden": GID}


def _one_write(engine):
    _seed(engine, ACME)
    conn = Zenith({"z1": dict(ZENITH)})
    _push(engine, conn)
    return conn


def _two_writes_before_a_read(engine):
    # The golden address first has no street; the street arrives (acme edited) and is pushed
    # before zenith is read again: the second write is planned against the same stale version.
    _seed(engine, {k: v for k, v in ACME.items() if k != "street"})
    conn = Zenith({"z1": dict(ZENITH)})
    _push(engine, conn)
    _set_acme(engine, ACME)
    _refresh(engine)
    _push(engine, conn)
    assert len(conn.writes) == 2
    return conn


def _answer_lost_to_a_quota(engine):
    _seed(engine, ACME)
    conn = LosesItsAnswer({"z1": dict(ZENITH)})
    _push(engine, conn)  # the push to zenith stops, reported; the vendor did apply it
    return Zenith(conn.people)


@pytest.mark.parametrize("schedule", [_one_write, _two_writes_before_a_read, _answer_lost_to_a_quota])
def test_writes_to_one_record_read_back_as_one_echo_and_the_golden_record_keeps_its_facts(store_url, schedule):
    engine = get_engine(store_url)
    conn = schedule(engine)
    assert conn.people["z1"] == COMPOSITE, "zenith holds its own state and country plus what we wrote"
    conn.stamps["z1"] = T0 + timedelta(hours=2)
    counts, echo, pending = _read_back(engine, conn)
    assert counts.total("echoes") == 1 and echo and not pending, "the composite is our echo, not a new fact"
    golden = _refresh(engine)  # even when something else makes it recompute
    assert _address(golden) == ACME_ADDRESS, "our write into zenith does not outvote acme's address"
    with session_scope(engine) as s:
        assert plan_push(s, ["zenith", "acme"], full=True).total == 0, "a fixpoint: nothing left to write"


def test_a_real_edit_on_top_of_our_write_is_a_new_fact_and_only_the_edit_counts(store_url):
    engine = get_engine(store_url)
    conn = _one_write(engine)
    conn.people["z1"]["state"] = "WI"  # a user moves Zoe to Wisconsin after our write landed
    conn.stamps["z1"] = T0 + timedelta(hours=2)
    counts, echo, pending = _read_back(engine, conn)
    assert counts.total("stored") == 1 and not echo and pending, "a user's edit is a new fact"
    with session_scope(engine) as s:
        row = s.exec(select(SourceRow).where(SourceRow.external_id == "z1")).one()
        facts, observed = golden_mod.row_facts(row)
    assert _address(facts) == {"state": "WI", "country": "US"}, "zenith's own facts: its edit, not our street"
    assert observed == T0 + timedelta(hours=2)


@pytest.mark.parametrize("answered", [True, False], ids=["create-answered", "answer-lost"])
def test_a_profile_we_created_through_another_stream_reads_back_as_our_echo_not_a_source(store_url, answered):
    """Like a Segment profile behind our identify call (its user id is the golden id): whether a
    lookup happens to see it before or after our write must not add a record to the golden one."""
    from identity.store import OutboundLedger
    from omnisync.records import SourceRecord

    engine = get_engine(store_url)
    with session_scope(engine) as s:
        s.add(OutboundLedger(target_system="cdp", target_stream="identify", key=f"{GID}|new",
                             external_id=GID if answered else None, fingerprint="f" if answered else "",
                             payload={"since": {"first": "Zoe", "email": "zoe@example.com"}, "since_fp": None}))
    theirs = {"first": "Zoe", "email": "zoe@example.com", "city": "Springfield"}
    with session_scope(engine) as s:
        counts = ingest_records(s, [
            SourceRecord(system="cdp", stream="people", external_id=GID, modified_at=T0, payload=dict(ZENITH)),
            SourceRecord(system="cdp", stream="people", external_id="web-1", modified_at=T0, payload=theirs)])
    with session_scope(engine) as s:
        rows = [r.external_id for r in s.exec(select(SourceRow))]
    assert counts.total("echoes") == 1 and counts.total("stored") == 1 and counts.reconciles()
    assert rows == ["web-1"], "the web app's profile is a source; the one our write made is not"


def _seed_our_duplicate(engine, zenith: dict, ours: dict) -> None:
    """Acme's a1 and zenith's z1 (a user's record) plus z2, a duplicate omnisync created earlier
    (its ledger entry holds what we wrote), all resolved into GID."""
    from identity.store import OutboundLedger
    from omnisync.records import SourceRecord

    with session_scope(engine) as s:
        s.add(OutboundLedger(target_system="zenith", target_stream="people", key=f"{GID}|new", external_id="z2",
                             fingerprint="f", payload={"vendor": ours, "since": ours, "since_fp": None}))
        ingest_records(s, [SourceRecord(system=sys_, stream="people", external_id=ext, modified_at=T0, payload=p)
                           for sys_, ext, p in (("acme", "a1", ACME), ("zenith", "z1", zenith),
                                                ("zenith", "z2", ours))])
    _all_into_one_golden(engine)


class MergingZenith(Zenith):
    """Merges like a CRM: the survivor keeps its values and fills its blanks from the duplicate."""

    def merge(self, survivor, merged):
        kept, gone = self.people[survivor], self.people.pop(merged)
        for k, v in gone.items():
            if kept.get(k) in (None, ""):
                kept[k] = v
        self.stamps.pop(merged)
        self.stamps[survivor] += timedelta(seconds=1)


def test_a_merge_that_copies_our_created_duplicate_into_the_survivor_reads_back_as_our_echo(store_url, monkeypatch):
    own = planner.ownership()
    merging = {**own, "systems": {**own["systems"], "zenith": {**own["systems"]["zenith"], "duplicates": "merge"}}}
    monkeypatch.setattr(planner, "ownership", lambda: merging)
    engine = get_engine(store_url)
    zenith = {"first": "Zoe", "email": "zoe@example.com", "country": "US"}
    # A record we created in zenith earlier, when the golden address still had a state.
    ours = {"first": "Zoe", "email": "zoe@example.com", "state": "IL", "golden": GID}
    _seed_our_duplicate(engine, zenith, ours)
    conn = MergingZenith({"z1": dict(zenith), "z2": dict(ours)})
    _push(engine, conn)
    assert "z2" not in conn.people and conn.people["z1"]["state"] == "IL", "the merge filled the survivor's blank"
    conn.stamps["z1"] = T0 + timedelta(hours=2)
    counts, echo, pending = _read_back(engine, conn)
    assert counts.total("echoes") == 1 and echo and not pending, "our write and our duplicate's values: our echo"
    with session_scope(engine) as s:
        facts, observed = golden_mod.row_facts(s.exec(select(SourceRow).where(SourceRow.external_id == "z1")).one())
    assert _address(facts) == {"country": "US"} and observed == T0, "zenith's own facts are untouched"


def test_a_change_to_fields_we_do_not_map_keeps_the_time_the_facts_were_observed(store_url):
    from omnisync.records import SourceRecord

    engine = get_engine(store_url)
    _seed(engine, ACME)
    with session_scope(engine) as s:  # our golden-id link written, say: nothing mapped changed
        counts = ingest_records(s, [SourceRecord(system="zenith", stream="people", external_id="z1",
                                                 modified_at=T0 + timedelta(hours=3),
                                                 payload={**ZENITH, "unmapped_note": "linked"})])
    with session_scope(engine) as s:
        facts, observed = golden_mod.row_facts(s.exec(select(SourceRow).where(SourceRow.external_id == "z1")).one())
    assert counts.total("unchanged") == 1 and observed == T0, "it does not make zenith look more recent"


class UniqueLink(MergingZenith):
    """Keeps the golden-id link unique, like HubSpot's unique property: a write giving a record the
    link another record holds is refused."""

    def write(self, stream, records):
        from omnisync.records import WriteOutcome, WriteStatus

        out = []
        for r in records:
            link = r.payload.get("golden")
            if link and any(k != r.external_id and p.get("golden") == link for k, p in self.people.items()):
                out.append(WriteOutcome(r.key, WriteStatus.failed, r.external_id,
                                        error="golden rejected (OBJECT_ALREADY_EXISTS)"))
            else:
                out += super().write(stream, [r])
        return out


def test_duplicates_are_merged_before_the_survivor_is_written_so_its_link_is_not_refused(store_url, monkeypatch):
    from identity.store import DeadLetter

    own = planner.ownership()
    merging = {**own, "systems": {**own["systems"], "zenith": {**own["systems"]["zenith"], "duplicates": "merge"}}}
    monkeypatch.setattr(planner, "ownership", lambda: merging)
    engine = get_engine(store_url)
    ours = {"first": "Zoe", "email": "zoe@example.com", "golden": GID}  # created by us: it holds the link
    _seed_our_duplicate(engine, ZENITH, ours)
    conn = UniqueLink({"z1": dict(ZENITH), "z2": dict(ours)})
    _push(engine, conn)
    assert conn.people == {"z1": COMPOSITE}, "merged, then written: the survivor holds the link and the address"
    with session_scope(engine) as s:
        assert not s.exec(select(DeadLetter)).all()
