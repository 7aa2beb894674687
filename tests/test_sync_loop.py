"""The sync loop resumes from its last committed page and stops cleanly when a quota is spent."""

from __future__ import annotations

import pytest
from sqlmodel import func, select

from flows.sync import sync_stream
from identity.ingest import load_cursor
from identity.store import SourceRow, get_engine, session_scope
from tests.fakes import FakeConnector
from tests.test_ingest import _acme_mappings  # noqa: F401  (the acme mapping fixture)


def people(n):
    return {f"p{i:03d}": {"first": f"Ann{i}", "last": "Lee", "email": f"ann{i}@example.com"} for i in range(n)}


def stored(engine):
    with session_scope(engine) as s:
        return s.exec(select(func.count()).select_from(SourceRow)).one()


def test_full_read_stores_every_record_and_the_final_cursor(store_url):
    engine = get_engine(store_url)
    conn = FakeConnector(people(35))
    res = sync_stream(engine, conn, "people")
    assert res.status == "ok" and res.pages == 4 and stored(engine) == 35
    assert res.counts.total("api_calls") == 4 and res.counts.reconciles()
    with session_scope(engine) as s:
        assert load_cursor(s, "acme", "people").last_id == "p034"


def test_quota_exhaustion_stops_at_the_checkpoint_and_the_rerun_finishes(store_url):
    engine = get_engine(store_url)
    data = people(35)
    res = sync_stream(engine, FakeConnector(data, quota=2), "people")
    assert res.status == "quota" and res.resume_at is not None
    assert "re-run after the quota resets" in res.message
    assert stored(engine) == 20, "two pages were committed before the quota ran out"
    again = sync_stream(engine, FakeConnector(data), "people")
    assert again.status == "ok" and stored(engine) == 35
    assert again.counts.total("read") == 15, "the re-run starts after the last committed page"


def test_incremental_run_reads_only_changes(store_url):
    engine = get_engine(store_url)
    conn = FakeConnector(people(12))
    sync_stream(engine, conn, "people")
    from datetime import timedelta

    conn.people["p003"]["first"] = "Annie"
    conn.stamps["p003"] += timedelta(minutes=5)
    res = sync_stream(engine, conn, "people")
    assert res.counts.total("read") == 1 and res.counts.total("stored") == 1


def test_resolution_pauses_the_cyclic_collector_per_batch_and_frees_each_batchs_cycles_after_it(store_url, monkeypatch):
    import gc
    import weakref

    import flows.sync as sync

    engine = get_engine(store_url)
    sync_stream(engine, FakeConnector(people(30)), "people")
    seen: list[tuple[bool, weakref.ref]] = []
    real = sync.resolve_pending

    class Cycle:
        pass

    def batch(session, **kw):
        left = Cycle()
        left.me = left  # garbage only the cyclic collector can free
        seen.append((gc.isenabled(), weakref.ref(left)))
        return real(session, **kw)

    freed_by_callback: list[bool] = []
    monkeypatch.setattr(sync, "resolve_pending", batch)
    totals = sync.resolve_all(engine, batch=10, on_batch=lambda _: freed_by_callback.append(seen[-1][1]() is None))
    assert totals["new_golden"] == 30 and len(seen) >= 3
    assert [enabled for enabled, _ in seen] == [False] * len(seen), "no collection runs inside a batch"
    assert all(freed_by_callback), "each batch's cycles are freed as soon as it is committed"
    assert gc.isenabled()
