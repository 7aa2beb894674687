"""Twilio end to end against the running sandbox: the heroine's SMS and STOP, signed inbound
webhooks, opt-outs enforced on send, and sends whose answers are lost never duplicated."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import httpx
import pytest

from connectors.credentials import TwilioCredentials
from connectors.http import RetryPolicy
from connectors.twilio import TwilioConnector
from mappings.engine import load_mapping
from omnisync.model import Channel, ConsentStatus
from omnisync.records import OutboundRecord, WriteStatus
from sandbox.framework import SandboxCluster
from sandbox.twilio import CARE, TwilioSandbox

HEROINE_MOBILE = "+14155550142"


@pytest.fixture
def twilio(tmp_path):
    sb = TwilioSandbox(size=150, seed=3)
    with SandboxCluster([sb], workdir=tmp_path) as cluster:
        info = cluster.info()["twilio"]

        def make(**kw) -> TwilioConnector:
            return TwilioConnector(TwilioCredentials(base_url=info["base_url"], **info["credentials"]), sender=CARE,
                                   policy=RetryPolicy(backoff_initial=0.01, backoff_max=0.05), **kw)

        with make() as conn:
            yield sb, info, conn, make


@pytest.fixture
def receiver():
    """A stand-in webhook endpoint that keeps every post (the real receiver is api/webhooks.py)."""
    posts: list[tuple[str, dict[str, str], dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            posts.append((self.path, dict(parse_qsl(body, keep_blank_values=True)), dict(self.headers)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/webhooks/twilio", posts
    server.shutdown()


def read_all(conn, cursor=None):
    pages = list(conn.read("messages", cursor))
    return pages, [r for p in pages for r in p.records]


def test_the_heroines_followup_and_her_stop_arrive_as_sms_and_an_opt_out(twilio):
    sb, _, conn, _ = twilio
    _, records = read_all(conn)
    assert len({r.external_id for r in records}) == len(sb.messages)
    timeline = load_mapping("twilio", "messages")
    consent = load_mapping("twilio", "messages_consent")
    mine = [timeline.inbound(r) for r in records if HEROINE_MOBILE in (r.payload["from"], r.payload["to"])]
    assert all(i.channel is Channel.sms and i.customer_phone == HEROINE_MOBILE for i in mine)
    assert any("88412" in (i.summary or "") and i.direction.value == "outbound" for i in mine)
    events = [e for e in (consent.inbound(r) for r in records) if e is not None]
    hers = [e for e in events if e.customer_phone == HEROINE_MOBILE]
    assert [(e.status, e.occurred_at.date().isoformat()) for e in hers] == [(ConsentStatus.opted_out, "2026-11-03")]
    assert len(events) >= sb.summary()["opt_outs"], "every opt-out the carrier applied is seen as consent"


def test_an_inbound_text_is_posted_signed_and_read_by_the_next_incremental_sync(twilio, receiver):
    sb, info, conn, make = twilio
    url, posts = receiver
    pages, before = read_all(conn)
    made = httpx.post(f"{info['base_url']}/_sandbox/inbound",
                      json={"from": HEROINE_MOBILE, "body": "START", "webhook_url": url}).json()
    assert made["webhook_status"] == 200
    (path, form, headers) = posts[0]
    signed = url + "".join(k + form[k] for k in sorted(form))
    expected = base64.b64encode(hmac.new(info["credentials"]["auth_token"].encode(), signed.encode(),
                                         hashlib.sha1).digest()).decode()
    assert headers["X-Twilio-Signature"] == expected
    assert (form["MessageSid"], form["From"], form["OptOutType"]) == (made["sid"], HEROINE_MOBILE, "START")
    _, after = read_all(make(), pages[-1].cursor)
    assert made["sid"] in {r.external_id for r in after} and len(after) < len(before)
    ev = load_mapping("twilio", "messages_consent").inbound(next(r for r in after if r.external_id == made["sid"]))
    assert ev.status is ConsentStatus.opted_in


def test_sends_to_a_customer_who_replied_stop_are_refused_until_start(twilio):
    sb, info, conn, _ = twilio
    (refused,) = conn.write("messages", [OutboundRecord(key="G-amara|promo", payload={"to": HEROINE_MOBILE,
                                                                                      "body": "New offers!"})])
    assert not refused.ok and not refused.retryable and "21610" in refused.error
    httpx.post(f"{info['base_url']}/_sandbox/inbound", json={"from": HEROINE_MOBILE, "body": "unstop"})
    (sent,) = conn.write("messages", [OutboundRecord(key="G-amara|promo", payload={"to": HEROINE_MOBILE,
                                                                                   "body": "New offers!"})])
    assert sent.status is WriteStatus.created
    assert sb.messages[sent.external_id]["to"] == HEROINE_MOBILE


@pytest.mark.parametrize("stall", [0.0, 1.0], ids=["answer-500", "answer-timeout"])
def test_sends_whose_answers_are_lost_are_never_duplicated(twilio, stall):
    sb, info, _, make = twilio
    conn = make(timeout=0.5)
    httpx.post(f"{info['base_url']}/_sandbox/lose_responses", json={"count": 2, "stall_seconds": stall})
    recs = [OutboundRecord(key=f"G-{i}|followup", payload={"to": f"+1206555{3400 + i}", "body": f"Update {i}"})
            for i in range(3)]
    outcomes = conn.write("messages", recs)
    assert all(o.status is WriteStatus.created for o in outcomes), [o.error for o in outcomes]
    assert len(sb.sends_lost) == 2
    for i, o in enumerate(outcomes):
        copies = [m for m in sb.messages.values() if m["body"] == f"Update {i}"]
        assert [m["sid"] for m in copies] == [o.external_id], "exactly one message, and it is the one reported"
    _, records = read_all(make())
    assert {o.external_id for o in outcomes} <= {r.external_id for r in records}
