"""``omnisync reresolve``: batch re-resolution of a whole store, applied as merges and unmerges with
events and stable ids -- here on a store as an older resolver left it (no blocking index, a typo
duplicate apart, a son glued to his mother). SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import delete, update
from sqlmodel import func, select

from identity.golden import explain
from identity.store import GoldenRecord, IdentityKey, MatchTerm, MergeEvent, SourceRow, session_scope
from omnisync.cli import main
from tests.test_resolve import KATE, Store, _background


@pytest.fixture
def store(store_url) -> Store:
    return Store()


def _as_an_older_resolver_left_it(store: Store) -> tuple[str, str]:
    """Split Kate's HubSpot record off into a golden record of its own, glue the son to his mother,
    and drop the blocking keys and counts the older resolver never kept."""
    with session_scope(store.engine) as s:
        kate = s.exec(select(SourceRow).where(SourceRow.external_id == "h-kate")).one()
        s.add(GoldenRecord(golden_id="g-split-kate"))
        s.exec(update(SourceRow).where(SourceRow.id == kate.id).values(golden_id="g-split-kate"))
        s.exec(update(IdentityKey).where(IdentityKey.source_id == kate.id).values(golden_id="g-split-kate"))
        mum = s.exec(select(SourceRow.golden_id).where(SourceRow.external_id == "mum")).one()
        son = s.exec(select(SourceRow).where(SourceRow.external_id == "son")).one()
        s.exec(update(SourceRow).where(SourceRow.id == son.id).values(golden_id=mum))
        s.exec(update(IdentityKey).where(IdentityKey.source_id == son.id).values(golden_id=mum))
        s.exec(delete(IdentityKey).where(IdentityKey.kind.in_(("blk", "tf"))))
        s.exec(delete(MatchTerm))
    return "g-split-kate", mum


def _reresolve(*args: str, capsys) -> dict:
    assert main(["reresolve", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_reresolve_merges_and_splits_with_events_and_rebuilds_the_index(store, capsys):
    _background(store, 200)
    store.profile("salesforce", "003K", first_name="Katherine", emails=["kate@work.example"], **KATE)
    store.profile("hubspot", "h-kate", first_name="Katherin", emails=["k.okonkwo@gmail.com"], **KATE)
    home = {"last_name": "Mensah", "phones": ["+14045550177"], "addresses": [{"line1": "8 Oak Lane", "postcode": "30030"}]}
    store.profile("salesforce", "mum", first_name="Grace", birth_date="1970-02-02", **home)
    store.profile("hubspot", "son", first_name="Kofi", birth_date="2001-09-09", **home)
    store.resolve()
    kate = store.golden_of("salesforce", "003K")
    assert store.golden_of("hubspot", "h-kate") == kate
    split, mum = _as_an_older_resolver_left_it(store)
    with session_scope(store.engine) as s:
        live = s.exec(select(func.count()).select_from(SourceRow).where(SourceRow.deleted.is_(False))).one()

    planned = _reresolve("--dry-run", capsys=capsys)
    assert planned["dry_run"] and planned["merged"] == 1 and planned["moved"] == 1 and planned["new_golden"] == 1
    assert store.golden_of("hubspot", "h-kate") == split  # a dry run writes nothing

    done = _reresolve(capsys=capsys)
    assert (done["merged"], done["moved"], done["new_golden"], done["reindexed"]) == (1, 1, 1, live)
    assert store.golden_of("hubspot", "h-kate") == store.golden_of("salesforce", "003K") == kate  # the older id
    assert store.golden(split).status == "merged" and store.golden(split).merged_into == kate
    assert store.golden_of("salesforce", "mum") == mum != store.golden_of("hubspot", "son")
    with session_scope(store.engine) as s:
        events = {e.kind: e for e in s.exec(select(MergeEvent).where(MergeEvent.run_id == done["run_id"]))}
        assert events["merge"].absorbed_id == split and "first_name=typo" in str(events["merge"].evidence["pairs"])
        assert events["unmerge"].survivor_id == mum and events["unmerge"].evidence["records"] == ["hubspot/contacts/son"]
        assert s.get(MatchTerm, "*").n == live
        assert s.exec(select(func.count()).select_from(IdentityKey).where(IdentityKey.kind == "blk")).one() > live
        assert "first_name=typo" in explain(s, kate)

    again = _reresolve("--dry-run", capsys=capsys)
    assert not (again.get("merged") or again.get("moved") or again.get("new_golden")), again
