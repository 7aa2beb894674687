"""Zoom end to end against the running sandbox: every channel maps to the right customer, new and
live engagements are picked up incrementally, and the golden record lands once in the address book."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from connectors.credentials import ZoomCredentials
from connectors.http import RateBudget, RetryPolicy
from connectors.zoom import API, ZoomConnector
from mappings.engine import load_mapping
from omnisync.model import Channel
from omnisync.records import OutboundRecord, WriteStatus
from sandbox.framework import SandboxCluster
from sandbox.zoom import ZoomSandbox

HEROINE_EMAIL, HEROINE_MOBILE = "amara.okafor@example.com", "+14155550142"


@pytest.fixture
def zoom(tmp_path):
    sb = ZoomSandbox(size=150, seed=3)
    with SandboxCluster([sb], workdir=tmp_path) as cluster:
        info = cluster.info()["zoom"]

        def make() -> ZoomConnector:
            return ZoomConnector(ZoomCredentials(base_url=info["base_url"], **info["credentials"]),
                                 budget=RateBudget(50.0, 50), policy=RetryPolicy(backoff_initial=0.01, backoff_max=0.05))

        with make() as conn:
            yield sb, info["base_url"], conn, make


def read_all(conn, cursor=None):
    pages = list(conn.read("engagements", cursor))
    return pages, [r for p in pages for r in p.records]


def test_every_channel_arrives_and_the_heroines_chat_and_call_map_to_her(zoom):
    sb, _, conn, _ = zoom
    _, records = read_all(conn)
    mapping = load_mapping("zoom", "engagements")
    interactions = [mapping.inbound(r) for r in records]
    assert len(interactions) == len(sb.engagements)
    assert {i.channel for i in interactions} >= {Channel.voice, Channel.chat, Channel.bot, Channel.sms,
                                                 Channel.email, Channel.video}
    chat = next(i for i in interactions if i.customer_email == HEROINE_EMAIL)
    assert chat.handoff.from_bot and chat.handoff.context["order_number"] == "88412"
    assert (chat.agent, chat.queue, chat.handoff.intent) == ("Jordan Lee", "Billing", "refund")
    call = next(i for i in interactions if i.customer_phone == HEROINE_MOBILE and i.channel is Channel.voice)
    assert call.disposition == "Refund approved" and call.started_at.date().isoformat() == "2026-11-03"
    handoffs = [i for i in interactions if i.handoff]
    assert len(handoffs) == sb.summary()["by_kind"]["handoff"]


def test_the_engagement_list_pages_a_window_in_start_order_with_and_without_filters(zoom):
    sb, _, conn, _ = zoom
    starts = sorted(e["start_time"] for e in sb.engagements.values())
    window = {"from": starts[0][:10], "to": starts[0][:8] + "28"}

    def listing(**extra):
        out, token, totals = [], None, set()
        while True:
            params = {**window, "page_size": 7, **extra, **({"next_page_token": token} if token else {})}
            body = conn._json("GET", API + "/engagements", params=params, endpoint=API + "/engagements")
            out += [(e["start_time"], e["engagement_id"]) for e in body["engagements"]]
            totals.add(body["total_records"])
            token = body["next_page_token"]
            if not token:
                return out, totals

    lo, hi = window["from"], window["to"] + "T23:59:59Z"
    expected = sorted((e["start_time"], e["engagement_id"]) for e in sb.engagements.values()
                      if lo <= e["start_time"] <= hi)
    listed, totals = listing()
    assert len(expected) > 20 and listed == expected and totals == {len(expected)}
    inbound = [k for k in expected if sb.engagements[k[1]]["direction"] == "inbound"]
    listed, totals = listing(direction="inbound")
    assert 0 < len(inbound) < len(expected) and listed == inbound and totals == {len(inbound)}


def test_an_engagement_added_at_runtime_arrives_with_the_next_incremental_read(zoom):
    sb, base, conn, make = zoom
    pages, before = read_all(conn)
    made = httpx.post(f"{base}/_sandbox/engagements", json={
        "kind": "handoff", "consumer_number": "+13125550177", "intent": "refund", "queue": "Billing",
        "variables": {"order_number": "90001"}, "summary": "Refund for order 90001"}).json()
    _, after = read_all(make(), pages[-1].cursor)
    assert made["engagement_id"] in {r.external_id for r in after}
    assert len(after) < len(before), "an incremental read re-reads only the overlap"
    it = load_mapping("zoom", "engagements").inbound(next(r for r in after if r.external_id == made["engagement_id"]))
    assert it.customer_phone == "+13125550177" and it.handoff.context["order_number"] == "90001"


def test_an_engagement_in_progress_is_read_again_when_it_ends(zoom):
    sb, base, conn, make = zoom
    live = httpx.post(f"{base}/_sandbox/engagements", json={"kind": "voice", "consumer_number": "+12065550123",
                                                            "ago_seconds": 600, "in_progress": True}).json()
    pages, records = read_all(conn)
    first = next(r for r in records if r.external_id == live["engagement_id"])
    assert load_mapping("zoom", "engagements").inbound(first).status == "in_progress"
    httpx.post(f"{base}/_sandbox/engagements/{live['engagement_id']}/end", json={"disposition": "Resolved"})
    _, again = read_all(make(), pages[-1].cursor)
    ended = next(r for r in again if r.external_id == live["engagement_id"])
    it = load_mapping("zoom", "engagements").inbound(ended)
    assert ended.modified_at > first.modified_at and it.ended_at and it.disposition == "Resolved"


def heroine_push() -> OutboundRecord:
    mapping = load_mapping("zoom", "address_book_contacts")
    payload = mapping.outbound({"first_name": "Amara", "last_name": "Okafor", "full_name": "Amara Okafor",
                                "phones": [HEROINE_MOBILE], "emails": [HEROINE_EMAIL], "golden_id": "G-amara",
                                "company": "Northwind Traders"})
    return OutboundRecord(key="G-amara|new", payload=payload, match={"omnisync_golden_id": "G-amara"})


def test_the_golden_record_is_created_once_in_the_address_book_for_the_screen_pop(zoom):
    sb, _, conn, make = zoom
    contacts_before = len(sb.contacts)
    (first,) = conn.write("address_book_contacts", [heroine_push()])
    (again,) = make().write("address_book_contacts", [heroine_push()])  # a later run, nothing cached
    assert first.status is WriteStatus.created and again.status is WriteStatus.updated
    assert again.external_id == first.external_id and len(sb.contacts) == contacts_before + 1
    fields = {sb.custom_fields[f]["custom_field_name"]: v for f, v in sb.contact_fields[first.external_id].items()}
    assert fields["omnisync_golden_id"] == "G-amara"
    field = next(f for f in sb.custom_fields.values() if f["custom_field_name"] == "omnisync_golden_id")
    assert field["show_in_inbound_notification"] and field["use_as_external_url_parameter"]
    profiles = [load_mapping("zoom", "address_book_contacts").inbound(r)
                for p in conn.read("address_book_contacts") for r in p.records]
    mine = next(p for p in profiles if p.external_ids["zoom"] == first.external_id)
    assert mine.phones == [HEROINE_MOBILE] and mine.full_name == "Amara Okafor"


def test_creates_whose_answers_are_cut_off_never_duplicate_a_contact(zoom):
    sb, _, conn, make = zoom
    recs = [OutboundRecord(key=f"G-{i}|new", match={"omnisync_golden_id": f"G-{i}"},
                           payload={"display_name": f"Cut Off {i}", "phone_numbers": f"+1303555{1200 + i}",
                                    "custom_fields": {"omnisync_golden_id": f"G-{i}"}}) for i in range(12)]
    sb.set_faults(rate_truncate=0.5, rate_5xx=0.2, seed=11, paths=r"/contacts$")
    outcomes = conn.write("address_book_contacts", recs)
    assert sb.log.faults_injected["truncate"] > 0 and sb.log.faults_injected["5xx"] > 0
    assert all(o.ok or o.retryable for o in outcomes), [o.error for o in outcomes]
    sb.set_faults(rate_truncate=0.0, rate_5xx=0.0, paths=None)
    again = make().write("address_book_contacts", recs)  # the next run, nothing cached
    assert all(o.ok for o in again)
    names = Counter(c["display_name"] for c in sb.contacts.values() if c["display_name"].startswith("Cut Off"))
    assert len(names) == 12 and set(names.values()) == {1}, "each golden record exists exactly once"
    assert {o.external_id for o in outcomes if o.ok} <= {o.external_id for o in again}


def test_a_quota_spent_mid_write_keeps_what_was_written_and_hands_the_rest_back_retryable(zoom):
    sb, _, conn, make = zoom
    pushes = [OutboundRecord(key=f"G-q{i}|new", match={"omnisync_golden_id": f"G-q{i}"},
                             payload={"display_name": f"Quota Person {i}", "emails": [f"q{i}@example.org"]})
              for i in range(6)]
    conn.check()  # the address book and custom fields are known before the quota bites
    conn.write("address_book_contacts", pushes[:1])
    sb.set_faults(daily_quota=sb.calls_used + 3)  # room for a couple more creates only
    out = conn.write("address_book_contacts", pushes[1:])
    written = [o for o in out if o.ok]
    rest = [o for o in out if not o.ok]
    assert written and rest, [o.status for o in out]
    assert all(o.status is WriteStatus.created and o.external_id in sb.contacts for o in written)
    assert all(o.retryable and "quota" in (o.error or "").lower() for o in rest)
    sb.set_faults(daily_quota=None)
    again = make().write("address_book_contacts", [p for p, o in zip(pushes[1:], out) if not o.ok])
    assert all(o.status is WriteStatus.created for o in again)
    names = [c["display_name"] for c in sb.contacts.values() if c["display_name"].startswith("Quota Person")]
    assert sorted(names) == [f"Quota Person {i}" for i in range(6)], "each person once"
