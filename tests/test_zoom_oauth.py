"""Zoom Server-to-Server OAuth: one token fetched and reused, renewed when it expires (mid-sync,
mid-write) without losing or repeating a record, a refused client failing fast with what to fix,
and neither the secret nor a token ever written to a log or an error.

Unit tests answer with recorded vendor responses (respx); the rest run against the Zoom sandbox,
which issues tokens at its own /oauth/token with a lifetime the test chooses."""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import pytest
import respx

from connectors.credentials import ZoomCredentials
from connectors.errors import AuthError
from connectors.http import RateBudget, RetryPolicy
from connectors.zoom import ZoomConnector
from omnisync.records import OutboundRecord, WriteStatus
from sandbox.framework import SandboxCluster
from sandbox.zoom import CLIENT_SECRET, ZoomSandbox

FIX = Path(__file__).parent / "fixtures" / "zoom"
BASE = "https://zoom.test"
OAUTH = BASE + "/oauth/token"
FAST = RetryPolicy(backoff_initial=0.001, backoff_max=0.002)
SECRET = "s2s-client-secret-value"


def fixture(name: str):
    return json.loads((FIX / name).read_text())


def oauth_connector(**kw) -> tuple[ZoomConnector, str]:
    client = "s2s-client-id"
    creds = ZoomCredentials(base_url=BASE, oauth_url=OAUTH, account_id="acct-1", client_id=client, client_secret=SECRET)
    kw.setdefault("budget", RateBudget(1000.0, 1000))
    return ZoomConnector(creds, policy=FAST, **kw), client


def test_the_token_is_fetched_once_with_the_app_credentials_and_sent_on_every_request():
    conn, client = oauth_connector()
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        token = mock.post("/oauth/token").respond(200, json=fixture("oauth_token.json"))
        books = mock.get("/v2/contact_center/address_books").respond(200, json=fixture("address_books.json"))
        for _ in range(3):
            conn.check()
        ZoomConnector(conn.credentials, policy=FAST).check()  # another connector for the same app (the next flow run) reuses the token
    assert token.call_count == 1
    sent = token.calls[0].request
    assert base64.b64decode(sent.headers["Authorization"].split()[1]).decode() == f"{client}:{SECRET}"
    assert dict(parse_qsl(sent.content.decode())) == {"grant_type": "account_credentials", "account_id": "acct-1"}
    bearer = "Bearer " + fixture("oauth_token.json")["access_token"]
    assert books.call_count == 4 and all(c.request.headers["Authorization"] == bearer for c in books.calls)


def test_a_token_refused_as_expired_is_renewed_once_and_the_request_sent_again():
    conn, _ = oauth_connector()
    second = {**fixture("oauth_token.json"), "access_token": "fixture-token-two"}
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        token = mock.post("/oauth/token").mock(side_effect=[httpx.Response(200, json=fixture("oauth_token.json")),
                                                            httpx.Response(200, json=second)])
        books = mock.get("/v2/contact_center/address_books").mock(side_effect=[
            httpx.Response(401, json=fixture("error_401_expired.json")),
            httpx.Response(200, json=fixture("address_books.json"))])
        conn.check()
    assert token.call_count == 2 and books.call_count == 2
    assert books.calls[1].request.headers["Authorization"] == "Bearer fixture-token-two"
    assert conn.http.stats.retries == 0, "a renewal is not a retry of the call: it does not spend the retry budget"
    assert conn.api_calls == 2, "the request sent again is an API call all the same"


def test_a_new_token_refused_too_fails_once_with_what_to_check():
    conn, _ = oauth_connector()
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        token = mock.post("/oauth/token").respond(200, json=fixture("oauth_token.json"))
        books = mock.get("/v2/contact_center/address_books").respond(401, json=fixture("error_401.json"))
        with pytest.raises(AuthError) as exc:
            conn.check()
    assert token.call_count == 2 and books.call_count == 2, "one renewal, then the refusal stands"
    assert "activated" in str(exc.value) and "scopes" in str(exc.value) and "omnisync-zoom" in str(exc.value)


def test_a_refused_client_secret_fails_fast_naming_what_to_fix():
    conn, _ = oauth_connector()
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        token = mock.post("/oauth/token").respond(400, json=fixture("oauth_error_400_invalid_client.json"))
        books = mock.get("/v2/contact_center/address_books").respond(200, json=fixture("address_books.json"))
        with pytest.raises(AuthError) as exc:
            conn.check()
    assert token.call_count == 1, "a refused client is not retried"
    assert books.call_count == 0, "no API call without a token"
    message = str(exc.value)
    assert "invalid_client" in message and "client_secret" in message
    assert "OMNISYNC_ZOOM_CLIENT_SECRET" in message and "omnisync-zoom" in message
    assert SECRET not in message


def test_a_token_endpoint_outage_is_retried_like_any_transient_fault():
    conn, _ = oauth_connector()
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        token = mock.post("/oauth/token").mock(side_effect=[httpx.Response(503, text="unavailable"),
                                                            httpx.Response(200, json=fixture("oauth_token.json"))])
        mock.get("/v2/contact_center/address_books").respond(200, json=fixture("address_books.json"))
        conn.check()
    assert token.call_count == 2


