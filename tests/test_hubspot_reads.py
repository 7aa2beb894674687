"""The HubSpot connector (real SDK) against the HubSpot sandbox: reads, writes, limits, faults."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest

from connectors.credentials import HubSpotCredentials
from connectors.errors import QuotaExhaustedError
from connectors.http import RateBudget, RetryPolicy
from connectors.hubspot import HubSpotConnector
from omnisync.records import Cursor, OutboundRecord, WriteStatus
from sandbox.framework import SandboxCluster
from sandbox.hubspot import ID_BASE, HubSpotSandbox, Limits

FAST = RetryPolicy(attempts=8, backoff_initial=0.02, backoff_max=0.2)


@pytest.fixture
def hub(tmp_path):
    """start(size, **sandbox options) -> (sandbox, connect(**connector options))."""
    clusters = []

    def start(size: int = 300, **kw):
        sb = HubSpotSandbox(size=size, seed=5, **kw)
        cluster = SandboxCluster([sb], workdir=tmp_path / f"c{len(clusters)}").start()
        clusters.append(cluster)
        info = cluster.info()["hubspot"]

        def connect(**opts):
            opts.setdefault("policy", FAST)
            # Search pacing is tested on its own; elsewhere it would only slow the suite down.
            opts.setdefault("search_budget", RateBudget(1000.0, 1000))
            return HubSpotConnector(HubSpotCredentials(host=info["base_url"], **info["credentials"]), **opts)

        return sb, connect

    yield start
    for c in clusters:
        c.stop()


def read_all(conn, stream, cursor=None):
    pages = list(conn.read(stream, cursor))
    return pages, [r for p in pages for r in p.records]


def live_ids(sb, otype="contacts"):
    return {str(oid) for _, oid in sb.stores[otype].by_ts()}


def test_records_sharing_one_timestamp_are_read_once_each_and_never_skipped(hub):
    sb, connect = hub(size=700)
    conn = connect()
    _, before = read_all(conn, "contacts")
    cursor = Cursor().advance([r for r in before if not r.deleted])
    tied = sorted(live_ids(sb), key=int)[:450]
    at = sb.touch("contacts", [int(i) for i in tied], {"jobtitle": "Bulk edited"})
    _, after = read_all(connect(), "contacts", cursor)
    at_tie = [r.external_id for r in after if int(r.modified_at.timestamp() * 1000) == at and not r.deleted]
    assert sorted(at_tie, key=int) == tied, "every record of the 450-record tie is read, once"
    _, full = read_all(connect(), "contacts")
    counts = Counter((r.external_id, r.modified_at) for r in full)
    assert max(counts.values()) == 1, "a full read yields no record twice"
    assert {r.external_id for r in full if not r.deleted} == live_ids(sb)


def test_a_read_larger_than_the_search_cap_never_pages_past_10000(hub):
    sb, connect = hub(size=12_000, limits=Limits(enabled=False))
    conn = connect()
    pages, records = read_all(conn, "contacts")
    assert {r.external_id for r in records if not r.deleted} == live_ids(sb)
    assert not [e for e in sb.log.entries if e[3] >= 400], "no request was refused"
    searches = conn.calls["POST /crm/v3/objects/contacts/search"]
    live = len(live_ids(sb))
    # Keyset paging re-reads the last timestamp of each page: about one record in 200.
    assert searches <= -(-live // 199) + 1, (searches, live)


def test_incremental_read_captures_edits_creates_deletes_and_merges(hub):
    sb, connect = hub(size=300)
    pages, _ = read_all(connect(), "contacts")
    cursor = pages[-1].cursor
    ids = sorted(live_ids(sb), key=int)
    sb.update("contacts", int(ids[1]), {"firstname": "Edited"})
    sb.archive("contacts", int(ids[2]))
    sb.merge("contacts", int(ids[3]), int(ids[4]))
    new = sb.create("contacts", {"email": "fresh.lead@example.org", "firstname": "Fresh"})
    _, recs = read_all(connect(), "contacts", cursor)
    by_id = {r.external_id: r for r in recs}
    assert by_id[ids[1]].payload["properties"]["firstname"] == "Edited"
    assert by_id[ids[2]].deleted and by_id[ids[2]].merged_into is None
    assert by_id[ids[4]].deleted and by_id[ids[4]].merged_into == ids[3]
    assert not by_id[ids[3]].deleted and str(new.id) in by_id
    untouched = len(live_ids(sb)) - 3
    assert len(recs) < untouched / 2, "an incremental read re-reads only the overlap window"


def test_deletions_are_reported_once_beyond_the_overlap_window(hub):
    sb, connect = hub(size=300)
    pages, first = read_all(connect(), "contacts")
    cursor = pages[-1].cursor
    assert cursor.token, "the archived pass leaves its watermark in the cursor"
    archived = sorted(r.external_id for r in first if r.deleted and r.merged_into is None)
    assert len(archived) == sb.summary()["contacts"]["archived"]
    victim = sorted(live_ids(sb), key=int)[7]
    sb.archive("contacts", int(victim))
    _, again = read_all(connect(), "contacts", cursor)
    repeated = [r for r in again if r.deleted and r.merged_into is None and r.external_id != victim]
    watermark = datetime.fromisoformat(cursor.token)
    assert all(r.modified_at >= watermark - timedelta(minutes=5) for r in repeated), "only the overlap is re-read"
    assert len(repeated) < len(archived) or len(archived) == 1
    assert victim in {r.external_id for r in again if r.deleted}


def test_engagements_carry_their_contact_and_follow_a_merge(hub):
    sb, connect = hub(size=300)
    _, calls = read_all(connect(), "calls")
    live_calls = [r for r in calls if not r.deleted]
    assert live_calls and all("associations" in r.payload for r in live_calls)
    linked = [r for r in live_calls if r.payload["associations"]["contacts"]["results"]]
    assert len(linked) >= 0.95 * len(live_calls)
    call = linked[0]
    contact = call.payload["associations"]["contacts"]["results"][0]["id"]
    survivor = next(i for i in sorted(live_ids(sb), key=int) if i != contact)
    sb.merge("contacts", int(survivor), int(contact))
    _, again = read_all(connect(), "calls")
    moved = next(r for r in again if r.external_id == call.external_id)
    assert [x["id"] for x in moved.payload["associations"]["contacts"]["results"]] == [survivor]


def test_engagement_writes_are_idempotent_and_associated_to_the_contact(hub):
    sb, connect = hub(size=100)
    conn = connect()
    rec = OutboundRecord(key="zoom:eng-1", associations={"contact": str(ID_BASE["contacts"] + 1)},
                         payload={"properties": {"hs_timestamp": "2026-11-20T10:00:00Z", "hs_call_body": "Refund",
                                                 "hs_call_direction": "INBOUND",
                                                 "omnisync_interaction_id": "zoom:eng-1"}})
    first = conn.write("calls", [rec])
    second = conn.write("calls", [rec])
    assert first[0].status is WriteStatus.created and second[0].status in (WriteStatus.updated, WriteStatus.unchanged)
    assert first[0].external_id == second[0].external_id
    assert sb.associated("calls", int(first[0].external_id), "contacts") == [ID_BASE["contacts"] + 1]
    assert sb.stores["calls"].count_range(None, True, None, True) == sb.stores["calls"].n - len(
        sb.stores["calls"].seed_archived) + 1, "the second write created nothing"


def test_contact_writes_upsert_in_batches_of_100_by_golden_id_email_or_id(hub):
    sb, connect = hub(size=100)
    conn = connect()
    heroine = str(ID_BASE["contacts"] + 1)
    recs = [OutboundRecord(key=f"G{i}|new", match={"omnisync_golden_id": f"G{i}"},
                           payload={"properties": {"email": f"bulk{i}@example.org", "omnisync_golden_id": f"G{i}"}})
            for i in range(230)]
    recs.append(OutboundRecord(key="G-hero|1001", external_id=heroine,
                               payload={"properties": {"omnisync_golden_id": "G-hero"}}))
    recs.append(OutboundRecord(key="G-mail|new", match={"email": "AMARA.OKAFOR@example.com"},
                               payload={"properties": {"jobtitle": "Founder"}}))
    out = conn.write("contacts", recs)
    assert [o.key for o in out] == [r.key for r in recs]
    assert all(o.ok for o in out), [o.error for o in out if not o.ok]
    assert sum(o.status is WriteStatus.created for o in out) == 230
    assert out[230].external_id == heroine and out[231].external_id == heroine
    assert conn.calls["POST /crm/v3/objects/contacts/batch/upsert"] == 4  # 100 + 100 + 30, then the email one
    assert conn.calls["POST /crm/v3/objects/contacts/batch/update"] == 1
    again = conn.write("contacts", recs[:230])
    assert [o.external_id for o in again] == [o.external_id for o in out[:230]]


def test_merge_through_the_connector_is_seen_by_the_next_read(hub):
    sb, connect = hub(size=100)
    conn = connect()
    pages, _ = read_all(conn, "contacts")
    a, b = sorted(live_ids(sb), key=int)[:2]
    assert conn.merge(a, b) == a
    _, recs = read_all(conn, "contacts", pages[-1].cursor)
    assert any(r.external_id == b and r.merged_into == a for r in recs)


def test_usage_headers_keep_requests_under_the_rolling_limit(hub):
    sb, connect = hub(size=1500, limits=Limits(ten_secondly=4, interval_s=1.0))
    conn = connect(budget=RateBudget(10.0, 100))  # a budget far looser than this portal's limit
    _, recs = read_all(conn, "contacts")
    assert {r.external_id for r in recs if not r.deleted} == live_ids(sb)
    assert conn.api_calls > 4
    assert not [e for e in sb.log.entries if e[3] == 429], "the headers slowed us down before a 429"
    assert conn.budget.waited > 0


def test_search_is_paced_under_its_own_per_second_limit(hub):
    sb, connect = hub(size=1200)
    conn = connect(search_budget=RateBudget(4.0, 1))
    read_all(conn, "contacts")
    assert conn.calls["POST /crm/v3/objects/contacts/search"] >= 6
    assert not [e for e in sb.log.entries if e[3] == 429]


def test_daily_quota_stops_the_read_with_a_resume_time(hub):
    sb, connect = hub(size=1000)
    sb.set_faults(daily_quota=2)
    conn = connect()
    got = []
    with pytest.raises(QuotaExhaustedError) as exc:
        for page in conn.read("contacts"):
            got.append(page)
    assert len(got) == 2, "pages read before the quota ran out are handed over with their cursors"
    assert exc.value.resume_at is not None
    assert conn.api_calls == 2, "the usage headers said none were left: the third call was never sent"


def test_timeouts_and_server_errors_are_retried(hub):
    sb, connect = hub(size=500)
    sb.set_faults(rate_timeout=0.2, timeout_stall_s=1.0, rate_5xx=0.2, seed=11)
    conn = connect(timeout=0.4)
    _, recs = read_all(conn, "contacts")
    assert {r.external_id for r in recs if not r.deleted} == live_ids(sb)
    assert conn.retries > 0 and sb.log.faults_injected["timeout"] + sb.log.faults_injected["5xx"] > 0


def test_truncated_bodies_are_retried(hub):
    sb, connect = hub(size=500)
    sb.set_faults(rate_truncate=0.3, seed=2)
    conn = connect()
    _, recs = read_all(conn, "contacts")
    assert sb.log.faults_injected["truncate"] > 0
    assert {r.external_id for r in recs if not r.deleted} == live_ids(sb)


def test_partitioned_reads_cover_the_range_exactly_once(hub):
    sb, connect = hub(size=600)
    _, full = read_all(connect(), "contacts")
    stamps = sorted(r.modified_at for r in full if not r.deleted)
    mid = stamps[len(stamps) // 2]
    first = [r for p in connect().read("contacts", Cursor(modified_at=stamps[0] + timedelta(minutes=5)), until=mid)
             for r in p.records if not r.deleted]
    second = [r for p in connect().read("contacts", Cursor(modified_at=mid + timedelta(minutes=5)))
              for r in p.records if not r.deleted]
    assert all(r.modified_at < mid for r in first)
    assert {r.external_id for r in first} | {r.external_id for r in second} == live_ids(sb)
