"""Zoom connector against recorded vendor responses (respx): windows, cursors, hand-off details,
limits, and address-book upserts that never create a contact twice."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import respx

from connectors.credentials import ZoomCredentials
from connectors.errors import AuthError, QuotaExhaustedError
from connectors.http import RateBudget, RetryPolicy
from connectors.zoom import ZoomConnector, _wants_detail, modified_at
from omnisync.records import Cursor, OutboundRecord, WriteStatus

FIX = Path(__file__).parent / "fixtures" / "zoom"
BASE = "https://zoom.test"
API = BASE + "/v2/contact_center"
UNTIL = datetime(2026, 11, 21, tzinfo=timezone.utc)
FAST = RetryPolicy(backoff_initial=0.001, backoff_max=0.002)
BOOK = "rc3LYK47ukZseioaiY658Q"  # "Customers" in address_books.json
GOLDEN_FIELD_ID = "0f0c5f0e-1111-4222-8333-944445555666"


def fixture(name: str):
    return json.loads((FIX / name).read_text())


def connector(**kw) -> ZoomConnector:
    kw.setdefault("budget", RateBudget(1000.0, 1000))
    return ZoomConnector(ZoomCredentials(base_url=BASE, access_token="test-token"), policy=FAST, **kw)


def _t(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def engagements_api(rows: list[dict], queries: list[dict], *, reverse: bool = False):
    """Answer the list endpoint like Zoom: from/to inclusive, keyset tokens, the list shape."""
    tokens: dict[str, int] = {}

    def respond(request: httpx.Request) -> httpx.Response:
        p = dict(request.url.params)
        queries.append(p)
        lo, hi = _t(p["from"]), _t(p["to"])
        assert hi - lo <= timedelta(days=31), "a query may span at most one month"
        hits = sorted((e for e in rows if lo <= _t(e["start_time"]) <= hi),
                      key=lambda e: (e["start_time"], e["engagement_id"]), reverse=reverse)
        size = int(p["page_size"])
        start = tokens[p["next_page_token"]] if p.get("next_page_token") else 0
        page = hits[start:start + size]
        token = ""
        if start + size < len(hits):
            token = f"tok{len(tokens)}"
            tokens[token] = start + size
        listed = [{k: v for k, v in e.items() if k not in ("events", "queue_wait_type", "voice_mail")} for e in page]
        return httpx.Response(200, json={"from": p["from"], "to": p["to"], "page_size": size, "timezone": "UTC",
                                         "total_records": len(hits), "next_page_token": token, "engagements": listed})
    return respond


def seeded() -> list[dict]:
    return fixture("engagements_page1.json")["engagements"] + fixture("engagements_page2.json")["engagements"]


def list_and_details(mock, rows: list[dict], queries: list[dict], **kw) -> None:
    mock.get("/v2/contact_center/engagements").mock(side_effect=engagements_api(rows, queries, **kw))
    by_id = {e["engagement_id"]: e for e in rows}
    if any(_wants_detail(e) for e in rows):
        mock.get(url__regex=r"/engagements/(?P<eid>[^/]+)$").mock(
            side_effect=lambda request, eid: httpx.Response(200, json=by_id[eid]))


def test_reads_month_windows_and_advances_the_cursor_per_page_in_start_order():
    rows, queries = seeded(), []
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        list_and_details(mock, rows, queries)
        pages = list(connector(page_size=4, history=timedelta(days=90)).read("engagements", until=UNTIL))
    got = [r.external_id for p in pages for r in p.records]
    assert sorted(got) == sorted(e["engagement_id"] for e in rows)
    assert len(pages) >= 3
    marks = [(p.cursor.modified_at, p.cursor.last_id) for p in pages]
    assert marks == sorted(marks), "each page's cursor moves forward"
    last = max(rows, key=lambda e: (e["start_time"], e["engagement_id"]))
    assert marks[-1] == (_t(last["start_time"]), last["engagement_id"])
    assert all(q["from"].endswith("Z") and "T" in q["from"] for q in queries)
    assert len({q["from"] for q in queries}) == 4, "90 days of history in windows of at most 30 days"


def test_modified_at_is_the_latest_of_start_end_and_note_edits():
    e = fixture("engagement_handoff.json")
    assert modified_at(e) == max(_t(e["end_time"]), _t(e["notes"][0]["last_modified_time"]))
    live = {**e, "end_time": None, "notes": []}
    assert modified_at(live) == _t(e["start_time"])


def test_only_bot_and_transferred_chats_are_fetched_in_full():
    handoff, bot, voice = (fixture(n) for n in ("engagement_handoff.json", "engagement_bot_contained.json",
                                                "engagement_voice.json"))
    rows, queries = [handoff, bot, voice, fixture("engagement_sms.json")], []
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/v2/contact_center/engagements").mock(side_effect=engagements_api(rows, queries))
        d1 = mock.get(f"/v2/contact_center/engagements/{handoff['engagement_id']}").respond(json=handoff)
        d2 = mock.get(f"/v2/contact_center/engagements/{bot['engagement_id']}").respond(json=bot)
        conn = connector(history=timedelta(days=150))
        records = {r.external_id: r for p in conn.read("engagements", until=UNTIL) for r in p.records}
    assert d1.call_count == d2.call_count == 1
    assert "events" in records[handoff["engagement_id"]].payload
    assert "events" not in records[voice["engagement_id"]].payload


def test_an_engagement_in_progress_holds_the_cursor_at_its_start():
    rows = seeded()
    live = min(rows, key=lambda e: e["start_time"])
    live.update(end_time=None, notes=[], dispositions=[])
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        list_and_details(mock, rows, [])
        pages = list(connector(page_size=4, history=timedelta(days=90)).read("engagements", until=UNTIL))
    assert all(p.cursor.modified_at <= _t(live["start_time"]) for p in pages)
    assert pages[-1].cursor.modified_at == _t(live["start_time"])


def test_when_the_vendor_answers_out_of_order_the_cursor_waits_for_the_window_to_complete():
    rows = seeded()
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        list_and_details(mock, rows, [], reverse=True)
        pages = list(connector(page_size=4, history=timedelta(days=20)).read(
            "engagements", until=datetime(2026, 11, 1, tzinfo=timezone.utc)))
    window_end = datetime(2026, 11, 1, tzinfo=timezone.utc)
    assert len(pages) >= 2
    assert all(p.cursor.modified_at is None for p in pages[:-1]), "no mark inside a window read newest first"
    assert pages[-1].cursor.modified_at == window_end


def test_resuming_restarts_the_overlap_before_the_stored_mark():
    rows, queries = seeded(), []
    mark = datetime(2026, 10, 20, 12, 0, tzinfo=timezone.utc)
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        list_and_details(mock, rows, queries)
        records = [r for p in connector().read("engagements", Cursor(modified_at=mark, last_id="x"), until=UNTIL)
                   for r in p.records]
    assert queries[0]["from"] == "2026-10-20T11:50:00Z"
    assert records and all(_t(r.payload["start_time"]) >= mark - timedelta(minutes=10) for r in records)


def test_rate_limits_are_waited_out_and_a_spent_daily_limit_stops_with_a_resume_time():
    page = fixture("engagements_page2.json")
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/v2/contact_center/engagements").mock(side_effect=[
            httpx.Response(429, json=fixture("error_429_qps.json"), headers={"Retry-After": "0", "X-RateLimit-Type": "QPS"}),
            httpx.Response(200, json=page)])
        by_id = {e["engagement_id"]: e for e in page["engagements"]}
        mock.get(url__regex=r"/engagements/(?P<eid>[^/]+)$").mock(
            side_effect=lambda request, eid: httpx.Response(200, json=by_id[eid]))
        conn = connector(history=timedelta(days=10))
        records = [r for p in conn.read("engagements", until=datetime(2026, 10, 31, tzinfo=timezone.utc))
                   for r in p.records]
    assert len(records) == len(page["engagements"]) and conn.http.stats.retries == 1
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        daily = mock.get("/v2/contact_center/engagements").respond(
            429, json=fixture("error_429_daily.json"),
            headers={"X-RateLimit-Type": "Daily-limit", "Retry-After": "2026-11-22T00:00:00Z"})
        with pytest.raises(QuotaExhaustedError) as exc:
            list(connector().read("engagements", until=UNTIL))
    assert exc.value.resume_at is not None and exc.value.resume_at.hour == 0
    assert daily.call_count == 1, "a spent daily limit is not retried"


def test_bad_token_is_an_auth_error_that_names_the_credentials():
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/v2/contact_center/address_books").respond(401, json=fixture("error_401.json"))
        with pytest.raises(AuthError) as exc:
            connector().check()
    assert "credentials" in str(exc.value) and "test-token" not in str(exc.value)


def test_an_interrupted_contact_sweep_resumes_from_its_page_token_and_restarts_when_it_expired():
    contacts = fixture("contacts_page.json")
    fresh = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=3)
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/v2/contact_center/address_books").respond(json=fixture("address_books.json"))
        route = mock.get(f"/v2/contact_center/address_books/{BOOK}/contacts").mock(side_effect=[
            httpx.Response(200, json=contacts),
            httpx.Response(400, json={"code": 300, "message": "The next page token is invalid or expired."}),
            httpx.Response(200, json=contacts)])
        conn = connector()
        pages = list(conn.read("address_book_contacts", Cursor(modified_at=fresh, token="tokA")))
        assert route.calls[0].request.url.params["next_page_token"] == "tokA"
        assert all(r.modified_at == fresh for p in pages for r in p.records), "one sweep, one stamp"
        again = list(conn.read("address_book_contacts", Cursor(modified_at=fresh, token="tokB")))
    assert route.calls[1].request.url.params["next_page_token"] == "tokB"
    assert "next_page_token" not in route.calls[2].request.url.params
    assert len(again[0].records) == len(contacts["contacts"]) and again[-1].cursor.token is None


# --- writes ---------------------------------------------------------------------------------------

def creates(n: int) -> list[OutboundRecord]:
    return [OutboundRecord(key=f"g{i}|new", match={"omnisync_golden_id": f"g{i}"},
                           payload={"first_name": "Ann", "last_name": f"Lee{i}", "phone_numbers": f"+1415555{1000 + i}",
                                    "emails": f"ann{i}@example.com", "custom_fields": {"omnisync_golden_id": f"g{i}"}})
            for i in range(n)]


def _address_book_routes(mock, *, with_field: bool = True):
    mock.get("/v2/contact_center/address_books").respond(json=fixture("address_books.json"))
    fields = fixture("custom_fields.json")
    if with_field:
        fields["custom_fields"].append({"custom_field_id": GOLDEN_FIELD_ID, "custom_field_name": "omnisync_golden_id",
                                        "data_type": "string"})
    mock.get("/v2/contact_center/address_books/custom_fields").respond(json=fields)


def test_creates_look_up_ten_golden_ids_per_call_and_create_the_missing_ones():
    recs = creates(12)
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        _address_book_routes(mock)
        lookup = mock.get(f"/v2/contact_center/address_books/{BOOK}/contacts").respond(
            json={"next_page_token": "", "page_size": 300, "total_records": 0, "contacts": []})
        made = iter(range(100))
        create = mock.post(f"/v2/contact_center/address_books/{BOOK}/contacts").mock(
            side_effect=lambda req: httpx.Response(201, json={**json.loads(req.content), "contact_id": f"c{next(made)}"}))
        outcomes = connector().write("address_book_contacts", recs)
    assert lookup.call_count == 2, "12 golden ids need two lookups of at most ten numbers"
    assert len(lookup.calls[0].request.url.params["phone_numbers"].split(",")) == 10
    assert [o.status for o in outcomes] == [WriteStatus.created] * 12
    body = json.loads(create.calls[0].request.content)
    assert body["display_name"] == "Ann Lee0" and body["phone_numbers"] == ["+14155551000"]
    assert body["custom_fields"] == [{"custom_field_id": GOLDEN_FIELD_ID, "custom_field_value": "g0"}]


def test_a_contact_already_carrying_the_golden_id_is_patched_not_created_again():
    rec = creates(1)[0]
    candidate = {"contact_id": "cX", "display_name": "Ann Lee0", "phone_numbers": ["+14155551000", "+14155550000"],
                 "emails": [], "custom_fields_url": f"{API}/address_books/contacts/cX/custom_fields"}
    stranger = {"contact_id": "cY", "display_name": "Household phone", "phone_numbers": ["+14155551000"]}
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        _address_book_routes(mock)
        mock.get(f"/v2/contact_center/address_books/{BOOK}/contacts").respond(
            json={"next_page_token": "", "contacts": [stranger, candidate]})
        mock.get("/v2/contact_center/address_books/contacts/cX/custom_fields").respond(json={"custom_fields": [
            {"custom_field_id": GOLDEN_FIELD_ID, "custom_field_name": "omnisync_golden_id", "data_type": "string",
             "custom_field_value": "g0"}]})
        mock.get(f"/v2/contact_center/address_books/{BOOK}/contacts/cX").respond(json=candidate)
        patch = mock.patch(f"/v2/contact_center/address_books/{BOOK}/contacts/cX").respond(204)
        # No POST route: a create would fail the test as an unmocked request.
        (outcome,) = connector().write("address_book_contacts", [rec])
    assert (outcome.status, outcome.external_id) == (WriteStatus.updated, "cX")
    sent = json.loads(patch.calls[0].request.content)
    assert sent["phone_numbers"] == ["+14155551000", "+14155550000"], "agents' numbers are kept, the new one first"


def test_the_golden_id_field_is_created_for_screen_pops_when_missing():
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        _address_book_routes(mock, with_field=False)
        make = mock.post("/v2/contact_center/address_books/custom_fields").respond(
            201, json={"custom_field_id": GOLDEN_FIELD_ID, "custom_field_name": "omnisync_golden_id",
                       "data_type": "string"})
        mock.get(f"/v2/contact_center/address_books/{BOOK}/contacts").respond(json={"contacts": []})
        mock.post(f"/v2/contact_center/address_books/{BOOK}/contacts").respond(201, json={"contact_id": "c1"})
        (outcome,) = connector().write("address_book_contacts", creates(1))
    body = json.loads(make.calls[0].request.content)
    assert outcome.ok and body["address_book_ids"] == [BOOK]
    assert body["use_as_external_url_parameter"] and body["show_in_inbound_notification"]


def test_a_lost_create_answer_is_settled_by_lookup_and_never_sent_twice():
    rec = creates(1)[0]
    created = {"contact_id": "cNew", "display_name": "Ann Lee0", "phone_numbers": ["+14155551000"],
               "custom_fields_url": f"{API}/address_books/contacts/cNew/custom_fields"}
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        _address_book_routes(mock)
        mock.get(f"/v2/contact_center/address_books/{BOOK}/contacts").mock(side_effect=[
            httpx.Response(200, json={"contacts": []}), httpx.Response(200, json={"contacts": [created]})])
        mock.get("/v2/contact_center/address_books/contacts/cNew/custom_fields").respond(json={"custom_fields": [
            {"custom_field_id": GOLDEN_FIELD_ID, "custom_field_name": "omnisync_golden_id", "data_type": "string",
             "custom_field_value": "g0"}]})
        create = mock.post(f"/v2/contact_center/address_books/{BOOK}/contacts").respond(
            503, json={"code": 503, "message": "Service temporarily unavailable."})
        (outcome,) = connector().write("address_book_contacts", [rec])
    assert (outcome.status, outcome.external_id) == (WriteStatus.created, "cNew")
    assert create.call_count == 1


def test_a_rejected_contact_fails_fast_naming_the_field_without_personal_data():
    rec = OutboundRecord(key="g9|cZ", external_id="cZ", payload={"display_name": ""})
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/v2/contact_center/address_books").respond(json=fixture("address_books.json"))
        patch = mock.patch(f"/v2/contact_center/address_books/{BOOK}/contacts/cZ").respond(
            400, json=fixture("error_400_display_name.json"))
        (outcome,) = connector().write("address_book_contacts", [rec])
    assert patch.call_count == 1 and not outcome.ok and not outcome.retryable
    assert "display_name" in outcome.error and "2104" in outcome.error


def test_unknown_payload_fields_fail_before_any_write():
    rec = OutboundRecord(key="g1|c1", external_id="c1", payload={"favourite_colour": "teal"})
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/v2/contact_center/address_books").respond(json=fixture("address_books.json"))
        (outcome,) = connector().write("address_book_contacts", [rec])
    assert not outcome.ok and "favourite_colour" in outcome.error and "mappings/zoom" in outcome.error


def test_engagement_payload_is_the_vendor_json_as_received():
    handoff = fixture("engagement_handoff.json")
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/v2/contact_center/engagements").mock(side_effect=engagements_api([copy.deepcopy(handoff)], []))
        mock.get(f"/v2/contact_center/engagements/{handoff['engagement_id']}").respond(json=handoff)
        (record,) = [r for p in connector(history=timedelta(days=30)).read("engagements", until=UNTIL)
                     for r in p.records]
    assert record.payload == handoff and record.system == "zoom" and record.stream == "engagements"
