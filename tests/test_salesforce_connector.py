"""The Salesforce connector over simple-salesforce against the TLS sandbox: full and incremental
reads with a compound cursor, ties, lost locators, deletes and merges, Collections writes with
per-record outcomes, the daily quota, faults survived, error translation."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from simple_salesforce.exceptions import SalesforceError

from connectors.credentials import SalesforceCredentials
from connectors.errors import AuthError, BadRequestError, QuotaExhaustedError, TransientError
from connectors.http import RetryPolicy
from connectors.salesforce import SalesforceConnector
from omnisync.records import Cursor, OutboundRecord, WriteStatus
from sandbox.framework import SandboxCluster
from sandbox.salesforce import SalesforceSandbox, sf_id

FIX = Path(__file__).parent / "fixtures" / "salesforce"
FAST = RetryPolicy(attempts=8, backoff_initial=0.02, backoff_max=0.2)


@pytest.fixture
def org(tmp_path):
    """(sandbox, connector factory) over https with the sandbox's test CA."""
    clusters = []

    def start(size: int = 600, seed: int = 1):
        sb = SalesforceSandbox(size=size, seed=seed)
        cluster = SandboxCluster([sb], workdir=tmp_path / str(len(clusters))).start()
        clusters.append(cluster)
        info = cluster.info()["salesforce"]

        def connect(**kw) -> SalesforceConnector:
            creds = {**info["credentials"], **kw.pop("creds", {})}
            kw.setdefault("policy", FAST)
            kw.setdefault("query_batch", 200)
            return SalesforceConnector(SalesforceCredentials(instance_url=info["base_url"], ca_bundle=info["ca_cert"],
                                                             **creds), **kw)
        return sb, connect

    yield start
    for c in clusters:
        c.stop()


def read_all(conn, stream="contacts", cursor=None):
    pages = list(conn.read(stream, cursor))
    return pages, [r for p in pages for r in p.records]


def test_full_read_then_incremental_returns_only_the_changes(org):
    sb, connect = org(size=900)
    conn = connect(overlap=timedelta(0))
    pages, full = read_all(conn)
    s = sb.summary()["Contact"]
    assert len(full) == len({r.external_id for r in full}) == s["live"] + s["deleted"] + s["merged"]
    assert len(pages) == 5 and conn.calls["GET /services/data/v59.0/queryAll/"] == 1
    assert [(r.modified_at, r.external_id) for r in full] == sorted((r.modified_at, r.external_id) for r in full)
    assert pages[-1].cursor.modified_at == full[-1].modified_at and pages[-1].cursor.last_id == full[-1].external_id

    edited = [sf_id("Contact", n) for n in (3, 40, 41)]
    for n in (3, 40, 41):
        sb.update("Contact", n, {"Title": "Buyer"})
    _, inc = read_all(connect(overlap=timedelta(0)), cursor=pages[-1].cursor)
    assert sorted(r.external_id for r in inc) == sorted(edited)
    assert all(r.payload["Title"] == "Buyer" for r in inc)


def test_records_sharing_one_modstamp_are_neither_skipped_nor_repeated_across_a_resume(org):
    sb, connect = org(size=500)
    at = sb.now_ms()  # after every seeded change
    sb.now_ms = lambda: at  # one bulk edit: 450 records saved in the same second
    live = [n for n in range(1, 500) if not sb.tables["Contact"].get(n).deleted][:450]
    for n in live:
        sb.update("Contact", n, {"Title": "Analyst"})
    start = Cursor(modified_at=datetime.fromtimestamp(at / 1000 - 1, tz=timezone.utc), last_id="")
    first = next(iter(connect(overlap=timedelta(0)).read("contacts", start)))
    assert len(first.records) == 200 and first.cursor.modified_at == datetime.fromtimestamp(at / 1000,
                                                                                           tz=timezone.utc)
    _, rest = read_all(connect(overlap=timedelta(0)), cursor=first.cursor)
    got = [r.external_id for r in first.records] + [r.external_id for r in rest]
    assert len(got) == len(set(got)) == 450
    assert set(got) == {sf_id("Contact", n) for n in live}


