"""A full then an incremental sync of HubSpot contacts into the store while 10% of requests answer
429 and another 10% answer 5xx: nothing is lost and nothing is stored twice."""

from __future__ import annotations

import pytest
from sqlmodel import select

from connectors.credentials import HubSpotCredentials
from connectors.http import RetryPolicy
from connectors.hubspot import HubSpotConnector
from flows.sync import sync_stream
from identity.store import DeadLetter, SourceRow, get_engine, session_scope
from omnisync.records import as_utc
from sandbox.framework import SandboxCluster
from sandbox.hubspot import HubSpotSandbox


def truth(sb: HubSpotSandbox) -> tuple[dict[str, int], set[str], dict[str, str]]:
    st = sb.stores["contacts"]
    live = {str(oid): ts for ts, oid in st.by_ts()}
    archived = {str(i) for i in st.ids(0, archived=True)}
    merged = {str(old): str(st.resolve(old)) for old in st.gone}
    return live, archived, merged


def assert_store_matches(engine, sb: HubSpotSandbox) -> None:
    live, archived, merged = truth(sb)
    with session_scope(engine) as s:
        rows = list(s.exec(select(SourceRow).where(SourceRow.system == "hubspot", SourceRow.stream == "contacts")))
        dead = {d.external_id for d in s.exec(select(DeadLetter).where(DeadLetter.system == "hubspot"))}
    by_id = {r.external_id: r for r in rows}
    assert len(by_id) == len(rows)
    alive = {r.external_id for r in rows if not r.deleted}
    assert alive | (dead & set(live)) == set(live), "every live contact is stored (or dead-lettered with a reason)"
    assert not alive - set(live), "nothing deleted or merged away is still alive in the store"
    stale = [i for i in alive if int(as_utc(by_id[i].modified_at).timestamp() * 1000) != live[i]]
    assert not stale, f"{len(stale)} contacts stored at an older version"
    assert {i for i in archived if i in by_id and by_id[i].deleted} == archived
    assert all(by_id[old].merged_into == new for old, new in merged.items() if old in by_id)
    assert set(merged) <= set(by_id), "every merge is recorded"


def scenario(tmp_path, size: int) -> None:
    sb = HubSpotSandbox(size=size, seed=9)
    engine = get_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with SandboxCluster([sb], workdir=tmp_path / "sb") as cluster:
        info = cluster.info()["hubspot"]
        sb.set_faults(rate_429=0.1, rate_5xx=0.1, seed=13)
        conn = HubSpotConnector(HubSpotCredentials(host=info["base_url"], **info["credentials"]),
                                policy=RetryPolicy(attempts=10, backoff_initial=0.05, backoff_max=0.5))
        full = sync_stream(engine, conn, "contacts")
        assert full.status == "ok" and full.counts.reconciles()
        assert_store_matches(engine, sb)

        ids = sorted((int(i) for i in truth(sb)[0]), key=int)
        sb.touch("contacts", ids[: size // 20], {"jobtitle": "Imported"})  # one bulk edit, one timestamp
        for oid in ids[size // 20: size // 20 + size // 100]:
            sb.archive("contacts", oid)
        tail = ids[-size // 50:]
        for a, b in zip(tail[::2], tail[1::2]):
            sb.merge("contacts", a, b)
        for i in range(size // 100):
            sb.create("contacts", {"email": f"new.signup{i}@example.org", "firstname": "New"})
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
