"""HubSpot connector units without a server: error translation, 207 outcomes, webhooks v3."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hubspot.crm.objects.exceptions import ApiException
from urllib3 import HTTPHeaderDict

from connectors.credentials import HubSpotCredentials
from connectors.errors import BadRequestError, QuotaExhaustedError, RateLimitedError
from connectors.hubspot import HubSpotConnector, verify_webhook, webhook_records
from omnisync.records import OutboundRecord, WriteStatus
from sandbox.hubspot import sign_v3

FIX = Path(__file__).parent / "fixtures" / "hubspot"


def fixture(name: str):
    return json.loads((FIX / name).read_text())


def offline() -> HubSpotConnector:
    # Port 9 (discard) is never served here: any network call would fail loudly.
    return HubSpotConnector(HubSpotCredentials(access_token="sandbox-token", host="http://127.0.0.1:9"))


def api_exception(doc: dict) -> ApiException:
    e = ApiException(status=doc["status"], reason="error")
    e.body, e.headers = json.dumps(doc["body"]), HTTPHeaderDict(doc["headers"])
    return e


class FakeResponse:
    def __init__(self, body: dict):
        self.data = json.dumps(body).encode()
        self.headers = HTTPHeaderDict({})

    def release_conn(self) -> None:
        return None


def test_daily_policy_429_is_quota_exhausted_resuming_at_the_next_midnight():
    err = offline()._translate(api_exception(fixture("error_429_daily.json")), "search contacts")
    assert isinstance(err, QuotaExhaustedError) and not err.retryable
    now = datetime.now(timezone.utc)
    assert err.resume_at > now and (err.resume_at.hour, err.resume_at.minute) == (0, 0)
    assert "re-run after the quota resets" in str(err)


def test_ten_secondly_429_is_rate_limited_and_carries_retry_after():
    err = offline()._translate(api_exception(fixture("error_429_ten_secondly.json")), "search contacts")
    assert isinstance(err, RateLimitedError) and err.retryable
    assert err.retry_after == 3.0 and err.code == "TEN_SECONDLY_ROLLING"


def test_validation_error_names_the_property_and_masks_personal_data():
    err = offline()._translate(api_exception(fixture("error_400_validation.json")), "upsert contacts")
    assert isinstance(err, BadRequestError) and not err.retryable
    text = str(err)
    assert "property email" in text and "INVALID_EMAIL" in text
    assert "jane.roe" not in text and "***" in text


def test_207_outcomes_are_tied_to_the_exact_records_in_input_order():
    conn = offline()
    records = [OutboundRecord(key=f"G-{i}|new", match={"omnisync_golden_id": f"G-{i}"},
                              payload={"properties": {"omnisync_golden_id": f"G-{i}"}}) for i in (1, 2, 3, 4)]
    part = [(i, r, "omnisync_golden_id", f"G-{i + 1}") for i, r in enumerate(records)]
    outcomes = {}
    conn._batch("contacts", "upsert", part, lambda: FakeResponse(fixture("batch_upsert_207.json")), outcomes,
                key=lambda res: str(res.get("properties", {}).get("omnisync_golden_id") or ""),
                ident=lambda row: row[3])
    ordered = [outcomes[i] for i in range(4)]
    assert [o.key for o in ordered] == [r.key for r in records]
    assert ordered[0].status is WriteStatus.updated and ordered[0].external_id == "1001"
    assert ordered[1].status is WriteStatus.failed and "INVALID_EMAIL" in ordered[1].error
    assert "bad@@example" not in ordered[1].error, "vendor text is masked before it reaches an error message"
    # No trace id on this result: matched by the unique property it was upserted on.
    assert ordered[2].status is WriteStatus.created and ordered[2].external_id == "2001"
    assert ordered[3].status is WriteStatus.failed and "OBJECT_ALREADY_EXISTS" in ordered[3].error
    assert "merge" in ordered[3].error and not ordered[3].retryable


def test_a_record_without_a_unique_property_fails_without_a_call():
    conn = offline()
    out = conn.write("contacts", [OutboundRecord(key="G-9|new", payload={"properties": {"firstname": "A"}})])
    assert out[0].status is WriteStatus.failed and "unique property" in out[0].error
    assert conn.api_calls == 0


def test_usage_headers_reporting_no_daily_calls_left_stop_before_calling():
    conn = offline()
    conn._observe(HTTPHeaderDict({"X-HubSpot-RateLimit-Daily-Remaining": "0"}))
    with pytest.raises(QuotaExhaustedError) as exc:
        conn.check()
    assert exc.value.resume_at is not None
    assert conn.api_calls == 0


def test_usage_headers_lower_the_shared_budget():
    conn = offline()
    conn._observe(HTTPHeaderDict({"X-HubSpot-RateLimit-Remaining": "3",
                                  "X-HubSpot-RateLimit-Interval-Milliseconds": "10000"}))
    assert conn.budget._tokens <= 3


def test_webhook_v3_signature_verifies_and_rejects_tampering_and_replays():
    body = json.dumps(fixture("webhook_events.json")).encode()
    uri = "https://omnisync.example/webhooks/hubspot"
    ts = 1_795_000_010_000
    sig = sign_v3("sandbox-client-secret", "POST", uri, body, ts)
    ok = dict(secret="sandbox-client-secret", method="POST", uri=uri, signature=sig, timestamp=str(ts))
    assert verify_webhook(body=body, now_ms=ts + 1000, **ok)
    assert not verify_webhook(body=body.replace(b"Amara", b"Amaro"), now_ms=ts + 1000, **ok)
    assert not verify_webhook(body=body, now_ms=ts + 301_000, **ok), "older than five minutes is a replay"
    assert not verify_webhook(body=body, now_ms=ts, **{**ok, "secret": "other"})
    assert not verify_webhook(body=body, now_ms=ts, **{**ok, "signature": None})


def test_webhook_events_are_deduplicated_on_event_id_and_ordered_by_occurrence():
    recs = webhook_records(fixture("webhook_events.json"))
    assert [r.external_id for r in recs] == ["1", "2", "3"]
    assert all(r.stream == "webhook_events" for r in recs)
    assert recs[1].payload["mergedObjectIds"] == [1002]
