"""Real-time identity resolution against the store (SQLite and PostgreSQL): joins, merges, protections,
stable ids, interactions and consent following their customer, survivorship lineage and explain."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import select

from identity.golden import current_id, explain
from identity.ingest import resolve_pending
from identity.resolve import lookup, resolve_one
from identity.store import (
    ChangeEvent,
    ConsentEventRow,
    GoldenAlias,
    GoldenRecord,
    InteractionRow,
    MergeEvent,
    SourceRow,
    get_engine,
    session_scope,
)
from omnisync.model import CustomerProfile, Interaction

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)


class Store:
    """Puts canonical rows in the store as ingest would leave them, then resolves."""

    def __init__(self) -> None:
        self.engine = get_engine()
        self.t = T0

    def _tick(self) -> datetime:
        self.t += timedelta(minutes=1)
        return self.t

    def profile(self, system: str, ext_id: str, *, modified: datetime | None = None, deleted: bool = False,
                **fields) -> None:
        prof = CustomerProfile.model_validate(fields).model_dump(mode="json")
        with session_scope(self.engine) as s:
            row = s.exec(select(SourceRow).where(SourceRow.system == system, SourceRow.stream == "contacts",
                                                 SourceRow.external_id == ext_id)).one_or_none()
            if row is None:
                row = SourceRow(system=system, stream="contacts", external_id=ext_id, modified_at=self._tick(),
                                fingerprint="x", payload={}, canonical={}, kind="profile")
            row.canonical = {"profile": prof}
            row.modified_at = modified or self._tick()
            row.deleted = deleted
            row.pending = True
            s.add(row)

    def interaction(self, system: str, ext_id: str, **subject) -> None:
        it = Interaction(channel="voice", direction="inbound", started_at=self._tick(), system=system,
                         external_id=ext_id, **subject)
        data = it.model_dump(mode="json")
        with session_scope(self.engine) as s:
            s.add(SourceRow(system=system, stream="calls", external_id=ext_id, modified_at=self.t, fingerprint="i",
                            payload={}, canonical={"interaction": data}, kind="interaction"))
            s.add(InteractionRow(system=system, external_id=ext_id, channel="voice", direction="inbound",
                                 started_at=it.started_at, fingerprint="i", data=data))

    def consent(self, system: str, ext_id: str, status: str, **subject) -> None:
        data = {"system": system, "external_id": ext_id, "channel": "sms", "purpose": "marketing",
                "status": status, "occurred_at": self._tick().isoformat(), **subject}
        with session_scope(self.engine) as s:
            s.add(SourceRow(system=system, stream="consent", external_id=ext_id, modified_at=self.t,
                            fingerprint="c", payload={}, canonical={"consent": data}, kind="consent"))
            s.add(ConsentEventRow(system=system, external_id=ext_id, channel="sms", purpose="marketing",
                                  status=status, occurred_at=self.t, data=data))

    def resolve(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        while True:
            with session_scope(self.engine) as s:
                out = resolve_pending(s, run_id="t")
            for k, v in out.items():
                totals[k] = totals.get(k, 0) + v
            if not out.get("remaining"):
                return totals

    def golden_of(self, system: str, ext_id: str) -> str | None:
        with session_scope(self.engine) as s:
            return s.exec(select(SourceRow.golden_id).where(SourceRow.system == system,
                                                            SourceRow.external_id == ext_id)).one()

    def golden(self, gid: str) -> GoldenRecord:
        with session_scope(self.engine) as s:
            g = s.get(GoldenRecord, gid)
            s.expunge(g)
            return g

    def active(self) -> int:
        with session_scope(self.engine) as s:
            return len(s.exec(select(GoldenRecord.golden_id).where(GoldenRecord.status == "active")).all())

    def events(self, kind: str | None = None) -> list[ChangeEvent]:
        with session_scope(self.engine) as s:
            q = select(ChangeEvent).order_by(ChangeEvent.seq)
            if kind:
                q = q.where(ChangeEvent.kind == kind)
            rows = list(s.exec(q))
            for r in rows:
                s.expunge(r)
            return rows


@pytest.fixture
def store(store_url) -> Store:
    return Store()


def test_one_person_across_systems_becomes_one_golden_record_with_lineage(store):
    store.profile("salesforce", "003A", first_name="Amara", last_name="Okafor", emails=["amara@work.example"],
                  company="Globex", external_ids={"salesforce": "003A"})
    store.profile("hubspot", "101", first_name="Amara", last_name="Okafor",
                  emails=["Amara@Work.Example", "amara.o@gmail.com"], company="Globex Ltd")
    store.profile("zoom", "z-9", full_name="Amara O.", phones=["+14155550123"], emails=["amara.o@gmail.com"])
    store.profile("segment", "u-77", emails=["amaraO+promo@gmail.com"], cdp_user_id="u-77")
    store.resolve()
    gids = {store.golden_of(s, e) for s, e in [("salesforce", "003A"), ("hubspot", "101"), ("zoom", "z-9"),
                                              ("segment", "u-77")]}
    assert len(gids) == 1 and store.active() == 1
    g = store.golden(gids.pop())
    assert g.profile["company"] == "Globex"  # Salesforce outranks HubSpot by source priority
    assert g.lineage["company"]["system"] == "salesforce" and g.lineage["company"]["rule"] == "source_priority"
    assert g.profile["full_name"] == "Amara O." and g.lineage["full_name"]["rule"] == "prefer zoom"
    assert set(g.profile["emails"]) == {"amara@work.example", "amara.o@gmail.com", "amarao+promo@gmail.com"}
    assert g.profile["external_ids"] == {"salesforce": "003A", "hubspot": "101", "zoom": "z-9", "segment": "u-77"}
    assert g.profile["cdp_user_id"] == "u-77"


def test_junk_and_overused_values_never_glue_people_together(store):
    store.profile("hubspot", "1", first_name="Ann", last_name="Lee", emails=["test@test.com"], phones=["0000000000"])
    store.profile("hubspot", "2", first_name="Ann", last_name="Lee", emails=["test@test.com"], phones=["0000000000"])
    for i in range(12):  # a switchboard number on many records
        store.profile("salesforce", f"00{i}", first_name="Ann", last_name="Lee", phones=["+14155550100"])
    store.resolve()
    assert store.golden_of("hubspot", "1") != store.golden_of("hubspot", "2")
    sb = {store.golden_of("salesforce", f"00{i}") for i in range(12)}
    assert len(sb) > 1  # once the key is overused it stops being evidence


def test_a_shared_family_phone_links_only_people_whose_names_agree(store):
    store.profile("zoom", "mum", first_name="Grace", last_name="Mensah", phones=["+14155550177"])
    store.profile("twilio", "son", first_name="Kofi", last_name="Mensah", phones=["+14155550177"])
    store.profile("hubspot", "mum-hs", first_name="Grace", last_name="Mensah", phones=["(415) 555-0177"])
    store.resolve()
    assert store.golden_of("zoom", "mum") == store.golden_of("hubspot", "mum-hs")
    assert store.golden_of("twilio", "son") != store.golden_of("zoom", "mum")


def test_a_bridging_record_merges_two_golden_records_and_the_older_id_survives(store):
    store.profile("salesforce", "003B", first_name="Li", last_name="Wei", emails=["li@corp.example"])
    store.resolve()
    older = store.golden_of("salesforce", "003B")
    store.profile("zoom", "z-1", first_name="Li", last_name="Wei", phones=["+14155550111"])
    store.resolve()
    younger = store.golden_of("zoom", "z-1")
    assert older != younger
    store.profile("hubspot", "h-1", first_name="Li", last_name="Wei", emails=["li@corp.example"],
                  phones=["+1 415 555 0111"])
    store.resolve()
    assert {store.golden_of(s, e) for s, e in [("salesforce", "003B"), ("zoom", "z-1"), ("hubspot", "h-1")]} == {older}
    assert store.golden(younger).status == "merged" and store.golden(younger).merged_into == older
    with session_scope(store.engine) as s:
        assert current_id(s, younger) == older
        assert s.get(GoldenAlias, younger).golden_id == older
        ev = s.exec(select(MergeEvent)).one()
        assert ev.survivor_id == older and ev.absorbed_id == younger
        assert any(k.startswith("phone=") for k in ev.evidence["keys"])
        assert "+14155550111" not in str(ev.evidence) and "li@corp.example" not in str(ev.evidence)  # masked
        text = explain(s, younger)
    assert f"{younger} was merged into {older}" in text and "hubspot/contacts h-1" in text
    assert "by rule source_priority" in text


def test_re_resolving_unchanged_records_keeps_ids_and_emits_no_change(store):
    store.profile("hubspot", "1", first_name="Eve", emails=["eve@x.example"])
    store.resolve()
    gid = store.golden_of("hubspot", "1")
    n = len(store.events())
    store.profile("hubspot", "1", first_name="Eve", emails=["eve@x.example"], modified=store.t)
    store.resolve()
    assert store.golden_of("hubspot", "1") == gid and len(store.events()) == n
    store.profile("hubspot", "1", first_name="Eve", emails=["eve@x.example"], company="Initech")
    store.resolve()
    ev = store.events()[-1]
    assert store.golden_of("hubspot", "1") == gid and ev.kind == "updated" and ev.detail["fields"] == ["company"]
    assert store.golden(gid).version == 2


def test_a_record_whose_identifiers_change_moves_out_with_an_unmerge_event(store):
    store.profile("hubspot", "a", first_name="Sam", last_name="Ortiz", emails=["sam@x.example"])
    store.profile("zoom", "b", first_name="Sam", last_name="Ortiz", emails=["sam@x.example"])
    store.resolve()
    gid = store.golden_of("hubspot", "a")
    assert store.golden_of("zoom", "b") == gid
    store.profile("zoom", "b", first_name="Sam", last_name="Ortiz", emails=["other@y.example"])
    store.resolve()
    assert store.golden_of("zoom", "b") != gid and store.golden_of("hubspot", "a") == gid
    assert [e.detail for e in store.events("unmerged")]


def test_interactions_follow_their_customer_and_orphans_link_once_the_profile_arrives(store):
    store.profile("zoom", "c-1", first_name="Noor", phones=["+14155550150"], emails=["noor@x.example"])
    store.profile("zoom", "c-2", first_name="Omar", phones=["+14155550160"])
    store.profile("zoom", "c-3", first_name="Huda", phones=["+14155550160"])  # shares Omar's phone
    store.interaction("zoom", "e-1", customer_external_id="c-1")
    store.interaction("twilio", "sms-1", customer_phone="+14155550150")
    store.interaction("twilio", "sms-2", customer_phone="+14155550160")  # ambiguous: two people
    store.interaction("sendgrid", "m-1", customer_email="late@x.example")
    store.resolve()
    with session_scope(store.engine) as s:
        linked = {i.external_id: i.golden_id for i in s.exec(select(InteractionRow))}
    noor = store.golden_of("zoom", "c-1")
    assert linked["e-1"] == noor and linked["sms-1"] == noor
    assert linked["sms-2"] is None and linked["m-1"] is None
    assert any(e.kind == "timeline" and e.golden_id == noor for e in store.events())
    store.profile("hubspot", "late", first_name="Lateefa", emails=["late@x.example"])
    store.resolve()
    with session_scope(store.engine) as s:
        assert s.exec(select(InteractionRow.golden_id).where(InteractionRow.external_id == "m-1")).one() == \
            store.golden_of("hubspot", "late")


def test_an_opt_out_event_becomes_the_golden_consent_and_a_consent_change(store):
    store.profile("hubspot", "1", first_name="Ida", phones=["+14155550190"])
    store.resolve()
    gid = store.golden_of("hubspot", "1")
    store.consent("twilio", "SM1", "opted_out", customer_phone="+14155550190")
    store.resolve()
    g = store.golden(gid)
    assert [(c["channel"], c["status"], c["source_system"]) for c in g.profile["consent"]] == \
        [("sms", "opted_out", "twilio")]
    assert store.events()[-1].kind == "consent"


def test_a_deleted_source_stops_contributing_and_a_lone_golden_record_retires(store):
    store.profile("hubspot", "1", first_name="Bo", emails=["bo@x.example"], company="A")
    store.profile("zoom", "2", first_name="Bo", emails=["bo@x.example"], company="B")
    store.resolve()
    gid = store.golden_of("hubspot", "1")
    store.profile("zoom", "2", first_name="Bo", emails=["bo@x.example"], company="B", deleted=True)
    store.resolve()
    assert store.golden(gid).profile["company"] == "A"
    store.profile("hubspot", "1", first_name="Bo", emails=["bo@x.example"], company="A", deleted=True)
    store.resolve()
    assert store.golden(gid).status == "retired"


def test_lookup_and_resolve_one_answer_with_the_same_rules_without_writing(store):
    store.profile("hubspot", "1", first_name="Ray", last_name="Chu", emails=["Ray.Chu@gmail.com"],
                  phones=["+14155550199"])
    store.resolve()
    gid = store.golden_of("hubspot", "1")
    with session_scope(store.engine) as s:
        assert lookup(s, "email", "raychu+x@gmail.com") == [gid]
        assert lookup(s, "ext:hubspot", "1") == [gid]
        assert resolve_one(s, "zoom", "new", {"first_name": "Ray", "phones": ["+14155550199"]})[0] == gid
        assert resolve_one(s, "zoom", "new", {"first_name": "Ted", "phones": ["+14155550199"]})[0] is None
    assert store.active() == 1


def test_a_shared_office_line_does_not_merge_similar_names_of_different_people(store):
    store.profile("salesforce", "ana", first_name="Ana", last_name="Mitchell", phones=["+12065550101"])
    store.profile("salesforce", "hana", first_name="Hana", last_name="Flores", phones=["+12065550101"])
    store.profile("hubspot", "ana2", first_name="Ana", last_name="Flores", phones=["+12065550101"])
    store.profile("zoom", "jon", first_name="Jon", last_name="Mitchel", phones=["+12065550101"])
    store.resolve()
    assert len({store.golden_of(s, e) for s, e in [("salesforce", "ana"), ("salesforce", "hana"),
                                                  ("hubspot", "ana2")]}) == 3
    assert store.golden_of("zoom", "jon") != store.golden_of("salesforce", "ana")


# --- probabilistic evidence on the real-time path ---------------------------------------------------

def _background(store: Store, n: int = 300) -> None:
    """Other customers in the store: names and postcodes get realistic frequencies (term weights)."""
    from identity import truth
    from tests.test_identity_paths import profile_of

    for r in truth.generate(n, seed=99):
        store.profile(r["system"], r["record_id"], **profile_of(r))
    store.resolve()


KATE = dict(last_name="Okonkwo", birth_date="1985-07-14",
            addresses=[{"line1": "12 Main Street", "city": "Springfield", "state": "IL", "postcode": "62704"}])


def test_a_typo_duplicate_with_other_email_and_phone_merges_with_probabilistic_evidence(store):
    _background(store)
    store.profile("salesforce", "003K", first_name="Katherine", emails=["kate@work.example"], phones=["+12175550101"],
                  **KATE)
    store.profile("zoom", "caller-7", first_name="Katherine", last_name="Okonkwo", phones=["+12175550199"])
    store.resolve()
    sf, zoom = store.golden_of("salesforce", "003K"), store.golden_of("zoom", "caller-7")
    assert sf != zoom  # a name alone ties nobody
    # a typo in the first name, another email and phone: birth date and street address tie her to
    # the Salesforce contact, her new phone to the caller -- one person, one golden record
    store.profile("hubspot", "h-kate", first_name="Katherin", emails=["k.okonkwo@gmail.com"], phones=["(217) 555-0199"],
                  **{**KATE, "addresses": [{"line1": "12 MAIN ST", "postcode": "62704"}]})
    store.resolve()
    assert store.golden_of("hubspot", "h-kate") == store.golden_of("salesforce", "003K") == \
        store.golden_of("zoom", "caller-7") == sf  # the older id survives
    with session_scope(store.engine) as s:
        ev = s.exec(select(MergeEvent).where(MergeEvent.kind == "merge")).one().evidence
        text = explain(s, sf)
    typo = next(p for p in ev["pairs"] if "salesforce/contacts/003K" in p["records"])
    assert sorted(typo["records"]) == ["hubspot/contacts/h-kate", "salesforce/contacts/003K"]
    assert "first_name=typo" in typo["agreed"]
    assert {"birth_date=exact", "address=street_postcode", "last_name=exact"} <= set(typo["agreed"])
    assert set(typo["disagreed"]) == {"email", "phone"} and typo["keys"] == []
    assert typo["weight"] >= ev["threshold"] and 0.99 < typo["probability"] <= 1
    assert any(k.startswith("phone=") for k in ev["keys"])  # the caller: on the shared phone
    for raw in ("Katherin", "Okonkwo", "1985", "kate@work", "k.okonkwo", "5550199", "Main"):
        assert raw not in str(ev), raw
    assert "first_name=typo" in text and "match weight" in text and "probability" in text
    assert "Why these records are together" in text and "salesforce/contacts/003K ~ hubspot/contacts/h-kate" in text


def test_a_family_sharing_a_phone_and_address_is_not_merged(store):
    _background(store)
    home = {"last_name": "Mensah", "phones": ["+14045550177"],
            "addresses": [{"line1": "8 Oak Lane", "city": "Decatur", "state": "GA", "postcode": "30030"}]}
    store.profile("salesforce", "mum", first_name="Grace", birth_date="1970-02-02", **home)
    store.profile("hubspot", "son", first_name="Kofi", birth_date="2001-09-09", **home)
    store.profile("shop", "dad", first_name="Kwame", birth_date="1968-11-30", emails=["kwame@x.example"], **home)
    store.profile("zoom", "mum-call", first_name="Grace", last_name="Mensah", phones=["404-555-0177"])
    store.resolve()
    gids = {e: store.golden_of(s, e) for s, e in (("salesforce", "mum"), ("hubspot", "son"), ("shop", "dad"),
                                                  ("zoom", "mum-call"))}
    assert len({gids["mum"], gids["son"], gids["dad"]}) == 3
    assert gids["mum-call"] == gids["mum"]  # her own call still finds her on the family line
    with session_scope(store.engine) as s:
        assert resolve_one(s, "twilio", "sms-1", {"first_name": "Kofi", "phones": ["+14045550177"]})[0] == gids["son"]


def test_unindex_takes_records_out_of_the_index_and_the_population_counts(store):
    from identity.resolve import POPULATION, term_hash, unindex
    from identity.store import IdentityKey, MatchTerm

    store.profile("hubspot", "1", first_name="Ines", last_name="Duarte", emails=["ines@x.example"])
    store.profile("zoom", "2", first_name="Ines", phones=["+14155550131"])
    store.resolve()
    with session_scope(store.engine) as s:
        assert s.get(MatchTerm, POPULATION).n == 2 and s.get(MatchTerm, term_hash("f|ines")).n == 2
        sid = s.exec(select(SourceRow.id).where(SourceRow.external_id == "1")).one()
        assert unindex(s, [sid]) == 1
    with session_scope(store.engine) as s:
        assert not s.exec(select(IdentityKey).where(IdentityKey.source_id == sid)).all()
        assert s.get(MatchTerm, POPULATION).n == 1 and s.get(MatchTerm, term_hash("f|ines")).n == 1
        assert s.get(MatchTerm, term_hash("l|duarte")).n == 0


def test_change_events_written_in_one_insert_keep_program_order_with_those_added_as_objects(store):
    from identity.store import add_change_events

    with session_scope(store.engine) as s:
        s.add(ChangeEvent(golden_id="g-1", kind="merged", detail={"into": "g-2"}))
        add_change_events(s, [("g-2", "updated", {"fields": ["email"]}), ("g-3", "timeline", {"interactions": 2})])
        s.add(ChangeEvent(golden_id="g-2", kind="consent", detail={"fields": ["consent"]}))
    with session_scope(store.engine) as s:
        feed = [(e.golden_id, e.kind, e.detail) for e in s.exec(select(ChangeEvent).order_by(ChangeEvent.seq))]
    assert feed == [("g-1", "merged", {"into": "g-2"}), ("g-2", "updated", {"fields": ["email"]}),
                    ("g-3", "timeline", {"interactions": 2}), ("g-2", "consent", {"fields": ["consent"]})]
