"""Resolution weighs what each record says of its own, never what omnisync wrote into it.

Isabella's Salesforce contact has her name and work email; a Zoom contact has her name, a mobile
number and a street address. A name alone is not enough to call them one person, so they are
two golden records until a fact ties them. Two things omnisync does must never be that fact:

* writing a golden record's street into the Salesforce contact (read back, then changed by a
  sales rep for another reason, so it is resolved again);
* creating a HubSpot contact for her golden record, holding everything that golden record knows.

Either would otherwise tie the two together, and only once (and whenever) the write landed, so
the store's partition would depend on the order and timing of our own writes. Records go through
the real ingest path (the echo/facts bookkeeping and the creation ledger) and the real resolver,
on SQLite and PostgreSQL; the store's batch re-resolution must agree with the real-time path.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlmodel import select

from identity.ingest import ingest_records, resolve_pending
from identity.resolve import reresolve
from identity.store import GoldenRecord, IdentityKey, OutboundLedger, SourceRow, get_engine, session_scope
from omnisync.records import SourceRecord

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)
STREET = {"MailingStreet": "4112 Main St", "MailingCity": "Boston", "MailingState": "MA",
          "MailingPostalCode": "02118", "MailingCountry": "US"}
SF = {"Id": "003A", "FirstName": "Isabella", "LastName": "Andersson", "Email": "isabella.a@work.example",
      "Title": "Buyer"}
ZOOM = {"contact_id": "z1", "display_name": "Isabella Andersson", "first_name": "Isabella", "last_name": "Andersson",
        "phone_numbers": ["+16175550188"], "emails": [], "location": "4112 Main St, Boston"}


def ingest(engine, *records: SourceRecord) -> None:
    with session_scope(engine) as s:
        ingest_records(s, list(records))
    while True:
        with session_scope(engine) as s:
            if not resolve_pending(s).get("remaining"):
                return


def golden_of(engine, system: str, ext: str) -> str:
    with session_scope(engine) as s:
        return s.exec(select(SourceRow.golden_id).where(SourceRow.system == system,
                                                        SourceRow.external_id == ext)).one()


def sf(version: int, **fields) -> SourceRecord:
    return SourceRecord(system="salesforce", stream="contacts", external_id="003A",
                        modified_at=T0 + timedelta(hours=version), payload={**SF, **fields})


def others(n: int = 40) -> list[SourceRecord]:
    """Other people, so that names and postcodes are weighed by realistic frequencies."""
    firsts = ["Olga", "Tariq", "Mina", "Jorge", "Keiko", "Femi", "Lars", "Priya", "Omar", "Wen"]
    lasts = ["Novak", "Haddad", "Sato", "Reyes", "Okoye", "Berg", "Iyer", "Khan"]
    return [SourceRecord(system="hubspot", stream="contacts", external_id=f"9{i:02d}", modified_at=T0, payload={
        "id": f"9{i:02d}", "properties": {"firstname": firsts[i % 10], "lastname": lasts[i % 8],
                                         "email": f"person{i}@mail.example", "zip": f"{10000 + 97 * i}"}})
        for i in range(n)]


def her_two_records(engine) -> tuple[str, str]:
    """The Salesforce contact and a HubSpot contact with her name, number and street: two people so far."""
    hubspot = SourceRecord(system="hubspot", stream="contacts", external_id="501", modified_at=T0, payload={
        "id": "501", "properties": {"firstname": "Isabella", "lastname": "Andersson", "mobilephone": "+16175550188",
                                    "address": "4112 Main St", "city": "Boston", "state": "MA", "zip": "02118",
                                    "country": "US"}})
    ingest(engine, sf(0), hubspot, *others())
    a, b = golden_of(engine, "salesforce", "003A"), golden_of(engine, "hubspot", "501")
    assert a != b, "precondition: a shared name alone does not make one person"
    return a, b


def batch_agrees(engine) -> None:
    with session_scope(engine) as s:
        out = reresolve(s, reindex=False, dry_run=True)
    assert not (out.get("merged") or out.get("moved") or out.get("new_golden")), out


def test_a_street_omnisync_wrote_into_a_record_never_ties_it_to_someone_else(store_url):
    engine = get_engine(store_url)
    a, b = her_two_records(engine)
    # the push wrote a street into the contact (golden A had one from elsewhere), noted in the ledger
    with session_scope(engine) as s:
        row = s.exec(select(SourceRow).where(SourceRow.external_id == "003A")).one()
        s.add(OutboundLedger(target_system="salesforce", target_stream="contacts", key=f"{a}|003A", external_id="003A",
                             fingerprint="w", payload={"vendor": STREET, "since": STREET, "since_fp": row.fingerprint}))
    ingest(engine, sf(1, **STREET))  # our echo: not resolved again
    assert golden_of(engine, "salesforce", "003A") == a
    ingest(engine, sf(2, **STREET, Title="Head of Buying"))  # a rep changes the title: a new fact, resolved again
    with session_scope(engine) as s:
        row = s.exec(select(SourceRow).where(SourceRow.external_id == "003A")).one()
        assert row.canonical["profile"]["addresses"] and not row.canonical["facts"]["profile"].get("addresses")
    assert golden_of(engine, "salesforce", "003A") == a != golden_of(engine, "hubspot", "501") == b, \
        "the street we wrote is not evidence that she is the HubSpot contact's person"
    batch_agrees(engine)


def test_a_record_omnisync_created_joins_the_golden_record_it_was_made_for_and_ties_no_one(store_url):
    engine = get_engine(store_url)
    a, b = her_two_records(engine)
    # Zoom gets a contact for golden A; as read back it holds her work email (A's) and her mobile
    # number (B's): weighed as evidence, it would tie A and B together.
    sent = {"first_name": "Isabella", "last_name": "Andersson", "emails": "isabella.a@work.example"}
    with session_scope(engine) as s:
        s.add(OutboundLedger(target_system="zoom", target_stream="address_book_contacts", key=f"{a}|new",
                             external_id="z1", fingerprint="c", payload={"vendor": sent, "since": sent}))
    copy = SourceRecord(system="zoom", stream="address_book_contacts", external_id="z1", modified_at=T0,
                        payload={**ZOOM, "emails": ["isabella.a@work.example"]})
    ingest(engine, copy)
    assert golden_of(engine, "zoom", "z1") == a, "placed in the golden record it was made for"
    assert golden_of(engine, "salesforce", "003A") == a != golden_of(engine, "hubspot", "501") == b, \
        "our copy holds her email and her number: it must not tie the two records together"
    with session_scope(engine) as s:
        row = s.exec(select(SourceRow).where(SourceRow.external_id == "z1")).one()
        kinds = set(s.exec(select(IdentityKey.kind).where(IdentityKey.source_id == row.id)))
    assert kinds == {"copy", "ext:zoom"}, "indexed by its own id (its calls find her), nothing matching reads"
    batch_agrees(engine)

    # someone edits the copy in Zoom later: still a copy, still where it was made for
    ingest(engine, copy.model_copy(update={"modified_at": T0 + timedelta(hours=3),
                                           "payload": {**copy.payload, "first_name": "Isa"}}))
    assert golden_of(engine, "zoom", "z1") == a != golden_of(engine, "hubspot", "501")
    batch_agrees(engine)


def test_a_copy_follows_its_golden_record_when_that_merges(store_url):
    engine = get_engine(store_url)
    a, b = her_two_records(engine)
    with session_scope(engine) as s:
        s.add(OutboundLedger(target_system="zoom", target_stream="address_book_contacts", key=f"{b}|new",
                             external_id="z1", fingerprint="c", payload={"vendor": {}, "since": {}}))
    ingest(engine, SourceRecord(system="zoom", stream="address_book_contacts", external_id="z1", modified_at=T0,
                                payload=ZOOM))
    assert golden_of(engine, "zoom", "z1") == b
    # a real fact ties them: the HubSpot contact gets her work email
    ingest(engine, SourceRecord(system="hubspot", stream="contacts", external_id="501",
                                modified_at=T0 + timedelta(hours=5), payload={
                                    "id": "501", "properties": {"firstname": "Isabella", "lastname": "Andersson",
                                                                "email": "isabella.a@work.example",
                                                                "mobilephone": "+16175550188"}}))
    survivor = golden_of(engine, "salesforce", "003A")
    assert golden_of(engine, "hubspot", "501") == survivor == golden_of(engine, "zoom", "z1")
    with session_scope(engine) as s:
        assert s.get(GoldenRecord, survivor).status == "active"
    batch_agrees(engine)
