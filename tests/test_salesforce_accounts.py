"""Accounts in the Salesforce sandbox: the population's employers, each contact pointing at its
person's company, read by the connector through the Account relationship (REST and Bulk 2.0 alike)
so that Salesforce contacts carry a company; and the rest of the seeded org left as it was."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import pytest
from simple_salesforce.bulk2 import Operation

from connectors.credentials import SalesforceCredentials
from connectors.http import RetryPolicy
from connectors.salesforce import SalesforceConnector
from mappings.engine import load_mapping
from sandbox.framework import SandboxCluster
from sandbox.population import COMPANIES, person
from sandbox.salesforce import SalesforceSandbox, parse_id, sf_id

FIX = Path(__file__).parent / "fixtures" / "salesforce"


@pytest.fixture
def org(tmp_path):
    sb = SalesforceSandbox(size=600, seed=2)
    with SandboxCluster([sb], workdir=tmp_path) as cluster:
        info = cluster.info()["salesforce"]

        def connect(**kw) -> SalesforceConnector:
            creds = SalesforceCredentials(instance_url=info["base_url"], ca_bundle=info["ca_cert"], **info["credentials"])
            return SalesforceConnector(creds, policy=RetryPolicy(backoff_initial=0.02, backoff_max=0.2),
                                       query_batch=200, **kw)
        yield sb, connect


def test_adding_accounts_left_every_seeded_contact_lead_and_task_as_it_was():
    """The fixture is the export of the same org seeded before Accounts existed."""
    before = json.loads((FIX / "seeded_org_size60_seed1.json").read_text())
    now = SalesforceSandbox(size=60, seed=1).export()
    for sobject, rows in before.items():
        current = [{f: v for f, v in r.items() if f not in ("attributes", "AccountId")} for r in now[sobject]]
        assert current == rows, f"seeded {sobject} records changed"


def test_accounts_are_the_populations_employers_and_contacts_point_at_their_persons_company():
    sb = SalesforceSandbox(size=600, seed=2)
    accounts = {sf_id("Account", n): sb.tables["Account"].get(n) for n in range(1, len(COMPANIES) + 1)}
    assert sorted(a.fields["Name"] for a in accounts.values()) == sorted(COMPANIES)
    assert sb.summary()["Account"] == {"live": len(COMPANIES), "deleted": 0, "merged": 0}
    by_person: dict[int, set] = defaultdict(set)
    private = 0
    for i in range(600):
        account_id = sb.tables["Contact"].get(i + 1).fields["AccountId"]
        pid = sb._who(i)[0]
        by_person[pid].add(account_id)
        if account_id is None:
            private += 1
            continue
        assert accounts[account_id].fields["Name"] == person(pid, 2).company
    assert sb.tables["Contact"].get(1).fields["AccountId"] == sf_id("Account", COMPANIES.index("Northwind Traders") + 1)
    assert 6 <= private <= 60, "a few private contacts (about 5%) have no account"
    assert all(len(ids) == 1 for ids in by_person.values()), "a person's duplicates work at the same account"


def test_a_contact_read_carries_its_company_through_the_account_relationship(org):
    sb, connect = org
    conn = connect()
    records = [r for p in conn.read("contacts") for r in p.records]
    mapping = load_mapping("salesforce", "contacts")
    with_company = 0
    for r in records:
        account_id = r.payload["AccountId"]
        if account_id is None:
            assert r.payload["Account"] is None
            continue
        name = sb.tables["Account"].get(parse_id(account_id)[1]).fields["Name"]
        assert r.payload["Account"] == {"Name": name}
        if not r.deleted:
            assert mapping.inbound(r).company == name
            with_company += 1
    assert with_company > 500
    heroine = next(r for r in records if r.external_id == sf_id("Contact", 1))
    assert mapping.inbound(heroine).company == "Northwind Traders"


def test_bulk_reads_carry_the_same_company_as_rest(org):
    sb, connect = org
    rest = {r.external_id: r.payload for p in connect(bulk_threshold=None).read("contacts") for r in p.records}
    bulk_conn = connect(bulk_threshold=250, bulk_page=200, bulk_poll_s=0.01)
    bulk = {r.external_id: r.payload for p in bulk_conn.read("contacts") for r in p.records}
    assert bulk_conn.bulk_jobs and bulk == rest
    client = getattr(bulk_conn.sf.bulk2, "Contact")._client
    job = client.create_job(Operation.query, "SELECT Id, Account.Name FROM Contact")
    sb.jobs[job["id"]].ready_at = 0  # the job's run time has passed
    assert sb.jobs[job["id"]].selected.wait(10), "the job selected its rows"
    text = client.get_query_results(job["id"], "", 1000)["records"]
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["Id", "Account.Name"], "Bulk 2.0 names a relationship column by its path"
    assert {r["Id"]: r["Account.Name"] or None for r in rows} == \
        {i: (p["Account"] or {}).get("Name") for i, p in rest.items() if not p["IsDeleted"]}


def test_accounts_are_an_object_of_their_own_to_query_and_fetch(org):
    sb, connect = org
    sf = connect().sf
    got = sf.query("SELECT Id, Name, Industry, Phone, Website, BillingCity, SystemModstamp FROM Account")
    assert got["totalSize"] == len(COMPANIES) and {r["Name"] for r in got["records"]} == set(COMPANIES)
    northwind = next(r for r in got["records"] if r["Name"] == "Northwind Traders")
    assert northwind["Phone"] == "+14155550100" and northwind["BillingCity"] == "San Francisco"
    assert sf.Account.get(northwind["Id"])["Website"] == "https://www.northwindtraders.example"


def test_renaming_an_account_reaches_its_contacts_on_a_full_read_but_moves_no_contact_modstamp(org):
    sb, connect = org
    heroine = sb.tables["Contact"].get(1)
    sb.update("Account", COMPANIES.index("Northwind Traders") + 1, {"Name": "Northwind Trading Co"})
    assert sb.tables["Contact"].get(1).ts == heroine.ts, "as in Salesforce: the contact itself did not change"
    record = next(r for p in connect().read("contacts") for r in p.records if r.external_id == sf_id("Contact", 1))
    assert record.payload["Account"] == {"Name": "Northwind Trading Co"}
