"""Salesforce mapping files: Contacts, Leads and Tasks to canonical records and back, in Salesforce's
spelling (picklists are case-sensitive)."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from mappings.engine import MappingError, load_mapping, mappings_for
from omnisync.records import SourceRecord
from sandbox.salesforce import SalesforceSandbox

FIX = Path(__file__).parent / "fixtures" / "salesforce"


def record(stream: str, name: str, **changes) -> SourceRecord:
    payload = json.loads((FIX / name).read_text())
    payload.pop("attributes")
    payload.update(changes)
    return SourceRecord(system="salesforce", stream=stream, external_id=payload["Id"],
                        modified_at=datetime(2026, 11, 5, tzinfo=timezone.utc), payload=payload)


def test_contact_maps_to_a_normalized_profile_with_email_and_call_consent():
    p = load_mapping("salesforce", "contacts").inbound(record("contacts", "contact_heroine.json"))
    assert (p.first_name, p.last_name, p.emails) == ("Amara", "Okafor", ["a.okafor@northwind.example"])
    assert p.phones == ["+14155550142", "+14155550100"], "mobile first, formatted numbers normalized"
    assert p.addresses[0].country == "US" and p.birth_date == date(1990, 4, 12)
    assert [(c.channel.value, c.status.value) for c in p.consent] == [("voice", "opted_out")]
    assert p.external_ids == {"salesforce": "003Dn0000000001IAA"} and p.attributes == {"lead_source": "Webinar"}
    opted = load_mapping("salesforce", "contacts").inbound(record("contacts", "contact_heroine.json",
                                                                  HasOptedOutOfEmail=True, DoNotCall=False))
    assert {(c.channel.value, c.status.value) for c in opted.consent} == {("email", "opted_out")}


def test_a_contacts_company_is_its_account_read_through_the_relationship_and_never_written():
    m = load_mapping("salesforce", "contacts")
    assert m.inbound(record("contacts", "contact_heroine.json")).company == "Northwind Traders"
    assert m.inbound(record("contacts", "contact_heroine.json", AccountId=None, Account=None)).company is None, \
        "a private contact (no account) has no company"
    assert "company" not in {fm.target for fm in m.outbound_fields()}, "a contact changes company by changing account"


def test_an_unknown_mailing_country_is_rejected_naming_the_field_not_the_value():
    with pytest.raises(MappingError) as exc:
        load_mapping("salesforce", "contacts").inbound(record("contacts", "contact_heroine.json",
                                                              MailingCountry="Atlantis"))
    assert exc.value.field == "address.country" and "Atlantis" not in str(exc.value)


def test_a_lead_maps_to_a_prospect_profile_and_is_never_written():
    m = load_mapping("salesforce", "leads")
    p = m.inbound(record("leads", "lead_prospect.json"))
    assert (p.company, p.phones, p.attributes["lead_status"]) == ("Globex", ["+15122011017"], "Open - Not Contacted")
    assert [(c.channel.value, c.status.value) for c in p.consent] == [("email", "opted_out")]
    assert m.outbound_fields() == []


def test_a_call_task_is_a_voice_interaction_of_its_contact():
    (m,) = mappings_for("salesforce", "tasks")
    it = m.inbound(record("tasks", "task_call.json"))
    assert (it.channel.value, it.direction.value, it.customer_external_id) == ("voice", "outbound",
                                                                               "003Dn0000000001IAA")
    assert it.disposition == "left_voicemail" and it.attributes["duration_s"] == "0"
    assert it.started_at == datetime(2026, 11, 4, 9, 30, tzinfo=timezone.utc)
    inbound = m.inbound(record("tasks", "task_call.json", CallType="Inbound"))
    assert inbound.direction.value == "inbound"
    logged = m.inbound(record("tasks", "task_call.json", CallType=None))
    assert logged.direction.value == "outbound", "a call the rep logged without a type is theirs"


def test_an_email_task_is_an_outbound_email():
    (m,) = mappings_for("salesforce", "tasks")
    it = m.inbound(record("tasks", "task_email.json"))
    assert (it.channel.value, it.direction.value, it.subject) == ("email", "outbound", "Email: Re: a late delivery")


@pytest.mark.parametrize("changes, field", [({"CallType": "Internal"}, "direction"),
                                            ({"CallType": "Conference"}, "direction"),
                                            ({"TaskSubtype": "Task"}, "channel")])
def test_tasks_that_are_not_customer_contacts_are_rejected_naming_the_field(changes, field):
    (m,) = mappings_for("salesforce", "tasks")
    with pytest.raises(MappingError) as exc:
        m.inbound(record("tasks", "task_call.json", **changes))
    assert exc.value.field == field and exc.value.record.startswith("salesforce/tasks/00T")


def test_outbound_payloads_use_salesforce_field_names_and_picklist_spelling():
    contact = load_mapping("salesforce", "contacts").outbound(
        {"first_name": "Amara", "emails": ["a.okafor@northwind.example"], "phones": ["+14155550142"],
         "golden_id": "G-1", "consent.email.marketing": "opted_out", "consent.voice.marketing": "unknown"})
    assert contact == {"FirstName": "Amara", "Email": "a.okafor@northwind.example", "MobilePhone": "+14155550142",
                       "HasOptedOutOfEmail": True, "DoNotCall": False, "Omnisync_Golden_Id__c": "G-1"}
    tasks = load_mapping("salesforce", "tasks")
    call = tasks.outbound({"channel": "voice", "direction": "inbound", "disposition": "left_voicemail",
                           "subject": "Zoom call", "interaction_key": "zoom:42"})
    assert call == {"TaskSubtype": "Call", "CallType": "Inbound", "CallDisposition": "Left voicemail",
                    "Subject": "Zoom call", "Omnisync_Interaction_Id__c": "zoom:42"}
    assert tasks.outbound({"channel": "sms", "interaction_key": "twilio:SM1"})["TaskSubtype"] == "Task"


def test_every_seeded_record_maps_or_is_filtered_by_the_connector():
    sb = SalesforceSandbox(size=400, seed=2)
    for stream, sobject in (("contacts", "Contact"), ("leads", "Lead"), ("tasks", "Task")):
        (m,) = mappings_for("salesforce", stream)
        for row in sb.export()[sobject]:
            row.pop("attributes")
            if row["IsDeleted"] or row.get("TaskSubtype") == "Task":
                continue  # deletions are tombstones; plain Tasks are not read (TaskSubtype filter)
            m.inbound(SourceRecord(system="salesforce", stream=stream, external_id=row["Id"],
                                   modified_at=datetime(2026, 11, 5, tzinfo=timezone.utc), payload=row))
