"""A dead letter names its record without naming the person, and is still found by that record.

SendGrid keys an unsubscribe by the address itself, and a suppression written by the push is
refused under that address too: the letter keeps the id masked, with a keyed hash of the whole id,
so no address sits in the table, a second refusal of the same record is one more attempt on the
same letter, and erasure still deletes the letters about the person. Ordinary vendor ids are kept
as they are.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlmodel import select

from flows.push import execute_plan
from identity import erasure
from identity.ingest import ingest_records, letter_id
from identity.push import PushPlan
from identity.store import DeadLetter, GoldenRecord, get_engine, run_in_transaction, session_scope
from omnisync.records import OutboundRecord, SourceRecord, WriteOutcome, WriteStatus
from tests.fakes import FakeConnector

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
HER = "amara.okafor@example.com"


def unsubscribe(address: str) -> SourceRecord:
    """An unsubscribe whose date cannot be read: dead-lettered, keyed by the address."""
    return SourceRecord(system="sendgrid", stream="unsubscribes", external_id=address, modified_at=T0,
                        payload={"email": address, "created": "the day after tomorrow"})


def letters(engine) -> list[DeadLetter]:
    with session_scope(engine) as s:
        out = list(s.exec(select(DeadLetter).order_by(DeadLetter.id)))
        for d in out:
            s.expunge(d)
        return out


def test_erasure_deletes_the_letters_kept_under_her_masked_address_and_no_one_elses(store_url):
    engine = get_engine(store_url)
    other = "anna.ortiz@example.com"  # masks to the same hint, a***@example.com
    ordinary = SourceRecord(system="hubspot", stream="contacts", external_id="1234567", modified_at=T0,
                            payload={"id": "1234567", "properties": {"email": "not an address"}})
    run_in_transaction(lambda s: ingest_records(s, [unsubscribe(HER), unsubscribe(other), ordinary]), engine)
    ids = [d.external_id for d in letters(engine)]
    assert len(ids) == 3 and "1234567" in ids, "an ordinary vendor id is kept as it is"
    assert not any("okafor" in i or "ortiz" in i for i in ids), ids
    assert ids[0] != ids[1] and ids[0].startswith("a***@example.com")

    with session_scope(engine) as s:
        s.add(GoldenRecord(golden_id="g-amara", profile={"emails": [HER]}))
    with session_scope(engine) as s:
        erasure.erase_store(s, "g-amara")
    assert sorted(d.external_id for d in letters(engine)) == sorted([letter_id(other), "1234567"])


class RefusesSuppressions(FakeConnector):
    system = "sendgrid"

    def write(self, stream, records):
        self.calls += 1
        return [WriteOutcome(r.key, WriteStatus.failed, external_id=r.external_id, error="address refused")
                for r in records]


def test_a_write_refused_under_an_address_is_one_masked_letter_however_often_it_is_refused(store_url):
    engine = get_engine(store_url)
    conn = RefusesSuppressions()
    conn.streams = {"people": FakeConnector.streams["people"]}
    for _ in range(2):
        plan = PushPlan()
        plan.stream("sendgrid", "people").records.append(
            OutboundRecord(key=f"g-amara|{HER}", payload={"email": HER}, external_id=HER))
        execute_plan(engine, plan, {"sendgrid": conn})
    (letter,) = letters(engine)
    assert letter.attempts == 2 and letter.external_id == letter_id(HER) and "okafor" not in letter.external_id
