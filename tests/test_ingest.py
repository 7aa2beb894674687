"""The ingest pipeline keeps DESIGN's promises: nothing lost, re-reads harmless, bad input dead-lettered."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import select

from identity import ingest
from identity.ingest import ingest_records, load_cursor, store_page
from identity.push import canonical_fingerprint
from identity.store import (
    ConsentEventRow,
    DeadLetter,
    InteractionRow,
    OutboundLedger,
    SourceRow,
    Tombstone,
    get_engine,
    run_in_transaction,
    session_scope,
)
from mappings.engine import parse_mapping
from omnisync.records import Cursor, Page, SourceRecord, as_utc
from omnisync.sealing import unseal

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
if "optout_keyword_test" not in __import__("mappings.transforms").transforms.TRANSFORMS:
    __import__("mappings.transforms").transforms.register(
        "optout_keyword_test", lambda v: "opted_out" if str(v).strip().upper() == "STOP" else None)

PROFILE = parse_mapping({
    "system": "acme", "stream": "people", "kind": "profile",
    "fields": {
        "first_name": {"source": "first", "transform": "text", "direction": "both"},
        "last_name": {"source": "last", "transform": "text"},
        "emails": {"source": ["email"], "transform": "email", "direction": "both"},
        "phones": {"source": ["phone"], "transform": "phone"},
        "golden_id": {"source": "golden", "direction": "out"},
    },
})
MESSAGE = parse_mapping({
    "system": "acme", "stream": "messages", "kind": "interaction",
    "fields": {
        "external_id": {"source": "id"},
        "channel": {"const": "sms"},
        "direction": {"source": "dir", "transform": "direction"},
        "started_at": {"source": "at", "transform": "iso_datetime"},
        "customer_phone": {"source": "from", "transform": "phone"},
        "summary": {"source": "body", "transform": "text"},
    },
})
CONSENT = parse_mapping({
    "system": "acme", "stream": "messages", "kind": "consent",
    "fields": {
        "external_id": {"source": "id"},
        "channel": {"const": "sms"},
        "status": {"source": "body", "transform": "optout_keyword_test"},
        "occurred_at": {"source": "at", "transform": "iso_datetime"},
        "customer_phone": {"source": "from", "transform": "phone"},
    },
})


@pytest.fixture(autouse=True)
def _acme_mappings(monkeypatch):
    table = {("acme", "people"): (PROFILE,), ("acme", "messages"): (MESSAGE, CONSENT)}

    def fake(system, stream):
        from mappings.engine import MappingConfigError

        if (system, stream) not in table:
            raise MappingConfigError(f"no mapping for {system}/{stream}")
        return table[(system, stream)]

    monkeypatch.setattr(ingest, "mappings_for", fake)


def person(i, *, at=T0, **over):
    payload = {"first": f"Ann{i}", "last": "Lee", "email": f"ann{i}@example.com", "phone": f"+1415555{i:04d}"}
    payload.update(over)
    return SourceRecord(system="acme", stream="people", external_id=f"p{i}", modified_at=at, payload=payload)


def rows(session, model=SourceRow):
    return list(session.exec(select(model)))


def test_page_and_checkpoint_commit_together(store_url):
    engine = get_engine(store_url)
    page = Page([person(1), person(2)], Cursor(modified_at=T0, last_id="p2"))
    run_in_transaction(lambda s: store_page(s, page, system="acme", stream="people"), engine)
    with session_scope(engine) as s:
        assert len(rows(s)) == 2
        assert load_cursor(s, "acme", "people").last_id == "p2"

    def crash(s):
        store_page(s, Page([person(3)], Cursor(modified_at=T0, last_id="p3")), system="acme", stream="people")
        raise RuntimeError("killed mid-transaction")

    with pytest.raises(RuntimeError):
        run_in_transaction(crash, engine)
    with session_scope(engine) as s:
        assert {r.external_id for r in rows(s)} == {"p1", "p2"}, "a crashed page must leave no rows"
        assert load_cursor(s, "acme", "people").last_id == "p2", "nor advance the cursor"


def test_overlap_rereads_and_late_older_versions_change_nothing(store_url):
    engine = get_engine(store_url)
    with session_scope(engine) as s:
        first = ingest_records(s, [person(1), person(2)])
    with session_scope(engine) as s:
        again = ingest_records(s, [person(1), person(2), person(1, at=T0 - timedelta(hours=1), first="Old")])
    assert first.total("stored") == 2
    assert again.total("stored") == 0 and again.total("unchanged") == 3
    with session_scope(engine) as s:
        assert {r.canonical["profile"]["first_name"] for r in rows(s)} == {"Ann1", "Ann2"}


def test_newer_version_with_a_real_change_is_stored_and_pending(store_url):
    engine = get_engine(store_url)
    with session_scope(engine) as s:
        ingest_records(s, [person(1)])
        for r in rows(s):
            r.pending = False
    with session_scope(engine) as s:
        c = ingest_records(s, [person(1, at=T0 + timedelta(minutes=1), first="Annie")])
        row = rows(s)[0]
    assert c.total("stored") == 1 and row.pending and row.canonical["profile"]["first_name"] == "Annie"


def test_change_to_unmapped_fields_is_not_a_new_fact(store_url):
    engine = get_engine(store_url)
    with session_scope(engine) as s:
        ingest_records(s, [person(1)])
        rows(s)[0].pending = False
    with session_scope(engine) as s:
        c = ingest_records(s, [person(1, at=T0 + timedelta(minutes=1), score="97")])
        assert c.total("unchanged") == 1 and not rows(s)[0].pending


def test_bad_record_is_dead_lettered_naming_record_and_field_and_others_survive(store_url):
    engine = get_engine(store_url)
    with session_scope(engine) as s:
        c = ingest_records(s, [person(1), person(2, email="ann2@@broken"), person(3)])
    assert c.total("stored") == 2 and c.total("dead_lettered") == 1 and c.reconciles()
    with session_scope(engine) as s:
        (letter,) = rows(s, DeadLetter)
        assert letter.reason.startswith("acme/people/p2: emails")
        assert "ann2" not in letter.reason and "ann2" not in str(letter.payload), "letters hold no personal data"
        assert unseal(letter.payload)["record"]["payload"]["email"] == "ann2@@broken", "but can be replayed"


def test_our_own_write_coming_back_is_an_echo(store_url):
    engine = get_engine(store_url)
    with session_scope(engine) as s:
        ingest_records(s, [person(1)])
        rows(s)[0].pending = False
        expected = dict(rows(s)[0].canonical["profile"], first_name="Annabel")
        s.add(OutboundLedger(target_system="acme", target_stream="people", key="G1|p1", external_id="p1",
                             fingerprint="x", inbound_fingerprint=canonical_fingerprint(expected),
                             payload={"vendor": {"first": "Annabel"}}))
    with session_scope(engine) as s:
        c = ingest_records(s, [person(1, at=T0 + timedelta(minutes=2), first="Annabel")])
        row = rows(s)[0]
    assert c.total("echoes") == 1 and row.echo and not row.pending
    with session_scope(engine) as s:
        c = ingest_records(s, [person(1, at=T0 + timedelta(minutes=3), first="Bella")])
    assert c.total("stored") == 1, "a real change after the echo is a new fact"


def test_sms_yields_an_interaction_and_stop_a_consent_event(store_url):
    engine = get_engine(store_url)
    msgs = [SourceRecord(system="acme", stream="messages", external_id=f"m{i}", modified_at=T0,
                         payload={"id": f"m{i}", "dir": "inbound", "at": T0.isoformat(), "from": "(415) 555-0142",
                                  "body": body}) for i, body in enumerate(["Thanks!", "STOP"])]
    with session_scope(engine) as s:
        c = ingest_records(s, msgs)
    assert c.total("stored") == 2
    with session_scope(engine) as s:
        assert {r.external_id for r in rows(s, InteractionRow)} == {"m0", "m1"}
        (ev,) = rows(s, ConsentEventRow)
        assert (ev.external_id, ev.status, ev.data["customer_phone"]) == ("m1", "opted_out", "+14155550142")


def test_records_of_one_interaction_make_one_row_whether_it_is_new_or_stored(store_url):
    # Two records (a webhook's and the API's, say) of one interaction: in one batch they make one
    # row, the later one's values; a later batch updates that row in place.
    engine = get_engine(store_url)

    def msg(ext, body, at):
        return SourceRecord(system="acme", stream="messages", external_id=ext, modified_at=at,
                            payload={"id": "m7", "dir": "inbound", "at": at.isoformat(), "from": "(415) 555-0142",
                                     "body": body})

    with session_scope(engine) as s:
        c = ingest_records(s, [msg("hook-1", "STOP", T0), msg("api-1", "STOP please", T0 + timedelta(seconds=1))])
    assert c.total("stored") == 2
    with session_scope(engine) as s:
        (it,) = rows(s, InteractionRow)
        assert (it.external_id, it.summary) == ("m7", "STOP please")
        (ev,) = rows(s, ConsentEventRow)
        assert ev.external_id == "m7"
        assert {r.external_id for r in rows(s)} == {"hook-1", "api-1"}
    with session_scope(engine) as s:
        ingest_records(s, [msg("api-1", "edited", T0 + timedelta(minutes=1))])
    with session_scope(engine) as s:
        (it,) = rows(s, InteractionRow)
        assert it.summary == "edited" and as_utc(it.started_at) == T0 + timedelta(minutes=1)
        assert len(rows(s, ConsentEventRow)) == 1


def test_erased_people_are_not_reimported(store_url):
    engine = get_engine(store_url)
    with session_scope(engine) as s:
        s.add(Tombstone(key_hash=ingest.tombstone_hash("email", "ann1@example.com"), kind="email"))
    with session_scope(engine) as s:
        c = ingest_records(s, [person(1), person(2)])
        assert {r.external_id for r in rows(s)} == {"p2"}
    assert c.total("suppressed") == 1 and c.reconciles()


def test_unknown_stream_is_dead_lettered_not_dropped(store_url):
    engine = get_engine(store_url)
    rec = SourceRecord(system="acme", stream="mystery", external_id="x1", modified_at=T0, payload={"a": 1})
    with session_scope(engine) as s:
        c = ingest_records(s, [rec])
        (letter,) = rows(s, DeadLetter)
    assert c.total("dead_lettered") == 1 and "no mapping" in letter.reason


def test_deleted_record_marks_row_for_detachment(store_url):
    engine = get_engine(store_url)
    with session_scope(engine) as s:
        ingest_records(s, [person(1)])
        row = rows(s)[0]
        row.pending, row.golden_id = False, "G1"
    gone = SourceRecord(system="acme", stream="people", external_id="p1", modified_at=T0 + timedelta(minutes=1),
                        deleted=True, payload={})
    with session_scope(engine) as s:
        c = ingest_records(s, [gone])
        row = rows(s)[0]
    assert c.total("deleted") == 1 and row.deleted and row.pending