def test_a_lost_query_locator_restarts_exactly_after_the_last_row(org):
    sb, connect = org(size=700)
    conn = connect()
    _, baseline = read_all(connect())
    pages = conn.read("contacts")
    seen = list(next(pages).records)
    sb.locators.clear()  # 15 minutes idle, or more than 10 cursors opened elsewhere
    for page in pages:
        seen += page.records
    assert [r.external_id for r in seen] == [r.external_id for r in baseline]
    assert conn.calls["GET /services/data/v59.0/queryAll/"] == 2


def test_deletes_and_merges_arrive_in_order_with_the_survivor_named(org):
    sb, connect = org(size=300)
    pages, _ = read_all(connect())
    master, loser, gone = sf_id("Contact", 20), sf_id("Contact", 21), sf_id("Contact", 22)
    sb.merge(master, [loser])
    sb.delete("Contact", 22)
    _, inc = read_all(connect(), cursor=pages[-1].cursor)
    by_id = {r.external_id: r for r in inc}
    assert by_id[loser].deleted and by_id[loser].merged_into == master
    assert by_id[gone].deleted and by_id[gone].merged_into is None
    assert not by_id[master].deleted and by_id[master].merged_into is None


def test_leads_are_read_with_deletions_like_contacts(org):
    sb, connect = org(size=300)
    _, leads = read_all(connect(), "leads")
    exported = sb.export()["Lead"]
    assert {r.external_id for r in leads} == {r["Id"] for r in exported}
    assert {r.external_id for r in leads if r.deleted} == {r["Id"] for r in exported if r["IsDeleted"]}
    assert all(r.payload["Company"] for r in leads)


def test_tasks_read_only_calls_and_emails_with_their_contact(org):
    sb, connect = org(size=300)
    _, tasks = read_all(connect(), "tasks")
    live = [t for t in sb.export()["Task"] if t["TaskSubtype"] in ("Call", "Email")]
    assert {t.external_id for t in tasks} == {t["Id"] for t in live}
    hero = [t for t in tasks if t.payload["WhoId"] == sf_id("Contact", 1) and t.payload["TaskSubtype"] == "Call"]
    assert len(hero) >= 2


def test_writes_go_200_a_call_and_every_outcome_names_its_record(org):
    sb, connect = org(size=50)
    conn = connect()
    recs = [OutboundRecord(key=f"G{i}|new", match={"Omnisync_Golden_Id__c": f"G{i}"},
                           payload={"LastName": f"L{i}", "Email": "bad.address.example" if i % 50 == 7 else
                                    f"p{i}@example.org", "Omnisync_Golden_Id__c": f"G{i}"}) for i in range(450)]
    out = conn.write("contacts", recs)
    assert conn.calls["PATCH /services/data/v59.0/composite/sobjects/Contact/Omnisync_Golden_Id__c"] == 3
    assert [o.key for o in out] == [r.key for r in recs]
    failed = [o for o in out if not o.ok]
    assert [o.key for o in failed] == [f"G{i}|new" for i in range(450) if i % 50 == 7]
    assert all("field Email" in o.error and "INVALID_EMAIL_ADDRESS" in o.error and not o.retryable for o in failed)
    assert all("bad.address" not in o.error for o in failed)
    assert all(o.status is WriteStatus.created for o in out if o.ok)
    again = conn.write("contacts", [r for r, o in zip(recs, out) if o.ok][:5])
    assert [o.status for o in again] == [WriteStatus.updated] * 5
    assert [o.external_id for o in again] == [o.external_id for o in out if o.ok][:5]


def test_known_contacts_are_updated_by_id_and_unknown_ones_without_a_key_fail_clearly(org):
    sb, connect = org(size=50)
    conn = connect()
    target = sf_id("Contact", 2)
    out = conn.write("contacts", [OutboundRecord(key="G2|x", external_id=target, payload={"Title": "CFO"}),
                                  OutboundRecord(key="G3|new", payload={"LastName": "Nobody"})])
    assert out[0].status is WriteStatus.updated and out[0].external_id == target
    assert sb.tables["Contact"].get(2).fields["Title"] == "CFO"
    assert not out[1].ok and "Omnisync_Golden_Id__c" in out[1].error and "G3|new" in out[1].error


