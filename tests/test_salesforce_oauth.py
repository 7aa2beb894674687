"""Salesforce's OAuth client credentials flow against the TLS sandbox: one session fetched and shared,
renewed when Salesforce ends it (between query pages, while Bulk 2.0 jobs run, before a write) with
no record lost or written twice, a refused client failing fast with what to fix, and neither the
secret nor a session ever written to a log or an error."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import respx

from connectors.credentials import SalesforceCredentials
from connectors.errors import AuthError
from connectors.http import RetryPolicy
from connectors.salesforce import SalesforceConnector, _fetch_token
from omnisync.records import OutboundRecord
from sandbox.framework import SandboxCluster
from sandbox.salesforce import CLIENT_SECRET, SESSION_ID, SalesforceSandbox

FIX = Path(__file__).parent / "fixtures" / "salesforce"
FAST = RetryPolicy(attempts=8, backoff_initial=0.02, backoff_max=0.2)
TOKEN = "POST /services/oauth2/token"


@pytest.fixture
def org(tmp_path):
    sb = SalesforceSandbox(size=900, seed=4)
    with SandboxCluster([sb], workdir=tmp_path) as cluster:
        info = cluster.info()["salesforce"]

        def connect(creds: dict | None = None, **kw) -> SalesforceConnector:
            kw.setdefault("policy", FAST)
            kw.setdefault("query_batch", 200)
            kw.setdefault("overlap", timedelta(0))
            return SalesforceConnector(SalesforceCredentials(instance_url=info["base_url"], ca_bundle=info["ca_cert"],
                                                             **{**info["credentials"], **(creds or {})}), **kw)
        yield sb, connect


def test_the_token_request_is_the_client_credentials_flow_and_its_answer_names_the_instance():
    creds = SalesforceCredentials(instance_url="https://example.my.salesforce.com", client_id="3MVG9.app",
                                  client_secret="consumer-secret")
    answer = json.loads((FIX / "oauth_token.json").read_text())
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post("https://example.my.salesforce.com/services/oauth2/token").respond(200, json=answer)
        issued = _fetch_token(creds, 10.0)
    assert dict(parse_qsl(route.calls[0].request.content.decode())) == {
        "grant_type": "client_credentials", "client_id": "3MVG9.app", "client_secret": "consumer-secret"}
    assert issued.value == answer["access_token"] and issued.lifetime is None, "Salesforce names no lifetime"
    assert issued.extra["instance_url"] == "https://example.my.salesforce.com"
    assert "signature" not in issued.extra and "access_token" not in issued.extra


def test_a_refused_connected_app_is_an_auth_error_with_salesforces_reason():
    creds = SalesforceCredentials(instance_url="https://example.my.salesforce.com", client_id="3MVG9.app",
                                  client_secret="consumer-secret")
    with respx.mock(assert_all_called=True) as mock:
        mock.post("https://example.my.salesforce.com/services/oauth2/token").respond(
            400, json=json.loads((FIX / "oauth_error_400_invalid_client.json").read_text()))
        with pytest.raises(AuthError) as exc:
            _fetch_token(creds, 10.0)
    assert exc.value.code == "invalid_client" and "invalid client credentials" in str(exc.value)
    assert not exc.value.retryable and "consumer-secret" not in str(exc.value)


def ids(conn, stream="contacts") -> list[str]:
    return [r.external_id for p in conn.read(stream) for r in p.records]


def refusals(sb) -> list[str]:
    return [endpoint for _, _, endpoint, status in sb.log.entries if status == 401]


def people(n: int, prefix: str) -> list[OutboundRecord]:
    return [OutboundRecord(key=f"{prefix}{i}|new", match={"Omnisync_Golden_Id__c": f"{prefix}{i}"},
                           payload={"LastName": f"L{i}", "Omnisync_Golden_Id__c": f"{prefix}{i}"}) for i in range(n)]


def holders(sb, golden: str) -> int:
    return len(sb.tables["Contact"].external_index("Omnisync_Golden_Id__c").get(golden, ()))


def test_one_session_is_fetched_with_the_client_credentials_and_shared_by_later_connectors(org):
    sb, connect = org
    conn = connect()
    conn.check()
    ids(conn)
    connect().check()  # the next flow run in this process
    assert sb.log.counts[TOKEN] == 1 and not refusals(sb)
    assert conn.sf.sf_instance == sb.base_url.removeprefix("https://"), "the SDK uses the instance the token names"


def test_a_session_ended_between_query_pages_is_renewed_without_losing_or_repeating_a_record(org):
    sb, connect = org
    baseline = ids(connect())
    conn = connect()
    pages = conn.read("contacts")
    got = [r.external_id for r in next(pages).records]
    before = sb.log.counts[TOKEN]
    sb.expire_sessions()  # the org's timeout, or an admin revoking the app's sessions
    got += [r.external_id for p in pages for r in p.records]
    assert got == baseline and len(set(got)) == len(got)
    assert sb.log.counts[TOKEN] - before == 1
    assert refusals(sb) == ["/services/data/v59.0/queryAll/" + refusals(sb)[0].rsplit("/", 1)[1]], \
        "only the queryMore that met the ended session was refused, and it was sent again"
    fresh = "Bearer " + conn.sf.session_id
    assert conn.sf.headers["Authorization"] == fresh and conn.sf.session_id in sb.sessions, \
        "the SDK client holds the renewed session"


def test_bulk_jobs_outlive_the_sessions_that_started_them(org):
    sb, connect = org
    baseline = sorted(ids(connect()))
    sb.session_lifetime_s = 0.3
    sb.bulk_job_s = 0.8
    sb.expire_sessions()
    conn = connect(bulk_threshold=300, bulk_page=150, bulk_poll_s=0.2, bulk_write_threshold=300)
    got = sorted(ids(conn))
    assert got == baseline
    out = conn.write("contacts", people(400, "GB"))
    assert all(o.ok for o in out) and len({o.external_id for o in out}) == 400
    assert all(holders(sb, f"GB{i}") == 1 for i in range(400)), "a renewed call never writes twice"
    assert conn.bulk_jobs, "the reads and writes went through Bulk 2.0"
    assert any("/jobs/" in e for e in refusals(sb)), "a Bulk 2.0 call met an ended session and was renewed"


def test_a_collections_write_after_the_session_ended_upserts_each_record_once(org):
    sb, connect = org
    conn = connect()
    conn.check()
    sb.expire_sessions()
    out = conn.write("contacts", people(250, "GC"))
    assert all(o.ok for o in out)
    assert all(holders(sb, f"GC{i}") == 1 for i in range(250))
    assert len(refusals(sb)) == 1


def test_a_session_given_by_hand_is_used_until_refused_then_the_connected_app_takes_over(org):
    sb, connect = org
    conn = connect({"session_id": SESSION_ID})
    conn.check()
    assert sb.log.counts[TOKEN] == 0
    sb.expire_sessions()
    conn.check()
    assert sb.log.counts[TOKEN] == 1


def test_a_refused_client_secret_fails_fast_naming_what_to_fix(org):
    sb, connect = org
    with pytest.raises(AuthError) as exc:
        connect({"client_secret": "rotated-last-night"}).check()
    message = str(exc.value)
    assert "invalid_client" in message and "client_secret" in message and "My Domain" in message
    assert "OMNISYNC_SALESFORCE_CLIENT_SECRET" in message and "omnisync-salesforce" in message
    assert "rotated-last-night" not in message
    assert dict(sb.log.counts) == {TOKEN: 1}, "refused once, not retried, no API call made"
    assert sb.calls_used == 0


def test_neither_the_secret_nor_a_session_reaches_a_log_or_an_error(org, caplog):
    sb, connect = org
    caplog.set_level(logging.DEBUG)
    conn = connect()
    pages = conn.read("contacts")
    next(pages)
    sb.expire_sessions()
    list(pages)
    errors = []
    for bad in ({"client_secret": "x" + CLIENT_SECRET}, {"client_id": "3MVG9someone.else"}):
        with pytest.raises(AuthError) as exc:
            connect(bad).check()
        errors.append(str(exc.value))
    sessions = [s for s in sb.sessions if s != SESSION_ID]
    assert len(sessions) >= 2
    text = caplog.text + "\n".join(errors) + repr(conn.tokens) + repr(conn.creds)
    for secret in [CLIENT_SECRET, *sessions]:
        assert secret not in text
