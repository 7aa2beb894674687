"""A full then an incremental sync of Salesforce contacts into the store while 10% of requests are
refused as unavailable and another 10% answer 5xx: nothing is lost and nothing is stored twice."""

from __future__ import annotations

import pytest
from sqlmodel import select

from connectors.credentials import SalesforceCredentials
from connectors.http import RetryPolicy
from connectors.salesforce import SalesforceConnector
from flows.sync import sync_stream
from identity.store import DeadLetter, SourceRow, get_engine, session_scope
from omnisync.records import as_utc
from sandbox.framework import SandboxCluster
from sandbox.salesforce import SalesforceSandbox, sf_id


def truth(sb: SalesforceSandbox) -> tuple[dict[str, int], set[str], dict[str, str]]:
    t = sb.tables["Contact"]
    live, deleted, merged = {}, set(), {}
    for ts, num in t.by_ts(None):
        rec = t.get(num)
        rid = sf_id("Contact", num)
        if not rec.deleted:
            live[rid] = ts
        elif rec.fields.get("MasterRecordId"):
            merged[rid] = rec.fields["MasterRecordId"]
        else:
            deleted.add(rid)
    return live, deleted, merged


def assert_store_matches(engine, sb: SalesforceSandbox) -> None:
    live, deleted, merged = truth(sb)
    with session_scope(engine) as s:
        rows = list(s.exec(select(SourceRow).where(SourceRow.system == "salesforce", SourceRow.stream == "contacts")))
        dead = {d.external_id for d in s.exec(select(DeadLetter).where(DeadLetter.system == "salesforce"))}
    by_id = {r.external_id: r for r in rows}
    assert len(by_id) == len(rows)
    alive = {r.external_id for r in rows if not r.deleted}
    assert alive | (dead & set(live)) == set(live), "every live contact is stored (or dead-lettered with a reason)"
    assert not alive - set(live), "nothing deleted or merged away is still alive in the store"
    stale = [i for i in alive if int(as_utc(by_id[i].modified_at).timestamp() * 1000) != live[i]]
    assert not stale, f"{len(stale)} contacts stored at an older version"
    assert {i for i in deleted if i in by_id and by_id[i].deleted} == deleted
    assert all(by_id[old].merged_into == new for old, new in merged.items())


def scenario(tmp_path, size: int) -> None:
    sb = SalesforceSandbox(size=size, seed=9)
    engine = get_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with SandboxCluster([sb], workdir=tmp_path / "sb") as cluster:
        info = cluster.info()["salesforce"]
        sb.set_faults(rate_429=0.1, rate_5xx=0.1, seed=13)
        conn = SalesforceConnector(SalesforceCredentials(instance_url=info["base_url"], ca_bundle=info["ca_cert"],
                                                         **info["credentials"]),
                                   policy=RetryPolicy(attempts=10, backoff_initial=0.05, backoff_max=0.5),
                                   query_batch=200)
        full = sync_stream(engine, conn, "contacts")
        assert full.status == "ok" and full.counts.reconciles()
        assert_store_matches(engine, sb)

        live = sorted(n for n in range(1, size + 1) if not sb.tables["Contact"].get(n).deleted)
        at = sb.now_ms()
        sb.now_ms = lambda: at  # one bulk edit: every change below shares one SystemModstamp
        for n in live[: size // 20]:
            sb.update("Contact", n, {"Title": "Imported"})
        for n in live[size // 20: size // 20 + size // 100]:
            sb.delete("Contact", n)
        tail = live[-size // 50:]
        for a, b in zip(tail[::2], tail[1::2]):
            sb.merge(sf_id("Contact", a), [sf_id("Contact", b)])
        for i in range(size // 100):
            sb.create("Contact", {"LastName": "New", "Email": f"new.signup{i}@example.org"})
        inc = sync_stream(engine, conn, "contacts")
        assert inc.status == "ok" and inc.counts.reconciles()
        assert_store_matches(engine, sb)
        assert inc.counts.total("read") < size // 4, "the incremental run read the changes, not everything"
        assert sb.log.faults_injected["429"] + sb.log.faults_injected["5xx"] >= 2, "faults were really served"


def test_full_then_incremental_sync_of_1000_contacts_under_faults_loses_and_duplicates_nothing(tmp_path):
    scenario(tmp_path, 1000)


@pytest.mark.slow
def test_full_then_incremental_sync_of_10000_contacts_under_faults_loses_and_duplicates_nothing(tmp_path):
    scenario(tmp_path, 10_000)
