"""The SendGrid sandbox: seeded story, query language, enforced rate limit, signed webhook posts."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest
import respx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from sandbox.sendgrid import API_KEY, RATE_LIMIT, SendGridSandbox

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def sb() -> SendGridSandbox:
    return SendGridSandbox(size=120, seed=5)


def verify(public_key_b64: str, body: bytes, headers: dict[str, str]) -> None:
    key = serialization.load_der_public_key(base64.b64decode(public_key_b64))
    payload = headers["X-Twilio-Email-Event-Webhook-Timestamp"].encode() + body
    key.verify(base64.b64decode(headers["X-Twilio-Email-Event-Webhook-Signature"]), payload, ec.ECDSA(hashes.SHA256()))


def test_the_heroine_refund_email_is_delivered_then_opened_on_november_4(sb):
    msg = sb.messages[sb.summary()["heroine_messages"][0]]
    assert (msg["subject"], msg["to_email"], msg["status"], msg["opens_count"]) == (
        "Your refund is on its way", "amara.okafor@example.com", "delivered", 1)
    evs = [e["event"] for e in sb.events if e["sg_message_id"] == msg["msg_id"]]
    assert evs == ["delivered", "open"] and msg["last_event_time"] == "2026-11-04T18:05:12Z"


def test_seeding_is_deterministic_and_the_signing_key_follows_the_seed():
    a, b, c = SendGridSandbox(size=60, seed=9), SendGridSandbox(size=60, seed=9), SendGridSandbox(size=60, seed=10)
    assert a.events == b.events and a.public_key() == b.public_key()
    assert a.public_key() != c.public_key()
    assert a.credentials()["webhook_public_key"] == a.public_key()


def test_activity_query_language_filters_and_rejects_unknown_fields(sb):
    client = TestClient(sb.asgi())
    q = 'to_email="amara.okafor@example.com" AND last_event_time BETWEEN TIMESTAMP "2026-11-04T00:00:00Z" AND TIMESTAMP "2026-11-05T00:00:00Z"'
    got = client.get("/v3/messages", params={"query": q, "limit": 10}, headers=AUTH).json()["messages"]
    assert [m["subject"] for m in got] == ["Your refund is on its way"]
    both = client.get("/v3/messages", params={"query": 'status IN ("not_delivered") OR opens_count>0', "limit": 1000},
                      headers=AUTH).json()["messages"]
    assert both and all(m["status"] == "not_delivered" or m["opens_count"] > 0 for m in both)
    times = [m["last_event_time"] for m in both]
    assert times == sorted(times, reverse=True), "Email Activity answers newest first"
    bad = client.get("/v3/messages", params={"query": 'bad_field="x"', "limit": 10}, headers=AUTH)
    assert bad.status_code == 400 and "not a known field" in bad.json()["errors"][0]["message"]
    assert client.get("/v3/messages", params={"query": q, "limit": 1001}, headers=AUTH).status_code == 400


def test_the_rate_limit_is_enforced_with_sendgrid_headers():
    sb = SendGridSandbox(size=10, seed=1)
    client = TestClient(sb.asgi())
    ok = client.get("/v3/asm/groups", headers=AUTH)
    assert int(ok.headers["X-RateLimit-Remaining"]) >= RATE_LIMIT - 2
    sb._window = (time.time(), RATE_LIMIT)
    limited = client.get("/v3/asm/groups", headers=AUTH)
    assert limited.status_code == 429 and limited.headers["X-RateLimit-Remaining"] == "0"
    assert int(limited.headers["X-RateLimit-Reset"]) >= int(time.time())
    assert client.get("/v3/asm/groups", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_webhook_posts_are_signed_batches_of_subscribed_events_marked_done_only_on_2xx():
    sb = SendGridSandbox(size=80, seed=2)
    posts: list[tuple[bytes, dict[str, str]]] = []
    answers = iter([500] + [200] * 100)

    def receive(request: httpx.Request) -> httpx.Response:
        posts.append((request.content, dict(request.headers)))
        return httpx.Response(next(answers))

    with respx.mock(assert_all_called=True) as mock:
        mock.post("https://receiver.test/hooks/sendgrid").mock(side_effect=receive)
        first = sb.deliver("https://receiver.test/hooks/sendgrid", batch_size=50)
        assert not first["complete"] and sb.delivered_upto == 0
        second = sb.deliver("https://receiver.test/hooks/sendgrid", batch_size=50)
    assert second["complete"] and sb.delivered_upto == len(sb.events)
    delivered = [e for body, _ in posts[1:] for e in json.loads(body)]
    assert len(delivered) == second["posted"] == len([e for e in sb.events if e["event"] != "processed"])
    assert all(len(json.loads(body)) <= 50 for body, _ in posts)
    for body, headers in posts:
        headers = {k.title(): v for k, v in headers.items()}
        verify(sb.public_key(), body, {"X-Twilio-Email-Event-Webhook-Timestamp": headers["X-Twilio-Email-Event-Webhook-Timestamp"],
                                       "X-Twilio-Email-Event-Webhook-Signature": headers["X-Twilio-Email-Event-Webhook-Signature"]})
    body, headers = sb.signed_post(sb.events[:2], timestamp=1793815512)
    with pytest.raises(InvalidSignature):
        verify(sb.public_key(), body.replace(b"open", b"click") + b" ", headers)
