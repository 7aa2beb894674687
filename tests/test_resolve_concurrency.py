"""Concurrent resolution on PostgreSQL: several resolvers over overlapping people make one golden record each.

Two flows resolving the same person at once must not create two golden records (DESIGN, Storage).
Each person here arrives twice, as an ``acme`` and a ``beta`` record sharing email and phone, while
writers are still ingesting and 2 or 4 resolvers race over the pending rows.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlmodel import func, select

from flows.sync import resolve_all
from identity import ingest
from identity.ingest import ingest_records
from identity.store import GoldenRecord, MergeEvent, SourceRow, get_engine, run_in_transaction, session_scope
from mappings.engine import MappingConfigError
from omnisync.records import SourceRecord
from tests.test_ingest import PROFILE, T0

pytestmark = pytest.mark.postgres
PEOPLE = 240


@pytest.fixture(autouse=True)
def _two_systems(monkeypatch):
    def fake(system, stream):
        if stream != "people" or system not in ("acme", "beta"):
            raise MappingConfigError(f"no mapping for {system}/{stream}")
        return (PROFILE,)

    monkeypatch.setattr(ingest, "mappings_for", fake)


def _record(system: str, i: int, version: int = 0) -> SourceRecord:
    payload = {"first": f"Ann{i}", "last": "Lee", "email": f"ann{i}@example.com", "phone": f"+1415555{i:04d}",
               "title": f"v{version}"}
    return SourceRecord(system=system, stream="people", external_id=f"{system}-{i}",
                        modified_at=T0 + timedelta(seconds=version), payload=payload)


def _race(engine, resolvers: int) -> list[BaseException]:
    errors: list[BaseException] = []
    writing = threading.Event()
    writing.set()

    def write(system: str, order: list[int]):
        try:
            for v in (0, 1):  # a second version of every record re-opens it for resolution
                for k in range(0, len(order), 20):
                    page = [_record(system, i, v) for i in order[k:k + 20]]
                    run_in_transaction(lambda s, p=page: ingest_records(s, p), engine, attempts=20)
        except BaseException as e:  # surfaced by the test
            errors.append(e)

    def resolve():
        try:
            while True:
                still_writing = writing.is_set()
                resolve_all(engine, batch=25)
                if not still_writing:
                    return
                time.sleep(0.005)
        except BaseException as e:
            errors.append(e)

    ids = list(range(PEOPLE))
    writers = [threading.Thread(target=write, args=("acme", ids)),
               threading.Thread(target=write, args=("beta", ids[::-1]))]
    workers = [threading.Thread(target=resolve) for _ in range(resolvers)]
    for t in writers + workers:
        t.start()
    for t in writers:
        t.join(120)
    writing.clear()
    for t in workers:
        t.join(120)
    assert not any(t.is_alive() for t in writers + workers), "a writer or resolver hung (deadlock?)"
    return errors


@pytest.mark.parametrize("resolvers", [2, 4])
def test_racing_resolvers_make_one_golden_record_per_person(pg_url, resolvers):
    engine = get_engine(pg_url)
    errors = _race(engine, resolvers)
    assert not errors, errors[:1]
    with session_scope(engine) as s:
        assert s.exec(select(func.count()).select_from(SourceRow).where(SourceRow.pending.is_(True))).one() == 0
        goldens = Counter(r.golden_id for r in s.exec(select(SourceRow)))
        active = s.exec(select(func.count()).select_from(GoldenRecord).where(GoldenRecord.status == "active")).one()
        merges = s.exec(select(func.count()).select_from(MergeEvent).where(MergeEvent.kind == "merge")).one()
        by_person = {r.external_id.split("-")[1]: r.golden_id for r in s.exec(select(SourceRow))
                     if r.system == "acme"}
        pairs_apart = sum(1 for r in s.exec(select(SourceRow))
                          if r.system == "beta" and by_person[r.external_id.split("-")[1]] != r.golden_id)
    assert pairs_apart == 0, f"{pairs_apart} people split across two golden records"
    assert active == PEOPLE, f"{active} active golden records for {PEOPLE} people"
    assert set(goldens.values()) == {2} and None not in goldens
    # Resolved one after the other, the second record of each person joins the first: no merges
    # are needed. A merge would mean two resolvers each founded a golden record for one person.
    assert merges == 0, f"{merges} merges: resolvers founded duplicate golden records and merged them later"
