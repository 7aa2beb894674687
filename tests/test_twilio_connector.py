"""Twilio connector against recorded vendor responses (respx): ascending windows over a newest-first
API, safe cursors, limits, and sends that are never duplicated when an answer is lost."""

from __future__ import annotations

import base64
import copy
import email.utils
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import httpx
import pytest
import respx

from connectors.credentials import TwilioCredentials
from connectors.errors import AuthError, QuotaExhaustedError
from connectors.http import RetryPolicy
from connectors.twilio import TwilioConnector, message_record
from omnisync.records import OutboundRecord, WriteStatus

FIX = Path(__file__).parent / "fixtures" / "twilio"
BASE = "https://twilio.test"
SID = "AC226febcdf22899cb7c2a798b2eb3ed68"
LIST = f"/2010-04-01/Accounts/{SID}/Messages.json"
UNTIL = datetime(2026, 11, 21, tzinfo=timezone.utc)
FAST = RetryPolicy(backoff_initial=0.001, backoff_max=0.002)
CARE = "+18885550100"


def fixture(name: str):
    return json.loads((FIX / name).read_text())


def connector(**kw) -> TwilioConnector:
    return TwilioConnector(TwilioCredentials(base_url=BASE, account_sid=SID, auth_token="test-token"), policy=FAST, **kw)


def rfc(dt: datetime) -> str:
    return email.utils.format_datetime(dt)


def messages(times: list[datetime]) -> list[dict]:
    template = fixture("messages_page1.json")["messages"][0]
    out = []
    for i, t in enumerate(times):
        m = copy.deepcopy(template)
        m.update(sid=f"SM{i:032x}", date_created=rfc(t - timedelta(seconds=1)), date_sent=rfc(t),
                 date_updated=rfc(t + timedelta(seconds=2)))
        out.append(m)
    return out


def _iso(v: str) -> datetime:
    return datetime.fromisoformat(v.replace("Z", "+00:00"))


def messages_api(rows: list[dict], queries: list[dict]):
    """Answer Messages.json like Twilio: DateSent bounds, newest first, next_page_uri with PageToken."""
    def respond(request: httpx.Request) -> httpx.Response:
        p = {k: v[0] for k, v in parse_qs(request.url.query.decode(), keep_blank_values=True).items()}
        queries.append(p)
        size = int(p.get("PageSize", 50))
        hits = [m for m in rows
                if ("DateSent>" not in p or email.utils.parsedate_to_datetime(m["date_sent"]) >= _iso(p["DateSent>"]))
                and ("DateSent<" not in p or email.utils.parsedate_to_datetime(m["date_sent"]) < _iso(p["DateSent<"]))]
        hits.sort(key=lambda m: (email.utils.parsedate_to_datetime(m["date_sent"]), m["sid"]), reverse=True)
        if p.get("PageToken"):
            i = next(i for i, m in enumerate(hits) if m["sid"] == p["PageToken"][2:])
            hits = hits[i + 1:]
        page = hits[:size]
        keep = [(k, v) for k, v in p.items() if k not in ("Page", "PageToken")]
        nxt = f"{LIST}?{urlencode(keep + [('Page', '1'), ('PageToken', 'PA' + page[-1]['sid'])])}" \
            if len(hits) > size else None
        return httpx.Response(200, json={"messages": page, "next_page_uri": nxt, "page_size": size, "page": 0})
    return respond


def test_history_is_read_in_ascending_windows_and_each_cursor_covers_everything_before_it():
    start = UNTIL - timedelta(days=30)
    rows = messages([start + timedelta(hours=7 * i, minutes=i) for i in range(90)])
    queries: list[dict] = []
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get(LIST).mock(side_effect=messages_api(rows, queries))
        pages = list(connector(page_size=10, history=timedelta(days=40)).read("messages", until=UNTIL))
    got = [r.external_id for p in pages for r in p.records]
    assert sorted(got) == sorted(m["sid"] for m in rows) and len(got) == len(set(got))
    seen: set[str] = set()
    for p in pages:
        seen |= {r.external_id for r in p.records}
        mark = p.cursor.modified_at
        before = {m["sid"] for m in rows if email.utils.parsedate_to_datetime(m["date_sent"]) < mark}
        assert before <= seen, "a stored cursor must never skip a message sent before it"
    assert all("DateSent>" in q for q in queries)


