"""Zoom mappings: engagements to canonical interactions (channels, hand-offs, bot-only chats) and
address-book contacts to profiles and back."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from connectors.zoom import modified_at
from mappings.engine import MappingConfigError, MappingError, load_mapping, parse_mapping
from omnisync.model import Channel, Direction
from omnisync.records import SourceRecord

FIX = Path(__file__).parent / "fixtures" / "zoom"


def fixture(name: str):
    return json.loads((FIX / name).read_text())


def record(payload: dict, stream: str = "engagements") -> SourceRecord:
    key = "engagement_id" if stream == "engagements" else "contact_id"
    at = modified_at(payload) if stream == "engagements" else datetime(2026, 11, 5, tzinfo=timezone.utc)
    return SourceRecord(system="zoom", stream=stream, external_id=payload[key], modified_at=at, payload=payload)


def interaction(payload: dict):
    return load_mapping("zoom", "engagements").inbound(record(payload))


def test_bot_to_agent_handoff_keeps_the_bots_context_for_the_live_agent():
    it = interaction(fixture("engagement_handoff.json"))
    assert it.channel is Channel.chat and it.direction is Direction.inbound
    assert it.customer_email == "amara.okafor@example.com"
    assert (it.queue, it.agent, it.status) == ("Billing", "Jordan Lee", "transferred")
    h = it.handoff
    assert h.from_bot == "Customer Care Virtual Agent" and h.intent == "refund"
    assert h.context["order_number"] == "88412" and "88412" in h.summary
    assert h.bot_interaction_id and h.bot_interaction_id != it.external_id
    assert it.transcript_ref.startswith("https://")


def test_a_chat_the_virtual_agent_handled_alone_is_a_bot_interaction_without_handoff():
    it = interaction(fixture("engagement_bot_contained.json"))
    assert it.channel is Channel.bot and it.handoff is None
    assert it.status == "contained" and it.agent is None
    assert it.summary, "the bot's own summary stands in for agent notes"
    assert it.attributes["bot_intent"]


def test_a_call_from_a_formatted_number_maps_to_e164_with_its_disposition():
    payload = fixture("engagement_voice.json")
    payload["consumers"][0]["consumer_number"] = "+1 (415) 555-0142"
    it = interaction(payload)
    assert it.channel is Channel.voice and it.customer_phone == "+14155550142"
    assert it.disposition == "Refund approved" and it.ended_at > it.started_at


@pytest.mark.parametrize("name, channel", [("engagement_email.json", Channel.email), ("engagement_sms.json", Channel.sms)])
def test_email_and_sms_engagements_find_their_customer(name, channel):
    it = interaction(fixture(name))
    assert it.channel is channel
    assert it.customer_email or it.customer_phone


def test_social_messaging_and_deprecated_channel_types_map_to_canonical_channels():
    base = fixture("engagement_sms.json")
    whatsapp = copy.deepcopy(base)
    whatsapp["channels"] = [{"channel": "messaging", "channel_source": "whatsapp"}]
    assert interaction(whatsapp).channel is Channel.social
    legacy = copy.deepcopy(fixture("engagement_voice.json"))
    legacy.pop("channels")
    legacy["channel_types"] = ["voice"]
    assert interaction(legacy).channel is Channel.voice


def test_an_unknown_channel_is_rejected_naming_the_field():
    payload = fixture("engagement_voice.json")
    payload["channels"] = [{"channel": "carrier_pigeon"}]
    with pytest.raises(MappingError) as exc:
        interaction(payload)
    assert exc.value.field == "channel" and payload["engagement_id"] in str(exc.value)


def test_an_engagement_in_progress_maps_with_no_end_and_status_in_progress():
    payload = fixture("engagement_voice.json")
    payload.update(end_time=None, notes=[], dispositions=[])
    it = interaction(payload)
    assert it.ended_at is None and it.status == "in_progress"


def test_an_anonymous_engagement_is_rejected_saying_how_a_customer_is_found():
    payload = fixture("engagement_handoff.json")
    payload["consumers"] = [{"consumer_id": "anon", "consumer_display_name": "Guest"}]
    with pytest.raises(MappingError) as exc:
        interaction(payload)
    assert "customer_email" in str(exc.value) and payload["engagement_id"] in str(exc.value)


def test_address_book_contact_maps_to_a_profile_with_its_zoom_id():
    payload = fixture("contacts_page.json")["contacts"][0]
    prof = load_mapping("zoom", "address_book_contacts").inbound(record(payload, "address_book_contacts"))
    assert prof.external_ids == {"zoom": payload["contact_id"]}
    assert prof.phones and prof.phones[0].startswith("+") and prof.full_name == payload["display_name"]


def test_the_golden_record_goes_out_with_its_id_in_the_custom_field():
    m = load_mapping("zoom", "address_book_contacts")
    out = m.outbound({"first_name": "Amara", "last_name": "Okafor", "full_name": "Amara Okafor",
                      "phones": ["+14155550142"], "emails": ["amara.okafor@example.com"], "golden_id": "G-1",
                      "company": "Northwind Traders"})
    assert out == {"first_name": "Amara", "last_name": "Okafor", "display_name": "Amara Okafor",
                   "emails": "amara.okafor@example.com", "phone_numbers": "+14155550142",
                   "company": "Northwind Traders", "custom_fields": {"omnisync_golden_id": "G-1"}}


def test_the_whole_payload_source_cannot_be_written_back():
    with pytest.raises(MappingConfigError):
        parse_mapping({"system": "zoom", "stream": "x", "kind": "interaction",
                       "fields": {"channel": {"source": "$", "transform": "zoom_channel", "direction": "both"}}})
