"""The signed webhook receiver: verification, replay window, limits, idempotent storage, triggers."""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import urlencode

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select

from api.webhooks import CredentialSecrets, WebhookConfig, router, webhook_config
from identity.store import DeadLetter, WebhookEvent, get_engine, session_scope
from tests.test_webhooks_signing import (
    BASE,
    EXPECTED_EVENTS,
    NOW,
    ZOOM_SECRET,
    Signers,
    fixture,
    sample,
)

VENDORS = ["hubspot", "zoom", "twilio", "sendgrid"]


class Emitted(list):
    def __call__(self, vendor: str, stored: int) -> None:
        self.append((vendor, stored))


@pytest.fixture
def signers() -> Signers:
    return Signers()


@pytest.fixture
def setup(signers):
    emitted = Emitted()
    cfg = WebhookConfig(secrets=signers.secrets, clock=lambda: NOW, emit=emitted)
    app = FastAPI()
    app.include_router(router)
    app.dependency_overrides[webhook_config] = lambda: cfg
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as client:
        yield client, cfg, emitted


def stored(vendor: str | None = None) -> list[WebhookEvent]:
    with session_scope(get_engine()) as s:
        q = select(WebhookEvent)
        if vendor:
            q = q.where(WebhookEvent.vendor == vendor)
        return list(s.exec(q).all())


def dead_letters() -> list[DeadLetter]:
    with session_scope(get_engine()) as s:
        return list(s.exec(select(DeadLetter)).all())


def post(client, vendor, body, headers):
    return client.post(f"/webhooks/{vendor}", content=body, headers=headers)


def outcome(resp) -> dict:
    """The receiver's counts: JSON, except for Twilio, which is answered in TwiML with the counts in headers."""
    if resp.headers["content-type"].startswith("text/xml"):
        assert resp.text.endswith("<Response/>")
        return {k: (resp.headers[f"x-omnisync-{k}"] if k == "vendor" else int(resp.headers[f"x-omnisync-{k}"]))
                for k in ("vendor", "received", "stored", "duplicates")}
    return resp.json()


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_correctly_signed_post_is_stored_before_the_answer_and_triggers_the_drain(setup, signers, vendor):
    client, _, emitted = setup
    resp = post(client, vendor, *signers.sign(vendor, sample(vendor)))
    assert resp.status_code == 200, resp.text
    n = EXPECTED_EVENTS[vendor]
    assert outcome(resp) == {"vendor": vendor, "received": n, "stored": n, "duplicates": 0}
    rows = stored(vendor)
    assert len(rows) == n and all(r.processed_at is None for r in rows)
    assert emitted == [(vendor, n)]


def test_event_ids_and_times_are_the_vendors_own(setup, signers):
    client, _, _ = setup
    for vendor in VENDORS:
        post(client, vendor, *signers.sign(vendor, sample(vendor)))
    by_vendor = {v: sorted((r.event_id, r.event_type, r.occurred_at.replace(tzinfo=None).isoformat())
                           for r in stored(v)) for v in VENDORS}
    assert by_vendor["hubspot"] == [("4101", "contact.creation", "2026-11-18T11:06:40"),
                                    ("4102", "contact.propertyChange", "2026-11-18T11:06:42")]
    assert [e[0] for e in by_vendor["sendgrid"]] == sorted(e["sg_event_id"] for e in fixture("sendgrid_events.json"))
    assert by_vendor["twilio"] == [("SM1f0e6b2c8a7d4e3f9b1a2c3d4e5f6a7b:received", "message.received",
                                    "2026-11-18T11:06:50")]
    (zoom_id, zoom_type, zoom_at), = by_vendor["zoom"]
    assert zoom_id.startswith("contact_center.engagement_ended:") and zoom_at == "2026-11-18T11:06:45"


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_tampered_body_is_401_and_nothing_is_stored(setup, signers, vendor):
    client, _, emitted = setup
    body, headers = signers.sign(vendor, sample(vendor))
    tampered = body.replace(b"STOP", b"START") if vendor == "twilio" else body.replace(b"2", b"3", 1)
    assert tampered != body
    resp = post(client, vendor, tampered, headers)
    assert resp.status_code == 401 and "does not match" in resp.json()["error"]
    assert stored() == [] and emitted == [] and dead_letters() == []


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_post_signed_with_another_secret_is_401(setup, signers, vendor):
    client, _, _ = setup
    body = sample(vendor)
    if vendor == "sendgrid":
        from cryptography.hazmat.primitives.asymmetric import ec

        signed = signers.sendgrid(body, key=ec.generate_private_key(ec.SECP256R1()))
    elif vendor == "twilio":
        signed = signers.sign(vendor, body, secret="not-the-auth-token")
    else:
        signed = signers.sign(vendor, body, secret="not-the-secret")
    assert post(client, vendor, *signed).status_code == 401
    assert stored() == []


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_post_without_signature_headers_is_401(setup, signers, vendor):
    client, _, _ = setup
    body, headers = signers.sign(vendor, sample(vendor))
    resp = post(client, vendor, body, {"Content-Type": headers["Content-Type"]})
    assert resp.status_code == 401 and "missing" in resp.json()["error"]
    assert stored() == []


