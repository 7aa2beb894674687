"""Webhooks end to end: signed posts through the receiver, drained into the store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select

import flows.webhooks as fw
from api.webhooks import WebhookConfig, router, webhook_config
from flows.webhooks import TRIGGER_STREAMS, drain
from identity import webhook_intake as intake
from identity.store import ConsentEventRow, InteractionRow, SourceRow, WebhookEvent, get_engine, session_scope
from identity.webhook_intake import IncomingEvent
from tests.test_webhooks_signing import BASE, NOW, Signers, fixture, sample


@pytest.fixture
def receiver(store_url):
    signers = Signers()
    engine = get_engine(store_url)
    cfg = WebhookConfig(secrets=signers.secrets, clock=lambda: NOW, emit=lambda v, n: None,
                        engine=lambda: engine)
    app = FastAPI()
    app.include_router(router)
    app.dependency_overrides[webhook_config] = lambda: cfg
    with TestClient(app, base_url=BASE) as client:
        yield client, signers, engine


def post_all(client, signers):
    # SendGrid's events arrive newest first (no ordering guarantee), one post each.
    for ev in reversed(fixture("sendgrid_events.json")):
        resp = client.post("/webhooks/sendgrid", content=(s := signers.sendgrid(json.dumps([ev]).encode()))[0],
                           headers=s[1])
        assert resp.status_code == 200
    for vendor in ("twilio", "hubspot", "zoom"):
        body, headers = signers.sign(vendor, sample(vendor))
        assert client.post(f"/webhooks/{vendor}", content=body, headers=headers).status_code == 200


def rows(engine, model):
    with session_scope(engine) as s:
        return list(s.exec(select(model)).all())


def test_signed_events_of_every_vendor_are_drained_onto_the_timeline_once(receiver):
    client, signers, engine = receiver
    post_all(client, signers)
    result = drain(engine, sync_triggered=False)
    assert result["events"] == 3 + 1 + 2 + 1
    counts = result["counts"]
    assert counts["sendgrid/events"]["read"] == 3 and counts["twilio/messages"]["read"] == 1

    interactions = {(i.system, i.external_id): i for i in rows(engine, InteractionRow)}
    assert {k for k in interactions if k[0] == "sendgrid"} == {("sendgrid", e["sg_event_id"])
                                                              for e in fixture("sendgrid_events.json")}
    sms = interactions[("twilio", "SM1f0e6b2c8a7d4e3f9b1a2c3d4e5f6a7b")]
    assert (sms.channel, sms.direction, sms.summary) == ("sms", "inbound", "STOP")
    consent = sorted((c.system, c.channel, c.status) for c in rows(engine, ConsentEventRow))
    assert consent == [("sendgrid", "email", "opted_out"), ("twilio", "sms", "opted_out")]
    assert all(r.processed_at is not None for r in rows(engine, WebhookEvent))

    again = drain(engine, sync_triggered=False)
    assert again["events"] == 0
    post_all(client, signers)  # every vendor redelivers everything
    assert drain(engine, sync_triggered=False)["events"] == 0
    assert len(rows(engine, InteractionRow)) == len(interactions)


def test_a_trigger_lost_between_store_and_drain_loses_nothing_and_a_failed_drain_keeps_its_events(receiver, monkeypatch):
    client, signers, engine = receiver
    post_all(client, signers)  # the receiver's emitter does nothing here: the trigger is "lost"

    def crash(*a, **kw):
        raise RuntimeError("worker killed mid-drain")

    monkeypatch.setattr(fw, "ingest_records", crash)
    with pytest.raises(RuntimeError):
        drain(engine, sync_triggered=False)
    assert all(r.processed_at is None for r in rows(engine, WebhookEvent)), "the batch rolled back whole"
    assert rows(engine, SourceRow) == []
    monkeypatch.undo()
    assert drain(engine, sync_triggered=False)["events"] == 7
    assert len(rows(engine, SourceRow)) == 4  # 3 e-mail events and 1 SMS; HubSpot and Zoom trigger reads


def test_events_are_drained_in_order_of_occurrence_not_of_arrival(receiver):
    _, _, engine = receiver
    at = [datetime(2026, 11, 3, 17, m, tzinfo=timezone.utc) for m in (30, 10, 20)]
    with session_scope(engine) as s:
        intake.store_events(s, "sendgrid", [IncomingEvent(f"e{i}", "open", t, {}) for i, t in enumerate(at)])
    with session_scope(engine) as s:
        assert [r.event_id for r in intake.pending(s, vendor="sendgrid", limit=10)] == ["e1", "e2", "e0"]
        assert [r.event_id for r in intake.pending(s, vendor="sendgrid", limit=2)] == ["e1", "e2"]
        assert intake.pending(s, vendor="zoom") == []


def test_id_only_events_trigger_an_incremental_read_of_their_stream(receiver):
    client, signers, engine = receiver
    post_all(client, signers)
    callback = {"MessageSid": "SMstatus1", "MessageStatus": "delivered", "AccountSid": "AC1", "From": "+1", "To": "+2"}
    client.post("/webhooks/twilio", content=(s := signers.twilio(callback))[0], headers=s[1])
    with session_scope(engine) as s:
        got = {}
        for row in intake.pending(s, limit=100):
            for rec in intake.to_source_records(row):
                got.setdefault(row.vendor, set()).add(TRIGGER_STREAMS.get((rec.system, rec.stream),
                                                                          (rec.system, rec.stream)))
    assert got == {"hubspot": {("hubspot", "contacts")}, "zoom": {("zoom", "engagements")},
                   "twilio": {("twilio", "messages")}, "sendgrid": {("sendgrid", "events")}}


def test_concurrent_deliveries_and_drains_store_and_process_each_event_once(receiver):
    client, signers, engine = receiver
    events = [dict(fixture("sendgrid_events.json")[1], sg_event_id=f"ev-{i}", timestamp=1793815512 + i)
              for i in range(120)]
    posts = [signers.sendgrid(json.dumps(events[i:i + 30] + events[i + 30:i + 40]).encode()) for i in range(0, 120, 30)]
    answers = []

    def deliver(body_headers):
        answers.append(client.post("/webhooks/sendgrid", content=body_headers[0], headers=body_headers[1]).json())

    threads = [threading.Thread(target=deliver, args=(p,)) for p in posts + posts]  # each post twice, at once
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(a["stored"] for a in answers) == 120
    assert len(rows(engine, WebhookEvent)) == 120

    results = []
    drains = [threading.Thread(target=lambda: results.append(drain(engine, batch=25, sync_triggered=False)))
              for _ in range(2)]
    for t in drains:
        t.start()
    for t in drains:
        t.join()
    assert sum(r["events"] for r in results) == 120
    with session_scope(engine) as s:
        assert len(s.exec(select(InteractionRow).where(InteractionRow.system == "sendgrid")).all()) == 120


def test_a_stored_event_that_cannot_be_converted_is_dead_lettered_and_does_not_block_the_rest(receiver):
    client, signers, engine = receiver
    post_all(client, signers)
    with session_scope(engine) as s:  # e.g. stored by an older receiver that checked less
        intake.store_events(s, "sendgrid", [IncomingEvent("broken-1", "open", datetime(2026, 11, 3, tzinfo=timezone.utc),
                                                          {"email": "amara.okafor@example.com", "event": "open"})])
    result = drain(engine, sync_triggered=False)
    assert result["events"] == 8 and result["counts"]["sendgrid/webhook"] == {"read": 1, "dead_lettered": 1}
    assert result["counts"]["sendgrid/events"]["read"] == 3
    from identity.store import DeadLetter

    (dl,) = rows(engine, DeadLetter)
    assert (dl.system, dl.external_id, dl.stage) == ("sendgrid", "broken-1", "webhook")
    assert "sg_event_id" in dl.reason and "amara" not in dl.reason
    assert drain(engine, sync_triggered=False)["events"] == 0
