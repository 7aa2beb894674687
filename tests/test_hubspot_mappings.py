"""HubSpot mapping files: vendor payloads to canonical records and back, in HubSpot's spelling."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from mappings.engine import MappingError, load_mapping, mappings_for
from omnisync.records import SourceRecord

FIX = Path(__file__).parent / "fixtures" / "hubspot"


def record(stream: str, name: str, **changes) -> SourceRecord:
    payload = json.loads((FIX / name).read_text())
    payload["properties"].update(changes)
    return SourceRecord(system="hubspot", stream=stream, external_id=payload["id"],
                        modified_at=datetime(2026, 11, 1, tzinfo=timezone.utc), payload=payload)


def test_contact_maps_to_a_normalized_profile_with_consent():
    p = load_mapping("hubspot", "contacts").inbound(record("contacts", "contact_heroine.json"))
    assert (p.first_name, p.last_name, p.emails, p.phones) == ("Amara", "Okafor", ["amara.okafor@example.com"],
                                                               ["+14155550142"])
    assert p.addresses[0].country == "US" and p.addresses[0].postcode == "94103"
    assert p.locale == "en-GB" and p.birth_date == date(1990, 4, 12)
    assert [(c.channel.value, c.status.value) for c in p.consent] == [("email", "opted_out")]
    assert p.external_ids == {"hubspot": "1001"} and p.attributes == {"lifecyclestage": "lead"}


def test_an_unknown_country_name_is_rejected_naming_the_field():
    with pytest.raises(MappingError) as exc:
        load_mapping("hubspot", "contacts").inbound(record("contacts", "contact_heroine.json", country="Narnia"))
    assert exc.value.field == "address.country" and "Narnia" not in str(exc.value)


def test_call_maps_to_a_voice_interaction_of_its_associated_contact():
    (m,) = mappings_for("hubspot", "calls")
    it = m.inbound(record("calls", "call_with_contact.json"))
    assert (it.channel.value, it.direction.value, it.customer_external_id) == ("voice", "inbound", "1001")
    assert it.disposition == "connected" and it.attributes["duration_ms"] == "184000"
    custom = m.inbound(record("calls", "call_with_contact.json", hs_call_disposition="portal-defined-outcome"))
    assert custom.disposition == "portal-defined-outcome", "custom call outcomes are kept, not dead-lettered"


def test_communication_channel_types_map_to_canonical_channels():
    (m,) = mappings_for("hubspot", "communications")
    assert m.inbound(record("communications", "communication_whatsapp.json")).channel.value == "chat"
    sms = m.inbound(record("communications", "communication_whatsapp.json", hs_communication_channel_type="SMS"))
    assert sms.channel.value == "sms"


def test_outbound_payloads_use_hubspots_enumeration_spelling():
    contacts = load_mapping("hubspot", "contacts").outbound(
        {"first_name": "Amara", "emails": ["amara.okafor@example.com"], "locale": "en-US", "golden_id": "G-1",
         "consent.email.marketing": "opted_out"})
    assert contacts == {"properties": {"firstname": "Amara", "email": "amara.okafor@example.com", "hs_language": "en",
                                       "hs_email_optout": True, "omnisync_golden_id": "G-1"}}
    call = load_mapping("hubspot", "calls").outbound({"direction": "outbound", "started_at": "2026-11-20T10:00:00Z",
                                                      "interaction_key": "zoom:42"})
    assert call["properties"] == {"hs_call_direction": "OUTBOUND", "hs_timestamp": "2026-11-20T10:00:00Z",
                                  "omnisync_interaction_id": "zoom:42"}
    chat = load_mapping("hubspot", "communications").outbound({"channel": "chat", "interaction_key": "zoom:43"})
    assert chat["properties"]["hs_communication_channel_type"] == "CUSTOM_CHANNEL_CONVERSATION"
    note = load_mapping("hubspot", "notes").outbound({"summary": "Bot: refund intent", "interaction_key": "bot:1"})
    assert note == {"properties": {"hs_note_body": "Bot: refund intent", "omnisync_interaction_id": "bot:1"}}
