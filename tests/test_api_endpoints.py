"""The golden-record API over a real store (SQLite and PostgreSQL): auth, scopes, masking, paging, aliases.

Golden data is written straight into the store tables by :func:`seed`, so these tests do not depend
on the resolver: one customer (Amara) with an absorbed duplicate, a bot hand-off, an open issue, an
SMS opt-out; a second customer whose rows must never leak into hers; an erased one.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from fastapi.testclient import TestClient

from api import keys
from api.app import create_app
from identity.store import (ChangeEvent, GoldenAlias, GoldenRecord, IdentityKey, InteractionRow, OutboundLedger,
                            SyncRun, get_engine, session_scope)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
AMARA, ABSORBED, OTHER, ERASED = "g-amara", "g-amara-old", "g-other", "g-erased"
EMAIL, PHONE = "amara.okafor@example.com", "+447700900123"


def _it(gid, n, channel, minutes, **kw):
    data = {"system": kw.pop("system", "zoom"), "external_id": f"e{n}", "channel": channel,
            "direction": kw.pop("direction", "inbound"), "status": kw.pop("status", "completed"),
            "customer_email": EMAIL if gid in (AMARA, ABSORBED) else "bob@example.org",
            "customer_phone": PHONE if gid in (AMARA, ABSORBED) else "+15555550100",
            "handoff": kw.pop("handoff", None), "subject": kw.pop("subject", None),
            "attributes": kw.pop("attributes", {})}
    started = T0 + timedelta(minutes=minutes)
    return InteractionRow(system=data["system"], external_id=data["external_id"], golden_id=gid, channel=channel,
                          direction=data["direction"], started_at=started, ended_at=started + timedelta(minutes=6),
                          fingerprint=f"fp{n}", data=data, **kw)


HANDOFF = {"from_bot": "Ava", "intent": "refund", "summary": "Wants a refund for order 5521, call me on +447700900123",
           "context": {"order_id": "5521", "reason": "damaged"}, "bot_interaction_id": "e1"}


def seed(engine) -> None:
    """Amara (with an absorbed duplicate), another customer, an erased one, the change feed, a push."""
    amara = {"first_name": "Amara", "last_name": "Okafor", "emails": [EMAIL, "amara@work.example"],
             "phones": [PHONE], "addresses": [{"line1": "1 High St", "city": "Leeds", "postcode": "LS1 1AA",
                                               "country": "GB"}],
             "birth_date": "1990-04-01", "locale": "en-GB", "timezone": "Europe/London", "value_tier": "gold",
             "company": "Acme", "external_ids": {"hubspot": "101", "zoom": "zc-9"},
             "consent": [{"channel": "sms", "purpose": "marketing", "status": "opted_out",
                          "observed_at": "2026-03-03T10:00:00+00:00", "source_system": "twilio"},
                         {"channel": "email", "purpose": "marketing", "status": "opted_in",
                          "observed_at": "2026-02-01T10:00:00+00:00", "source_system": "hubspot"}],
             "attributes": {"note": "prefers calls after 5pm, +447700900123"}}
    lineage = {"first_name": {"system": "salesforce", "record": "003A", "rule": "most_trusted"},
               "emails": {"system": "hubspot", "record": "101", "rule": "union", "value": EMAIL},
               "phones": {"system": "salesforce", "record": "003A", "rule": "most_recent"}}
    with session_scope(engine) as s:
        s.add(GoldenRecord(golden_id=AMARA, profile=amara, lineage=lineage, version=3))
        s.add(GoldenRecord(golden_id=ABSORBED, status="merged", merged_into=AMARA, profile={}, lineage={}))
        s.add(GoldenAlias(alias_id=ABSORBED, golden_id=AMARA))
        s.add(GoldenRecord(golden_id=OTHER, profile={"first_name": "Bob", "emails": ["bob@example.org"]}))
        s.add(GoldenRecord(golden_id=ERASED, status="erased", profile={}, lineage={}))
        # the email key still names the absorbed id: lookups must land on the survivor
        s.add(IdentityKey(kind="email", value=EMAIL, source_id=1, golden_id=ABSORBED))
        s.add(IdentityKey(kind="phone", value=PHONE, source_id=2, golden_id=AMARA))
        s.add(IdentityKey(kind="ext:hubspot", value="101", source_id=1, golden_id=AMARA))
        s.add(IdentityKey(kind="email", value="bob@example.org", source_id=3, golden_id=OTHER))
        s.add(IdentityKey(kind="email", value="gone@example.com", source_id=4, golden_id=ERASED))
        s.add(_it(AMARA, 1, "bot", 0, system="zoom", status="contained", summary="Refund question"))
        s.add(_it(AMARA, 2, "chat", 5, queue="Billing", agent="Sam Agent", handoff=HANDOFF,
                  summary="Refund approved pending return", disposition="Refund approved"))
        s.add(_it(ABSORBED, 3, "email", 30, system="sendgrid", direction="outbound", subject="Your refund"))
        # two contacts at the same instant: paging must keep both, in id order
        s.add(_it(AMARA, 4, "voice", 24 * 60, queue="Support", agent="Lee Agent",
                  disposition="Follow-up required", summary="Called about the refund"))
        s.add(_it(AMARA, 5, "sms", 24 * 60, system="twilio", direction="outbound", summary="Reply STOP to opt out"))
        s.add(_it(AMARA, 6, "sms", 24 * 60 + 10, system="twilio", summary="STOP"))
        s.add(_it(OTHER, 7, "voice", 20, queue="Sales", agent="Kim Agent", summary="Bob's call"))
        for i, (gid, kind) in enumerate([(AMARA, "created"), (OTHER, "created"), (AMARA, "merged"),
                                         (AMARA, "consent"), (ERASED, "erased")]):
            s.add(ChangeEvent(golden_id=gid, kind=kind, at=T0 + timedelta(seconds=i),
                              detail={"absorbed": ABSORBED} if kind == "merged" else
                              {"email": EMAIL} if kind == "consent" else {}))
        s.add(OutboundLedger(target_system="hubspot", target_stream="contacts", key=f"{AMARA}|hubspot",
                             external_id="101", fingerprint="x", payload={"vendor": {"phone": PHONE, "lifecyclestage": "customer"}}))
        s.add(SyncRun(run_id="run-1", flow="omnichannel-sync", status="completed", started_at=T0))


@pytest.fixture
def api(store_url):
    engine = get_engine(store_url)
    seed(engine)
    keys.clear_cache()
    made = {name: keys.create_key(name, scopes, engine=engine) for name, scopes in {
        "full": ["lookup", "profile:read", "pii:read"], "masked": ["lookup", "profile:read"],
        "ivr": ["lookup"], "pii-only": ["pii:read"]}.items()}
    with TestClient(create_app(engine)) as client:
        client.keys = made
        client.engine = engine
        yield client


def get(client, path, key="full", **params):
    return client.get(path, params=params, headers={"Authorization": f"Bearer {client.keys[key]}"} if key else {})


# --- health and auth -----------------------------------------------------------------------------

def test_health_answers_without_a_key_with_store_state_and_last_run(api):
    r = api.get("/health")
    assert r.status_code == 200
    assert r.json()["store"] == "ok" and r.json()["last_run"]["run_id"] == "run-1"
    assert api.get("/ready").json() == {"ready": True, "store": "ok"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"X-API-Key": "osk_" + "a" * 43},
                                     {"Authorization": "Basic Zm9vOmJhcg=="}])
def test_missing_malformed_or_unknown_keys_get_401_problem(api, headers):
    r = api.get("/v1/lookup", params={"email": EMAIL}, headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["status"] == 401 and "key" in r.json()["detail"]


def test_x_api_key_header_works_and_a_revoked_key_stops_at_once(api):
    secret = keys.create_key("temp", ["lookup"], engine=api.engine)
    assert api.get("/v1/lookup", params={"phone": PHONE}, headers={"X-API-Key": secret}).status_code == 200
    keys.revoke_key("temp", engine=api.engine)
    assert api.get("/v1/lookup", params={"phone": PHONE}, headers={"X-API-Key": secret}).status_code == 401


@pytest.mark.parametrize("key,path", [("ivr", f"/v1/profiles/{AMARA}"), ("ivr", f"/v1/profiles/{AMARA}/timeline"),
                                      ("ivr", "/v1/changes"), ("ivr", "/v1/analytics/journeys"),
                                      ("pii-only", "/v1/lookup?phone=%2B447700900123")])
def test_a_key_without_the_scope_gets_403_naming_it(api, key, path):
    r = api.get(path, headers={"X-API-Key": api.keys[key]})
    assert r.status_code == 403
    assert r.json()["scope"] in r.json()["detail"]


def test_the_api_ignores_the_360_cookie(api):
    api.cookies.set("omnisync_key", api.keys["full"])
    assert api.get("/v1/lookup", params={"phone": PHONE}).status_code == 401


# --- lookup --------------------------------------------------------------------------------------

def test_lookup_by_email_lands_on_the_survivor_with_what_the_agent_needs_first(api):
    r = get(api, "/v1/lookup", email="  Amara.Okafor@EXAMPLE.com ")
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["golden_id"] == AMARA and b["matched_on"] == "email"
    assert b["name"] == "Amara Okafor" and b["preferred_language"] == "en-GB" and b["value_tier"] == "gold"
    assert {(c["channel"], c["status"]) for c in b["consent"]} == {("sms", "opted_out"), ("email", "opted_in")}
    assert b["last_channel"] == "sms" and b["last_interaction"]["summary"] == "STOP"
    assert (b["last_agent"], b["last_queue"]) == ("Lee Agent", "Support")
    assert b["open_case"]["disposition"] == "Follow-up required" and b["open_case"]["channel"] == "voice"
    assert b["last_handoff"]["handoff"]["intent"] == "refund"
    assert b["last_handoff"]["handoff"]["context"] == {"order_id": "5521", "reason": "damaged"}
    assert b["customer360_url"] == f"/360/{AMARA}"


@pytest.mark.parametrize("params", [{"phone": "07700 900123"}, {"phone": "+44 (0)7700-900-123"},
                                    {"external_id": "101", "system": "hubspot"}])
def test_lookup_by_formatted_phone_or_external_id(api, params, monkeypatch):
    monkeypatch.setenv("OMNISYNC_DEFAULT_REGION", "GB")
    from omnisync.settings import reset_settings

    reset_settings()
    r = get(api, "/v1/lookup", **params)
    assert r.status_code == 200, r.text
    assert r.json()["golden_id"] == AMARA


@pytest.mark.parametrize("params,param", [({}, "email|phone|external_id"),
                                          ({"email": EMAIL, "phone": PHONE}, "email|phone|external_id"),
                                          ({"email": "not-an-address"}, "email"), ({"phone": "12"}, "phone"),
                                          ({"phone": "call me"}, "phone"), ({"external_id": "101"}, "system"),
                                          ({"external_id": "1", "system": "hub spot;--"}, "system")])
def test_malformed_lookups_are_400_naming_the_parameter(api, params, param):
    r = get(api, "/v1/lookup", **params)
    assert r.status_code == 400, r.text
    assert r.json()["param"] == param and r.json()["detail"].startswith(param)


def test_unknown_and_erased_customers_are_404_on_lookup(api):
    assert get(api, "/v1/lookup", email="nobody@example.com").status_code == 404
    assert get(api, "/v1/lookup", email="gone@example.com").status_code == 404
    r = get(api, "/v1/lookup", key="masked", email="nobody@example.com")
    assert "nobody" not in r.text


def test_the_screen_pop_fast_reader_answers_as_the_general_path_or_declines(api):
    from sqlmodel import Session

    from api.app import read_screen_pop, screen_pop
    from api.screenpop import ScreenPopReader

    # a plain customer, and a second active record sharing her phone (the fast path's other match)
    with session_scope(api.engine) as s:
        s.add(GoldenRecord(golden_id="g-plain", profile={"first_name": "Ola", "locale": "pl-PL"},
                           updated_at=T0 + timedelta(days=1)))
        s.add(GoldenRecord(golden_id="g-twin", profile={"first_name": "Ela"}, updated_at=T0))
        for n, gid in enumerate(("g-plain", "g-twin", "g-plain")):
            s.add(IdentityKey(kind="phone", value="+48500100200", source_id=100 + n, golden_id=gid))
        s.add(_it("g-plain", 8, "voice", 90, queue="PL", agent="Ania", disposition="Callback"))
        s.add(_it("g-plain", 9, "chat", 95, handoff=HANDOFF, summary="bot handed over"))
    reader = ScreenPopReader(api.engine)
    keys_ = [("email", EMAIL), ("phone", PHONE), ("ext:hubspot", "101"), ("email", "bob@example.org"),
             ("email", "gone@example.com"), ("email", "nobody@example.com"), ("phone", "+48500100200")]
    declined = []
    for kind, value in keys_:
        fast = reader.read(kind, value)
        with Session(api.engine) as s:
            general = read_screen_pop(s, kind, value)
        if fast is None:
            declined.append((kind, value))
            continue
        assert (fast[0] is None) == (general[0] is None) and fast[1] == general[1], (kind, value)
        if fast[0] is not None:
            for pii in (True, False):
                assert screen_pop(fast[0], fast[2], pii) == screen_pop(general[0], general[2], pii), (kind, value, pii)
    # Amara absorbed a duplicate (her email key still names it): only the general path answers for her
    assert declined == [("email", EMAIL), ("phone", PHONE), ("ext:hubspot", "101")]
    assert reader.read("phone", "+48500100200")[1] == {"g-twin"}
    assert get(api, "/v1/lookup", phone="+48500100200").json()["other_matches"] == ["g-twin"]


@pytest.fixture
def fast_answers(monkeypatch):
    """How many lookups the fast path answered itself (it hands the rest to the route)."""
    from api.app import LookupFastPath

    answered = []
    real = LookupFastPath._answer

    async def spy(self, scope):
        body = await real(self, scope)
        answered.append(body is not None)
        return body

    monkeypatch.setattr(LookupFastPath, "_answer", spy)
    return answered


def test_the_lookup_fast_path_answers_as_the_route_and_leaves_it_every_other_case(api, fast_answers):
    with session_scope(api.engine) as s:
        s.add(GoldenRecord(golden_id="g-plain", profile={"first_name": "Ola", "locale": "pl-PL"},
                           updated_at=T0 + timedelta(days=1)))
        s.add(GoldenRecord(golden_id="g-twin", profile={"first_name": "Ela"}, updated_at=T0))
        for n, gid in enumerate(("g-plain", "g-twin")):
            s.add(IdentityKey(kind="phone", value="+48500100200", source_id=100 + n, golden_id=gid))
            s.add(IdentityKey(kind="ext:zoom", value="zc-48", source_id=100 + n, golden_id=gid))
        s.add(_it("g-plain", 9, "chat", 95, handoff=HANDOFF, summary="bot handed over", queue="PL", agent="Ania"))
    fast = [("full", "phone=%2B48%20500%20100%20200"), ("masked", "phone=%2B48500100200"),
            ("ivr", "external_id=zc-48&system=zoom"), ("full", "email=bob%40example.org")]
    route_only = [("full", f"phone={quote(PHONE)}"),  # Amara absorbed a duplicate: the route follows it
                  ("full", "phone=%2B48500100200&phone=%2B48500100200"), ("full", "phone=%2B48500100200&x=1"),
                  ("full", "phone="), ("full", "phone=%2B48500100200&email=bob%40example.org"),
                  ("full", "email=" + "x" * 250 + "%40example.com"), ("full", "email=nobody%40example.com"),
                  ("full", "email=gone%40example.com"), ("full", "phone=12"), ("full", "external_id=zc-48"),
                  ("pii-only", "phone=%2B48500100200"), (None, "phone=%2B48500100200")]

    def ask(key, query):
        headers = {"X-API-Key": api.keys[key]} if key else {}
        r = api.get(f"/v1/lookup?{query}", headers=headers)
        return r.status_code, r.headers["content-type"], r.text

    for key, query in fast + route_only:
        keys.clear_cache()
        first = ask(key, query)  # no verified key yet: the route answers, and verifies the key
        assert fast_answers.pop() is False
        again = ask(key, query)
        assert again == first, (key, query)
        assert fast_answers.pop() is ((key, query) in fast), (key, query)
    assert json.loads(ask("full", "phone=%2B48500100200")[2])["other_matches"] == ["g-twin"]
    assert json.loads(ask("masked", "phone=%2B48500100200")[2])["name"] != "Ola"


@pytest.mark.postgres
def test_a_lookup_survives_the_database_dropping_its_pooled_connection(pg_url, fast_answers):
    import sqlalchemy as sa

    from identity.store import get_read_engine

    engine = get_engine(pg_url)
    seed(engine)
    secret = keys.create_key("ivr", ["lookup"], engine=engine)
    with TestClient(create_app(engine)) as client:
        ask = lambda: client.get("/v1/lookup", params={"email": "bob@example.org"}, headers={"X-API-Key": secret})
        assert ask().status_code == 200 and ask().status_code == 200 and fast_answers[-1] is True
        with get_read_engine(engine).connect() as c:  # the pooled connection the fast path used
            pid = c.connection.dbapi_connection.info.backend_pid
        with engine.begin() as c:
            assert c.execute(sa.text("select pg_terminate_backend(:p)"), {"p": pid}).scalar() is True
        r = ask()
        assert r.status_code == 200 and r.json()["golden_id"] == OTHER
        assert fast_answers[-1] is True  # answered by the reader's one retry, not by falling back


def test_overlong_parameters_are_422_without_echoing_the_input(api):
    r = get(api, "/v1/lookup", email="x" * 300 + "@example.com")
    assert r.status_code == 422 and "x" * 50 not in r.text
    assert r.json()["errors"][0]["param"] == "email"


# --- profile -------------------------------------------------------------------------------------

def test_profile_of_an_absorbed_id_answers_with_the_survivor_and_lineage_on_request(api):
    b = get(api, f"/v1/profiles/{ABSORBED}", lineage="true").json()
    assert (b["golden_id"], b["requested_id"], b["redirected"]) == (AMARA, ABSORBED, True)
    assert b["profile"]["emails"][0] == EMAIL and b["merged_ids"] == [ABSORBED]
    assert b["lineage"]["first_name"] == {"system": "salesforce", "record": "003A", "rule": "most_trusted"}
    plain = get(api, f"/v1/profiles/{AMARA}").json()
    assert "lineage" not in plain, "lineage only on request"
    assert plain["consent"] and plain["profile"]["value_tier"] == "gold"
    assert "lineage" not in get(api, f"/v1/profiles/{AMARA}", lineage="false").json()
    assert get(api, f"/v1/profiles/{AMARA}", lineage="maybe").status_code == 422


def test_unknown_profile_is_404_and_erased_is_410(api):
    assert get(api, "/v1/profiles/g-nobody").status_code == 404
    r = get(api, f"/v1/profiles/{ERASED}")
    assert r.status_code == 410 and r.json()["golden_id"] == ERASED


def test_without_pii_read_every_personal_value_is_masked(api):
    bodies = [api.get(path, headers={"X-API-Key": api.keys["masked"]}).text for path in
              ("/v1/lookup?phone=%2B447700900123", f"/v1/profiles/{AMARA}?lineage=true", f"/v1/profiles/{AMARA}/timeline",
               "/v1/changes")]
    everything = "\n".join(bodies)
    for secret in (EMAIL, "amara@work.example", "900123", "Okafor", "High St", "LS1", "1990-04-01", "Amara"):
        assert secret not in everything, secret
    prof = json.loads(bodies[1])
    assert prof["masked"] is True and prof["profile"]["first_name"] == "A."
    assert prof["profile"]["emails"][0] == "a***@example.com" and prof["profile"]["phones"] == ["***23"]
    assert prof["lineage"]["emails"]["value"] == "***" and prof["lineage"]["emails"]["system"] == "hubspot"
    # what an agent needs still shows: consent, tier, the bot's intent and context
    assert prof["profile"]["value_tier"] == "gold"
    pop = json.loads(bodies[0])
    assert pop["last_handoff"]["handoff"]["intent"] == "refund"
    assert pop["last_handoff"]["handoff"]["summary"].endswith("***23")
    # the full key sees them
    assert "Okafor" in get(api, f"/v1/profiles/{AMARA}").text


# --- timeline ------------------------------------------------------------------------------------

def test_timeline_pages_by_keyset_newest_first_without_gaps_or_duplicates(api):
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        b = get(api, f"/v1/profiles/{ABSORBED}/timeline", **params).json()
        seen += [i["external_id"] for i in b["items"]]
        pages += 1
        cursor = b["next_cursor"]
        if not cursor:
            break
    # e4 and e5 share a start time: higher id first; e3 hangs on the absorbed id; Bob's e7 never shows
    assert seen == ["e6", "e5", "e4", "e3", "e2", "e1"]
    assert pages == 3


def test_timeline_filters_by_channel(api):
    b = get(api, f"/v1/profiles/{AMARA}/timeline", channels="sms, voice").json()
    assert [i["external_id"] for i in b["items"]] == ["e6", "e5", "e4"]
    assert b["channels"] == ["sms", "voice"]


@pytest.mark.parametrize("params,status", [({"channels": "fax"}, 400), ({"cursor": "garbage!"}, 400),
                                           ({"cursor": "WzEsMl0"}, 400),
                                           ({"cursor": "WyIyMDI2LTAxLTAxIiwgOTk5OTk5OTk5OTk5OTk5OTk5OTk5XQ"}, 400), ({"limit": 0}, 422),
                                           ({"limit": "ten"}, 422), ({"limit": 501}, 422)])
def test_bad_timeline_parameters_are_4xx_with_a_reason(api, params, status):
    r = get(api, f"/v1/profiles/{AMARA}/timeline", **params)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json" and r.json()["detail"]


# --- change feed ---------------------------------------------------------------------------------

def test_change_feed_pages_by_seq_and_resumes_from_next_since(api):
    first = get(api, "/v1/changes", limit=2).json()
    assert [e["kind"] for e in first["events"]] == ["created", "created"] and first["has_more"]
    rest = get(api, "/v1/changes", since=first["next_since"], limit=10).json()
    assert [e["kind"] for e in rest["events"]] == ["merged", "consent", "erased"] and not rest["has_more"]
    assert rest["events"][0]["detail"] == {"absorbed": ABSORBED}
    empty = get(api, "/v1/changes", since=rest["next_since"]).json()
    assert empty == {"events": [], "next_since": rest["next_since"], "has_more": False}
    assert get(api, "/v1/changes", since=-1).status_code == 422
    assert get(api, "/v1/changes", since=2**63).status_code == 422
    assert get(api, "/v1/changes", since="abc").status_code == 422


# --- analytics -----------------------------------------------------------------------------------

def test_journey_and_wfm_endpoints(api):
    m = get(api, "/v1/analytics/journeys", since="2026-03-01", until="2026-03-10").json()
    assert m["contacts"] == 7 and m["customers"] == 2
    assert m["bot"] == {"sessions": 2, "handed_off": 1, "contained": 1, "containment_rate": 0.5}
    md = get(api, "/v1/analytics/journeys", since="2026-03-01", until="2026-03-10", format="markdown")
    assert md.headers["content-type"].startswith("text/markdown") and "bot containment rate | 50.0%" in md.text
    csv = get(api, "/v1/analytics/wfm.csv", since="2026-03-02", until="2026-03-04", direction="all")
    lines = csv.text.strip().split("\r\n")
    assert lines[0].startswith("interval_start,interval_end,channel,queue")
    assert "2026-03-02T09:00:00Z,2026-03-02T09:15:00Z,bot,,inbound,1,1,360.0,360.0" in lines
    cells = [line.split(",") for line in lines[1:]]
    series = {tuple(c[2:5]) for c in cells}
    assert len(cells) == 2 * 96 * len(series), "every 15-minute interval of the two days, for every channel and queue"
    assert sum(int(c[5]) for c in cells) == 7
    assert "2026-03-02T09:15:00Z,2026-03-02T09:30:00Z,bot,,inbound,0,0,,0.0" in lines, "a quiet interval is a zero"
    rows = get(api, "/v1/analytics/wfm", since="2026-03-02", until="2026-03-04").json()["rows"]
    assert sum(r["contacts"] for r in rows) == 5  # inbound only by default
    assert {r["interval_start"] for r in rows} >= {"2026-03-02T00:00:00Z", "2026-03-03T23:45:00Z"}


@pytest.mark.parametrize("path,params", [("/v1/analytics/journeys", {"since": "yesterday"}),
                                         ("/v1/analytics/journeys", {"since": "2026-03-05", "until": "2026-03-01"}),
                                         ("/v1/analytics/wfm.csv", {"direction": "sideways"}),
                                         ("/v1/analytics/wfm", {"channels": "pigeon"})])
def test_bad_analytics_parameters_are_400(api, path, params):
    r = get(api, path, **params)
    assert r.status_code == 400, r.text
    assert r.json()["detail"]


def test_openapi_documents_every_endpoint(api):
    doc = api.get("/openapi.json").json()
    assert set(doc["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    assert doc["paths"]["/v1/lookup"]["get"]["security"]
    assert "security" not in doc["paths"]["/health"]["get"]
    paths = doc["paths"]
    for p in ("/v1/lookup", "/v1/profiles/{golden_id}", "/v1/profiles/{golden_id}/timeline", "/v1/changes",
              "/v1/analytics/journeys", "/v1/analytics/wfm.csv", "/health", "/360/{golden_id}"):
        assert p in paths


def test_webhook_receiver_is_mounted_on_the_same_store_when_present(api):
    webhooks = pytest.importorskip("api.webhooks")
    assert {"/webhooks/hubspot", "/webhooks/zoom"} <= set(api.get("/openapi.json").json()["paths"])
    # the fixture's store is the settings' store, so the receiver's default engine is already this one
    assert webhooks.webhook_config().get_engine() is api.engine and not api.app.dependency_overrides


def test_an_app_on_another_store_sends_webhook_events_there(api, tmp_path):
    webhooks = pytest.importorskip("api.webhooks")
    other = get_engine(f"sqlite:///{tmp_path / 'other.db'}")
    app = create_app(other)
    assert app.dependency_overrides[webhooks.webhook_config]().get_engine() is other


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/v1/lookup", f"/v1/profiles/{AMARA}/timeline", "/v1/changes",
                             "/v1/analytics/journeys", "/v1/analytics/wfm.csv", "/v1/profiles/{x}"]),
       name=st.sampled_from(["email", "phone", "external_id", "system", "cursor", "limit", "channels", "since",
                             "until", "days", "direction", "lineage", "format"]),
       value=st.text(max_size=60))
def test_no_parameter_value_makes_the_api_fail_with_a_500(api, path, name, value):
    r = get(api, path.replace("{x}", quote(value[:50], safe="") or "x"), **{name: value})
    assert r.status_code < 500, (path, name, value, r.text)


@pytest.mark.parametrize("path,params", [("/v1/profiles/a%00b", {}), ("/v1/profiles/a%00b/timeline", {}),
                                         ("/v1/lookup", {"external_id": "1\x002", "system": "hubspot"})])
def test_nul_characters_are_refused_before_they_reach_the_store(api, path, params):
    r = get(api, path, **params)
    assert r.status_code == 400 and "NUL" in r.json()["detail"]