def test_activities_upsert_on_the_interaction_id_and_hang_on_the_contact(org):
    sb, connect = org(size=50)
    conn = connect()
    who = sf_id("Contact", 1)
    recs = [OutboundRecord(key=f"zoom:E{i}", associations={"contact": who},
                           payload={"TaskSubtype": "Call", "Subject": f"Zoom call {i}", "Description": "refund"})
            for i in range(3)]
    first = conn.write("tasks", recs)
    second = conn.write("tasks", recs)
    assert [o.status for o in first] == [WriteStatus.created] * 3 and [o.status for o in second] == [
        WriteStatus.updated] * 3
    assert [o.external_id for o in first] == [o.external_id for o in second]
    _, tasks = read_all(conn, "tasks")
    mine = {t.payload["Omnisync_Interaction_Id__c"]: t.payload for t in tasks
            if t.payload["Omnisync_Interaction_Id__c"]}
    assert set(mine) == {"zoom:E0", "zoom:E1", "zoom:E2"}
    assert all(t["WhoId"] == who and t["Status"] == "Completed" for t in mine.values())


def test_the_daily_quota_stops_the_read_cleanly_with_a_resume_time(org):
    sb, connect = org(size=900)
    sb.set_faults(daily_quota=3)
    conn = connect()
    pages = []
    with pytest.raises(QuotaExhaustedError) as exc:
        for page in conn.read("contacts"):
            pages.append(page)
    assert len(pages) == 3 and exc.value.resume_at > datetime.now(timezone.utc)
    assert "quota" in str(exc.value).lower() and "checkpoint" in str(exc.value).lower()


def test_the_usage_header_stops_calls_before_salesforce_refuses_them(org):
    sb, connect = org(size=50)
    sb.daily_limit = 100
    sb.calls_used = 97
    conn = connect()
    conn.check()  # answered with api-usage=98/100: the 2% reserve is reached
    before = sb.calls_used
    with pytest.raises(QuotaExhaustedError):
        conn.check()
    assert sb.calls_used == before, "no request may be sent once the reserve is reached"


def test_server_errors_timeouts_and_truncated_bodies_are_survived(org):
    sb, connect = org(size=900)
    _, baseline = read_all(connect())
    sb.set_faults(rate_5xx=0.15, rate_timeout=0.1, timeout_stall_s=0.6, rate_truncate=0.1, seed=5)
    conn = connect(timeout=0.3)
    _, got = read_all(conn)
    assert [r.external_id for r in got] == [r.external_id for r in baseline]
    assert conn.retries > 0 and sb.log.faults_injected["5xx"] + sb.log.faults_injected["timeout"] > 0
    out = conn.write("contacts", [OutboundRecord(key=f"G{i}|new", match={"Omnisync_Golden_Id__c": f"G{i}"},
                                                 payload={"LastName": "F", "Omnisync_Golden_Id__c": f"G{i}"})
                                  for i in range(400)])
    assert all(o.ok for o in out)
    assert len({o.external_id for o in out}) == 400, "a retried upsert never creates twice"


def test_a_refused_static_session_is_an_auth_error_and_is_not_retried(org):
    sb, connect = org(size=20)
    with pytest.raises(AuthError) as exc:
        connect(creds={"session_id": "expired", "client_id": None, "client_secret": None}).check()
    assert "session" in str(exc.value) and "credentials" in str(exc.value)
    assert "OMNISYNC_SALESFORCE_CLIENT_ID" in str(exc.value), "the message says how to make sessions renew"
    assert sum(sb.log.counts.values()) == 1


def test_the_query_quotes_hostile_cursor_values(org):
    sb, connect = org(size=20)
    conn = connect(overlap=timedelta(0))
    when = datetime(2026, 11, 1, tzinfo=timezone.utc)
    soql = conn.soql("contacts", (when, "x' OR Id != '"), None, None)
    assert "Id > 'x\\' OR Id != \\''" in soql and "SystemModstamp > 2026-11-01T00:00:00+00:00" in soql
    later = Cursor(modified_at=datetime(2027, 6, 1, tzinfo=timezone.utc), last_id="x' OR Id != '")
    _, got = read_all(conn, cursor=later)
    assert got == []


def test_erase_deletes_and_counts_an_already_deleted_record_as_done(org):
    sb, connect = org(size=50)
    conn = connect()
    ids = [sf_id("Contact", 4), sf_id("Contact", 5)]
    first = conn.erase("contacts", ids)
    assert [o.status for o in first] == [WriteStatus.deleted] * 2 and "recycle bin" in first[0].error
    assert conn.erase("contacts", ids[:1])[0].status is WriteStatus.unchanged
    assert sb.tables["Contact"].get(4).deleted