def test_a_window_whose_first_page_is_full_is_narrowed_instead_of_paged():
    rows = messages([UNTIL - timedelta(hours=i) for i in range(1, 30)])
    queries: list[dict] = []
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get(LIST).mock(side_effect=messages_api(rows, queries))
        pages = list(connector(page_size=10, history=timedelta(days=3)).read("messages", until=UNTIL))
    assert sum(len(p.records) for p in pages) == len(rows)
    narrowed = [(a, b) for a, b in zip(queries, queries[1:]) if a["DateSent>"] == b["DateSent>"]]
    assert narrowed and all(_iso(b["DateSent<"]) < _iso(a["DateSent<"]) for a, b in narrowed)
    assert not any("PageToken" in q for q in queries)


def test_a_burst_larger_than_a_page_within_a_minute_is_paged_with_the_cursor_held():
    burst = UNTIL - timedelta(hours=2)
    rows = messages([burst + timedelta(seconds=i) for i in range(25)])
    queries: list[dict] = []
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get(LIST).mock(side_effect=messages_api(rows, queries))
        pages = list(connector(page_size=10, history=timedelta(hours=3)).read("messages", until=UNTIL))
    assert sorted(r.external_id for p in pages for r in p.records) == sorted(m["sid"] for m in rows)
    paged = [q for q in queries if "PageToken" in q]
    assert paged and all("DateSent>" in q and "DateSent<" in q for q in paged), "next_page_uri keeps the filters"
    burst_pages = [p for p in pages if len(p.records) and p is not pages[-1]]
    assert burst_pages and all(p.cursor.modified_at is None or p.cursor.modified_at <= burst for p in burst_pages)


def test_records_carry_the_rfc2822_update_time_and_the_resource_as_received():
    m = fixture("messages_page1.json")["messages"][0]
    rec = message_record(m)
    assert rec.modified_at == email.utils.parsedate_to_datetime(m["date_updated"])
    assert rec.payload == m and rec.payload["num_segments"] == "1"


def test_20429_waits_as_asked_and_a_throttle_lasting_hours_stops_the_sync():
    rows = messages([UNTIL - timedelta(hours=1)])
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get(LIST).mock(side_effect=[httpx.Response(429, json=fixture("error_429.json"), headers={"Retry-After": "0"}),
                                         *[messages_api(rows, [])] * 20])
        conn = connector(history=timedelta(days=1))
        assert sum(len(p.records) for p in conn.read("messages", until=UNTIL)) == 1
    assert conn.http.stats.retries == 1
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        route = mock.get(LIST).respond(429, json=fixture("error_429.json"), headers={"Retry-After": "7200"})
        with pytest.raises(QuotaExhaustedError):
            list(connector().read("messages", until=UNTIL))
        assert route.call_count == 1


def test_wrong_auth_token_is_an_auth_error():
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get(LIST).respond(401, json=fixture("error_401.json"))
        with pytest.raises(AuthError) as exc:
            connector().check()
    assert "credentials" in str(exc.value) and "test-token" not in str(exc.value)


# --- sending --------------------------------------------------------------------------------------

def followup(key: str = "G-1|followup", **payload) -> OutboundRecord:
    return OutboundRecord(key=key, payload={"to": "+14155559876", "body": "Your refund was approved.", **payload})