@pytest.mark.parametrize("vendor", ["hubspot", "zoom", "sendgrid"])
@pytest.mark.parametrize("skew,accepted", [(-301, False), (301, False), (-290, True), (290, True)],
                         ids=["stale", "future", "late-but-inside", "early-but-inside"])
def test_timestamps_outside_the_replay_window_are_rejected(setup, signers, vendor, skew, accepted):
    client, _, _ = setup
    resp = post(client, vendor, *signers.sign(vendor, sample(vendor), ts=NOW + skew))
    if accepted:
        assert resp.status_code == 200
    else:
        assert resp.status_code == 401 and "replay window" in resp.json()["error"]
        assert stored() == []


def test_a_captured_hubspot_post_replayed_later_is_rejected_even_with_its_valid_signature(setup, signers):
    client, cfg, _ = setup
    body, headers = signers.hubspot(sample("hubspot"))
    assert post(client, "hubspot", body, headers).status_code == 200
    cfg.clock = lambda: NOW + 600  # the attacker replays the very same bytes ten minutes later
    assert post(client, "hubspot", body, headers).status_code == 401


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_redelivered_post_is_acknowledged_and_not_stored_twice(setup, signers, vendor):
    client, _, emitted = setup
    first = post(client, vendor, *signers.sign(vendor, sample(vendor)))
    again = post(client, vendor, *signers.sign(vendor, sample(vendor), **({} if vendor == "twilio" else {"ts": NOW + 5})))
    n = EXPECTED_EVENTS[vendor]
    assert outcome(first)["stored"] == n
    assert again.status_code == 200 and outcome(again) == {"vendor": vendor, "received": n, "stored": 0, "duplicates": n}
    assert len(stored(vendor)) == n
    assert emitted == [(vendor, n)], "nothing new: no second trigger"


def test_a_twilio_request_replayed_verbatim_changes_nothing(setup, signers):
    # Twilio signs no timestamp: the MessageSid is what makes a replay harmless.
    client, _, emitted = setup
    body, headers = signers.twilio(fixture("twilio_inbound_stop.json"))
    for _ in range(3):
        assert post(client, "twilio", body, headers).status_code == 200
    assert len(stored("twilio")) == 1 and len(emitted) == 1


def test_a_twilio_status_callback_for_the_same_message_is_a_new_event(setup, signers):
    client, _, _ = setup
    form = fixture("twilio_inbound_stop.json")
    post(client, "twilio", *signers.twilio(form))
    callback = {"MessageSid": form["MessageSid"], "MessageStatus": "delivered", "AccountSid": form["AccountSid"],
                "From": form["To"], "To": form["From"]}
    assert outcome(post(client, "twilio", *signers.twilio(callback)))["stored"] == 1
    assert sorted(r.event_type for r in stored("twilio")) == ["message.delivered", "message.received"]


def test_duplicates_inside_one_post_are_stored_once(setup, signers):
    client, _, _ = setup
    events = fixture("hubspot_contact_events.json")
    body = json.dumps(events + [dict(events[0], attemptNumber=1)]).encode()
    assert post(client, "hubspot", *signers.hubspot(body)).json() == {
        "vendor": "hubspot", "received": 3, "stored": 2, "duplicates": 1}


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
def test_a_body_over_the_limit_is_413_before_it_is_read_further(setup, signers, declared):
    client, cfg, _ = setup
    cfg.max_body = 2048
    events = [dict(fixture("sendgrid_events.json")[0], sg_event_id=f"id-{i}") for i in range(40)]
    body, headers = signers.sendgrid(json.dumps(events).encode())
    assert len(body) > cfg.max_body
    if declared:
        resp = post(client, "sendgrid", body, headers)
    else:
        resp = client.post("/webhooks/sendgrid", content=iter([body[:1500], body[1500:]]), headers=headers)
    assert resp.status_code == 413 and "2048-byte limit" in resp.json()["error"]
    assert stored() == []


