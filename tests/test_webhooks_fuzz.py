"""No body, signed or not, ever makes the webhook receiver answer 5xx (hypothesis)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.webhooks import WebhookConfig, router, webhook_config
from tests.test_webhooks_signing import BASE, NOW, Signers

OK = {200, 400, 401, 413}

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
                    st.floats(allow_nan=False), st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                           max_leaves=12)
# Objects shaped like each vendor's events: every field usually plausible, sometimes anything at all.
edge_ints = st.integers() | st.sampled_from([0, -1, 2 ** 31, 2 ** 53, 2 ** 63, 10 ** 20, -10 ** 20, 1795000005000])


def mostly(valid):
    return st.one_of(valid, valid, json_values)


hubspot_event = st.fixed_dictionaries({"eventId": mostly(st.integers(min_value=0, max_value=10 ** 6) | edge_ints),
                                       "subscriptionType": mostly(st.just("contact.creation")),
                                       "objectId": mostly(st.integers(min_value=1, max_value=10 ** 6)),
                                       "occurredAt": mostly(edge_ints)})
sendgrid_event = st.fixed_dictionaries({"sg_event_id": mostly(st.text(min_size=1, max_size=200)),
                                        "event": mostly(st.sampled_from(["open", "delivered", "unsubscribe"])),
                                        "timestamp": mostly(edge_ints | st.text(max_size=12)),
                                        "email": mostly(st.emails())})
zoom_event = st.fixed_dictionaries({"event": mostly(st.sampled_from(["endpoint.url_validation",
                                                                     "contact_center.engagement_ended"])),
                                    "event_ts": mostly(edge_ints),
                                    "payload": mostly(st.fixed_dictionaries({"plainToken": mostly(st.text())}))})
twilio_form = st.dictionaries(st.sampled_from(["MessageSid", "From", "To", "Body", "SmsStatus", "MessageStatus",
                                               "AccountSid", "NumMedia"]) | st.text(max_size=10),
                              st.text(max_size=40), max_size=8)


def as_json(strategy):
    return strategy.map(lambda v: json.dumps(v).encode())


# Raw bytes, any JSON, and (weighted double) vendor-shaped events.
BODIES = {
    "hubspot": st.one_of(st.binary(max_size=300), as_json(json_values),
                         *[as_json(st.lists(hubspot_event, min_size=1, max_size=4))] * 2),
    "sendgrid": st.one_of(st.binary(max_size=300), as_json(json_values),
                          *[as_json(st.lists(sendgrid_event, min_size=1, max_size=4))] * 2),
    "zoom": st.one_of(st.binary(max_size=300), as_json(json_values), *[as_json(zoom_event)] * 2),
    "twilio": st.one_of(st.binary(max_size=300), *[twilio_form.map(lambda f: urlencode(f).encode())] * 2),
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from identity.store import get_engine

    engine = get_engine(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'store.db'}")
    signers = Signers()
    cfg = WebhookConfig(secrets=signers.secrets, clock=lambda: NOW, emit=lambda v, n: None, engine=lambda: engine,
                        max_body=4096)
    app = FastAPI()
    app.include_router(router)
    app.dependency_overrides[webhook_config] = lambda: cfg
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as c:
        yield c, signers


@pytest.mark.parametrize("vendor", ["hubspot", "zoom", "twilio", "sendgrid"])
def test_no_body_signed_or_forged_ever_gets_a_5xx(client, vendor):
    c, signers = client

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(body=BODIES[vendor], signed=st.booleans(), junk_headers=st.dictionaries(
        st.sampled_from(["X-HubSpot-Signature-v3", "X-HubSpot-Request-Timestamp", "x-zm-signature",
                         "x-zm-request-timestamp", "X-Twilio-Signature", "X-Twilio-Email-Event-Webhook-Signature",
                         "X-Twilio-Email-Event-Webhook-Timestamp"]),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40)
        | st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b), max_size=3))
    def check(body, signed, junk_headers):
        if signed:
            try:
                body, headers = signers.sign(vendor, body)
            except UnicodeDecodeError:  # Twilio signs forms: a binary body is sent unsigned
                headers = junk_headers
        else:
            headers = junk_headers
        resp = c.post(f"/webhooks/{vendor}", content=body, headers=headers)
        assert resp.status_code in OK, (resp.status_code, resp.text)
        expected = "text/xml" if vendor == "twilio" and resp.status_code == 200 else "application/json"
        assert resp.headers["content-type"].startswith(expected)

    check()
