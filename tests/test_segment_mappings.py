"""Segment mapping files: Profile API payloads in, golden profiles as identify and timeline as track out."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mappings.engine import MappingError, load_mapping
from mappings.vocab_segment import EVENTS
from omnisync.records import SourceRecord

FIX = Path(__file__).parent / "fixtures" / "segment"


def profile_record(traits: dict | None = None) -> SourceRecord:
    t = {**json.loads((FIX / "traits_page1.json").read_text())["traits"],
         **json.loads((FIX / "traits_page2.json").read_text())["traits"], **(traits or {})}
    ids = json.loads((FIX / "external_ids.json").read_text())["data"]
    return SourceRecord(system="segment", stream="profiles", external_id="web-7731",
                        modified_at=datetime(2026, 11, 3, tzinfo=timezone.utc), payload={"traits": t, "external_ids": ids})


def test_a_profile_gives_normalized_emails_from_traits_and_external_ids_and_the_web_user_id():
    p = load_mapping("segment", "profiles").inbound(profile_record())
    assert p.emails == ["amara.okafor@example.com"]  # trait + two email ids, one spelled in capitals
    assert p.cdp_user_id == "web-7731" and p.external_ids == {"segment": "web-7731"}
    assert (p.first_name, p.last_name, p.phones) == ("Amara", "Okafor", ["+14155550142"])
    assert p.attributes == {"plan": "plus"}


def test_an_unusable_email_trait_names_the_field_not_the_value():
    with pytest.raises(MappingError) as exc:
        load_mapping("segment", "profiles").inbound(profile_record({"email": "amara at example"}))
    assert exc.value.field == "emails" and "amara at" not in str(exc.value)


def test_identify_carries_the_golden_id_reserved_traits_opt_out_and_other_systems_ids():
    golden = {"golden_id": "g-42", "emails": ["amara.okafor@example.com", "a.okafor@northwind.example"],
              "first_name": "Amara", "last_name": "Okafor", "phones": ["+14155550142"], "company": "Northwind Traders",
              "address.city": "San Francisco", "address.postcode": "94103", "consent.email.marketing": "opted_out",
              "external_ids.salesforce": "003A", "external_ids.hubspot": "501", "locale": "en-US"}
    payload = load_mapping("segment", "identify").outbound(golden)
    assert payload == {
        "userId": "g-42",
        "traits": {"email": "amara.okafor@example.com", "firstName": "Amara", "lastName": "Okafor",
                   "phone": "+14155550142", "company": {"name": "Northwind Traders"},
                   "address": {"city": "San Francisco", "postalCode": "94103"}, "unsubscribed": True},
        "externalIds": {"salesforce_contact_id": "003A", "hubspot_contact_id": "501"}}


@pytest.mark.parametrize("channel", sorted(EVENTS))
def test_every_canonical_channel_has_a_track_event_name_that_maps_back(channel):
    mapping = load_mapping("segment", "track")
    flat = {"interaction_key": f"zoom:{channel}-1", "golden_id": "g-42", "channel": channel,
            "started_at": "2026-11-05T10:00:00+00:00", "system": "zoom", "external_id": f"{channel}-1",
            "direction": "inbound", "summary": "refund for order A-10442", "handoff.from_bot": "Ava",
            "customer_email": "amara.okafor@example.com"}
    payload = mapping.outbound(flat)
    assert payload["messageId"] == f"zoom:{channel}-1" and payload["userId"] == "g-42"
    assert payload["event"] == EVENTS[channel] and payload["timestamp"] == "2026-11-05T10:00:00Z"
    assert payload["properties"]["handoff_from_bot"] == "Ava"
    assert "amara" not in json.dumps(payload), "the customer is identified by userId, not by personal data"
    from mappings.transforms import TRANSFORMS

    assert TRANSFORMS["segment_event"].inbound(payload["event"]) == channel
