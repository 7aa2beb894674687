"""Segment end to end against the running sandbox: golden profile and timeline out, profiles back in."""

from __future__ import annotations

import httpx
import pytest

from connectors.credentials import SegmentCredentials
from connectors.segment import SegmentConnector
from mappings.engine import load_mapping
from omnisync.records import OutboundRecord
from sandbox.framework import SandboxCluster
from sandbox.segment import SPACE_ID, SegmentSandbox

GOLDEN = {"golden_id": "g-amara", "emails": ["amara.okafor@example.com"], "first_name": "Amara",
          "last_name": "Okafor", "phones": ["+14155550142"], "consent.email.marketing": "opted_out",
          "external_ids.salesforce": "003A000001", "external_ids.zoom": "zc-77"}
TIMELINE = [
    {"interaction_key": "zoom:chat-1", "channel": "bot", "started_at": "2026-11-05T09:00:00+00:00",
     "system": "zoom", "external_id": "chat-1", "direction": "inbound", "summary": "refund for order A-10442"},
    {"interaction_key": "zoom:chat-2", "channel": "chat", "started_at": "2026-11-05T09:04:00+00:00",
     "system": "zoom", "external_id": "chat-2", "direction": "inbound", "handoff.from_bot": "Ava"},
    {"interaction_key": "twilio:SM1", "channel": "sms", "started_at": "2026-11-06T15:00:00+00:00",
     "system": "twilio", "external_id": "SM1", "direction": "inbound", "status": "received"},
]


@pytest.fixture
def segment(tmp_path):
    sb = SegmentSandbox(size=60, seed=4)
    with SandboxCluster([sb], workdir=tmp_path) as cluster:
        info = cluster.info()["segment"]
        creds = SegmentCredentials(tracking_url=info["base_url"], profile_url=info["base_url"], **info["credentials"])
        with SegmentConnector(creds) as conn:
            yield sb, info, conn


def test_a_golden_profile_and_its_timeline_land_on_one_segment_profile_and_resends_are_deduplicated(segment):
    sb, info, conn = segment
    identify = load_mapping("segment", "identify").outbound(GOLDEN)
    out = conn.write("identify", [OutboundRecord(key="g-amara|new", payload=identify, match={"userId": "g-amara"})])
    track = load_mapping("segment", "track")
    records = [OutboundRecord(key=i["interaction_key"], payload=track.outbound({**i, "golden_id": "g-amara"}))
               for i in TIMELINE]
    first = conn.write("track", records)
    again = conn.write("track", records)
    assert out[0].ok and all(o.ok for o in first) and [o.external_id for o in again] == [o.external_id for o in first]
    assert conn.api_calls == 3, "one batch call per write"

    [profile] = conn.fetch_profiles([("user_id", "g-amara")])
    assert profile.payload["traits"]["unsubscribed"] is True
    ids = {(e["type"], e["id"]) for e in profile.payload["external_ids"]}
    assert {("salesforce_contact_id", "003A000001"), ("zoom_contact_id", "zc-77")} <= ids
    events = httpx.get(f"{info['base_url']}/v1/spaces/{SPACE_ID}/collections/users/profiles/user_id:g-amara/events",
                       auth=(info["credentials"]["profile_token"], ""), params={"limit": 100}).json()["data"]
    tracks = [e for e in events if e["type"] == "track"]
    assert sorted(e["message_id"] for e in tracks) == sorted(i["interaction_key"] for i in TIMELINE)
    assert {e["event"] for e in tracks} == {"Virtual Agent Conversation Completed", "Chat Conversation Completed",
                                            "SMS Conversation"}
    assert sb.duplicates == len(TIMELINE)


def test_enrichment_by_email_finds_the_heroine_web_user_and_maps_her_profile(segment):
    _, _, conn = segment
    conn.lookup_concurrency = 1  # one at a time: her user id comes after the profile that lists it
    records = conn.fetch_profiles([("email", "amara.okafor@example.com"), ("user_id", "web-7731"),
                                   ("email", "nobody@example.org")])
    assert [r.external_id for r in records] == ["web-7731"]
    p = load_mapping("segment", "profiles").inbound(records[0])
    assert (p.cdp_user_id, p.emails, p.first_name, p.last_name) == (
        "web-7731", ["amara.okafor@example.com"], "Amara", "Okafor")
    assert conn.api_calls == 3, "traits + external ids of her profile, one 404; her user id is on the profile already"
