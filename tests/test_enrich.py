"""Enrichment from the CDP: which addresses one pass asks about (plain functions, no Prefect, no HTTP)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from flows.enrich import STREAM, enrich_from_cdp
from identity.ingest import load_cursor
from identity.store import ChangeEvent, GoldenRecord, get_engine, session_scope
from omnisync.records import SourceRecord

pytestmark = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)


class FakeCdp:
    """Knows one profile (by its first address); records every lookup it is asked."""

    system = "segment"

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def fetch_profiles(self, lookups):
        self.asked.extend(lookups)
        return [SourceRecord(system="segment", stream="profiles", external_id="web-1",
                             modified_at=datetime(2026, 3, 1, tzinfo=timezone.utc),
                             payload={"traits": {"email": e}, "external_ids": [{"type": "user_id", "id": "web-1"}]})
                for kind, e in lookups if e == "ann@example.com"]


def _feed(events: list[tuple[str, list[str]]]) -> None:
    """Golden records with these addresses, and a change event for each entry (in order)."""
    with session_scope(get_engine()) as s:
        seen = {}
        for gid, emails in events:
            seen[gid] = emails
        for gid, emails in seen.items():
            s.add(GoldenRecord(golden_id=gid, profile={"emails": emails}))
        for gid, _ in events:
            s.add(ChangeEvent(golden_id=gid, kind="updated", detail={}))


def test_one_pass_asks_the_cdp_about_each_address_once_however_many_times_its_person_changed(store_url):
    # a first load: every person is created, then updated by later batches, so each appears in
    # several windows of the change feed
    people = {"g-ann": ["ann@example.com", "ann.work@example.com"], "g-bo": ["bo@example.com"],
              "g-cy": ["cy@example.com"], "g-none": []}
    _feed([(g, e) for _ in range(3) for g, e in people.items()])
    cdp = FakeCdp()

    out = enrich_from_cdp(get_engine(), cdp, batch=2)

    assert sorted(e for _, e in cdp.asked) == sorted(e for emails in people.values() for e in emails)
    assert out["lookups"] == 4 and out["counts"]["segment/profiles"]["read"] == 1
    with session_scope(get_engine()) as s:
        assert load_cursor(s, "segment", STREAM).token == "12", "the whole feed is consumed"


def test_a_new_address_of_a_person_already_asked_about_is_asked_in_the_same_pass(store_url):
    _feed([("g-bo", ["bo@example.com"])])
    with session_scope(get_engine()) as s:
        s.add(ChangeEvent(golden_id="g-bo", kind="updated", detail={}))
    cdp = FakeCdp()
    real = cdp.fetch_profiles

    def gains_an_address(lookups):
        # between two windows of the feed, a merge gives her a second address
        with session_scope(get_engine()) as s:
            g = s.get(GoldenRecord, "g-bo")
            g.profile = {"emails": ["bo@example.com", "bo.home@example.com"]}
            s.add(g)
        return real(lookups)

    cdp.fetch_profiles = gains_an_address
    enrich_from_cdp(get_engine(), cdp, batch=1)

    assert [e for _, e in cdp.asked] == ["bo@example.com", "bo.home@example.com"]