@pytest.mark.parametrize("fixture, cls, code", [
    ("error_403_request_limit.json", QuotaExhaustedError, "REQUEST_LIMIT_EXCEEDED"),
    ("error_401_invalid_session.json", AuthError, "INVALID_SESSION_ID"),
    ("error_400_malformed_query.json", BadRequestError, "MALFORMED_QUERY"),
    ("error_503_server_unavailable.json", TransientError, "SERVER_UNAVAILABLE"),
])
def test_salesforce_errors_translate_into_the_shared_classes(fixture, cls, code):
    doc = json.loads((FIX / fixture).read_text())
    conn = SalesforceConnector(SalesforceCredentials(instance_url="https://example.my.salesforce.com",
                                                     session_id="s"))
    err = conn._translate(SalesforceError("https://x", doc["status"], "query", doc["body"]), "query contacts")
    assert type(err) is cls and err.code == code and err.status == doc["status"]
    assert err.retryable is (cls is TransientError)


def test_collection_results_are_tied_to_inputs_by_position_and_scrubbed():
    doc = json.loads((FIX / "collections_upsert_partial.json").read_text())
    conn = SalesforceConnector(SalesforceCredentials(instance_url="https://example.my.salesforce.com",
                                                     session_id="s"))
    recs = [OutboundRecord(key=f"G{i}|new", payload={"LastName": "X"}) for i in range(3)]
    sent, outcomes = [], {}
    conn._collection("contacts", "Contact", [(i, r, {"LastName": "X"}) for i, r in enumerate(recs)], outcomes,
                     lambda body: sent.append(body) or doc["body"])
    assert sent[0]["allOrNone"] is False and sent[0]["records"][0]["attributes"] == {"type": "Contact"}
    assert [outcomes[i].status for i in range(3)] == [WriteStatus.created, WriteStatus.failed, WriteStatus.updated]
    assert outcomes[0].external_id == "003Dn000000002sIAA" and outcomes[2].external_id == "003Dn0000000005IAA"
    assert "G1|new" in outcomes[1].error and "field Email" in outcomes[1].error and "example" not in outcomes[1].error


def test_a_quota_reached_mid_write_keeps_what_was_confirmed_and_marks_the_rest_retryable(org):
    sb, connect = org(size=50)
    conn = connect()
    sb.set_faults(daily_quota=1)  # the first Collections call passes, the second is refused
    recs = [OutboundRecord(key=f"G{i}|new", match={"Omnisync_Golden_Id__c": f"G{i}"},
                           payload={"LastName": "Q", "Omnisync_Golden_Id__c": f"G{i}"}) for i in range(300)]
    out = conn.write("contacts", recs)
    assert all(o.ok for o in out[:200])
    assert all(not o.ok and o.retryable and "quota" in o.error.lower() for o in out[200:])


def test_an_activity_for_a_contact_that_no_longer_exists_fails_alone_with_a_hint(org):
    sb, connect = org(size=50)
    sb.delete("Contact", 9)
    out = connect().write("tasks", [
        OutboundRecord(key="zoom:E1", associations={"contact": sf_id("Contact", 9)}, payload={"Subject": "Call"}),
        OutboundRecord(key="zoom:E2", associations={"contact": sf_id("Contact", 1)}, payload={"Subject": "Call"})])
    assert not out[0].ok and "INVALID_CROSS_REFERENCE_KEY" in out[0].error and "sync contacts" in out[0].error
    assert out[1].status is WriteStatus.created


def test_a_lost_locator_inside_the_overlap_window_still_rereads_the_whole_window(org):
    sb, connect = org(size=500)
    at = sb.now_ms()
    sb.now_ms = lambda: at
    live = [n for n in range(1, 500) if not sb.tables["Contact"].get(n).deleted][:450]
    for n in live:
        sb.update("Contact", n, {"Title": "Analyst"})
    ids = sorted(sf_id("Contact", n) for n in live)
    stored = Cursor(modified_at=datetime.fromtimestamp(at / 1000, tz=timezone.utc), last_id=ids[399])
    pages = connect().read("contacts", stored)  # default overlap: re-read the last five minutes
    got = [r.external_id for r in next(pages).records]
    sb.locators.clear()
    got += [r.external_id for p in pages for r in p.records]
    assert got == ids, "rows between the last delivered one and the stored cursor are not skipped"
