"""Zoom, Twilio and SendGrid sandbox responses validate against the vendors' OpenAPI documents.

Skips when ../shared/specs is absent (the specs are reference data, not part of the project).
HubSpot's conformance lives in test_hubspot_spec.py; Segment publishes no OpenAPI.
"""

from __future__ import annotations

import base64
import copy

import httpx
import pytest

from sandbox.framework import SandboxCluster
from sandbox.sendgrid import API_KEY, SendGridSandbox
from sandbox.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioSandbox
from sandbox.zoom import TOKEN, ZoomSandbox
from tests.spec_check import SPECS, check, load

pytestmark = pytest.mark.skipif(not SPECS.is_dir(), reason=f"vendor specs not present at {SPECS}")


@pytest.fixture(scope="module")
def clients(tmp_path_factory):
    sandboxes = [ZoomSandbox(size=120, seed=3), TwilioSandbox(size=120, seed=3), SendGridSandbox(size=120, seed=3)]
    with SandboxCluster(sandboxes, workdir=tmp_path_factory.mktemp("specs")) as cluster:
        info = cluster.info()
        basic = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        with httpx.Client(base_url=info["zoom"]["base_url"] + "/v2", headers={"Authorization": f"Bearer {TOKEN}"}) as z, \
                httpx.Client(base_url=info["twilio"]["base_url"], headers={"Authorization": f"Basic {basic}"}) as t, \
                httpx.Client(base_url=info["sendgrid"]["base_url"],
                             headers={"Authorization": f"Bearer {API_KEY}"}) as s:
            yield {"zoom": z, "twilio": t, "sendgrid": s}


def test_zoom_engagements_and_address_books_match_the_spec(clients):
    z, doc = clients["zoom"], load("zoom", "zoom_contact_center_engagements_address_books.json")
    page = check(z, doc, "GET", "/contact_center/engagements?from=2026-11-01&to=2026-11-20&page_size=20", expect=200)
    assert page["engagements"], "the seeded month has engagements"
    first = page["engagements"][0]["engagement_id"]
    check(z, doc, "GET", f"/contact_center/engagements/{first}", expect=200)
    books = check(z, doc, "GET", "/contact_center/address_books", expect=200)
    book = books["address_books"][0]["address_book_id"]
    contacts = check(z, doc, "GET", f"/contact_center/address_books/{book}/contacts?page_size=10", expect=200)
    contact = contacts["contacts"][0]["contact_id"]
    check(z, doc, "GET", f"/contact_center/address_books/{book}/contacts/{contact}", expect=200)
    check(z, doc, "GET", "/contact_center/address_books/custom_fields", expect=200)
    check(z, doc, "POST", f"/contact_center/address_books/{book}/contacts", expect=201,
          json={"display_name": "Spec Check", "first_name": "Spec", "last_name": "Check",
                "phone_numbers": ["+14155550999"]})


def test_twilio_messages_match_the_spec(clients):
    t, doc = clients["twilio"], load("twilio", "twilio_api_v2010_messages_subset.json")
    base = f"/2010-04-01/Accounts/{ACCOUNT_SID}"
    page = check(t, doc, "GET", f"{base}/Messages.json?PageSize=20", expect=200)
    assert page["messages"]
    sid = page["messages"][0]["sid"]
    check(t, doc, "GET", f"{base}/Messages/{sid}.json", expect=200)
    check(t, doc, "POST", f"{base}/Messages.json", expect=201,
          data={"To": "+14155550999", "From": "+18885550100", "Body": "spec check"})


def _event_fields_optional(doc):
    """SendGrid's generated spec marks bounce_type, http_user_agent and mx_server required on every
    activity event; the service sends each only on the events it describes (a delivery has no
    bounce type), so those three are optional here."""
    doc = copy.deepcopy(doc)
    schema = doc["paths"]["/v3/messages/{msg_id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    item = schema["properties"]["events"]["items"]
    item["required"] = [f for f in item["required"] if f not in ("bounce_type", "http_user_agent", "mx_server")]
    return doc


def test_sendgrid_activity_suppressions_and_webhook_settings_match_the_spec(clients):
    s = clients["sendgrid"]
    activity = _event_fields_optional(load("sendgrid", "tsg_email_activity_v3.json"))
    page = check(s, activity, "GET", "/v3/messages?limit=10&query=status%3D%22delivered%22", expect=200)
    assert page["messages"]
    check(s, activity, "GET", f"/v3/messages/{page['messages'][0]['msg_id']}", expect=200)
    suppressions = load("sendgrid", "tsg_suppressions_v3.json")
    check(s, suppressions, "GET", "/v3/suppression/unsubscribes?limit=10", expect=200)
    check(s, suppressions, "POST", "/v3/asm/suppressions/global", expect=201,
          json={"recipient_emails": ["spec.check@example.org"]})
    check(s, suppressions, "GET", "/v3/asm/suppressions/global/spec.check@example.org", expect=200)
    check(s, suppressions, "GET", "/v3/asm/groups", expect=200)
    hooks = load("sendgrid", "tsg_webhooks_v3.json")
    check(s, hooks, "GET", "/v3/user/webhooks/event/settings/all", expect=200)
