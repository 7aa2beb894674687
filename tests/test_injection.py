"""Injection attempts are inert: SOQL, SQL, HTTP headers and redirects, spreadsheet formulas in CSV exports.

Related proofs elsewhere (not repeated here): ``test_salesforce_sandbox.py::
test_a_quoted_value_cannot_break_out_of_its_literal`` (the sandbox's SOQL parser keeps a quoted value
whole), ``test_salesforce_connector.py::test_the_query_quotes_hostile_cursor_values`` (a hostile cursor
past every record reads nothing), ``test_api_endpoints.py::test_nul_characters_are_refused_before_they_
reach_the_store``, ``test_api_customer360.py::test_sign_in_refuses_to_redirect_off_site`` and
``test_analytics.py`` (a ``=HYPERLINK`` queue in the WFM CSV).
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from simple_salesforce.format import format_soql
from sqlalchemy import func, inspect
from sqlmodel import Session, select

from api import keys
from api.app import create_app
from api.webhooks import WebhookConfig, router, webhook_config
from connectors.errors import BadRequestError
from connectors.http import HttpLayer
from identity import truth
from identity.csv_resolve import run as resolve_csv
from identity.ingest import ingest_records
from identity.store import GoldenRecord, IdentityKey, InteractionRow, SourceRow, get_engine, session_scope
from omnisync.records import Cursor, SourceRecord
from tests.test_api_endpoints import AMARA, EMAIL, api, get  # noqa: F401 - api is a fixture
from tests.test_salesforce_connector import org, read_all  # noqa: F401 - org is a fixture
from tests.test_segment_connector import SPACE, connector as segment_connector
from tests.test_webhooks_signing import BASE, NOW, Signers

QUOTES = ["x' OR Id != '", "\\' OR Id != '\\", "' OR SystemModstamp != null OR Id = '", "\\\\'", "%' OR Id LIKE '%",
          "0') OR (Id != '"]


# --- SOQL ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("hostile", QUOTES)
def test_a_hostile_cursor_id_is_one_soql_literal_and_the_sandbox_returns_only_the_rows_after_the_mark(org, hostile):
    sb, connect = org(size=80)
    conn = connect(overlap=timedelta(0))
    _, full = read_all(conn)
    mark = full[len(full) // 2].modified_at  # a mark inside the data: an injected OR would return every row
    soql = conn.soql("contacts", (mark, hostile), None, None)
    assert format_soql("Id > {id}", id=hostile) in soql  # quotes and backslashes escaped, value kept whole
    _, got = read_all(conn, cursor=Cursor(modified_at=mark, last_id=hostile))
    # The sandbox compares 15-character ids as strings, as the (SystemModstamp, Id) cursor means.
    expected = {r.external_id for r in full
                if r.modified_at > mark or (r.modified_at == mark and r.external_id[:15] > hostile[:15])}
    assert {r.external_id for r in got} == expected and 0 < len(expected) < len(full)


# --- SQL -----------------------------------------------------------------------------------------

SQL_HOSTILE = ["'; DROP TABLE identity_key; --", "101' OR '1'='1", "%", "_", "1%", "10_", "_01", "101\\", "101;"]


def _row_counts(engine) -> dict[str, int]:
    with Session(engine) as s:
        return {"tables": len(inspect(engine).get_table_names()),
                "keys": s.exec(select(func.count()).select_from(IdentityKey)).one(),
                "golden": s.exec(select(func.count()).select_from(GoldenRecord)).one()}


def test_lookups_with_sql_and_wildcards_match_nothing_and_drop_nothing(api):
    before = _row_counts(api.engine)
    for value in SQL_HOSTILE:  # the seeded key is ext:hubspot "101": a LIKE or a concatenation would match it
        r = get(api, "/v1/lookup", external_id=value, system="hubspot")
        assert r.status_code == 404, (value, r.status_code, r.text)
    for email in ["%@example.com", "_mara.okafor@example.com", "amara.okafor@example.co_", "amara.okafor@%.com"]:
        assert get(api, "/v1/lookup", email=email).status_code in (400, 404), email
    for gid in ["g-amara' OR '1'='1", "g-%", "g-_mara", "%", "_"]:
        assert get(api, f"/v1/profiles/{gid}").status_code in (400, 404), gid
    for system in ["hubspot'; --", "hub%", "hubspo_"]:
        assert get(api, "/v1/lookup", external_id="101", system=system).status_code in (400, 404), system
    assert _row_counts(api.engine) == before
    assert get(api, "/v1/lookup", external_id="101", system="hubspot").json()["golden_id"] == AMARA
    assert get(api, "/v1/lookup", email=EMAIL).status_code == 200


def test_store_lookups_by_external_id_match_exactly_on_every_backend(store_url):
    engine = get_engine(store_url)
    at = datetime(2026, 11, 1, tzinfo=timezone.utc)

    def unsub(rid: str, n: int = 0) -> SourceRecord:
        return SourceRecord(system="sendgrid", stream="unsubscribes", external_id=rid, modified_at=at,
                            payload={"created": 1793700000 + n, "email": f"person{n}@example.com"})

    with session_scope(engine) as s:
        first = ingest_records(s, [unsub("abc", 1), unsub("aXc", 2)])
    assert first.total("stored") == 2
    hostile = ["a_c", "a%", "%", "_", "'; DROP TABLE source_record; --", "abc' OR '1'='1"]
    with session_scope(engine) as s:  # each is new: none may be taken for abc or aXc already stored
        counts = ingest_records(s, [unsub(h, 3 + i) for i, h in enumerate(hostile)])
    assert counts.total("stored") == len(hostile) and counts.total("unchanged") == 0
    with session_scope(engine) as s:
        again = ingest_records(s, [unsub("a_c", 3), unsub("abc", 1)])  # the same versions again
        ids = sorted(s.exec(select(SourceRow.external_id)))
    assert again.total("unchanged") == 2 and again.total("stored") == 0
    assert ids == sorted(["abc", "aXc", *hostile])


# --- headers and redirects -----------------------------------------------------------------------

def _clean_headers(resp: httpx.Response) -> None:
    for name, value in resp.headers.multi_items():
        assert "\r" not in value and "\n" not in value, (name, value)
        assert name.lower() not in ("x-evil", "x-injected"), name
    assert len(resp.headers.get_list("set-cookie")) <= 1


NEXTS = ["/360\r\nSet-Cookie: omnisync_key=attacker", "/360/x\r\nX-Injected: 1", "/360%0d%0aX-Injected:%201",
         "/360\nLocation: https://evil.example", "//evil.example/360", "/360/..//evil.example", "/360\\@evil.example",
         "https://evil.example/360", "/360@evil.example", "/360.evil.example", "\t/360", "/360\x00", "/360\x7f"]


@pytest.fixture
def site(store_url):
    engine = get_engine(store_url)
    keys.clear_cache()
    client = TestClient(create_app(engine), follow_redirects=False)
    client.full = keys.create_key("agent", ["profile:read", "pii:read"], engine=engine)
    with client:
        yield client


def _same_site(location: str) -> None:
    parts = urlsplit(location)
    assert not parts.scheme and not parts.netloc, location
    assert parts.path == "/360" or parts.path.startswith("/360/"), location


@pytest.mark.parametrize("nxt", NEXTS)
def test_sign_in_redirect_takes_no_header_injection_and_stays_under_360(site, nxt):
    for resp in (site.get("/360/login", params={"key": site.full, "next": nxt}),
                 site.post("/360/login", data={"key": site.full, "next": nxt})):
        _clean_headers(resp)
        if resp.status_code == 400:  # refused outright (a NUL never reaches the handler)
            assert "location" not in resp.headers and "set-cookie" not in resp.headers
            continue
        assert resp.status_code == 303
        _same_site(resp.headers["location"])
    form = site.get("/360/login", params={"next": nxt})
    assert form.status_code == 400 or "\r" not in form.text.split('name="next"')[1].split(">")[0]


@pytest.mark.parametrize("path", ["/360/x%26key%3Dosk_attacker", "/360/x%0D%0ASet-Cookie:%20a=b", "/360/x%23y%3Fz"])
def test_a_page_path_sent_to_sign_in_is_one_encoded_next_parameter(site, path):
    resp = site.get(path)
    assert resp.status_code == 303
    _clean_headers(resp)
    location = resp.headers["location"]
    _same_site(location)
    query = parse_qs(urlsplit(location).query)
    assert list(query) == ["next"], location  # a "&key=" in the path must not become a second parameter
    _same_site(query["next"][0])


@pytest.fixture
def webhooks(tmp_path):
    engine = get_engine(f"sqlite:///{tmp_path / 'hooks.db'}")
    signers = Signers()
    cfg = WebhookConfig(secrets=signers.secrets, clock=lambda: NOW, emit=lambda v, n: None, engine=lambda: engine)
    app = FastAPI()
    app.include_router(router)
    app.dependency_overrides[webhook_config] = lambda: cfg
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as c:
        yield c, signers


def test_webhook_answers_carry_no_header_built_from_the_body(webhooks):
    c, signers = webhooks
    form = {"MessageSid": "SM1\r\nX-Evil: 1", "AccountSid": "AC1", "From": "+14155550142\r\nX-Evil: 2",
            "To": "+18885550100", "Body": "STOP\r\nSet-Cookie: a=b", "SmsStatus": "received\r\nX-Evil: 3"}
    body, headers = signers.twilio(form)
    resp = c.post("/webhooks/twilio", content=body, headers=headers)
    assert resp.status_code in (200, 400)
    _clean_headers(resp)
    assert not resp.headers.get_list("set-cookie")
    zoom = json.dumps({"event": "endpoint.url_validation", "event_ts": int(NOW * 1000),
                       "payload": {"plainToken": "tok\r\nX-Evil: 4"}}).encode()
    body, headers = signers.zoom(zoom)
    resp = c.post("/webhooks/zoom", content=body, headers=headers)
    assert resp.status_code == 200 and resp.json()["plainToken"] == "tok\r\nX-Evil: 4"  # JSON-escaped in the body
    _clean_headers(resp)


def test_outbound_calls_encode_record_values_in_paths_and_refuse_raw_crlf():
    hostile = [("email", "a@example.com\r\nX-Evil: 1"), ("user_id", "../../../v1/spaces/other?x=1#frag"),
               ("user_id", "web 1/%2e%2e")]
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(url__startswith=SPACE + "/").respond(404, json={"error": "not found"})
        assert segment_connector().fetch_profiles(hostile) == []
    assert route.call_count == len(hostile)
    for call in route.calls:
        raw = call.request.url.raw_path.decode()
        assert raw.startswith("/v1/spaces/spa_test/collections/users/profiles/") and "\r" not in raw
        ref = raw.removeprefix("/v1/spaces/spa_test/collections/users/profiles/").split("?")[0]
        assert ref.count("/") == 1 and ref.endswith("/traits"), raw  # the value stays one path segment
        assert "x-evil" not in call.request.headers
    # Below every connector: a raw CR/LF in a URL never leaves the process (refused as that
    # record's bad request, not an exception that would abort the batch).
    layer = HttpLayer(system="test", base_url="https://api.vendor.test")
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as mock:
        anything = mock.route().respond(200, json={})
        with pytest.raises(BadRequestError, match="not a valid URL"):
            layer.request("GET", "/v1/contacts/a\r\nX-Evil: 1")
        assert not anything.called
    layer.close()


# --- CSV formula injection -----------------------------------------------------------------------

FORMULAS = ["=HYPERLINK(\"https://evil.example\",\"x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)",
            "\t=1+2", "\r=1+3", "\n=1+4"]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def _inert(cells: list[str]) -> None:
    for cell in cells:
        assert not cell.startswith(FORMULA_START), repr(cell)


def test_the_wfm_csv_export_makes_every_formula_inert(api):
    t = datetime(2026, 6, 1, 9, 0, tzinfo=timezone.utc)
    with session_scope(api.engine) as s:
        for i, q in enumerate(FORMULAS):
            s.add(InteractionRow(system="zoom", external_id=f"f{i}", golden_id=AMARA, channel="voice",
                                 direction="inbound", started_at=t, ended_at=t + timedelta(minutes=5), queue=q,
                                 fingerprint=f"f{i}", data={}))
    r = get(api, "/v1/analytics/wfm.csv", since="2026-06-01T00:00:00Z", until="2026-06-02T00:00:00Z")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(r.text)))
    queues = {row[table[0].index("queue")] for row in table[1:]}
    assert queues == {"'" + q for q in FORMULAS}  # shown as typed, never run
    _inert([cell for row in table for cell in row])


def test_omnisync_resolve_output_makes_formula_ids_inert(tmp_path):
    rows = truth.generate(len(FORMULAS) + 3, seed=11)
    for row, f in zip(rows, FORMULAS):
        row["record_id"] = f
    src, cfg, out = tmp_path / "in.csv", tmp_path / "rules.yaml", tmp_path / "out.csv"
    with open(src, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=truth.COLUMNS)
        w.writeheader()
        w.writerows(rows)
    cfg.write_text(yaml.safe_dump(truth.CSV_CONFIG))
    resolve_csv(src, cfg, out)
    with open(out, newline="") as fh:
        table = list(csv.reader(fh))
    _inert([cell for row in table for cell in row])
    assert {row[0] for row in table[1:]} >= {"'" + f.strip() for f in FORMULAS}  # ids are read trimmed
