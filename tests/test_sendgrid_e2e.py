"""SendGrid end to end against the running sandbox: history, opt-outs in and out, signed webhooks."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from connectors.credentials import SendGridCredentials
from connectors.sendgrid import SendGridConnector, event_records
from mappings.engine import load_mapping, mappings_for
from omnisync.records import OutboundRecord
from sandbox.framework import SandboxCluster
from sandbox.sendgrid import SendGridSandbox


@pytest.fixture
def sendgrid(tmp_path):
    sb = SendGridSandbox(size=200, seed=4)
    with SandboxCluster([sb], workdir=tmp_path) as cluster:
        info = cluster.info()["sendgrid"]
        creds = SendGridCredentials(base_url=info["base_url"], **info["credentials"])
        with SendGridConnector(creds) as conn:
            yield sb, info, conn


@pytest.fixture
def receiver():
    """A stand-in subscriber that keeps every post (the real receiver is api/webhooks.py)."""
    posts: list[tuple[bytes, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            posts.append((self.rfile.read(int(self.headers["Content-Length"])), dict(self.headers)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hooks/sendgrid", posts
    server.shutdown()


def test_email_history_maps_to_one_interaction_per_message_including_the_heroine_refund(sendgrid):
    sb, _, conn = sendgrid
    records = [r for p in conn.read("messages") for r in p.records]
    assert len({r.external_id for r in records}) == len(sb.messages)
    mapping = load_mapping("sendgrid", "messages")
    mapped = [mapping.inbound(r) for r in records]
    heroine = [i for i in mapped if i.customer_email == "amara.okafor@example.com"]
    assert [i.subject for i in heroine] == ["Your refund is on its way"]
    assert conn.api_calls < 40, "windowed reads should need a few dozen calls, not one per message"


def test_an_unsubscribe_in_sendgrid_reaches_omnisync_by_api_and_by_signed_webhook(sendgrid, receiver):
    sb, info, conn = sendgrid
    url, posts = receiver
    pages = list(conn.read("unsubscribes"))
    cursor = pages[-1].cursor
    before = {r.external_id for p in pages for r in p.records}
    assert "amara.okafor@example.com" not in before
    httpx.post(f"{info['base_url']}/_sandbox/event", json={"email": "amara.okafor@example.com", "event": "unsubscribe"})

    new = [r for p in conn.read("unsubscribes", cursor) for r in p.records]
    assert "amara.okafor@example.com" in {r.external_id for r in new}
    assert len(new) < len(before) + 1, "the incremental read re-reads only the overlap window"
    consent = load_mapping("sendgrid", "unsubscribes").inbound(
        next(r for r in new if r.external_id == "amara.okafor@example.com"))
    assert consent.status.value == "opted_out"

    result = httpx.post(f"{info['base_url']}/_sandbox/webhook/deliver", json={"url": url}, timeout=30).json()
    assert result["complete"] and result["posted"] == sum(len(json.loads(b)) for b, _ in posts)
    key = serialization.load_der_public_key(base64.b64decode(info["credentials"]["webhook_public_key"]))
    events = []
    for body, headers in posts:
        sig = base64.b64decode(headers["X-Twilio-Email-Event-Webhook-Signature"])
        key.verify(sig, headers["X-Twilio-Email-Event-Webhook-Timestamp"].encode() + body, ec.ECDSA(hashes.SHA256()))
        events += json.loads(body)
    mine = [r for r in event_records(events) if r.payload["email"] == "amara.okafor@example.com"]
    kinds = [m.kind for m in mappings_for("sendgrid", "events")]
    mapped = [dict(zip(kinds, (m.inbound(r) for m in mappings_for("sendgrid", "events")))) for r in mine]
    assert [m["interaction"].status for m in mapped] == ["delivered", "opened", "unsubscribed"]
    assert [m["consent"].status.value for m in mapped if m["consent"]] == ["opted_out"]
    again = httpx.post(f"{info['base_url']}/_sandbox/webhook/deliver", json={"url": url}, timeout=30).json()
    assert again["posted"] == 0, "delivered events are not posted twice"


def test_an_opt_out_pushed_as_a_suppression_is_read_back_and_pushing_again_changes_nothing(sendgrid):
    sb, _, conn = sendgrid
    rec = OutboundRecord(key="golden-7|a.okafor@northwind.example", payload={"email": "a.okafor@northwind.example"},
                         match={"email": "a.okafor@northwind.example"})
    first = conn.write("suppressions", [rec])
    count = len(sb.unsubscribes)
    second = conn.write("suppressions", [rec])
    assert first[0].ok and second[0].external_id == first[0].external_id == "a.okafor@northwind.example"
    assert len(sb.unsubscribes) == count
    got = {r.external_id for p in conn.read("suppressions") for r in p.records}
    assert "a.okafor@northwind.example" in got
