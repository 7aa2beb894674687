"""The Salesforce sandbox behaves like Salesforce: SOQL subset and its rejections, query locators,
queryAll, sObject Collections, getDeleted, API usage and its limits, errors in Salesforce's shape."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest
from simple_salesforce.format import format_soql

from sandbox.framework import SandboxCluster
from sandbox.salesforce import (
    SESSION_ID,
    ApiError,
    SalesforceSandbox,
    SoqlError,
    evaluate,
    lower_bound,
    parse_id,
    parse_soql,
    sf_id,
)

AUTH = {"Authorization": f"Bearer {SESSION_ID}"}
V = "/services/data/v59.0"


@pytest.fixture
def served(tmp_path):
    started = []

    def start(sb: SalesforceSandbox) -> httpx.Client:
        cluster = SandboxCluster([sb], workdir=tmp_path / str(len(started))).start()
        started.append(cluster)
        info = cluster.info()["salesforce"]
        return httpx.Client(base_url=info["base_url"], headers=AUTH, verify=info["ca_cert"], timeout=10)

    yield start
    for c in started:
        c.stop()


# --- SOQL, without a server ---------------------------------------------------------------------

def test_compound_cursor_condition_parses_and_evaluates_as_salesforce_would():
    ts = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
    q = parse_soql(format_soql("SELECT Id, SystemModstamp FROM Contact WHERE (SystemModstamp > {ts} OR "
                               "(SystemModstamp = {ts} AND Id > {id})) ORDER BY SystemModstamp, Id LIMIT 5",
                               ts=ts, id="003Dn0000000005IAA"))
    ms = int(ts.timestamp() * 1000)
    assert (q.sobject, q.fields, q.order, q.limit) == ("Contact", ["Id", "SystemModstamp"],
                                                      [("SystemModstamp", False), ("Id", False)], 5)
    assert lower_bound(q.where) == ms
    assert evaluate(q.where, {"SystemModstamp": ms + 1000, "Id": "003Dn0000000001"})
    assert evaluate(q.where, {"SystemModstamp": ms, "Id": "003Dn0000000006"})
    assert not evaluate(q.where, {"SystemModstamp": ms, "Id": "003Dn0000000005"})
    assert not evaluate(q.where, {"SystemModstamp": ms - 1000, "Id": "003Dn0000000009"})


@pytest.mark.parametrize("soql, code", [
    ("SELECT Id FROM Contact WHERE IsDeleted = true AND Id > '1' OR Id < '2'", "MALFORMED_QUERY"),
    ("SELECT COUNT() FROM Contact", "MALFORMED_QUERY"),
    ("SELECT Id FROM Contact GROUP BY Id", "MALFORMED_QUERY"),
    ("SELECT Id FROM Contact WHERE CreatedDate = LAST_N_DAYS:3", "MALFORMED_QUERY"),
    ("SELECT Id FROM Contact LIMIT many", "MALFORMED_QUERY"),
    ("SELECT Id, FROM Contact", "MALFORMED_QUERY"),
    ("SELECT Id FROM Contact WHERE (Id > '1'", "MALFORMED_QUERY"),
    ("SELECT Id FROM Opportunity", "INVALID_TYPE"),
    ("SELECT Id, Owner.Name FROM Contact", "INVALID_FIELD"),
    ("SELECT Id, Account.Shoe_Size__c FROM Contact", "INVALID_FIELD"),
    ("SELECT Id FROM Contact WHERE Account.Name = 'Globex'", "INVALID_FIELD"),
    ("SELECT Id, Shoe_Size__c FROM Contact", "INVALID_FIELD"),
    ("SELECT Id FROM Contact WHERE SystemModstamp > '2026-11-01T00:00:00Z'", "INVALID_QUERY_FILTER_OPERATOR"),
])
def test_queries_outside_the_subset_are_refused_in_salesforces_terms(soql, code):
    sb = SalesforceSandbox(size=20)
    with pytest.raises(ApiError) as exc:
        sb.query(soql, all_rows=False, batch=2000)
    assert exc.value.code == code and exc.value.status == 400
    assert exc.value.body()[0]["errorCode"] == code and exc.value.body()[0]["message"]


def test_a_quoted_value_cannot_break_out_of_its_literal():
    hostile = "x' OR Id != '"
    q = parse_soql(format_soql("SELECT Id FROM Contact WHERE Email = {e}", e=hostile))
    assert q.where == ("cmp", "Email", "=", ("string", hostile))
    sb = SalesforceSandbox(size=50)
    assert sb.query(format_soql("SELECT Id FROM Contact WHERE Email = {e}", e=hostile), all_rows=False,
                    batch=2000)["totalSize"] == 0


def test_ids_are_18_characters_with_a_case_safe_checksum_and_sort_like_numbers():
    ids = [sf_id("Contact", n) for n in (1, 61, 62, 3843, 10**6)]
    assert all(len(i) == 18 and i.startswith("003") for i in ids)
    assert ids == sorted(ids)
    assert [parse_id(i) for i in ids] == [("Contact", n) for n in (1, 61, 62, 3843, 10**6)]
    assert parse_id(ids[0][:15]) == ("Contact", 1) and parse_id("001000000000001AAA") is None


# --- seeding -----------------------------------------------------------------------------------

def test_the_heroine_is_a_contact_with_her_work_email_a_formatted_mobile_and_two_calls():
    sb = SalesforceSandbox(size=200, seed=1)
    hero = sb.render("Contact", sb.tables["Contact"].get(1))
    assert (hero["FirstName"], hero["LastName"], hero["Email"]) == ("Amara", "Okafor", "a.okafor@northwind.example")
    assert hero["MobilePhone"] == "+1 415-555-0142"
    calls = [sb.render("Task", sb.tables["Task"].get(n)) for n in (1, 2)]
    assert all(t["WhoId"] == hero["Id"] and t["TaskSubtype"] == "Call" for t in calls)
    assert [t["CallDisposition"] for t in calls] == ["Connected", "Left voicemail"]


def test_seeding_is_deterministic_and_holds_deletions_merges_and_shared_modstamps():
    a, b = SalesforceSandbox(size=1500, seed=4), SalesforceSandbox(size=1500, seed=4)
    assert a.export() == b.export()
    s = a.summary()["Contact"]
    assert s["live"] + s["deleted"] + s["merged"] == 1500 and s["deleted"] > 0 and s["merged"] > 0
    stamps = [ts for ts, _ in a.tables["Contact"].base]
    assert len(set(stamps)) < len(stamps), "many contacts share one SystemModstamp"
    losers = [r for r in a.export()["Contact"] if r["MasterRecordId"]]
    assert losers and all(r["IsDeleted"] for r in losers)


# --- over https ----------------------------------------------------------------------------------

def test_query_pages_by_locator_and_queryall_adds_deleted_rows(served):
    sb = SalesforceSandbox(size=2500, seed=2)
    http = served(sb)
    q = "SELECT Id, IsDeleted, MasterRecordId FROM Contact ORDER BY SystemModstamp, Id"
    first = http.get(f"{V}/query/", params={"q": q}).json()
    assert len(first["records"]) == 2000 and not first["done"]
    assert first["nextRecordsUrl"].startswith(f"{V}/query/01g")
    rest = http.get(first["nextRecordsUrl"]).json()
    assert rest["done"] and "nextRecordsUrl" not in rest
    live = first["records"] + rest["records"]
    assert not any(r["IsDeleted"] for r in live)
    small = http.get(f"{V}/queryAll/", params={"q": q}, headers={"Sforce-Query-Options": "batchSize=500"}).json()
    rows = list(small["records"])
    url = small.get("nextRecordsUrl")
    while url:
        page = http.get(url).json()
        rows += page["records"]
        url = page.get("nextRecordsUrl")
    assert len(small["records"]) == 500 and len(rows) == small["totalSize"] == 2500
    deleted = [r for r in rows if r["IsDeleted"]]
    assert len(rows) - len(deleted) == len(live) and any(r["MasterRecordId"] for r in deleted)
    assert len({r["Id"] for r in rows}) == 2500


def test_open_locators_are_capped_and_expired_ones_refused(served):
    sb = SalesforceSandbox(size=450, seed=2)
    http = served(sb)
    q = {"q": "SELECT Id FROM Contact"}
    first = http.get(f"{V}/query/", params=q, headers={"Sforce-Query-Options": "batchSize=200"}).json()
    for _ in range(10):
        http.get(f"{V}/query/", params=q, headers={"Sforce-Query-Options": "batchSize=200"})
    gone = http.get(first["nextRecordsUrl"])
    assert gone.status_code == 400 and gone.json()[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


def test_malformed_query_over_http_is_a_400_array(served):
    http = served(SalesforceSandbox(size=20))
    resp = http.get(f"{V}/query/", params={"q": "SELECT Id FROM Contact WHERE"})
    assert resp.status_code == 400
    body = resp.json()
    assert isinstance(body, list) and body[0]["errorCode"] == "MALFORMED_QUERY"
    assert "unexpected token" in body[0]["message"]


def test_collections_upsert_reports_per_record_and_caps_at_200(served):
    sb = SalesforceSandbox(size=50)
    http = served(sb)
    recs = [{"attributes": {"type": "Contact"}, "LastName": f"N{i}", "Email": f"n{i}@example.org",
             "Omnisync_Golden_Id__c": f"G{i}"} for i in range(3)]
    recs[1]["Email"] = "broken"
    url = f"{V}/composite/sobjects/Contact/Omnisync_Golden_Id__c"
    out = http.patch(url, json={"allOrNone": False, "records": recs}).json()
    assert [r["success"] for r in out] == [True, False, True] and out[0]["created"] is True
    assert out[1]["errors"][0]["statusCode"] == "INVALID_EMAIL_ADDRESS" and out[1]["errors"][0]["fields"] == ["Email"]
    again = http.patch(url, json={"allOrNone": False, "records": [recs[0]]}).json()
    assert again[0]["id"] == out[0]["id"] and again[0]["created"] is False
    too_many = http.patch(url, json={"records": [recs[0]] * 201})
    assert too_many.status_code == 400 and too_many.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"


def test_the_golden_id_may_repeat_but_an_upsert_on_it_must_find_one_record(served):
    sb = SalesforceSandbox(size=50)
    http = served(sb)
    for n in (3, 4):  # two duplicates sales keeps apart, linked to one golden record
        sb.update("Contact", n, {"Omnisync_Golden_Id__c": "G-dup"})
    out = http.patch(f"{V}/composite/sobjects/Contact/Omnisync_Golden_Id__c", json={"records": [
        {"attributes": {"type": "Contact"}, "Omnisync_Golden_Id__c": "G-dup", "Title": "CFO"}]}).json()
    assert out[0]["success"] is False and out[0]["errors"][0]["statusCode"] == "DUPLICATE_EXTERNAL_ID"
    task = {"attributes": {"type": "Task"}, "Subject": "x", "Omnisync_Interaction_Id__c": "zoom:1"}
    http.post(f"{V}/composite/sobjects", json={"records": [task]}).raise_for_status()
    again = http.post(f"{V}/composite/sobjects", json={"records": [task]}).json()
    assert again[0]["errors"][0]["statusCode"] == "DUPLICATE_VALUE", "the interaction id is unique"


def test_all_or_none_rolls_every_record_back(served):
    sb = SalesforceSandbox(size=50)
    http = served(sb)
    recs = [{"attributes": {"type": "Contact"}, "LastName": "Ok"}, {"attributes": {"type": "Contact"}}]
    out = http.post(f"{V}/composite/sobjects", json={"allOrNone": True, "records": recs}).json()
    assert out[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert out[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert sb.summary()["Contact"]["live"] == SalesforceSandbox(size=50).summary()["Contact"]["live"]


def test_every_response_reports_api_usage_and_the_quota_ends_in_403(served):
    sb = SalesforceSandbox(size=20)
    http = served(sb)
    sb.set_faults(daily_quota=3)
    heads = [http.get(f"{V}/limits/").headers["Sforce-Limit-Info"] for _ in range(3)]
    assert heads == ["api-usage=1/3", "api-usage=2/3", "api-usage=3/3"]
    spent = http.get(f"{V}/limits/")
    assert spent.status_code == 403 and spent.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert spent.headers["Sforce-Limit-Info"] == "api-usage=3/3"


def test_a_bad_session_is_401_invalid_session_id(served):
    http = served(SalesforceSandbox(size=20))
    resp = http.get(f"{V}/limits/", headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 401 and resp.json() == [{"message": "Session expired or invalid",
                                                        "errorCode": "INVALID_SESSION_ID"}]


def test_get_deleted_and_get_updated_list_changes_within_their_windows(served):
    sb = SalesforceSandbox(size=100)
    http = served(sb)
    now = datetime.fromtimestamp(sb.now_ms() / 1000, tz=timezone.utc)
    target = sf_id("Contact", 5)
    assert http.delete(f"/_sandbox/sobjects/Contact/{target}").json() == {"deleted": True}
    fmt = "%Y-%m-%dT%H:%M:%S+00:00"
    body = http.get(f"{V}/sobjects/Contact/deleted/", params={
        "start": (now - timedelta(days=1)).strftime(fmt), "end": (now + timedelta(minutes=5)).strftime(fmt)}).json()
    assert target in [r["id"] for r in body["deletedRecords"]]
    old = http.get(f"{V}/sobjects/Contact/deleted/", params={
        "start": (now - timedelta(days=20)).strftime(fmt), "end": now.strftime(fmt)})
    assert old.status_code == 400 and old.json()[0]["errorCode"] == "INVALID_REPLICATION_DATE"
    sb.update("Contact", 6, {"Title": "CFO"})
    updated = http.get(f"{V}/sobjects/Contact/updated/", params={
        "start": (now - timedelta(minutes=1)).strftime(fmt), "end": (now + timedelta(minutes=5)).strftime(fmt)}).json()
    assert sf_id("Contact", 6) in updated["ids"] and target not in updated["ids"]


def test_a_merge_deletes_losers_with_master_record_id_and_moves_their_tasks(served):
    sb = SalesforceSandbox(size=100)
    http = served(sb)
    master, loser = sf_id("Contact", 10), sf_id("Contact", 11)
    task = sb.create("Task", {"Subject": "Call", "TaskSubtype": "Call", "WhoId": loser})
    http.post("/_sandbox/merge", json={"master": master, "losers": [loser]}).raise_for_status()
    row = http.get(f"{V}/queryAll/", params={"q": format_soql(
        "SELECT Id, IsDeleted, MasterRecordId FROM Contact WHERE Id = {i}", i=loser)}).json()["records"][0]
    assert row["IsDeleted"] is True and row["MasterRecordId"] == master
    assert http.get(f"{V}/query/", params={"q": format_soql("SELECT Id FROM Contact WHERE Id = {i}", i=loser)}
                    ).json()["totalSize"] == 0
    assert sb.tables["Task"].get(task.num).fields["WhoId"] == master
