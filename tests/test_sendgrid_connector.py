"""SendGrid connector against recorded vendor responses (respx): windows, paging, limits, writes."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import respx

from connectors.credentials import SendGridCredentials
from connectors.errors import AuthError, BadRequestError, PaginationLoopError, QuotaExhaustedError
from connectors.http import RateBudget, RetryPolicy
from connectors.sendgrid import SendGridConnector, event_records
from omnisync.records import Cursor, OutboundRecord, WriteStatus

FIX = Path(__file__).parent / "fixtures" / "sendgrid"
BASE = "https://sendgrid.test"
UNTIL = datetime(2026, 11, 6, tzinfo=timezone.utc)
FAST = RetryPolicy(backoff_initial=0.001, backoff_max=0.002)


def fixture(name: str):
    return json.loads((FIX / name).read_text())


def connector(**kw) -> SendGridConnector:
    return SendGridConnector(SendGridCredentials(base_url=BASE, api_key="SG.test-key"), policy=FAST, **kw)


def activity(messages: list[dict], queries: list[str]):
    """Answer /v3/messages like SendGrid: filter by the time bounds in the query, newest first."""
    def respond(request: httpx.Request) -> httpx.Response:
        query = request.url.params["query"]
        queries.append(query)
        limit = int(request.url.params["limit"])
        ge = re.search(r'last_event_time>=TIMESTAMP "([^"]+)"', query)
        lt = re.search(r'last_event_time<TIMESTAMP "([^"]+)"', query)
        hits = [m for m in messages if (not ge or m["last_event_time"] >= ge.group(1))
                and (not lt or m["last_event_time"] < lt.group(1))]
        hits.sort(key=lambda m: m["last_event_time"], reverse=True)
        return httpx.Response(200, json={"messages": hits[:limit]},
                              headers={"X-RateLimit-Remaining": "599", "X-RateLimit-Reset": str(int(time.time()) + 60)})
    return respond


def test_full_windows_are_split_and_every_message_is_read_once_oldest_first():
    messages = fixture("messages.json")["messages"]
    queries: list[str] = []
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/v3/messages").mock(side_effect=activity(messages, queries))
        pages = list(connector(page_size=3).read("messages", until=UNTIL))
    records = [r for p in pages for r in p.records]
    assert sorted(r.external_id for r in records) == sorted(m["msg_id"] for m in messages)
    stamps = [r.modified_at for r in records]
    assert stamps == sorted(stamps)
    for page in pages:
        assert page.cursor.modified_at == max(r.modified_at for r in page.records)
    # Nov 2 holds three messages: its window came back full (3 = limit) and was asked again, halved.
    windows = [q for q in queries if ">=" in q]
    assert len(windows) > len(pages)
    assert all(" AND last_event_time<TIMESTAMP " in q for q in windows), "windows must be half-open"


def test_first_read_reaches_back_while_older_messages_exist():
    old = {**fixture("messages.json")["messages"][0], "msg_id": "old.filterdrecv-0.0",
           "last_event_time": "2026-09-20T09:00:00Z"}
    queries: list[str] = []
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/v3/messages").mock(side_effect=activity([old], queries))
        records = [r for p in connector().read("messages", until=UNTIL) for r in p.records]
    assert [r.external_id for r in records] == ["old.filterdrecv-0.0"]
    probes = [q for q in queries if ">=" not in q]
    # 30 days back there is older mail, 60 days back there is none: start there.
    assert probes == ['last_event_time<TIMESTAMP "2026-10-07T00:00:00Z"',
                      'last_event_time<TIMESTAMP "2026-09-07T00:00:00Z"']


def test_more_messages_in_one_second_than_a_page_stop_with_a_clear_error():
    same = [{**m, "last_event_time": "2026-11-02T10:00:00Z"} for m in fixture("messages.json")["messages"][:3]]
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/v3/messages").mock(side_effect=activity(same, []))
        with pytest.raises(PaginationLoopError, match="share one second"):
            list(connector(page_size=2).read("messages", until=UNTIL))


def test_resumed_read_starts_one_overlap_before_the_cursor_without_probing():
    messages = fixture("messages.json")["messages"]
    queries: list[str] = []
    cursor = Cursor(modified_at=datetime(2026, 11, 4, 18, 5, 12, tzinfo=timezone.utc), last_id="m4.filterdrecv-1-0.0")
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/v3/messages").mock(side_effect=activity(messages, queries))
        records = [r for p in connector().read("messages", cursor, until=UNTIL) for r in p.records]
    assert queries[0].startswith('last_event_time>=TIMESTAMP "2026-11-04T18:00:12Z"')
    assert all(">=" in q for q in queries)
    assert [r.external_id for r in records] == ["m4.filterdrecv-1-0.0", "m5.filterdrecv-1-0.0"]


def test_unsubscribes_page_by_offset_with_a_frozen_end_time():
    seen: list[dict] = []

    def respond(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        seen.append(params)
        body = fixture("unsubscribes_page1.json") if params["offset"] == "0" else fixture("unsubscribes_page2.json")
        return httpx.Response(200, json=body)

    cursor = Cursor(modified_at=datetime.fromtimestamp(1793600000, tz=timezone.utc))
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/v3/suppression/unsubscribes").mock(side_effect=respond)
        pages = list(connector(page_size=2).read("unsubscribes", cursor, until=UNTIL))
    assert [p["offset"] for p in seen] == ["0", "2"]
    assert {p["end_time"] for p in seen} == {str(int(UNTIL.timestamp()))}
    assert seen[0]["start_time"] == str(1793600000 - 600)
    ids = [r.external_id for p in pages for r in p.records]
    assert ids == ["ana.silva@example.com", "leo.kim@example.net", "mia.chen@example.org"]
    assert pages[-1].cursor.modified_at == datetime.fromtimestamp(1793800000, tz=timezone.utc)
    assert all(p.cursor.last_id is None for p in pages), "no address is kept in the checkpoint"


def test_suppressions_post_valid_addresses_in_one_call_and_bad_ones_fail_alone():
    records = [OutboundRecord(key="g1|a", payload={"email": " Ana.Silva@example.com"}),
               OutboundRecord(key="g2|ana.silva@example.org", payload={"email": "ana.silva-at-example.com"}),
               OutboundRecord(key="g3|c", payload={"email": "leo.kim@example.net"})]
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        route = mock.post("/v3/asm/suppressions/global").respond(201, json=fixture("global_suppressions_created.json"))
        outcomes = connector().write("suppressions", records)
    assert route.call_count == 1
    assert json.loads(route.calls[0].request.content) == {"recipient_emails": ["ana.silva@example.com",
                                                                               "leo.kim@example.net"]}
    assert [o.key for o in outcomes] == ["g1|a", "g2|ana.silva@example.org", "g3|c"]
    assert [o.status for o in outcomes] == [WriteStatus.created, WriteStatus.failed, WriteStatus.created]
    assert outcomes[0].external_id == "ana.silva@example.com"
    assert "field email" in outcomes[1].error and "ana.silva" not in outcomes[1].error, "personal data in an error"
    assert not outcomes[1].retryable


def test_a_rejected_suppressions_batch_fails_its_records_without_retrying():
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        route = mock.post("/v3/asm/suppressions/global").respond(400, json=fixture("error_400_suppressions.json"))
        outcomes = connector().write("suppressions", [OutboundRecord(key="g1|a", payload={"email": "a@b.example"})])
    assert route.call_count == 1
    assert outcomes[0].status is WriteStatus.failed and not outcomes[0].retryable
    assert "a@b.example" not in outcomes[0].error


def test_a_429_parks_the_budget_until_the_window_resets_then_succeeds():
    now = [1000.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    budget = RateBudget(10.0, 50, clock=lambda: now[0], sleep=sleep)
    reset = str(int(time.time()) + 2)
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        route = mock.get("/v3/asm/groups")
        route.side_effect = [
            httpx.Response(429, json=fixture("error_429.json"),
                           headers={"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}),
            httpx.Response(200, json=[], headers={"X-RateLimit-Remaining": "598", "X-RateLimit-Reset": reset}),
        ]
        connector(budget=budget).check()
    assert route.call_count == 2
    assert 0.9 <= sum(sleeps) <= 3.2, sleeps


def test_a_429_resetting_hours_later_stops_as_an_exhausted_quota():
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        route = mock.get("/v3/asm/groups").respond(
            429, json=fixture("error_429.json"),
            headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + 6 * 3600)})
        with pytest.raises(QuotaExhaustedError):
            connector().check()
    assert route.call_count == 1


def test_a_revoked_api_key_is_an_auth_error_naming_the_credentials():
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        route = mock.get("/v3/asm/groups").respond(401, json=fixture("error_401.json"))
        with pytest.raises(AuthError) as exc:
            connector().check()
    assert route.call_count == 1
    assert "credentials" in str(exc.value)


def test_event_webhook_posts_become_records_keyed_by_sg_event_id():
    events = fixture("event_webhook_post.json")
    records = event_records(events)
    assert [r.external_id for r in records] == [e["sg_event_id"] for e in events]
    assert records[1].modified_at == datetime(2026, 11, 4, 18, 5, 12, tzinfo=timezone.utc)
    assert all(r.stream == "events" and r.payload == e for r, e in zip(records, events))
    with pytest.raises(BadRequestError):
        event_records([{"email": "a@b.example", "event": "open"}])


def test_the_events_stream_is_delivered_by_webhook_not_read():
    with pytest.raises(ValueError, match="Event Webhook"):
        next(connector().read("events"))
    assert timedelta(0) < SendGridConnector.streams["unsubscribes"].overlap