def test_a_create_refused_for_an_expired_token_is_sent_again_and_creates_one_contact():
    conn, _ = oauth_connector()
    book = "rc3LYK47ukZseioaiY658Q"
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.post("/oauth/token").respond(200, json=fixture("oauth_token.json"))
        mock.get("/v2/contact_center/address_books").respond(200, json=fixture("address_books.json"))
        create = mock.post(f"/v2/contact_center/address_books/{book}/contacts").mock(side_effect=[
            httpx.Response(401, json=fixture("error_401_expired.json")),
            httpx.Response(201, json={"contact_id": "new-contact-1", "display_name": "Pat Doe"})])
        out = conn.write("address_book_contacts", [OutboundRecord(
            key="golden-pat|new", payload={"display_name": "Pat Doe", "phone_numbers": ["+14155550199"]})])
    assert out[0].status is WriteStatus.created and out[0].external_id == "new-contact-1"
    assert create.call_count == 2, "the refused create reached no contact: sent again once, never a third time"


# --- against the sandbox ------------------------------------------------------------------------------

@pytest.fixture
def zoom(tmp_path):
    sb = ZoomSandbox(size=150, seed=3)
    with SandboxCluster([sb], workdir=tmp_path) as cluster:
        info = cluster.info()["zoom"]

        def make(**creds) -> ZoomConnector:
            return ZoomConnector(ZoomCredentials(base_url=info["base_url"], **{**info["credentials"], **creds}),
                                 budget=RateBudget(200.0, 200), page_size=20, history=timedelta(days=150),
                                 policy=RetryPolicy(backoff_initial=0.01, backoff_max=0.05))
        yield sb, make


UNTIL = datetime(2026, 12, 1, tzinfo=timezone.utc)


def token_requests(sb: ZoomSandbox) -> int:
    return sb.log.counts["POST /oauth/token"]


def test_an_expired_token_is_renewed_mid_sync_without_losing_or_repeating_an_engagement(zoom):
    sb, make = zoom
    baseline = [r.external_id for p in make().read("engagements", until=UNTIL) for r in p.records]
    before = token_requests(sb)
    pages = make().read("engagements", until=UNTIL)
    got = [r.external_id for r in next(pages).records]
    sb.expire_tokens()  # the hour is up (or the app's tokens were revoked) between two pages
    got += [r.external_id for p in pages for r in p.records]
    assert got == baseline and len(set(got)) == len(got)
    assert token_requests(sb) - before == 1, "one renewal, shared by every later request"
    refused = [e for e in sb.log.entries if e[3] == 401]
    assert len(refused) == 1, "only the request that met the expired token was refused, and it was sent again"


def test_a_short_lived_token_is_renewed_before_it_runs_out(zoom):
    sb, make = zoom
    baseline = sorted(r.external_id for p in make().read("engagements", until=UNTIL) for r in p.records)
    sb.token_lifetime_s = 1
    sb.expire_tokens()
    sb.set_faults(latency_ms=60)  # the sync outlasts a token's lifetime
    before, t0 = token_requests(sb), time.monotonic()
    got = sorted(r.external_id for p in make().read("engagements", until=UNTIL) for r in p.records)
    elapsed = time.monotonic() - t0
    assert got == baseline
    assert elapsed > 1.5, "the read must outlast a token for this test to mean anything"
    assert token_requests(sb) - before >= 2, "a token lasting one second is renewed as the sync goes on"


def test_a_write_after_the_token_expired_lands_once(zoom):
    sb, make = zoom
    conn = make()
    book = next(b for b, v in sb.address_books.items() if v["address_book_name"] == "Customers")
    cid = next(c for c, v in sb.contacts.items() if v["address_book_id"] == book)
    sb.expire_tokens()
    out = conn.write("address_book_contacts", [OutboundRecord(key=f"golden-1|{cid}", external_id=cid,
                                                              payload={"display_name": "Renewed Token"})])
    assert out[0].status is WriteStatus.updated and sb.contacts[cid]["display_name"] == "Renewed Token"
    assert sb.log.counts["PATCH /v2/contact_center/address_books/{book_id}/contacts/{contact_id}"] == 1


def test_a_wrong_secret_against_the_sandbox_is_refused_before_any_api_call(zoom):
    sb, make = zoom
    with pytest.raises(AuthError) as exc:
        make(client_secret="rotated-yesterday").check()
    assert "OMNISYNC_ZOOM_CLIENT_SECRET" in str(exc.value)
    assert dict(sb.log.counts) == {"POST /oauth/token": 1}


def test_neither_the_secret_nor_a_token_reaches_a_log_or_an_error(zoom, caplog):
    sb, make = zoom
    caplog.set_level(logging.DEBUG)
    conn = make()
    pages = conn.read("engagements", until=UNTIL)
    next(pages)
    sb.expire_tokens()
    list(pages)
    errors = []
    for bad in ({"client_secret": "wrong-" + CLIENT_SECRET}, {"account_id": "someone-else"}):
        with pytest.raises(AuthError) as exc:
            make(**bad).check()
        errors.append(str(exc.value))
    tokens = list(sb.access_tokens)
    assert len(tokens) >= 3 and sb.tokens_issued >= 2
    text = caplog.text + "\n".join(errors) + repr(conn.tokens) + repr(conn.credentials)
    for secret in [CLIENT_SECRET, *tokens]:
        assert secret not in text