MALFORMED = [
    ("hubspot", b'[{"eventId": 1, "subscriptionType": "contact.creation"', "not valid JSON"),
    ("hubspot", b'{"eventId": 1}', "JSON array"),
    ("hubspot", json.dumps([{"subscriptionType": "contact.creation", "objectId": 1, "occurredAt": 1}]).encode(),
     "event 0: field eventId is missing"),
    ("hubspot", json.dumps([{"eventId": 7, "subscriptionType": "contact.creation", "objectId": 1,
                             "occurredAt": "soon"}]).encode(), "event 7: field occurredAt"),
    ("zoom", json.dumps({"event": "contact_center.engagement_ended", "payload": {}}).encode(),
     "field event_ts is missing"),
    ("zoom", b"NaN", "not valid JSON"),
    ("sendgrid", json.dumps([{"email": "amara.okafor@example.com", "event": "open", "timestamp": 1793815512}]).encode(),
     "event 0: field sg_event_id is missing"),
    ("sendgrid", json.dumps([{"email": "amara.okafor@example.com", "event": "open", "sg_event_id": "x1",
                              "timestamp": 10 ** 20}]).encode(), "event x1: field timestamp is out of range"),
    ("twilio", urlencode({"From": "+12065550143", "To": "+18885550100", "Body": "hi"}).encode(),
     "message: field MessageSid is missing"),
    ("twilio", urlencode({"MessageSid": "SMx", "From": "+12065550143", "To": "+18885550100"}).encode(),
     "message SMx: field Body is missing"),
]


@pytest.mark.parametrize("vendor,body,reason", MALFORMED, ids=[f"{v}-{i}" for i, (v, _, _) in enumerate(MALFORMED)])
def test_a_signed_but_malformed_body_is_400_naming_the_event_and_field_and_dead_lettered(
        setup, signers, vendor, body, reason):
    client, _, emitted = setup
    signed = signers.sign(vendor, body)
    resp = post(client, vendor, *signed)
    assert resp.status_code == 400 and reason in resp.json()["error"]
    assert "amara" not in resp.text and "2065550143" not in resp.text
    assert stored() == [] and emitted == []
    (dl,) = dead_letters()
    assert (dl.system, dl.stream, dl.stage) == (vendor, "webhook", "webhook") and reason in dl.reason
    assert "amara" not in json.dumps(dl.payload), "the body is sealed, not readable"
    post(client, vendor, *signers.sign(vendor, body))
    assert [d.attempts for d in dead_letters()] == [2], "a vendor's retry of the same body is one dead letter"


def test_an_unsigned_malformed_body_is_401_and_leaves_no_dead_letter(setup):
    client, _, _ = setup
    resp = client.post("/webhooks/hubspot", content=b"{not json", headers={"X-HubSpot-Signature-v3": "x",
                                                                              "X-HubSpot-Request-Timestamp": "1"})
    assert resp.status_code == 401 and dead_letters() == []


@pytest.mark.parametrize("value", [b"\xb2", b"17950000100000000000000", b"-5", b""])
def test_a_timestamp_header_that_is_not_a_plain_number_is_401(setup, signers, value):
    client, _, _ = setup
    body, headers = signers.zoom(sample("zoom"))
    headers = {**headers, "x-zm-request-timestamp": value}
    resp = post(client, "zoom", body, headers)
    assert resp.status_code == 401 and stored() == []


def test_zoom_url_validation_is_answered_with_the_encrypted_token_and_not_stored(setup, signers):
    client, _, emitted = setup
    body = json.dumps(fixture("zoom_url_validation.json")).encode()
    resp = post(client, "zoom", *signers.zoom(body))
    token = fixture("zoom_url_validation.json")["payload"]["plainToken"]
    assert resp.status_code == 200
    assert resp.json() == {"plainToken": token,
                           "encryptedToken": hmac.new(ZOOM_SECRET.encode(), token.encode(), hashlib.sha256).hexdigest()}
    assert stored() == [] and emitted == []
    assert post(client, "zoom", body, {"Content-Type": "application/json"}).status_code == 401


def test_a_failing_prefect_event_never_fails_the_request(setup, signers):
    client, cfg, _ = setup

    def broken(vendor, n):
        raise ConnectionError("Prefect API unreachable")

    cfg.emit = broken
    resp = post(client, "sendgrid", *signers.sendgrid(sample("sendgrid")))
    assert resp.status_code == 200 and len(stored("sendgrid")) == 3


