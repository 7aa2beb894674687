"""Segment connector against recorded vendor responses (respx): batching, validation, lookups, limits."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest
import respx

from connectors.credentials import SegmentCredentials
from connectors.errors import AuthError, QuotaExhaustedError
from connectors.http import RetryPolicy
from connectors.segment import MAX_BATCH, SegmentConnector
from omnisync.records import OutboundRecord, WriteStatus

FIX = Path(__file__).parent / "fixtures" / "segment"
TRACK = "https://api.segment.test"
PROFILES = "https://profiles.segment.test"
SPACE = f"{PROFILES}/v1/spaces/spa_test/collections/users/profiles"
FAST = RetryPolicy(backoff_initial=0.001, backoff_max=0.002)


def fixture(name: str):
    return json.loads((FIX / name).read_text())


def connector(**kw) -> SegmentConnector:
    creds = SegmentCredentials(tracking_url=TRACK, write_key="test-write-key", profile_url=PROFILES,
                               space_id="spa_test", profile_token="test-token")
    return SegmentConnector(creds, policy=FAST, **kw)


def track(i: int, summary: str = "asked about a refund") -> OutboundRecord:
    return OutboundRecord(key=f"zoom:eng-{i}", payload={
        "messageId": f"zoom:eng-{i}", "userId": "golden-1", "event": "Call Completed",
        "timestamp": "2026-11-05T10:00:00Z",
        "properties": {"source_system": "zoom", "summary": summary, "queue": None}})


def test_track_messages_are_packed_into_as_few_batches_as_500_kb_allows():
    records = [track(i, "x" * 10_000) for i in range(120)]
    with respx.mock(base_url=TRACK, assert_all_called=True) as mock:
        route = mock.post("/v1/batch").respond(200, json=fixture("batch_ok.json"))
        outcomes = connector().write("track", records)
    sizes = [len(call.request.content) for call in route.calls]
    assert all(s <= MAX_BATCH for s in sizes)
    assert len(sizes) == 3, sizes  # 120 x ~10 KB = ~1.2 MB: three batches, not 120 calls
    sent = [m for call in route.calls for m in json.loads(call.request.content)["batch"]]
    assert [m["messageId"] for m in sent] == [r.key for r in records]
    assert "queue" not in sent[0]["properties"], "absent values are not sent as nulls"
    assert [(o.key, o.status, o.external_id) for o in outcomes] == [(r.key, WriteStatus.created, r.key) for r in records]
    auth = route.calls[0].request.headers["Authorization"]
    assert base64.b64decode(auth.split()[1]) == b"test-write-key:"


def test_an_oversized_or_anonymous_message_fails_alone_before_anything_is_sent():
    big, nobody = track(1, "y" * 40_000), OutboundRecord(key="zoom:eng-2", payload={"event": "Call Completed"})
    with respx.mock(base_url=TRACK, assert_all_called=True) as mock:
        route = mock.post("/v1/batch").respond(200, json=fixture("batch_ok.json"))
        outcomes = connector().write("track", [big, track(3), nobody])
    assert route.call_count == 1 and len(json.loads(route.calls[0].request.content)["batch"]) == 1
    assert [o.status for o in outcomes] == [WriteStatus.failed, WriteStatus.created, WriteStatus.failed]
    assert "32 KB" in outcomes[0].error and "properties.summary" in outcomes[0].error
    assert "userId" in outcomes[2].error and not outcomes[2].retryable


def test_identify_sends_the_golden_id_traits_and_other_systems_ids_as_external_ids():
    rec = OutboundRecord(key="golden-1|new", match={"userId": "golden-1"}, payload={
        "userId": "golden-1", "traits": {"email": "amara.okafor@example.com", "firstName": "Amara", "title": None},
        "externalIds": {"salesforce_contact_id": "003A", "hubspot_contact_id": "501"}})
    with respx.mock(base_url=TRACK, assert_all_called=True) as mock:
        route = mock.post("/v1/batch").respond(200, json=fixture("batch_ok.json"))
        first = connector().write("identify", [rec])
        second = connector().write("identify", [rec])
    msgs = [json.loads(c.request.content)["batch"][0] for c in route.calls]
    assert msgs[0]["type"] == "identify" and msgs[0]["userId"] == "golden-1"
    assert msgs[0]["traits"] == {"email": "amara.okafor@example.com", "firstName": "Amara"}
    assert msgs[0]["context"]["externalIds"] == [
        {"id": "501", "type": "hubspot_contact_id", "collection": "users", "encoding": "none"},
        {"id": "003A", "type": "salesforce_contact_id", "collection": "users", "encoding": "none"}]
    assert msgs[0]["messageId"] != msgs[1]["messageId"], "a later identify restating traits is not a duplicate"
    assert first[0].external_id == second[0].external_id == "golden-1"


def test_a_rejected_batch_fails_its_records_without_retrying():
    with respx.mock(base_url=TRACK, assert_all_called=True) as mock:
        route = mock.post("/v1/batch").respond(400, json=fixture("batch_too_large.json"))
        outcomes = connector().write("track", [track(1), track(2)])
    assert route.call_count == 1
    assert all(o.status is WriteStatus.failed and not o.retryable for o in outcomes)


def test_fetch_profiles_follows_cursors_returns_each_person_once_and_skips_unknown_ids():
    # Two lookups at a time: web-7731 and nobody go out together; email:amara... has no route, as
    # the profile found by user id lists that address (in another case), and looking it up again
    # would spend two rate-limited calls on a profile already fetched.
    with respx.mock(base_url=SPACE, assert_all_called=True) as mock:
        traits = mock.get("/user_id:web-7731/traits")
        traits.side_effect = lambda req: httpx.Response(
            200, json=fixture("traits_page2.json" if req.url.params.get("next") else "traits_page1.json"))
        mock.get("/user_id:web-7731/external_ids").respond(200, json=fixture("external_ids.json"))
        missing = mock.get("/email:nobody@example.com/traits").respond(404, json=fixture("error_404.json"))
        records = connector(lookup_concurrency=2).fetch_profiles(
            [("user_id", "web-7731"), ("email", "nobody@example.com"), ("email", "AMARA.okafor@example.com")])
        calls = list(mock.calls)
    assert missing.call_count == 1
    assert len(calls) == 4, "traits (two pages) and external ids of one profile, one miss"
    assert [r.external_id for r in records] == ["web-7731"]
    payload = records[0].payload
    assert payload["traits"]["lastName"] == "Okafor" and payload["traits"]["email"] == "amara.okafor@example.com"
    assert len(payload["external_ids"]) == 4
    assert records[0].modified_at.isoformat() == "2026-11-03T11:00:00+00:00"
    assert any(c.request.url.params.get("next") == "firstName" for c in calls)
    assert all(base64.b64decode(c.request.headers["Authorization"].split()[1]) == b"test-token:" for c in calls)


def test_profiles_read_resumes_after_the_last_lookup_and_stores_no_identifier():
    lookups = [("user_id", f"web-{n}") for n in range(5)]

    def traits(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"traits": {"firstName": "T"}, "cursor": {"url": "", "has_more": False, "next": ""}})

    def ids(request: httpx.Request) -> httpx.Response:
        uid = request.url.path.split("/")[-2].split(":")[1]
        return httpx.Response(200, json={"data": [{"id": uid, "type": "user_id", "created_at": "2026-11-01T00:00:00Z"}],
                                         "cursor": {"url": "", "has_more": False, "next": ""}})

    with respx.mock(base_url=SPACE, assert_all_called=True) as mock:
        mock.get(path__regex=r"/traits$").mock(side_effect=traits)
        mock.get(path__regex=r"/external_ids$").mock(side_effect=ids)
        pages = list(connector(lookups=lookups, page_size=2).read("profiles"))
        resumed = list(connector(lookups=lambda: reversed(lookups), page_size=2).read("profiles", pages[0].cursor))
    assert [len(p.records) for p in pages] == [2, 2, 1]
    first = {r.external_id for r in pages[0].records}
    rest = {r.external_id for p in resumed for r in p.records}
    assert first.isdisjoint(rest) and first | rest == {f"web-{n}" for n in range(5)}
    assert "web-" not in pages[0].cursor.token


def test_profiles_cannot_be_listed_without_lookups():
    with pytest.raises(ValueError, match="cannot list users"):
        next(connector().read("profiles"))
    with pytest.raises(ValueError, match="write-only"):
        next(connector(lookups=[]).read("track"))


def test_retry_after_is_honored_and_a_day_long_wait_is_an_exhausted_quota():
    with respx.mock(base_url=SPACE, assert_all_called=True) as mock:
        route = mock.get("/user_id:web-1/traits")
        route.side_effect = [httpx.Response(429, json=fixture("error_429.json"), headers={"Retry-After": "0"}),
                             httpx.Response(200, json=fixture("traits_page2.json"))]
        mock.get("/user_id:web-1/external_ids").respond(200, json=fixture("external_ids.json"))
        assert len(connector().fetch_profiles([("user_id", "web-1")])) == 1
        assert route.call_count == 2
    with respx.mock(base_url=SPACE, assert_all_called=True) as mock:
        route = mock.get("/user_id:web-1/traits").respond(429, json=fixture("error_429.json"),
                                                        headers={"Retry-After": "86400"})
        with pytest.raises(QuotaExhaustedError):
            connector().fetch_profiles([("user_id", "web-1")])
        assert route.call_count == 1


def test_a_wrong_write_key_is_an_auth_error_naming_the_credentials():
    with respx.mock(base_url=TRACK, assert_all_called=True) as mock:
        mock.post("/v1/batch").respond(401, json=fixture("error_401.json"))
        with pytest.raises(AuthError, match="credentials"):
            connector().check()
