"""The Customer 360 page over HTTP: cookie sign-in, redirects to the survivor, escaping, masking."""

from __future__ import annotations

import html

import pytest
from fastapi.testclient import TestClient

from api import keys
from api.app import create_app
from identity.store import InteractionRow, get_engine, session_scope
from tests.test_api_endpoints import ABSORBED, AMARA, EMAIL, ERASED, T0, seed


@pytest.fixture
def site(store_url):
    engine = get_engine(store_url)
    seed(engine)
    with session_scope(engine) as s:
        # an attacker-controlled summary (a chat message) must render as text, never as markup
        s.add(InteractionRow(system="zoom", external_id="evil", golden_id=AMARA, channel="chat", direction="inbound",
                             started_at=T0.replace(hour=8), fingerprint="f", summary='<script>alert("x")</script>',
                             data={"handoff": {"from_bot": "<b>bot</b>", "context": {"k": "<img src=x onerror=1>"}}}))
    keys.clear_cache()
    client = TestClient(create_app(engine), follow_redirects=False)
    client.full = keys.create_key("agent", ["profile:read", "pii:read"], engine=engine)
    client.masked = keys.create_key("trainee", ["profile:read"], engine=engine)
    client.ivr = keys.create_key("ivr", ["lookup"], engine=engine)
    with client:
        yield client


def login(site, key):
    r = site.get("/360/login", params={"key": key, "next": f"/360/{AMARA}"})
    assert r.status_code == 303 and r.headers["location"] == f"/360/{AMARA}"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/360" in cookie
    return r


def test_page_without_a_key_sends_the_agent_to_sign_in(site):
    r = site.get(f"/360/{AMARA}")
    assert r.status_code == 303 and r.headers["location"] == f"/360/login?next=/360/{AMARA}"
    assert "API key" in site.get("/360/login").text


def test_bad_or_underscoped_keys_cannot_sign_in(site):
    for key in ("osk_" + "b" * 43, site.ivr, "junk"):
        r = site.get("/360/login", params={"key": key})
        assert r.status_code == 401 and "set-cookie" not in r.headers
        assert "unknown, revoked, or lacks" in r.text


def test_sign_in_refuses_to_redirect_off_site(site):
    r = site.get("/360/login", params={"key": site.full, "next": "//evil.example/x"})
    assert r.headers["location"] == "/360"


def test_page_shows_who_consent_open_issue_handoff_timeline_and_pushes(site):
    login(site, site.full)
    r = site.get(f"/360/{AMARA}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = html.unescape(r.text)
    assert "Amara Okafor" in page and "gold" in page and "speaks en-GB" in page
    assert "sms · marketing: opted out" in page and "email · marketing: opted in" in page
    assert "open issue" in page and "Follow-up required" in page
    assert "The bot" in page and "refund" in page and "order_id: 5521" in page
    for ext in ("Reply STOP to opt out", "Your refund", "Called about the refund", "Refund approved"):
        assert ext in page
    assert "Bob's call" not in page
    assert "HubSpot 003A" not in page and "Salesforce 003A" in page  # lineage hint
    assert "HubSpot contacts" in page and "lifecyclestage" in page
    assert f"merged from <code>{ABSORBED}</code>" in r.text


def test_everything_from_the_store_is_escaped(site):
    login(site, site.full)
    body = site.get(f"/360/{AMARA}").text
    assert "<script>alert" not in body and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in body
    assert "<b>bot</b>" not in body and "<img src=x" not in body


def test_page_without_pii_read_is_masked(site):
    login(site, site.masked)
    body = html.unescape(site.get(f"/360/{AMARA}").text)
    assert "A. O." in body and "personal data masked" in body
    for secret in ("Okafor", EMAIL, "900123", "High St"):
        assert secret not in body


def test_absorbed_id_and_search_redirect_to_the_survivor(site):
    login(site, site.full)
    r = site.get(f"/360/{ABSORBED}")
    assert r.status_code == 303 and r.headers["location"].startswith(f"/360/{AMARA}")
    r = site.get("/360", params={"email": EMAIL.upper()})
    assert r.status_code == 303 and r.headers["location"] == f"/360/{AMARA}"
    assert site.get("/360", params={"email": "nobody@example.com"}).status_code == 404
    bad = site.get("/360", params={"phone": "xx"})
    assert bad.status_code == 400 and "not a valid phone number" in bad.text
    assert site.get(f"/360/{ERASED}").status_code == 410
    assert site.get("/360/g-none").status_code == 404


def test_channel_filter_and_paging_links(site):
    login(site, site.full)
    body = site.get(f"/360/{AMARA}", params={"channels": "sms"}).text
    assert body.count('data-channel="sms"') == 2 and 'data-channel="voice"' not in body
    assert site.get(f"/360/{AMARA}", params={"cursor": "nonsense"}).status_code == 400


def test_the_form_signs_in_with_the_key_in_the_body(site):
    r = site.post("/360/login", data={"key": site.full, "next": f"/360/{AMARA}"})
    assert r.status_code == 303 and r.headers["location"] == f"/360/{AMARA}" and "omnisync_key=" in r.headers["set-cookie"]
    assert site.get(f"/360/{AMARA}").status_code == 200
    bad = site.post("/360/login", data={"key": "wrong"})
    assert bad.status_code == 401 and "set-cookie" not in bad.headers


def test_a_key_without_profile_read_gets_a_page_saying_so(site):
    r = site.get(f"/360/{AMARA}", headers={"X-API-Key": site.ivr})
    assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")
    assert "lacks the &#39;profile:read&#39; scope" in r.text


def test_header_key_also_opens_the_page_and_logout_clears_the_cookie(site):
    assert site.get(f"/360/{AMARA}", headers={"X-API-Key": site.full}).status_code == 200
    login(site, site.full)
    r = site.get("/360/logout")
    assert r.status_code == 303 and 'omnisync_key=""' in r.headers["set-cookie"]