def test_a_send_is_form_encoded_with_basic_auth_from_the_default_sender():
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        send = mock.post(LIST).respond(201, json=fixture("message_created.json"))
        (outcome,) = connector(sender=CARE).write("messages", [followup()])
    req = send.calls[0].request
    assert req.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert parse_qs(req.content.decode()) == {"To": ["+14155559876"], "Body": ["Your refund was approved."], "From": [CARE]}
    assert req.headers["authorization"] == "Basic " + base64.b64encode(f"{SID}:test-token".encode()).decode()
    assert (outcome.status, outcome.external_id) == (WriteStatus.created, fixture("message_created.json")["sid"])


def test_the_same_key_is_sent_once_per_connector():
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        send = mock.post(LIST).respond(201, json=fixture("message_created.json"))
        conn = connector(sender=CARE)
        first = conn.write("messages", [followup(), followup()])
        again = conn.write("messages", [followup()])
    assert send.call_count == 1
    assert [o.status for o in first] == [WriteStatus.created, WriteStatus.created]
    assert again[0].status is WriteStatus.unchanged and again[0].external_id == first[0].external_id


def test_an_unsubscribed_recipient_fails_fast_saying_no_sms_of_any_kind_may_be_sent():
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        send = mock.post(LIST).respond(400, json=fixture("error_400_unsubscribed.json"))
        (outcome,) = connector(sender=CARE).write("messages", [followup()])
    assert send.call_count == 1 and not outcome.ok and not outcome.retryable
    assert "STOP" in outcome.error and "21610" in outcome.error and "+14155559876" not in outcome.error


def test_a_lost_answer_is_settled_by_finding_the_message_and_never_sends_twice():
    created = fixture("message_created.json")
    created.update(to="+14155559876", body="Your refund was approved.", date_created=rfc(datetime.now(timezone.utc)))
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        send = mock.post(LIST).respond(500, json={"code": 20500, "message": "An internal server error has occurred"})
        look = mock.get(LIST).respond(json={"messages": [created], "next_page_uri": None})
        (outcome,) = connector(sender=CARE).write("messages", [followup()])
    assert send.call_count == 1 and (outcome.status, outcome.external_id) == (WriteStatus.created, created["sid"])
    assert look.calls[0].request.url.params["To"] == "+14155559876"
    assert look.calls[0].request.url.params["From"] == CARE


def test_a_lost_answer_with_no_such_message_is_sent_again():
    old = fixture("message_created.json")
    old.update(to="+14155559876", body="Your refund was approved.", date_created=rfc(UNTIL - timedelta(days=30)))
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        send = mock.post(LIST).mock(side_effect=[httpx.Response(503, json={"code": 20503}),
                                                 httpx.Response(201, json=fixture("message_created.json"))])
        mock.get(LIST).respond(json={"messages": [old], "next_page_uri": None})
        (outcome,) = connector(sender=CARE).write("messages", [followup()])
    assert send.call_count == 2 and outcome.status is WriteStatus.created


def test_when_even_the_lookup_fails_the_outcome_is_unknown_and_nothing_is_resent():
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        send = mock.post(LIST).mock(side_effect=httpx.ReadTimeout("no answer"))
        mock.get(LIST).respond(503, json={"code": 20503, "message": "Service Unavailable"})
        (outcome,) = connector(sender=CARE).write("messages", [followup()])
    assert send.call_count == 1
    assert not outcome.ok and not outcome.retryable and "outcome unknown" in outcome.error


def test_a_connection_that_never_reached_twilio_is_simply_retried():
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        send = mock.post(LIST).mock(side_effect=[httpx.ConnectError("refused"),
                                                 httpx.Response(201, json=fixture("message_created.json"))])
        (outcome,) = connector(sender=CARE).write("messages", [followup()])
    assert send.call_count == 2 and outcome.status is WriteStatus.created


def test_payload_fields_twilio_does_not_know_fail_without_a_call():
    with respx.mock(base_url=BASE, assert_all_called=True):
        (outcome,) = connector(sender=CARE).write("messages", [followup(subject="Hello")])
    assert not outcome.ok and "subject" in outcome.error
