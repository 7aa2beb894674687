"""Consent and value tier in the mapping files: where each system keeps an opt-out per channel, how
the vendors' flags read (a ticked box is an opt-out, a blank one no statement), a contact-center
do-not-call disposition, and the value tier from Salesforce's picklist or Segment's computed trait.

Fast: the real mapping files on vendor-shaped payloads (tests/fixtures), no sandboxes, no store.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from identity.golden import survive
from identity.store import SourceRow
from mappings.engine import all_mappings, flatten_profile, load_mapping, mappings_for
from omnisync.records import SourceRecord

FIX = Path(__file__).parent / "fixtures"
AT = datetime(2026, 11, 5, tzinfo=timezone.utc)
OPTED_OUT = {f"consent.{channel}.marketing": "opted_out" for channel in ("email", "sms", "voice")}


def fixture(system: str, name: str) -> dict:
    payload = json.loads((FIX / system / name).read_text())
    if system == "salesforce":
        payload.pop("attributes")  # simple-salesforce's record metadata, not a field
    return payload


def rec(system: str, stream: str, payload: dict, ext: str = "x1") -> SourceRecord:
    return SourceRecord(system=system, stream=stream, external_id=ext, modified_at=AT, payload=payload)


def consent_of(profile) -> dict[str, str]:
    return {c.channel.value: c.status.value for c in profile.consent}


# --- out: every place a system keeps consent receives the opt-out --------------------------------

def test_each_opt_out_goes_to_every_place_a_system_keeps_that_channel():
    sent = {(m.system, m.stream): m.outbound(OPTED_OUT) for m in all_mappings() if m.kind == "profile"}
    assert sent[("salesforce", "contacts")] == {"HasOptedOutOfEmail": True, "DoNotCall": True,
                                                "Omnisync_Sms_Opt_Out__c": True}
    assert sent[("hubspot", "contacts")] == {"properties": {"hs_email_optout": True, "omnisync_sms_opt_out": True,
                                                            "omnisync_do_not_call": True}}
    # Zoom's custom fields are strings; the contact center places calls and texts, not marketing email
    assert sent[("zoom", "address_book_contacts")] == {"custom_fields": {"omnisync_sms_opt_out": "true",
                                                                         "omnisync_do_not_call": "true"}}
    assert sent[("segment", "identify")] == {"traits": {"unsubscribed": True, "sms_unsubscribed": True,
                                                        "do_not_call": True}}
    assert sent[("salesforce", "leads")] == {} and sent[("segment", "profiles")] == {}, "read-only streams"


def test_an_opt_in_goes_out_as_an_unticked_box_and_zoom_reads_false():
    opted_in = {k: "opted_in" for k in OPTED_OUT}
    assert load_mapping("hubspot", "contacts").outbound(opted_in)["properties"]["omnisync_sms_opt_out"] is False
    assert load_mapping("zoom", "address_book_contacts").outbound(opted_in)["custom_fields"] == {
        "omnisync_sms_opt_out": "false", "omnisync_do_not_call": "false"}


def test_twilio_and_sendgrid_keep_no_profile_consent_to_write():
    """Twilio enforces STOP itself and has no API to set an opt-out; SendGrid gets email opt-outs as
    suppressions (a consent stream), so neither has an outbound profile consent field."""
    for system in ("twilio", "sendgrid"):
        outbound = [fm.target for m in all_mappings() if m.system == system for fm in m.outbound_fields()]
        assert not [t for t in outbound if t.startswith("consent.")], system


# --- in: vendor flags as consent statements ------------------------------------------------------

def test_crm_opt_out_boxes_read_as_opt_outs_and_a_blank_box_as_no_statement():
    sf = load_mapping("salesforce", "contacts")
    heroine = fixture("salesforce", "contact_heroine.json")
    assert consent_of(sf.inbound(rec("salesforce", "contacts", heroine))) == {"voice": "opted_out"}
    ticked = sf.inbound(rec("salesforce", "contacts", {**heroine, "Omnisync_Sms_Opt_Out__c": True, "DoNotCall": False}))
    assert consent_of(ticked) == {"sms": "opted_out"}, "an unticked DoNotCall says nothing, it is no opt-in"
    hs = load_mapping("hubspot", "contacts")
    contact = fixture("hubspot", "contact_heroine.json")
    props = {**contact["properties"], "omnisync_sms_opt_out": "true", "omnisync_do_not_call": "false"}
    assert consent_of(hs.inbound(rec("hubspot", "contacts", {**contact, "properties": props}))) == {
        "email": "opted_out", "sms": "opted_out"}


def test_segment_consent_traits_read_as_opt_outs():
    payload = {"traits": {"email": "amara.okafor@example.com", "sms_unsubscribed": True, "do_not_call": False},
               "external_ids": []}
    p = load_mapping("segment", "profiles").inbound(rec("segment", "profiles", payload))
    assert consent_of(p) == {"sms": "opted_out"}


def engagement(**changes) -> dict:
    return {**fixture("zoom", "engagement_voice.json"), **changes}


@pytest.mark.parametrize("name", ["Do not call", "DNC", "Do-Not-Contact", " do_not_call "])
def test_a_do_not_call_disposition_is_a_voice_opt_out_dated_when_the_call_ended(name):
    (consent,) = [m for m in mappings_for("zoom", "engagements") if m.kind == "consent"]
    e = engagement(dispositions=[{"disposition_id": "d1", "disposition_name": name}])
    ev = consent.inbound(rec("zoom", "engagements", e, e["engagement_id"]))
    assert (ev.channel.value, ev.purpose.value, ev.status.value) == ("voice", "marketing", "opted_out")
    assert ev.customer_phone == "+14155550142" and ev.occurred_at.isoformat().startswith(e["end_time"][:19])
    assert ev.reason == "contact_center_do_not_call"


def test_other_dispositions_and_calls_still_in_progress_carry_no_consent():
    (consent,) = [m for m in mappings_for("zoom", "engagements") if m.kind == "consent"]
    assert consent.inbound(rec("zoom", "engagements", engagement())) is None  # "Refund approved"
    live = engagement(end_time=None, dispositions=[])
    assert consent.inbound(rec("zoom", "engagements", live)) is None


# --- value tier ----------------------------------------------------------------------------------

def _row(system: str, stream: str, profile, at: datetime, n: int) -> SourceRow:
    return SourceRow(id=n, system=system, stream=stream, external_id=f"{system}-{n}", modified_at=at,
                     fingerprint=str(n), canonical={"profile": profile.model_dump(mode="json")}, golden_id="G")


def test_value_tier_comes_from_salesforce_picklist_else_segment_computed_trait():
    sf = load_mapping("salesforce", "contacts").inbound(
        rec("salesforce", "contacts", fixture("salesforce", "contact_heroine.json")))
    assert sf.value_tier == "gold"
    seg_payload = {"traits": {**fixture("segment", "traits_page2.json")["traits"], "value_tier": "Platinum"},
                   "external_ids": []}
    seg = load_mapping("segment", "profiles").inbound(rec("segment", "profiles", seg_payload))
    assert seg.value_tier == "platinum"
    later = datetime(2026, 12, 1, tzinfo=timezone.utc)
    profile, lineage = survive([_row("salesforce", "contacts", sf, AT, 1), _row("segment", "profiles", seg, later, 2)])
    assert profile["value_tier"] == "gold" and lineage["value_tier"]["rule"] == "prefer salesforce", \
        "sales' tier wins over a more recent computed one"
    profile, lineage = survive([_row("segment", "profiles", seg, later, 2)])
    assert profile["value_tier"] == "platinum" and lineage["value_tier"]["system"] == "segment"
    assert flatten_profile(profile)["value_tier"] == "platinum"
    assert load_mapping("segment", "identify").outbound(flatten_profile(profile))["traits"]["value_tier"] == "platinum"


# --- the connectors must ask the vendor for what the mappings read -------------------------------

def _inbound_sources(system: str, stream: str) -> set[str]:
    return {src for m in mappings_for(system, stream) for fm in m.fields if fm.inbound for src in fm.sources
            if src != "$"}


@pytest.mark.parametrize("system,stream", [
    ("salesforce", "contacts"), ("salesforce", "leads"), ("salesforce", "tasks"),
    ("hubspot", "contacts"), ("hubspot", "calls"), ("hubspot", "emails"), ("hubspot", "communications"),
])
def test_the_connector_asks_the_vendor_for_every_field_the_mapping_reads(system, stream):
    if system == "salesforce":
        from connectors.salesforce import FIELDS, SYSTEM_FIELDS

        asked = set(FIELDS[stream]) | set(SYSTEM_FIELDS)
        missing = _inbound_sources(system, stream) - asked  # a relationship path (Account.Name) is asked as such
    else:
        from connectors.hubspot import PROPERTIES

        props = {src.split(".")[1] for src in _inbound_sources(system, stream) if src.startswith("properties.")}
        missing = props - set(PROPERTIES[stream])
    assert not missing, f"{system}/{stream} maps fields its connector never reads: {sorted(missing)}"
