"""The HubSpot sandbox behaves like HubSpot: seeding, caps, 207s, limits, merges, webhooks."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter

import httpx
import pytest
import respx

from connectors.hubspot import verify_webhook
from sandbox.framework import SandboxCluster
from sandbox.hubspot import CLIENT_SECRET, ID_BASE, TOKEN, ApiError, HubSpotSandbox, Limits
from sandbox.population import JUNK_EMAILS, contact_person

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def served(tmp_path):
    started = []

    def start(sb: HubSpotSandbox) -> httpx.Client:
        cluster = SandboxCluster([sb], workdir=tmp_path / str(len(started))).start()
        started.append(cluster)
        return httpx.Client(base_url=cluster.info()["hubspot"]["base_url"], headers=AUTH)

    yield start
    for c in started:
        c.stop()


def contact(sb: HubSpotSandbox, i: int) -> dict:
    return sb.stores["contacts"].make(i).props


def test_seeding_is_deterministic_per_seed():
    a, b, c = HubSpotSandbox(size=200, seed=1), HubSpotSandbox(size=200, seed=1), HubSpotSandbox(size=200, seed=2)
    assert [contact(a, i) for i in range(50)] == [contact(b, i) for i in range(50)]
    assert [contact(a, i) for i in range(1, 50)] != [contact(c, i) for i in range(1, 50)]
    assert a.summary() == b.summary()


def test_seed_has_the_heroine_duplicates_variants_and_junk():
    sb = HubSpotSandbox(size=2000, seed=1)
    hero = contact(sb, 0)
    assert (hero["firstname"], hero["email"], hero["lifecyclestage"]) == ("Amara", "amara.okafor@example.com", "lead")
    dups = [i for i in range(2000) if contact_person("hubspot", i, 2000, 1)[1]]
    assert 0.015 < len(dups) / 2000 < 0.05
    emails = [contact(sb, i)["email"] for i in range(2000) if sb.stores["contacts"].get(ID_BASE["contacts"] + 1 + i)]
    assert any(e in JUNK_EMAILS for e in emails)
    assert len([e for e in emails if e]) == len({e for e in emails if e}), "email is unique in HubSpot"
    shapes = Counter(re.sub(r"\d", "9", contact(sb, i)["mobilephone"] or "") for i in range(300))
    assert len(shapes) >= 5, "phones arrive in many formats"
    s = sb.summary()["contacts"]
    assert s["archived"] > 0 and s["merged"] > 0 and s["live"] + s["archived"] + s["merged"] == 2000


def test_search_refuses_to_page_past_10000_results(served):
    sb = HubSpotSandbox(size=10_300, seed=1, limits=Limits(enabled=False))
    last = sb.search("contacts", {"limit": 200, "after": "9800"})
    assert len(last["results"]) == 200 and "paging" not in last and last["total"] > 10_000
    client = served(sb)
    r = client.post("/crm/v3/objects/contacts/search", json={"limit": 200, "after": "10000"})
    assert r.status_code == 400 and r.json()["category"] == "VALIDATION_ERROR"
    assert client.post("/crm/v3/objects/contacts/search", json={"limit": 201}).status_code == 400


def test_search_filters_groups_and_sorts_like_hubspot():
    sb = HubSpotSandbox(size=300, seed=1)
    hero = sb.search("contacts", {"filterGroups": [{"filters": [
        {"propertyName": "email", "operator": "EQ", "value": "AMARA.OKAFOR@example.com"}]}], "properties": ["email"]})
    assert [r["id"] for r in hero["results"]] == [str(ID_BASE["contacts"] + 1)]
    either = sb.search("contacts", {"limit": 200, "filterGroups": [
        {"filters": [{"propertyName": "lifecyclestage", "operator": "EQ", "value": "customer"}]},
        {"filters": [{"propertyName": "lifecyclestage", "operator": "EQ", "value": "lead"}]}],
        "properties": ["lifecyclestage"]})
    assert {r["properties"]["lifecyclestage"] for r in either["results"]} == {"customer", "lead"}
    stamps = [r["properties"]["lastmodifieddate"] for r in sb.search("contacts", {"limit": 50,
              "properties": ["lastmodifieddate"]})["results"]]
    assert stamps == sorted(stamps)
    with pytest.raises(ApiError):
        sb.search("contacts", {"filterGroups": [{"filters": [{"propertyName": "x", "operator": "EQ", "value": "1"}]}
                                                for _ in range(6)]})


def test_batches_over_100_inputs_are_refused_and_partial_failures_are_207(served):
    client = served(HubSpotSandbox(size=50, seed=1))
    too_many = {"inputs": [{"idProperty": "email", "id": f"x{i}@example.org", "properties": {}} for i in range(101)]}
    r = client.post("/crm/v3/objects/contacts/batch/upsert", json=too_many)
    assert r.status_code == 400 and r.json()["subCategory"] == "TOO_MANY_INPUTS"
    mixed = {"inputs": [{"idProperty": "email", "id": "ok.one@example.org", "properties": {"firstname": "Ok"},
                         "objectWriteTraceId": "a"},
                        {"idProperty": "email", "id": "ok.two@example.org", "properties": {"lifecyclestage": "nope"},
                         "objectWriteTraceId": "b"}]}
    r = client.post("/crm/v3/objects/contacts/batch/upsert", json=mixed)
    body = r.json()
    assert r.status_code == 207 and body["numErrors"] == 1
    assert body["results"][0]["objectWriteTraceId"] == "a" and body["results"][0]["new"] is True
    assert body["errors"][0]["context"]["objectWriteTraceId"] == ["b"]
    assert body["errors"][0]["errors"][0]["code"] == "INVALID_OPTION"
    missing = client.post("/crm/v3/objects/contacts/batch/read", json={"inputs": [{"id": "1001"}, {"id": "999999"}],
                                                                       "properties": ["email"]})
    assert missing.status_code == 207 and missing.json()["errors"][0]["context"]["ids"] == ["999999"]


def test_rate_limits_answer_429_with_policy_and_usage_headers(served):
    sb = HubSpotSandbox(size=50, seed=1, limits=Limits(ten_secondly=3, search_per_second=2))
    client = served(sb)
    ok = client.get("/crm/v3/objects/contacts?limit=1")
    assert ok.headers["X-HubSpot-RateLimit-Max"] == "3" and ok.headers["X-HubSpot-RateLimit-Remaining"] == "2"
    assert int(ok.headers["X-HubSpot-RateLimit-Daily-Remaining"]) > 0
    client.get("/crm/v3/objects/contacts?limit=1")
    client.get("/crm/v3/objects/contacts?limit=1")
    refused = client.get("/crm/v3/objects/contacts?limit=1")
    assert refused.status_code == 429 and refused.json()["policyName"] == "TEN_SECONDLY_ROLLING"
    assert int(refused.headers["Retry-After"]) >= 1
    client.post("/_sandbox/limits", json={"ten_secondly": 100})
    for _ in range(2):
        assert client.post("/crm/v3/objects/contacts/search", json={}).status_code == 200
    third = client.post("/crm/v3/objects/contacts/search", json={})
    assert third.status_code == 429 and third.json()["policyName"] == "SECONDLY"
    client.post("/_sandbox/limits", json={"daily": sb.daily_used})
    daily = client.get("/crm/v3/objects/contacts?limit=1")
    assert daily.status_code == 429 and daily.json()["policyName"] == "DAILY" and "Retry-After" not in daily.headers


def test_merge_lists_merged_ids_and_the_old_id_answers_with_the_survivor(served):
    sb = HubSpotSandbox(size=50, seed=1)
    client = served(sb)
    a, b = ID_BASE["contacts"] + 2, ID_BASE["contacts"] + 3
    r = client.post("/crm/v3/objects/contacts/merge", json={"primaryObjectId": str(a), "objectIdToMerge": str(b)})
    assert r.status_code == 200 and str(b) in r.json()["properties"]["hs_merged_object_ids"].split(";")
    old = client.get(f"/crm/v3/objects/contacts/{b}?properties=hs_merged_object_ids")
    assert old.status_code == 200 and old.json()["id"] == str(a)
    client.delete(f"/crm/v3/objects/contacts/{a}")
    assert client.get(f"/crm/v3/objects/contacts/{a}").status_code == 404
    archived = client.get("/crm/v3/objects/contacts?archived=true&limit=100").json()["results"]
    assert str(a) in {x["id"] for x in archived} and all(x["archived"] for x in archived)
    found = sb.search("contacts", {"limit": 200, "filterGroups": [{"filters": [
        {"propertyName": "hs_object_id", "operator": "EQ", "value": str(a)}]}]})
    assert found["total"] == 0, "search never returns archived records"


def test_unauthorized_requests_get_hubspots_401(served):
    client = served(HubSpotSandbox(size=10, seed=1))
    r = client.get("/crm/v3/objects/contacts", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["category"] == "INVALID_AUTHENTICATION"


def test_webhooks_are_signed_v3_and_delivered_at_least_once_in_any_order():
    sb = HubSpotSandbox(size=50, seed=1)
    hero = ID_BASE["contacts"] + 1
    sb.update("contacts", hero, {"firstname": "Amara", "jobtitle": "Founder"})
    sb.merge("contacts", hero, hero + 1)
    sb.create("contacts", {"email": "webhook.new@example.org"})
    url = "https://receiver.example/hooks/hubspot"
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(url).mock(return_value=httpx.Response(204))
        out = asyncio.run(sb.deliver(url, duplicate_every=2, shuffle=True))
    assert out["statuses"] == [204]
    events = []
    for call in route.calls:
        req = call.request
        assert verify_webhook(CLIENT_SECRET, "POST", url, req.content, req.headers["X-HubSpot-Signature-v3"],
                              req.headers["X-HubSpot-Request-Timestamp"], now_ms=int(time.time() * 1000))
        events += json.loads(req.content)
    kinds = Counter(e["subscriptionType"] for e in events)
    assert {"contact.propertyChange", "contact.merge", "contact.creation"} <= set(kinds)
    assert len(events) > len({e["eventId"] for e in events}), "some events arrive twice"
    assert sb.summary()["webhooks"]["pending"] == 0


@pytest.mark.slow
def test_a_million_contacts_can_be_seeded_and_searched():
    t0 = time.perf_counter()
    sb = HubSpotSandbox(size=1_000_000, seed=1)
    assert time.perf_counter() - t0 < 120
    page = sb.search("contacts", {"limit": 200, "after": "9800"})
    assert page["total"] > 950_000 and len(page["results"]) == 200