def test_an_unreachable_store_answers_503_so_the_vendor_retries(setup, signers, tmp_path):
    client, cfg, emitted = setup
    from identity.store import make_engine

    cfg.engine = lambda: make_engine(f"sqlite:///{tmp_path}/missing-dir/x.db")
    resp = post(client, "hubspot", *signers.hubspot(sample("hubspot")))
    assert resp.status_code == 503 and "retry" in resp.json()["error"] and emitted == []


def test_an_unsigned_post_is_refused_before_any_secret_is_looked_up(setup):
    client, cfg, _ = setup
    looked_up = []
    cfg.secrets = lambda vendor: looked_up.append(vendor)
    for vendor in VENDORS:
        assert client.post(f"/webhooks/{vendor}", content=b"{}").status_code == 401
    assert looked_up == []


def test_without_configuration_the_secret_lookup_answers_at_once_instead_of_booting_prefect(monkeypatch):
    import time

    from prefect.settings import PREFECT_API_URL, temporary_settings

    for var in ("OMNISYNC_SANDBOX_INFO", "OMNISYNC_ZOOM_ACCESS_TOKEN", "OMNISYNC_ZOOM_WEBHOOK_SECRET"):
        monkeypatch.delenv(var, raising=False)
    t0 = time.perf_counter()
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert CredentialSecrets()("zoom") is None
    assert time.perf_counter() - t0 < 2.0


def test_a_vendor_without_a_configured_secret_answers_503_and_stores_nothing(setup, signers):
    client, cfg, _ = setup
    cfg.secrets = lambda vendor: None
    resp = post(client, "zoom", *signers.zoom(sample("zoom")))
    assert resp.status_code == 503 and "webhook_secret" in resp.json()["error"] and stored() == []


def test_behind_a_proxy_the_public_url_is_what_hubspot_and_twilio_signed(setup, signers):
    client, cfg, _ = setup
    cfg.public_url = "https://hooks.example.com"
    hs = signers.hubspot(sample("hubspot"), url="https://hooks.example.com/webhooks/hubspot")
    tw = signers.twilio(fixture("twilio_inbound_stop.json"), url="https://hooks.example.com/webhooks/twilio")
    assert post(client, "hubspot", *hs).status_code == 200
    assert post(client, "twilio", *tw).status_code == 200
    assert post(client, "hubspot", *signers.hubspot(sample("hubspot"))).status_code == 401


def test_secrets_come_from_the_typed_credentials_the_flows_use(monkeypatch, signers):
    monkeypatch.setenv("OMNISYNC_HUBSPOT_ACCESS_TOKEN", "pat-token")
    monkeypatch.setenv("OMNISYNC_HUBSPOT_CLIENT_SECRET", "from-the-environment")
    monkeypatch.setenv("OMNISYNC_SENDGRID_API_KEY", "SG.key")
    monkeypatch.setenv("OMNISYNC_SENDGRID_WEBHOOK_PUBLIC_KEY", signers.sendgrid_public())
    monkeypatch.delenv("OMNISYNC_SANDBOX_INFO", raising=False)
    secrets = CredentialSecrets()
    assert secrets("hubspot") == "from-the-environment"
    assert secrets("sendgrid") == signers.sendgrid_public()


def test_the_default_emitter_sends_the_event_the_drain_deployment_listens_for(monkeypatch):
    import prefect.events
    from prefect.events import Event
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from api.webhooks import emit_received

    # Prefect's events worker is not started here (in a test process it would boot an ephemeral
    # server); what is checked is that the call makes a valid Event the deployment trigger matches.
    calls = []
    monkeypatch.setattr(prefect.events, "emit_event", lambda **kw: calls.append(kw))
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        emit_received("sendgrid", 3)
    assert calls == [], "no Prefect API configured: nothing to emit to"
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        emit_received("sendgrid", 3)
    (kw,) = calls
    event = Event(**kw)
    assert event.event == "omnisync.webhook.received"
    assert event.resource.id == "omnisync.webhook.sendgrid" and event.payload == {"vendor": "sendgrid", "stored": 3}
    import yaml
    from pathlib import Path

    deployments = yaml.safe_load((Path(__file__).parents[1] / "prefect.yaml").read_text())["deployments"]
    (trigger,) = next(d for d in deployments if d["name"] == "drain-webhooks")["triggers"]
    assert event.event in trigger["expect"]
    assert trigger["match"]["prefect.resource.id"].rstrip("*") == "omnisync.webhook."
