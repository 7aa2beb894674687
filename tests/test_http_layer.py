"""The shared HTTP layer: Retry-After honoured, 4xx fail fast, budgets, pagination loop guards."""

from __future__ import annotations

import httpx
import pytest
import respx

from connectors.errors import (
    AuthError,
    BadRequestError,
    PaginationLoopError,
    QuotaExhaustedError,
    RateLimitedError,
    TransientError,
    classify,
)
from connectors.http import HttpLayer, NextUrlPaging, RateBudget, RetryPolicy, TokenPaging, paginate, parse_retry_after

BASE = "https://api.vendor.test"
FAST = RetryPolicy(attempts=4, backoff_initial=0.001, backoff_max=0.002, max_retry_after=0.05)


def layer(**kw):
    return HttpLayer(system="vendor", base_url=BASE, policy=FAST, **kw)


def test_retry_after_is_honoured_then_the_call_succeeds(monkeypatch):
    waits = []
    monkeypatch.setattr("tenacity.nap.time.sleep", lambda s: waits.append(s))
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(f"{BASE}/items").mock(side_effect=[
            httpx.Response(429, headers={"Retry-After": "0.04"}), httpx.Response(200, json={"ok": True})])
        with layer() as http:
            assert http.json("GET", "/items") == {"ok": True}
            assert http.stats.retries == 1 and http.stats.total == 2
    assert route.call_count == 2 and waits == [pytest.approx(0.04)]


def test_server_errors_and_timeouts_are_retried_until_the_budget_runs_out():
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/flaky").mock(side_effect=[httpx.ReadTimeout("slow"), httpx.Response(503),
                                                    httpx.Response(200, json=[1])])
        mock.get(f"{BASE}/down").mock(return_value=httpx.Response(502))
        with layer() as http:
            assert http.json("GET", "/flaky") == [1]
            with pytest.raises(TransientError):
                http.request("GET", "/down")
            assert http.stats.calls["GET /down"] == FAST.attempts


def test_client_errors_fail_fast_with_an_actionable_message():
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(f"{BASE}/things").mock(return_value=httpx.Response(400, json={"message": "bad field"}))
        mock.get(f"{BASE}/me").mock(return_value=httpx.Response(401))
        with layer() as http:
            with pytest.raises(BadRequestError) as exc:
                http.request("POST", "/things", json={})
            assert "check the mapping" in str(exc.value) and "HTTP 400" in str(exc.value)
            with pytest.raises(AuthError, match="credentials"):
                http.request("GET", "/me")
    assert route.call_count == 1


def test_vendor_codes_override_the_status_classification():
    assert classify(403, "REQUEST_LIMIT_EXCEEDED") is QuotaExhaustedError
    assert classify(403) is AuthError
    assert classify(429, "DAILY") is QuotaExhaustedError
    assert classify(429) is RateLimitedError
    assert classify(599) is TransientError
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/q").mock(return_value=httpx.Response(403, json=[{"errorCode": "REQUEST_LIMIT_EXCEEDED"}]))
        with layer(error_code=lambda r: r.json()[0]["errorCode"]) as http:
            with pytest.raises(QuotaExhaustedError, match="re-run after the quota resets"):
                http.request("GET", "/q")
            assert http.stats.total == 1


def test_a_truncated_json_body_is_retried_with_the_call_and_then_given_up():
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(f"{BASE}/page").mock(side_effect=[httpx.Response(200, content=b'{"items": [1, 2'),
                                                           httpx.Response(200, json={"items": [1, 2]})])
        with layer() as http:
            assert http.json("GET", "/page") == {"items": [1, 2]}
            assert route.call_count == 2 and http.stats.retries == 1
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/page").mock(return_value=httpx.Response(200, content=b'{"items": [1, 2'))
        with layer() as http:
            with pytest.raises(TransientError, match="unreadable JSON"):
                http.json("GET", "/page")


def test_retry_after_parses_seconds_and_http_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_budget_waits_once_the_burst_is_spent_and_obeys_usage_headers():
    clock = {"t": 0.0}
    slept = []

    def sleep(s):
        slept.append(s)
        clock["t"] += s

    b = RateBudget(rate=10, burst=3, clock=lambda: clock["t"], sleep=sleep)
    for _ in range(3):
        b.acquire()
    assert slept == []
    b.acquire()
    assert slept == [pytest.approx(0.1)]
    b.observe(remaining=0, window_reset_s=2.0)  # the vendor says the window is spent for 2 s
    b.acquire()
    assert sum(slept) == pytest.approx(0.1 + 2.1, abs=0.01)


def test_token_paging_stops_when_the_token_runs_out():
    pages = {None: {"items": [1, 2], "next_page_token": "b"}, "b": {"items": [3], "next_page_token": ""}}
    bodies = list(paginate(lambda url, p: pages[p.get("next_page_token")], TokenPaging(), {"page_size": 2}))
    assert [i for b in bodies for i in b["items"]] == [1, 2, 3]


def test_a_repeated_cursor_is_a_pagination_loop_not_an_endless_read():
    looping = {"items": [1], "next_page_uri": "/p?page=2"}
    with pytest.raises(PaginationLoopError):
        list(paginate(lambda url, p: looping, NextUrlPaging(), {}))


def test_an_id_becomes_one_path_segment_that_cannot_reach_another_resource():
    from connectors.http import seg

    assert seg("a#b@x.io") == "a%23b%40x.io" and seg("../admin") == "..%2Fadmin" and seg("..") == "%2E%2E"
    assert seg("x?y=1") == "x%3Fy%3D1" and seg("a\r\nX-Evil: 1") == "a%0D%0AX-Evil%3A%201"


def test_a_url_httpx_refuses_is_a_bad_request_for_that_record_not_a_crash():
    from connectors.errors import BadRequestError

    # Nothing listens on port 9: had a request gone out, this would be a (retried) connection error.
    layer = HttpLayer(system="acme", base_url="http://127.0.0.1:9", policy=RetryPolicy(attempts=1))
    with pytest.raises(BadRequestError, match="not a valid URL"):
        layer.json("GET", "/v1/things/a\r\nb", endpoint="/v1/things/{id}")
