"""The receiver over real HTTP, fed by the vendor sandboxes' own signed deliveries, drained into the store.

Secrets are not handed to the receiver: it loads them like the flows do (here from the sandbox info
file named by ``OMNISYNC_SANDBOX_INFO``). HubSpot delivers at least once and out of order; the
HubSpot events trigger a real incremental sync of the sandbox's contacts.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlmodel import select

from api.webhooks import WebhookConfig, router, webhook_config
from flows.webhooks import drain
from identity.store import ConsentEventRow, InteractionRow, SourceRow, WebhookEvent, get_engine, session_scope
from sandbox.framework import SandboxCluster
from sandbox.hubspot import ID_BASE, HubSpotSandbox
from sandbox.sendgrid import SendGridSandbox
from sandbox.twilio import TwilioSandbox

HEROINE_EMAIL, HEROINE_MOBILE = "amara.okafor@example.com", "+14155550142"


@pytest.fixture
def world(tmp_path, monkeypatch):
    sandboxes = [HubSpotSandbox(size=40, seed=2), TwilioSandbox(size=60, seed=3), SendGridSandbox(size=60, seed=4)]
    with SandboxCluster(sandboxes, workdir=tmp_path) as cluster:
        cluster.write_info(tmp_path / "sandboxes.json")
        monkeypatch.setenv("OMNISYNC_SANDBOX_INFO", str(tmp_path / "sandboxes.json"))
        emitted: list[tuple[str, int]] = []
        cfg = WebhookConfig(emit=lambda v, n: emitted.append((v, n)))  # secrets: loaded as the flows load them
        app = FastAPI()
        app.include_router(router)
        app.dependency_overrides[webhook_config] = lambda: cfg
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield cluster.info(), f"http://127.0.0.1:{port}/webhooks", emitted
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def _all(model, *where):
    with session_scope(get_engine()) as s:
        return list(s.exec(select(model).where(*where)).all())


def test_hubspot_deliveries_duplicated_and_shuffled_are_stored_once_and_trigger_a_contacts_sync(world):
    info, hooks, emitted = world
    base = info["hubspot"]["base_url"]
    hero = ID_BASE["contacts"] + 1
    httpx.patch(f"{base}/_sandbox/objects/contacts/{hero}", json={"properties": {"jobtitle": "Head of Refunds"}})
    httpx.patch(f"{base}/_sandbox/objects/contacts/{hero + 1}", json={"properties": {"firstname": "Leo"}})
    out = httpx.post(f"{base}/_sandbox/webhooks/deliver", timeout=30,
                     json={"url": f"{hooks}/hubspot", "duplicate_every": 2, "shuffle": True}).json()
    assert out["statuses"] and set(out["statuses"]) == {200}
    events = _all(WebhookEvent, WebhookEvent.vendor == "hubspot")
    assert 2 <= len(events) < out["sent"], "redelivered events are stored once"
    assert emitted and all(v == "hubspot" for v, _ in emitted)

    result = drain(get_engine())
    assert result["events"] == len(events) and result["triggered"] == {"hubspot/contacts": "ok"}
    (row,) = _all(SourceRow, SourceRow.system == "hubspot", SourceRow.stream == "contacts",
                  SourceRow.external_id == str(hero))
    assert row.payload["properties"]["jobtitle"] == "Head of Refunds"


def test_a_stop_texted_to_twilio_reaches_the_store_as_an_sms_and_an_opt_out(world):
    info, hooks, _ = world
    made = httpx.post(f"{info['twilio']['base_url']}/_sandbox/inbound", timeout=30,
                      json={"from": HEROINE_MOBILE, "body": "STOP", "webhook_url": f"{hooks}/twilio"}).json()
    assert made["webhook_status"] == 200
    assert drain(get_engine(), sync_triggered=False)["events"] == 1
    (sms,) = _all(InteractionRow, InteractionRow.system == "twilio")
    assert (sms.external_id, sms.channel, sms.direction) == (made["sid"], "sms", "inbound")
    (consent,) = _all(ConsentEventRow, ConsentEventRow.system == "twilio")
    assert (consent.channel, consent.status) == ("sms", "opted_out")


def test_sendgrid_event_batches_reach_the_timeline_and_a_full_redelivery_changes_nothing(world):
    info, hooks, _ = world
    base = info["sendgrid"]["base_url"]
    for event in ("open", "click", "unsubscribe"):
        httpx.post(f"{base}/_sandbox/event", json={"email": HEROINE_EMAIL, "event": event})
    out = httpx.post(f"{base}/_sandbox/webhook/deliver", json={"url": f"{hooks}/sendgrid", "batch_size": 50},
                     timeout=60).json()
    assert out["complete"] and out["posted"] > 3
    assert drain(get_engine(), sync_triggered=False)["events"] == out["posted"]
    rows = _all(InteractionRow, InteractionRow.system == "sendgrid")
    assert len(rows) == out["posted"]
    assert "opted_out" in {c.status for c in _all(ConsentEventRow, ConsentEventRow.system == "sendgrid")}

    again = httpx.post(f"{base}/_sandbox/webhook/deliver", timeout=60,
                       json={"url": f"{hooks}/sendgrid", "batch_size": 50, "redeliver": True}).json()
    assert again["complete"] and again["posted"] == out["posted"]
    assert drain(get_engine(), sync_triggered=False)["events"] == 0
    assert len(_all(InteractionRow, InteractionRow.system == "sendgrid")) == len(rows)
