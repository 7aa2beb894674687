"""Concurrent ingest on PostgreSQL: overlapping writers leave one row per record and lose nothing."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlmodel import func, select

from identity.ingest import ingest_records
from identity.store import SourceRow, get_engine, run_in_transaction, session_scope
from tests.test_ingest import T0, _acme_mappings, person  # noqa: F401

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("writers", [2, 4])
def test_overlapping_writers_store_each_record_once(pg_url, writers):
    engine = get_engine(pg_url)
    errors: list[BaseException] = []
    # Every writer sees the same 300 people, in a different order, in pages of 50, with newer
    # versions for some: the store must end with 300 rows holding the newest version of each.
    def work(w: int):
        try:
            ids = list(range(300))
            ids = ids[w * 37 % 300:] + ids[:w * 37 % 300]
            for i in range(0, 300, 50):
                page = [person(n, at=T0 + timedelta(seconds=w if n % 3 == 0 else 0), first=f"v{w if n % 3 == 0 else 0}")
                        for n in ids[i:i + 50]]
                run_in_transaction(lambda s, page=page: ingest_records(s, page), engine, attempts=20)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:1]
    with session_scope(engine) as s:
        assert s.exec(select(func.count()).select_from(SourceRow)).one() == 300
        newest = {r.external_id: r.canonical["profile"]["first_name"] for r in s.exec(select(SourceRow))}
    assert all(newest[f"p{n}"] == f"v{writers - 1}" for n in range(0, 300, 3)), "a newer version was lost"
