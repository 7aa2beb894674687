"""Bulk API 2.0: the sandbox's query and ingest jobs behave as Salesforce's do (states, CSV, locators,
result files, validation, limits), the real SDK's bulk2 module works against them unchanged, and the
connector reads and writes through them above its thresholds without losing, repeating or
misattributing a record."""

from __future__ import annotations

import csv
import io
import math
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from simple_salesforce import Salesforce

from connectors.errors import ConnectorError
from connectors.salesforce import _bulk_error, _cell, _record_error
from omnisync.records import OutboundRecord, WriteStatus
from sandbox.framework import SandboxCluster
from sandbox.salesforce import SalesforceSandbox, parse_id, sf_id
from tests.test_salesforce_connector import org, read_all  # noqa: F401  (org is a fixture)
from tests.test_salesforce_sandbox import served  # noqa: F401  (fixture)

FIX = Path(__file__).parent / "fixtures" / "salesforce"
V = "/services/data/v59.0"
INGEST = "/services/data/v59.0/jobs/ingest"
BULK = dict(bulk_poll_s=0.01)


def wait_done(http, url: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = http.get(url).json()
        if info["state"] in ("JobComplete", "Failed", "Aborted") or time.monotonic() > deadline:
            return info
        time.sleep(0.02)


def ingest(http, body: dict, data: str) -> dict:
    job = http.post(INGEST, json=body).json()
    assert http.put(f"{INGEST}/{job['id']}/batches", content=data.encode(),
                    headers={"Content-Type": "text/csv"}).status_code == 201
    http.patch(f"{INGEST}/{job['id']}", json={"state": "UploadComplete"}).raise_for_status()
    return wait_done(http, f"{INGEST}/{job['id']}")


def table(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


@pytest.fixture
def http(served):
    """An httpx client on a fresh 300-contact sandbox (``http.sb`` is the sandbox)."""
    sb = SalesforceSandbox(size=300, seed=2)
    client = served(sb)
    client.sb = sb
    return client


# --- sandbox: query jobs ---------------------------------------------------------------------------

def test_a_query_job_runs_upload_complete_then_in_progress_then_complete(http):
    http.sb.bulk_job_s = 0.3
    job = http.post(f"{V}/jobs/query", json={"operation": "query", "query": "SELECT Id FROM Contact"}).json()
    assert (job["state"], job["jobType"], job["operation"], job["object"]) == ("UploadComplete", "V2Query", "query",
                                                                               "Contact")
    early = http.get(f"{V}/jobs/query/{job['id']}/results")
    assert early.status_code == 400 and early.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    assert http.get(f"{V}/jobs/query/{job['id']}").json()["state"] == "InProgress"
    done = wait_done(http, f"{V}/jobs/query/{job['id']}")
    live = http.sb.summary()["Contact"]["live"]
    assert done["state"] == "JobComplete" and done["numberRecordsProcessed"] == live
    refused = http.patch(f"{V}/jobs/query/{job['id']}", json={"state": "Aborted"})
    assert refused.status_code == 400 and refused.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    assert http.delete(f"{V}/jobs/query/{job['id']}").status_code == 204
    assert http.get(f"{V}/jobs/query/{job['id']}").status_code == 404


def test_a_query_job_is_created_at_once_and_stays_in_progress_until_its_rows_are_selected(http, monkeypatch):
    # Salesforce answers the create call before running the query: a million-row job must not
    # hold the call past a client's timeout (the sandbox used to select the rows inside it)
    http.sb.bulk_job_s = 0.0
    release, real = threading.Event(), http.sb._select

    def slow_select(*a, **kw):
        assert release.wait(10)
        return real(*a, **kw)

    monkeypatch.setattr(http.sb, "_select", slow_select)
    t0 = time.monotonic()
    job = http.post(f"{V}/jobs/query", json={"operation": "query", "query": "SELECT Id FROM Contact"}).json()
    assert job["state"] == "UploadComplete" and time.monotonic() - t0 < 5
    time.sleep(0.05)
    assert http.get(f"{V}/jobs/query/{job['id']}").json()["state"] == "InProgress"
    release.set()
    done = wait_done(http, f"{V}/jobs/query/{job['id']}")
    assert done["state"] == "JobComplete" and done["numberRecordsProcessed"] == http.sb.summary()["Contact"]["live"]


def test_query_results_quote_every_value_leave_nulls_empty_and_write_datetimes_in_utc(http):
    sb = http.sb
    rec = sb.update("Contact", 2, {"Title": 'Said "hi", then\nleft', "Phone": None, "DoNotCall": True})
    cid = sf_id("Contact", 2)
    q = f"SELECT Id, Title, Phone, DoNotCall, SystemModstamp FROM Contact WHERE Id = '{cid}'"
    job = http.post(f"{V}/jobs/query", json={"operation": "query", "query": q}).json()
    wait_done(http, f"{V}/jobs/query/{job['id']}")
    resp = http.get(f"{V}/jobs/query/{job['id']}/results")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(rec.ts // 1000))
    assert resp.headers["content-type"].startswith("text/csv")
    assert resp.text == ('"Id","Title","Phone","DoNotCall","SystemModstamp"\n'
                         f'"{cid}","Said ""hi"", then\nleft","","true","{stamp}"\n')
    assert resp.headers["Sforce-NumberOfRecords"] == "1" and resp.headers["Sforce-Locator"] == "null"


def test_query_results_page_by_locator_up_to_max_records_in_id_order(http):
    job = http.post(f"{V}/jobs/query", json={"operation": "queryAll", "query": "SELECT Id FROM Contact"}).json()
    wait_done(http, f"{V}/jobs/query/{job['id']}")
    ids, counts, locators, locator = [], [], [], None
    while locator != "null":
        resp = http.get(f"{V}/jobs/query/{job['id']}/results",
                        params={"maxRecords": 120, **({"locator": locator} if locator else {})})
        rows = table(resp.text)
        counts.append((len(rows), int(resp.headers["Sforce-NumberOfRecords"])))
        ids += [r["Id"] for r in rows]
        locator = resp.headers["Sforce-Locator"]
        locators.append(locator)
    assert counts == [(120, 120), (120, 120), (60, 60)] and locators[-1] == "null"
    assert ids == sorted(ids) and len(set(ids)) == 300, "PK chunking: Id order, every row once"
    for params, code in (({"maxRecords": 0}, "INVALIDMAXRECORDS"), ({"maxRecords": "many"}, "INVALIDMAXRECORDS"),
                         ({"locator": "bm9wZQ=="}, "INVALIDLOCATOR"), ({"locator": "???"}, "INVALIDLOCATOR")):
        bad = http.get(f"{V}/jobs/query/{job['id']}/results", params=params)
        assert bad.status_code == 400 and bad.json()[0]["errorCode"] == code


def test_a_query_all_job_includes_deleted_and_merged_rows_and_a_query_job_does_not(http):
    counts = {}
    for op in ("query", "queryAll"):
        job = http.post(f"{V}/jobs/query", json={"operation": op, "query": "SELECT Id, IsDeleted FROM Contact"}).json()
        wait_done(http, f"{V}/jobs/query/{job['id']}")
        rows = table(http.get(f"{V}/jobs/query/{job['id']}/results").text)
        counts[op] = (len(rows), sum(r["IsDeleted"] == "true" for r in rows))
    s = http.sb.summary()["Contact"]
    assert counts == {"query": (s["live"], 0), "queryAll": (300, s["deleted"] + s["merged"])}
    assert s["deleted"] + s["merged"] > 0


@pytest.mark.parametrize("body, code", [
    ({"operation": "insert", "query": "SELECT Id FROM Contact"}, "INVALIDJOB"),
    ({"operation": "query", "query": "SELECT COUNT() FROM Contact"}, "MALFORMED_QUERY"),
    ({"operation": "query", "query": "SELECT Id FROM Contact", "contentType": "JSON"}, "INVALIDJOB"),
    ({"operation": "query", "query": "SELECT Id FROM Contact", "columnDelimiter": "SPACE"}, "INVALIDJOB"),
    ({"operation": "query", "query": "SELECT Shoe_Size__c FROM Contact"}, "INVALID_FIELD"),
])
def test_query_jobs_refuse_what_salesforce_refuses(http, body, code):
    resp = http.post(f"{V}/jobs/query", json=body)
    assert resp.status_code == 400 and resp.json()[0]["errorCode"] == code


def test_the_sdks_own_bulk2_helpers_work_against_the_sandbox_unchanged(tmp_path):
    with SandboxCluster([SalesforceSandbox(size=120, seed=2)], workdir=tmp_path) as cluster:
        info = cluster.info()["salesforce"]
        session = requests.Session()
        session.trust_env = False  # else REQUESTS_CA_BUNDLE replaces the sandbox's CA
        session.verify = info["ca_cert"]
        creds = info["credentials"]
        token = session.post(info["base_url"] + "/services/oauth2/token", data={
            "grant_type": "client_credentials", "client_id": creds["client_id"],
            "client_secret": creds["client_secret"]}).json()
        sdk_round_trip(Salesforce(instance_url=token["instance_url"], session_id=token["access_token"],
                                  version="59.0", session=session))


def sdk_round_trip(sf: Salesforce) -> None:
    pages = list(sf.bulk2.Contact.query_all("SELECT Id, LastName FROM Contact", max_records=50, wait=0.02))
    assert [len(table(p)) for p in pages] == [50, 50, 20]
    recs = [{"LastName": f"S{i}", "Email": "nope" if i == 4 else f"s{i}@example.org",
             "Omnisync_Golden_Id__c": f"G-sdk-{i}"} for i in range(10)]
    res = sf.bulk2.Contact.upsert(records=recs, external_id_field="Omnisync_Golden_Id__c", wait=0.02)
    assert [(r["numberRecordsProcessed"], r["numberRecordsFailed"]) for r in res] == [(10, 1)]
    out = sf.bulk2.Contact.get_all_ingest_records(res[0]["job_id"])
    assert len(out["successfulRecords"]) == 9 and out["unprocessedRecords"] == []
    assert out["failedRecords"][0]["Omnisync_Golden_Id__c"] == "G-sdk-4"
    assert out["failedRecords"][0]["sf__Error"].startswith("INVALID_EMAIL_ADDRESS:")


# --- sandbox: ingest jobs ---------------------------------------------------------------------------

def test_an_ingest_job_runs_open_to_complete_and_reports_each_row_with_the_row_as_sent(http):
    sb = http.sb
    job = http.post(INGEST, json={"object": "Contact", "operation": "upsert", "contentType": "CSV",
                                  "externalIdFieldName": "Omnisync_Golden_Id__c", "lineEnding": "LF"}).json()
    assert (job["state"], job["jobType"], job["externalIdFieldName"]) == ("Open", "V2Ingest", "Omnisync_Golden_Id__c")
    assert job["contentUrl"] == f"services/data/v59.0/jobs/ingest/{job['id']}/batches"
    data = ("Omnisync_Golden_Id__c,LastName,Email,DoNotCall\n"
            "G0,Ng,ng@example.org,true\nG1,Broken,broken,false\nG2,\"Lee, Jr.\",#N/A,\n")
    put = http.put(f"{INGEST}/{job['id']}/batches", content=data.encode(), headers={"Content-Type": "text/csv"})
    assert put.status_code == 201 and put.content == b""
    sb.bulk_job_s = 0.3
    closed = http.patch(f"{INGEST}/{job['id']}", json={"state": "UploadComplete"}).json()
    assert closed["state"] == "UploadComplete"
    early = http.get(f"{INGEST}/{job['id']}/successfulResults/")
    assert early.status_code == 400 and early.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    assert http.get(f"{INGEST}/{job['id']}").json()["state"] == "InProgress"
    done = wait_done(http, f"{INGEST}/{job['id']}")
    assert (done["state"], done["numberRecordsProcessed"], done["numberRecordsFailed"]) == ("JobComplete", 3, 1)
    ok = http.get(f"{INGEST}/{job['id']}/successfulResults/").text
    by_gid = {}
    for n in (sb.tables["Contact"].n + 1, sb.tables["Contact"].n + 2):
        by_gid[sb.tables["Contact"].get(n).fields["Omnisync_Golden_Id__c"]] = sf_id("Contact", n)
    assert ok == ('"sf__Id","sf__Created",Omnisync_Golden_Id__c,LastName,Email,DoNotCall\n'
                  f'"{by_gid["G0"]}","true","G0","Ng","ng@example.org","true"\n'
                  f'"{by_gid["G2"]}","true","G2","Lee, Jr.","#N/A",""\n')
    bad = http.get(f"{INGEST}/{job['id']}/failedResults").text
    assert bad == ('"sf__Id","sf__Error",Omnisync_Golden_Id__c,LastName,Email,DoNotCall\n'
                   '"","INVALID_EMAIL_ADDRESS:Email: invalid email address: broken:Email --","G1","Broken","broken",'
                   '"false"\n')
    for path in ("unprocessedrecords/", "unprocessedRecords"):
        assert http.get(f"{INGEST}/{job['id']}/{path}").text == "Omnisync_Golden_Id__c,LastName,Email,DoNotCall\n"
    lee = sb.tables["Contact"].get(parse_id(by_gid["G2"])[1]).fields
    assert lee["Email"] is None and lee["DoNotCall"] is False


def test_an_empty_cell_leaves_a_field_as_it_is_and_n_a_clears_it(http):
    sb = http.sb
    before = sb.tables["Contact"].get(5).fields
    assert before["LastName"] and before["MailingCity"]
    cid = sf_id("Contact", 5)
    info = ingest(http, {"object": "Contact", "operation": "update"},
                  f"Id,Title,LastName,MailingCity\n{cid},CFO,,#N/A\n")
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (1, 0)
    after = sb.tables["Contact"].get(5).fields
    assert (after["Title"], after["LastName"], after["MailingCity"]) == ("CFO", before["LastName"], None)
    ok = table(http.get(f"{INGEST}/{info['id']}/successfulResults").text)
    assert ok[0]["sf__Id"] == cid and ok[0]["sf__Created"] == "false"


def test_a_job_takes_one_upload_only(http):
    job = http.post(INGEST, json={"object": "Contact", "operation": "insert"}).json()
    for _ in range(2):
        http.put(f"{INGEST}/{job['id']}/batches", content=b"LastName\nA\n", headers={"Content-Type": "text/csv"})
    close = http.patch(f"{INGEST}/{job['id']}", json={"state": "UploadComplete"})
    assert close.status_code == 400 and close.json()[0]["errorCode"] == "INVALIDJOB"
    assert "only do 'PUT' once" in close.json()[0]["message"]
    json_body = http.put(f"{INGEST}/{job['id']}/batches", json={"LastName": "A"})
    assert json_body.status_code == 400


def test_an_unknown_column_fails_the_whole_job_and_leaves_every_row_unprocessed(http):
    info = ingest(http, {"object": "Contact", "operation": "insert"}, "LastName,Shoe_Size__c\nA,42\nB,43\n")
    assert info["state"] == "Failed" and info["errorMessage"] == "InvalidBatch : Field name not found : Shoe_Size__c"
    assert info["numberRecordsProcessed"] == 0
    assert table(http.get(f"{INGEST}/{info['id']}/unprocessedrecords").text) == [
        {"LastName": "A", "Shoe_Size__c": "42"}, {"LastName": "B", "Shoe_Size__c": "43"}]
    crlf = ingest(http, {"object": "Contact", "operation": "insert"}, "LastName\r\nA\r\n")
    assert crlf["state"] == "Failed" and "LineEnding" in crlf["errorMessage"]


def test_an_upsert_on_a_shared_golden_id_or_a_key_twice_in_one_job_fails_those_rows_only(http):
    sb = http.sb
    for n in (3, 4):
        sb.update("Contact", n, {"Omnisync_Golden_Id__c": "G-dup"})
    info = ingest(http, {"object": "Contact", "operation": "upsert", "externalIdFieldName": "Omnisync_Golden_Id__c"},
                  "Omnisync_Golden_Id__c,LastName\nG-dup,CFO\nG-twice,A\nG-twice,B\nG-once,C\n,D\n")
    failed = {r["Omnisync_Golden_Id__c"] + "/" + r["LastName"]: r["sf__Error"]
              for r in table(http.get(f"{INGEST}/{info['id']}/failedResults").text)}
    assert set(failed) == {"G-dup/CFO", "G-twice/A", "G-twice/B", "/D"}
    assert failed["G-dup/CFO"].startswith("DUPLICATE_EXTERNAL_ID:") and failed["G-dup/CFO"].endswith(
        ":Omnisync_Golden_Id__c --")
    assert failed["G-twice/A"].startswith("DUPLICATE_EXTERNAL_ID:Duplicate external id specified: G-twice")
    assert failed["/D"] == "MISSING_ARGUMENT:Omnisync_Golden_Id__c not specified:--"
    assert [r["Omnisync_Golden_Id__c"] for r in table(http.get(f"{INGEST}/{info['id']}/successfulResults").text)] \
        == ["G-once"]


def test_results_of_a_large_job_come_in_no_particular_order_but_all_of_them(http):
    rows = "".join(f"G{i},N{i}\n" for i in range(1000))
    info = ingest(http, {"object": "Contact", "operation": "upsert", "externalIdFieldName": "Omnisync_Golden_Id__c"},
                  "Omnisync_Golden_Id__c,LastName\n" + rows)
    got = [r["Omnisync_Golden_Id__c"] for r in table(http.get(f"{INGEST}/{info['id']}/successfulResults").text)]
    assert sorted(got) == sorted(f"G{i}" for i in range(1000)) and got != [f"G{i}" for i in range(1000)]


@pytest.mark.parametrize("body", [
    {"object": "Contact", "operation": "merge"},
    {"object": "Contact", "operation": "hardDelete"},
    {"object": "Contact", "operation": "upsert"},
    {"object": "Contact", "operation": "upsert", "externalIdFieldName": "Email"},
    {"object": "Opportunity", "operation": "insert"},
    {"object": "Contact", "operation": "insert", "contentType": "JSON"},
])
def test_ingest_jobs_salesforce_would_refuse_are_refused_at_creation(http, body):
    resp = http.post(INGEST, json=body)
    assert resp.status_code == 400 and resp.json()[0]["errorCode"] == "INVALIDJOB" and resp.json()[0]["message"]


def test_an_aborted_job_writes_nothing_and_lists_its_rows_unprocessed(http):
    sb = http.sb
    before = sb.summary()["Contact"]["live"]
    job = http.post(INGEST, json={"object": "Contact", "operation": "insert"}).json()
    http.put(f"{INGEST}/{job['id']}/batches", content=b"LastName\nA\nB\n", headers={"Content-Type": "text/csv"})
    still_open = http.delete(f"{INGEST}/{job['id']}")
    assert still_open.status_code == 400 and still_open.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    assert http.patch(f"{INGEST}/{job['id']}", json={"state": "Aborted"}).json()["state"] == "Aborted"
    assert table(http.get(f"{INGEST}/{job['id']}/unprocessedrecords").text) == [{"LastName": "A"},
                                                                               {"LastName": "B"}]
    assert sb.summary()["Contact"]["live"] == before
    assert http.delete(f"{INGEST}/{job['id']}").status_code == 204
    assert http.get(f"{INGEST}/{job['id']}").status_code == 404


def test_a_delete_job_deletes_by_id_and_reports_a_record_already_gone(http):
    sb = http.sb
    sb.delete("Contact", 8)
    ids = [sf_id("Contact", n) for n in (6, 7, 8)]
    info = ingest(http, {"object": "Contact", "operation": "delete"}, "Id\n" + "\n".join(ids) + "\n")
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (3, 1)
    assert sb.tables["Contact"].get(6).deleted and sb.tables["Contact"].get(7).deleted
    bad = table(http.get(f"{INGEST}/{info['id']}/failedResults").text)
    assert bad[0]["Id"] == ids[2] and bad[0]["sf__Id"] == ids[2] and bad[0]["sf__Error"].startswith(
        "ENTITY_IS_DELETED:")
    wrong = ingest(http, {"object": "Contact", "operation": "delete"}, f"Id,Title\n{ids[0]},x\n")
    assert wrong["state"] == "Failed" and "only 'Id'" in wrong["errorMessage"]


def test_the_failure_switch_fails_a_job_part_way_with_the_rest_unprocessed(http):
    assert http.post("/_sandbox/bulk/fail", json={"message": "InternalServerError : retries exhausted",
                                                  "after": 250}).status_code == 200
    info = ingest(http, {"object": "Contact", "operation": "insert"},
                  "LastName\n" + "".join(f"N{i}\n" for i in range(600)))
    assert (info["state"], info["errorMessage"]) == ("Failed", "InternalServerError : retries exhausted")
    assert info["numberRecordsProcessed"] == 250
    ok = table(http.get(f"{INGEST}/{info['id']}/successfulResults").text)
    rest = table(http.get(f"{INGEST}/{info['id']}/unprocessedrecords").text)
    assert len(ok) == 250 and len(rest) == 350
    assert {r["LastName"] for r in ok} | {r["LastName"] for r in rest} == {f"N{i}" for i in range(600)}
    nxt = ingest(http, {"object": "Contact", "operation": "insert"}, "LastName\nA\n")
    assert nxt["state"] == "JobComplete", "the switch fails one job only"


def test_every_bulk_call_counts_against_the_daily_allocation_and_the_quota_refuses_them(http):
    sb = http.sb
    sb.set_faults(daily_quota=4)
    sb.calls_used = 0
    job = http.post(INGEST, json={"object": "Contact", "operation": "insert"})
    put = http.put(f"{INGEST}/{job.json()['id']}/batches", content=b"LastName\nA\n",
                   headers={"Content-Type": "text/csv"})
    close = http.patch(f"{INGEST}/{job.json()['id']}", json={"state": "UploadComplete"})
    info = http.get(f"{INGEST}/{job.json()['id']}")
    assert [r.headers["Sforce-Limit-Info"] for r in (job, put, close, info)] == [
        f"api-usage={n}/4" for n in (1, 2, 3, 4)]
    spent = http.get(f"{V}/jobs/query")
    assert spent.status_code == 403 and spent.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"


# --- connector: reads -------------------------------------------------------------------------------

def cut_last_row(text: str) -> str:
    return "".join(text.splitlines(keepends=True)[:-1])


def cut_inside_last_row(text: str) -> str:
    return text[:-4]


def test_a_read_above_the_threshold_delivers_every_row_once_in_the_shape_rest_gives(org):
    sb, connect = org(size=900)
    _, rest = read_all(connect(bulk_threshold=None))
    conn = connect(bulk_threshold=300, bulk_page=150, **BULK)
    pages, rows = read_all(conn)
    assert len(rows) == len({r.external_id for r in rows}) == len(rest) == 900
    assert {r.external_id: r.payload for r in rows} == {r.external_id: r.payload for r in rest}
    assert {r.external_id: (r.deleted, r.merged_into, r.modified_at) for r in rows} == \
        {r.external_id: (r.deleted, r.merged_into, r.modified_at) for r in rest}
    assert conn.calls[f"POST {V}/jobs/query"] == 1 and conn.calls[f"GET {V}/queryAll/"] == 1
    assert conn.calls[f"GET {V}/jobs/query/{{id}}/results"] == math.ceil((900 - 200) / 150)
    assert not any("{locator}" in k for k in conn.calls), "no queryMore once the job takes over"


@pytest.mark.parametrize("query_batch", [200, 40], ids=["results-page-whole", "results-page-split"])
def test_bulk_pages_before_the_last_carry_the_start_cursor_so_it_never_runs_ahead(org, query_batch):
    sb, connect = org(size=900)
    conn = connect(bulk_threshold=300, bulk_page=150, query_batch=query_batch, **BULK)
    pages, rows = read_all(conn)
    # a results call brings up to bulk_page rows; the store gets them query_batch at a time
    assert max(len(p.records) for p in pages[1:]) == min(150, query_batch) and len(rows) == 900
    assert conn.calls[f"GET {V}/jobs/query/{{id}}/results"] == math.ceil((900 - len(pages[0].records)) / 150)
    bulk = [r for p in pages[1:] for r in p.records]
    marks = [(r.modified_at, r.external_id) for r in bulk]
    assert marks != sorted(marks), "bulk rows come in Id order, not modification order"
    assert all(p.cursor == pages[0].cursor for p in pages[1:-1])
    delivered = []
    for p in pages:
        delivered += p.records
        assert (p.cursor.modified_at, p.cursor.last_id) <= max((r.modified_at, r.external_id) for r in delivered)
    top = max((r.modified_at, r.external_id) for r in rows)
    assert (pages[-1].cursor.modified_at, pages[-1].cursor.last_id) == top


@pytest.mark.parametrize("cut", [cut_last_row, cut_inside_last_row])
def test_a_results_page_that_arrives_cut_short_is_fetched_again(org, cut):
    sb, connect = org(size=600)
    _, baseline = read_all(connect(bulk_threshold=None))
    real, asked = sb.job_results, []

    def cut_second_page(job_id, locator, max_records):
        text, nxt, count = real(job_id, locator, max_records)
        asked.append(locator)
        return (cut(text) if len(asked) == 2 else text), nxt, count  # Sforce-NumberOfRecords still says `count`

    sb.job_results = cut_second_page
    conn = connect(bulk_threshold=200, bulk_page=100, **BULK)
    _, rows = read_all(conn)
    assert sorted(r.external_id for r in rows) == sorted(r.external_id for r in baseline)
    assert len(rows) == len({r.external_id for r in rows})
    assert asked[1] == asked[2] and conn.retries == 1
    assert {r.external_id: r.payload for r in rows} == {r.external_id: r.payload for r in baseline}


def test_a_failed_query_job_stops_the_read_with_what_to_do_and_a_rerun_completes_it(org):
    sb, connect = org(size=600)
    _, baseline = read_all(connect(bulk_threshold=None))
    sb.fail_next_job = ("QUERY_TIMEOUT : Your query request was running for too long.", 0)
    kw = dict(bulk_threshold=200, bulk_page=100, overlap=timedelta(0), **BULK)
    pages = []
    with pytest.raises(ConnectorError) as exc:
        for page in connect(**kw).read("contacts"):
            pages.append(page)
    msg = str(exc.value)
    job_id = next(iter(sb.jobs))
    assert f"bulk query job {job_id} for contacts failed: QUERY_TIMEOUT" in msg
    assert "Re-run the sync" in msg and "Bulk Data Load Jobs" in msg and not exc.value.retryable
    assert len(pages) == 1, "the REST page before the job is delivered with its own cursor"
    _, rest = read_all(connect(**kw), cursor=pages[0].cursor)
    got = [r.external_id for r in pages[0].records] + [r.external_id for r in rest]
    assert sorted(got) == sorted(r.external_id for r in baseline) and len(got) == len(set(got))


def test_reads_after_a_bulk_read_resume_from_the_stored_cursor_whether_it_finished_or_not(org):
    sb, connect = org(size=900)
    kw = dict(bulk_threshold=300, bulk_page=150, overlap=timedelta(0), **BULK)
    _, baseline = read_all(connect(**kw))
    stored, got = None, []
    for k, page in enumerate(connect(**kw).read("contacts")):
        got += page.records
        stored = page.cursor
        if k == 2:
            break  # the process dies after the REST page and two bulk pages were stored
    _, rest = read_all(connect(**kw), cursor=stored)
    assert {r.external_id for r in got} | {r.external_id for r in rest} == {r.external_id for r in baseline}
    pages, _ = read_all(connect(**kw), cursor=stored)
    for n in (3, 40, 41):
        sb.update("Contact", n, {"Title": "Buyer"})
    sb.delete("Contact", 42)
    _, inc = read_all(connect(**kw), cursor=pages[-1].cursor)
    assert sorted(r.external_id for r in inc) == sorted(sf_id("Contact", n) for n in (3, 40, 41, 42))


def test_a_bulk_read_survives_server_errors_timeouts_and_truncated_bodies(org):
    sb, connect = org(size=900)
    _, baseline = read_all(connect(bulk_threshold=None))
    sb.set_faults(rate_5xx=0.15, rate_timeout=0.1, timeout_stall_s=0.6, rate_truncate=0.2, paths=r"/jobs/query",
                  seed=4)
    conn = connect(bulk_threshold=300, bulk_page=150, timeout=0.3, **BULK)
    _, rows = read_all(conn)
    assert sorted(r.external_id for r in rows) == sorted(r.external_id for r in baseline)
    assert len(rows) == len({r.external_id for r in rows}) and conn.retries > 0
    assert sb.log.faults_injected["truncate"] > 0 and sb.log.faults_injected["5xx"] > 0
    assert {r.external_id: r.payload for r in rows} == {r.external_id: r.payload for r in baseline}


# --- connector: writes ------------------------------------------------------------------------------

def people(n: int, prefix: str = "G", bad=lambda i: False) -> list[OutboundRecord]:
    return [OutboundRecord(key=f"{prefix}{i}|new", match={"Omnisync_Golden_Id__c": f"{prefix}{i}"},
                           payload={"LastName": f"L{i}", "Email": "bad.address.example" if bad(i) else
                                    f"p{i}@example.org", "Omnisync_Golden_Id__c": f"{prefix}{i}"})
            for i in range(n)]


def holders(sb: SalesforceSandbox, prefix: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for row in sb.export()["Contact"]:
        gid = row["Omnisync_Golden_Id__c"]
        if gid and gid.startswith(prefix) and not row["IsDeleted"]:
            out.setdefault(gid, []).append(parse_id(row["Id"])[1])
    return out


def test_a_write_above_the_threshold_is_one_ingest_job_with_each_outcome_tied_to_its_record(org):
    sb, connect = org(size=50)
    for n in (3, 4):  # linked duplicates: two contacts carry one golden id
        sb.update("Contact", n, {"Omnisync_Golden_Id__c": "G-linked"})
    recs = people(700, bad=lambda i: i % 50 == 7)
    recs.append(OutboundRecord(key="G-linked|x", match={"Omnisync_Golden_Id__c": "G-linked"},
                               payload={"Title": "CFO", "Omnisync_Golden_Id__c": "G-linked"}))
    conn = connect(bulk_write_threshold=300, **BULK)
    out = conn.write("contacts", recs)
    assert [o.key for o in out] == [r.key for r in recs]
    failed = {o.key: o for o in out if not o.ok}
    assert set(failed) == {f"G{i}|new" for i in range(700) if i % 50 == 7} | {"G-linked|x"}
    assert all(f"record G{i}|new: field Email rejected (INVALID_EMAIL_ADDRESS)" in failed[f"G{i}|new"].error
               and "bad.address" not in failed[f"G{i}|new"].error and not failed[f"G{i}|new"].retryable
               for i in range(7, 700, 50))
    linked = failed["G-linked|x"].error
    assert "field Omnisync_Golden_Id__c" in linked and "DUPLICATE_EXTERNAL_ID" in linked and "by its Id" in linked
    written = [(r, o) for r, o in zip(recs, out) if o.ok]
    assert all(o.status is WriteStatus.created for _, o in written)
    for r, o in written:  # the id Salesforce reports is the very record this input created
        rec = sb.tables["Contact"].get(parse_id(o.external_id)[1])
        assert (rec.fields["Omnisync_Golden_Id__c"], rec.fields["LastName"]) == (r.match["Omnisync_Golden_Id__c"],
                                                                                 r.payload["LastName"])
    assert {k: v for k, v in conn.calls.items() if "/jobs/ingest" in k and "{id}/" not in k} == {
        f"POST {V}/jobs/ingest": 1, f"PATCH {V}/jobs/ingest/{{id}}": 1,
        f"GET {V}/jobs/ingest/{{id}}": conn.calls[f"GET {V}/jobs/ingest/{{id}}"]}
    assert conn.calls[f"PUT {V}/jobs/ingest/{{id}}/batches"] == 1
    assert conn.calls[f"GET {V}/jobs/ingest/{{id}}/successfulResults"] == 1
    assert conn.calls[f"GET {V}/jobs/ingest/{{id}}/failedResults"] == 1
    assert not any("composite" in k for k in conn.calls)


def test_a_bulk_write_run_twice_updates_the_same_records_and_creates_nothing(org):
    sb, connect = org(size=50)
    recs = people(500)
    first = connect(bulk_write_threshold=300, **BULK).write("contacts", recs)
    live = sb.summary()["Contact"]["live"]
    second = connect(bulk_write_threshold=300, **BULK).write("contacts", recs)
    assert [o.status for o in first] == [WriteStatus.created] * 500
    assert [o.status for o in second] == [WriteStatus.updated] * 500
    assert [o.external_id for o in first] == [o.external_id for o in second]
    assert sb.summary()["Contact"]["live"] == live
    assert all(len(v) == 1 for v in holders(sb, "G").values())


def test_known_contacts_go_through_an_update_job_by_id_and_nulls_clear_fields(org):
    sb, connect = org(size=600)
    live = [n for n in range(2, 600) if not sb.tables["Contact"].get(n).deleted][:400]
    gone = next(n for n in range(2, 600) if sb.tables["Contact"].get(n).deleted and
                not sb.tables["Contact"].get(n).fields.get("MasterRecordId"))
    before = {n: dict(sb.tables["Contact"].get(n).fields) for n in live}
    recs = [OutboundRecord(key=f"G{n}|x", external_id=sf_id("Contact", n), payload={"Title": "CFO", "Phone": None})
            for n in live]
    recs.insert(100, OutboundRecord(key="G-gone|x", external_id=sf_id("Contact", gone), payload={"Title": "CFO"}))
    conn = connect(bulk_write_threshold=300, **BULK)
    out = conn.write("contacts", recs)
    assert [j.operation for j in sb.ingest_jobs.values()] == ["update"]
    assert [o.key for o in out if not o.ok] == ["G-gone|x"]
    assert "ENTITY_IS_DELETED" in out[100].error and "deleted or merged in Salesforce" in out[100].error
    assert all(o.status is WriteStatus.updated for o in out if o.ok)
    assert [o.external_id for o in out if o.ok] == [sf_id("Contact", n) for n in live]
    for n in live:
        f = sb.tables["Contact"].get(n).fields
        assert (f["Title"], f["Phone"], f["Email"], f["LastName"]) == ("CFO", None, before[n]["Email"],
                                                                        before[n]["LastName"])


def test_activities_go_through_an_upsert_job_on_the_interaction_id(org):
    sb, connect = org(size=50)
    who = sf_id("Contact", 1)
    recs = [OutboundRecord(key=f"zoom:E{i}", associations={"contact": who},
                           payload={"TaskSubtype": "Call", "Subject": f"Zoom call {i}",
                                    "Omnisync_Started_At__c": "2026-11-20T10:00:00.000+0000"})
            for i in range(350)]
    conn = connect(bulk_write_threshold=300, **BULK)
    first, second = conn.write("tasks", recs), conn.write("tasks", recs)
    assert [o.status for o in first] == [WriteStatus.created] * 350
    assert [o.status for o in second] == [WriteStatus.updated] * 350
    assert [o.external_id for o in first] == [o.external_id for o in second]
    task = sb.tables["Task"].get(parse_id(first[123].external_id)[1]).fields
    assert (task["Omnisync_Interaction_Id__c"], task["WhoId"], task["ActivityDate"], task["Status"]) == (
        "zoom:E123", who, "2026-11-20", "Completed")
    assert {j.ext_field for j in sb.ingest_jobs.values()} == {"Omnisync_Interaction_Id__c"}


def test_a_key_repeated_in_one_write_goes_once_into_the_job_and_again_after_it(org):
    sb, connect = org(size=50)
    recs = people(400)
    recs.append(OutboundRecord(key="G5|again", match={"Omnisync_Golden_Id__c": "G5"},
                               payload={"LastName": "Later", "Omnisync_Golden_Id__c": "G5"}))
    conn = connect(bulk_write_threshold=300, **BULK)
    out = conn.write("contacts", recs)
    assert all(o.ok for o in out) and out[5].status is WriteStatus.created and out[-1].status is WriteStatus.updated
    assert out[-1].external_id == out[5].external_id
    assert sb.tables["Contact"].get(parse_id(out[5].external_id)[1]).fields["LastName"] == "Later"
    assert conn.calls[f"PATCH {V}/composite/sobjects/Contact/Omnisync_Golden_Id__c"] == 1


def test_a_job_failing_part_way_confirms_what_it_wrote_and_a_rerun_writes_the_rest_once(org):
    sb, connect = org(size=50)
    recs = people(800)
    sb.fail_next_job = ("InternalServerError : processing stopped", 300)
    out = connect(bulk_write_threshold=300, **BULK).write("contacts", recs)
    done = [o for o in out if o.ok]
    rest = [(r, o) for r, o in zip(recs, out) if not o.ok]
    assert len(done) == 300 and len(rest) == 500
    assert all(o.retryable and f"record {r.key}: not written, bulk upsert job" in o.error
               and "failed: InternalServerError" in o.error for r, o in rest)
    again = connect(bulk_write_threshold=300, **BULK).write("contacts", [r for r, _ in rest])
    assert all(o.status is WriteStatus.created for o in again)
    assert sorted(holders(sb, "G")) == sorted(f"G{i}" for i in range(800))
    assert all(len(v) == 1 for v in holders(sb, "G").values())


def test_a_job_refused_for_a_bad_column_fails_every_record_naming_the_field(org):
    sb, connect = org(size=50)
    recs = [OutboundRecord(key=r.key, match=r.match, payload={**r.payload, "Shoe_Size__c": 42}) for r in people(400)]
    out = connect(bulk_write_threshold=300, **BULK).write("contacts", recs)
    assert all(not o.ok and not o.retryable for o in out)
    assert f"record {recs[17].key}: not written" in out[17].error
    assert "Field name not found : Shoe_Size__c" in out[17].error and "fix the mapping" in out[17].error
    assert holders(sb, "G") == {}


def test_a_bulk_write_survives_server_errors_timeouts_and_truncated_result_files(org):
    sb, connect = org(size=50)
    sb.set_faults(rate_5xx=0.15, rate_timeout=0.08, timeout_stall_s=0.6, rate_truncate=0.2, paths=r"/jobs/ingest",
                  seed=9)
    conn = connect(bulk_write_threshold=300, timeout=0.3, **BULK)
    recs = people(800)
    out = conn.write("contacts", recs[:400]) + conn.write("contacts", recs[400:])
    assert all(o.ok for o in out), [o.error for o in out if not o.ok][:3]
    assert conn.retries > 0 and sb.log.faults_injected["truncate"] > 0 and sb.log.faults_injected["5xx"] > 0
    states = [j.state for j in sb.ingest_jobs.values()]
    assert states.count("JobComplete") == 2 and "Aborted" in states, "a failed upload abandons its job"
    assert sorted(holders(sb, "G")) == sorted(f"G{i}" for i in range(800))
    assert all(len(v) == 1 for v in holders(sb, "G").values()), "a retried call never writes a record twice"
    for r, o in zip(recs, out):
        assert sb.tables["Contact"].get(parse_id(o.external_id)[1]).fields["Omnisync_Golden_Id__c"] == \
            r.match["Omnisync_Golden_Id__c"]


def test_a_bulk_write_the_daily_allocation_cannot_finish_is_not_started(org):
    sb, connect = org(size=50)
    sb.daily_limit = 100
    sb.calls_used = 93
    conn = connect(bulk_write_threshold=300, **BULK)
    conn.check()  # api-usage=94/100: a job needs five more calls, the 2% reserve leaves four
    out = conn.write("contacts", people(400))
    assert all(not o.ok and o.retryable and "quota" in o.error.lower() for o in out)
    assert "needs about 5 requests" in out[0].error
    assert not sb.ingest_jobs and sb.calls_used == 94


# --- connector: result files, without a server -----------------------------------------------------

def test_bulk_error_cells_read_as_rest_errors_naming_record_and_field():
    rows = table((FIX / "bulk_ingest_failed_results.csv").read_text())
    errs = [_bulk_error(r["sf__Error"]) for r in rows]
    assert [(e["statusCode"], e["fields"]) for e in errs] == [
        ("INVALID_EMAIL_ADDRESS", ["Email"]), ("REQUIRED_FIELD_MISSING", ["LastName"]),
        ("INVALID_CROSS_REFERENCE_KEY", []), ("DUPLICATE_EXTERNAL_ID", ["Omnisync_Golden_Id__c"])]
    email = _record_error("contacts", "G9|new", errs[0])
    assert email.startswith("salesforce/contacts record G9|new: field Email rejected (INVALID_EMAIL_ADDRESS)")
    assert "@" not in email and "fix the golden email" in email
    assert "sync contacts, then re-run the push" in _record_error("tasks", "zoom:E1", errs[2])


@pytest.mark.parametrize("value, cell", [(None, "#N/A"), ("", "#N/A"), (True, "true"), (False, "false"), (540, "540"),
                                         ("Lee, Jr.", "Lee, Jr.")])
def test_values_become_bulk_cells_with_null_as_n_a_because_an_empty_cell_changes_nothing(value, cell):
    assert _cell(value) == cell
