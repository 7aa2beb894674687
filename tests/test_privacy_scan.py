"""Privacy scan (issue 10, DESIGN invariant 8): after a full ``omnichannel-sync`` run with bad records
and a failing vendor, nothing an operator or Prefect keeps (log records of every logger, the run's
logs read back from the Prefect API, its artifacts, task and flow states and events, dead letters,
omnisync's run and checkpoint rows, ``omnisync status --json``) holds an unmasked email address,
phone number or full name of anyone in the sandboxes, and no credential appears anywhere.

The people are taken from the sandboxes themselves (their admin exports, which include the typos
and formatting variants they seed) plus the population generator; phones are matched in E.164 and
in every national format the sandboxes type, and the haystack is searched URL-decoded as well.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import httpx
import pytest
from prefect import get_client
from sqlmodel import select

from flows.pipeline import omnichannel_sync
from identity.store import AuditEntry, Checkpoint, DeadLetter, SyncRun, get_engine, session_scope
from omnisync.cli import main as cli
from omnisync.settings import reset_settings
from omnisync.story import find_by_email
from sandbox import population
from tests.test_flows import SYSTEMS, cluster, flow_run_detail  # noqa: F401  (module-scoped sandboxes)

pytestmark = [pytest.mark.flow, pytest.mark.xdist_group("prefect")]

SIZE, SEED = 50, 11  # what tests.test_flows.cluster seeds
TOMBSTONE_KEY = "scan-tombstone-key-5f1e0c9a"
HEROINE = population.heroine()

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# A US number as E.164 or as the sandboxes and people type it: (415) 555-0142, 415-555-0142,
# +1 415 555 0142, 14155550142, 415.555.0142, +1 (415) 555-0142.
PHONE_RE = re.compile(r"(?<![\w+])(?:\+?1[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]?\d{4}(?![\w])")
SECRET_FIELDS = re.compile(r"token|secret|session|api_key|write_key|password")


# --- who must not appear ---------------------------------------------------------------------------

@dataclass
class Population:
    emails: set[str] = field(default_factory=set)
    phones: set[str] = field(default_factory=set)  # ten national digits
    names: set[tuple[str, str]] = field(default_factory=set)

    def add_person(self, p: population.Person) -> None:
        self.emails |= {p.personal_email.lower(), p.work_email.lower()}
        self.phones |= {_national(x) for x in (p.mobile, p.landline, p.switchboard) if x}
        self.names.add((p.first, p.last))


def _national(phone: str) -> str:
    return re.sub(r"\D", "", phone)[-10:]


NAME_KEYS = [("FirstName", "LastName"), ("firstname", "lastname"), ("first_name", "last_name"),
             ("firstName", "lastName"), ("given_name", "family_name")]
# Whole names of customers (Salesforce's compound Name, Zoom's consumer); agents' names are staff.
FULL_NAME_KEYS = {"Name", "full_name", "consumer_display_name"}


def _walk(obj: Any) -> Iterator[Any]:
    yield obj
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def harvest(exports: Any) -> Population:
    """Every email, phone and first+last name the sandboxes hold, as seeded (typos and variants too)."""
    pop = Population()
    for pid in range(2 * SIZE + 10):
        pop.add_person(population.person(pid, SEED))
    for node in _walk(exports):
        if isinstance(node, str):
            pop.emails |= {m.lower() for m in EMAIL_RE.findall(node)}
            pop.phones |= {_national(m) for m in PHONE_RE.findall(node)}
        elif isinstance(node, dict):
            for fk, lk in NAME_KEYS:
                first, last = node.get(fk), node.get(lk)
                if isinstance(first, str) and isinstance(last, str) and first.strip() and last.strip():
                    pop.names.add((first.strip(), last.strip()))
            for k in FULL_NAME_KEYS & set(node):
                parts = str(node[k]).split()
                if len(parts) == 2 and parts[0] in population.FIRST:  # a person, not a company
                    pop.names.add((parts[0], parts[1]))
    return pop


def sandbox_exports(info: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name in SYSTEMS:
        entry = info[name]
        with httpx.Client(verify=entry.get("ca_cert") or True, timeout=30) as http:
            r = http.get(entry["base_url"].rstrip("/") + "/_sandbox/export")
            r.raise_for_status()
            out[name] = r.json()
    return out


def inject_bad_records(info: dict[str, Any], exports: dict[str, Any]) -> int:
    """Data-entry mistakes, made through the sandboxes' own admin routes: a HubSpot phone field
    holding a note with the person's name and a country nobody maps, and Salesforce birth dates
    that do not exist. Each must be dead-lettered with a reason that names the record, not the person."""
    def admin(system: str) -> httpx.Client:
        return httpx.Client(base_url=info[system]["base_url"], verify=info[system].get("ca_cert") or True, timeout=30)

    n = 0
    with admin("hubspot") as http:
        for row in exports["hubspot"]["contacts"][7:9]:
            p = row["properties"]
            r = http.patch(f"/_sandbox/objects/contacts/{row['id']}", json={"properties": {
                "mobilephone": f"ask {p['firstname']} {p['lastname']} at home", "country": "Atlantis"}})
            r.raise_for_status()
            n += 1
    if "salesforce" in exports:
        with admin("salesforce") as http:
            for rec in exports["salesforce"]["Contact"][7:9]:
                r = http.patch(f"/_sandbox/sobjects/Contact/{rec['Id']}", json={"Birthdate": "1990-02-30"})
                r.raise_for_status()
                n += 1
    return n


def secrets_of(info: dict[str, Any]) -> dict[str, str]:
    """Every credential value in the sandbox info (and the Basic-auth form Twilio sends), by name."""
    out = {}
    for system, entry in info.items():
        for k, v in (entry.get("credentials") or {}).items():
            if isinstance(v, str) and SECRET_FIELDS.search(k) and len(v) >= 8:
                out[f"{system}.{k}"] = v
    tw = info.get("twilio", {}).get("credentials") or {}
    if tw.get("account_sid") and tw.get("auth_token"):
        out["twilio.basic_auth"] = base64.b64encode(f"{tw['account_sid']}:{tw['auth_token']}".encode()).decode()
    out["omnisync.tombstone_key"] = TOMBSTONE_KEY
    return out


# --- the scanner -------------------------------------------------------------------------------

def _masked(value: str) -> str:
    return value[:2] + "***" + value[-2:] if len(value) > 6 else "***"


@dataclass
class Hit:
    source: str
    kind: str
    value: str
    context: str
    where: str = ""  # the start of the leaking text (a log record's level and logger, a row's id)

    def __str__(self) -> str:
        ctx = self.context.replace(self.value, _masked(self.value))
        return f"{self.source} [{self.where}]: {self.kind} {_masked(self.value)} in ...{ctx}..."


def report(hits: list[Hit]) -> str:
    """Leaks grouped by source and logger (or kind), each group with a masked example."""
    by_place: dict[tuple[str, str], list[Hit]] = {}
    for h in hits:
        place = (h.where.split(" ") + ["", ""])[1] if h.source == "log records" else h.kind
        by_place.setdefault((h.source, place), []).append(h)
    lines = [f"{len(hits)} leak(s):"]
    for (source, where), group in sorted(by_place.items()):
        kinds = sorted({h.kind for h in group})
        lines.append(f"  {source} / {where}: {len(group)} ({', '.join(kinds)}), e.g. {group[0]}")
    return "\n".join(lines)


class Scanner:
    def __init__(self, pop: Population, secrets: dict[str, str]):
        self.pop, self.secrets = pop, secrets
        names = sorted(pop.names, key=lambda n: -len(n[0]) - len(n[1]))
        alts = [rf"{re.escape(f)}\s+{re.escape(l)}|{re.escape(l)},\s*{re.escape(f)}" for f, l in names]
        self.name_re = re.compile(r"(?<![\w])(?:" + "|".join(alts) + r")(?![\w])", re.IGNORECASE)

    def scan(self, source: str, text: str) -> list[Hit]:
        hits = []
        for variant in {text, unquote_plus(text)}:
            hits += self._scan(source, variant)
        for h in hits:
            h.where = text[:60].replace("\n", " ")
        seen, out = set(), []
        for h in hits:
            if (h.kind, h.value) not in seen:
                seen.add((h.kind, h.value))
                out.append(h)
        return out

    def _scan(self, source: str, text: str) -> list[Hit]:
        hits = []

        def ctx(m: re.Match[str] | int, n: int = 0) -> str:
            a = m.start() if isinstance(m, re.Match) else m
            b = m.end() if isinstance(m, re.Match) else m + n
            return text[max(0, a - 60):b + 60].replace("\n", " ")

        for m in EMAIL_RE.finditer(text):
            if m.group(0).lower() in self.pop.emails:
                hits.append(Hit(source, "email", m.group(0), ctx(m)))
        for m in PHONE_RE.finditer(text):
            if _national(m.group(0)) in self.pop.phones:
                hits.append(Hit(source, "phone", m.group(0), ctx(m)))
        for m in self.name_re.finditer(text):
            hits.append(Hit(source, "name", m.group(0), ctx(m)))
        for label, secret in self.secrets.items():
            i = text.find(secret)
            if i >= 0:
                hits.append(Hit(source, f"secret {label}", secret, ctx(i, len(secret))))
        return hits


# --- what is captured --------------------------------------------------------------------------

class Capture(logging.Handler):
    """Keeps every record as a handler would write it (message, exception and stack text)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record the handler cannot format is a failure of its own
            self.lines.append("UNFORMATTABLE " + traceback.format_exc())


@pytest.fixture
def capture_logs() -> Iterator[Capture]:
    """A handler at DEBUG on the root logger and on every logger that does not propagate to it;
    root and Prefect's client-side loggers (run loggers, engines, client) lowered to DEBUG."""
    cap = Capture()
    isolated = [lg for lg in logging.Logger.manager.loggerDict.values()
                if isinstance(lg, logging.Logger) and not lg.propagate]
    lowered = [logging.getLogger(n) for n in ("", "prefect", "prefect.client")]
    levels = [lg.level for lg in lowered]
    for lg in lowered:
        lg.setLevel(logging.DEBUG)
    for lg in [logging.getLogger(), *isolated]:
        lg.addHandler(cap)
    try:
        yield cap
    finally:
        for lg in [logging.getLogger(), *isolated]:
            lg.removeHandler(cap)
        for lg, level in zip(lowered, levels):
            lg.setLevel(level)


def prefect_sources(flow_run_id) -> dict[str, list[str]]:
    """The run as Prefect keeps it: API logs, artifacts, states, run records and events."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.events.filters import EventAnyResourceFilter, EventFilter
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    tasks, arts = flow_run_detail(flow_run_id)
    out: dict[str, list[str]] = {"prefect api logs": [], "prefect artifacts": [], "prefect states": [],
                                 "prefect run records": [], "prefect events": []}
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            page = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                    limit=200, offset=offset)
            out["prefect api logs"] += [f"{lg.name} {lg.message}" for lg in page]
            if len(page) < 200:
                break
            offset += 200
        fr = client.read_flow_run(flow_run_id)
        out["prefect run records"].append(fr.model_dump_json())
        out["prefect states"] += [s.model_dump_json() for s in client.read_flow_run_states(flow_run_id)]
        for t in tasks:
            out["prefect run records"].append(t.model_dump_json())
            out["prefect states"] += [s.model_dump_json() for s in client.read_task_run_states(t.id)]
        out["prefect artifacts"] = [a.model_dump_json() for a in arts]
        ids = [f"prefect.flow-run.{flow_run_id}"] + [f"prefect.task-run.{t.id}" for t in tasks]
        page = client.read_events(EventFilter(any_resource=EventAnyResourceFilter(id=ids)), limit=50)
        while True:
            out["prefect events"] += [e.model_dump_json() for e in page.events]
            if not page.next_page:
                break
            page = client.read_events_page(page.next_page)
    return out


def result_files(since: float) -> list[str]:
    """Task and flow results Prefect persisted during the run (a plan holds personal data), decoded."""
    from prefect.settings import get_current_settings

    root = Path(get_current_settings().results.local_storage_path).expanduser()
    out = []
    for path in (p for p in root.rglob("*") if root.exists() and p.is_file() and p.stat().st_mtime >= since):
        raw = path.read_bytes()
        try:
            raw += base64.b64decode(json.loads(raw).get("result") or "")
        except (ValueError, AttributeError):
            pass
        out.append(raw.decode("utf-8", "replace"))
    return out


def store_sources() -> dict[str, list[str]]:
    with session_scope(get_engine()) as s:
        return {
            "dead letters": [json.dumps(d.model_dump(mode="json")) for d in s.exec(select(DeadLetter))],
            "sync runs": [json.dumps(r.model_dump(mode="json")) for r in s.exec(select(SyncRun))],
            "checkpoints": [json.dumps(c.model_dump(mode="json")) for c in s.exec(select(Checkpoint))],
            "audit entries": [json.dumps(a.model_dump(mode="json")) for a in s.exec(select(AuditEntry))],
        }


# --- the test ----------------------------------------------------------------------------------

def test_a_full_run_with_bad_records_and_a_failing_vendor_leaves_no_personal_data_or_secret_behind(
        cluster, prefect_harness, capture_logs, capsys, tmp_path, monkeypatch):  # noqa: F811
    sandboxes, info_path = cluster
    info = json.loads(Path(info_path).read_text())
    monkeypatch.setenv("OMNISYNC_TOMBSTONE_KEY", TOMBSTONE_KEY)
    for name in SYSTEMS:
        sandboxes[name].set_faults(rate_429=0.0, rate_5xx=0.0)

    # Faults: Twilio's token is revoked (a 401, the system fails) and HubSpot answers some calls 503.
    bad = json.loads(json.dumps(info))
    bad["twilio"]["credentials"]["auth_token"] = "revoked-token"
    bad_path = tmp_path / "sandbox.json"
    bad_path.write_text(json.dumps(bad))
    monkeypatch.setenv("OMNISYNC_SANDBOX_INFO", str(bad_path))
    reset_settings()
    sandboxes["hubspot"].set_faults(rate_5xx=0.1, seed=3)

    exports = sandbox_exports(info)
    injected = inject_bad_records(info, exports)
    pop = harvest([exports, sandbox_exports(info)])
    scanner = Scanner(pop, secrets_of(info))
    probe = (f"{HEROINE.first} {HEROINE.last} texted from (415) 555-0142, "
             f"q=A.Okafor%40Northwind.example, key {info['hubspot']['credentials']['access_token']}")
    assert {h.kind.split()[0] for h in scanner.scan("probe", probe)} == {"name", "phone", "email", "secret"}, \
        "the scanner recognises each kind of leak"
    started = time.time()

    # What PREFECT_LOGGING_EXTRA_LOGGERS=omnisync does in a deployment: omnisync's own loggers
    # (retries, failures) also go to the Prefect API, beside the run loggers Prefect always sends.
    from prefect.logging.handlers import APILogHandler

    to_api = APILogHandler()
    logging.getLogger("omnisync").addHandler(to_api)
    try:
        state = omnichannel_sync(systems=SYSTEMS, force_push=True, return_state=True)
    finally:
        sandboxes["hubspot"].set_faults(rate_5xx=0.0)
        logging.getLogger("omnisync").removeHandler(to_api)
    assert state.is_completed() and state.name == "Partial", state.message
    summary = state.result()
    run_log_lines = len(capture_logs.lines)

    assert cli(["status", "--json"]) == 0
    status_out = capsys.readouterr()
    with session_scope(get_engine()) as s:
        gid = find_by_email(s, HEROINE.personal_email)
    assert gid
    assert cli(["explain", gid]) == 0
    explain_out = capsys.readouterr()

    sources: dict[str, list[str]] = {"log records": capture_logs.lines}
    sources.update(prefect_sources(state.state_details.flow_run_id))
    sources.update(store_sources())
    sources["prefect result files"] = result_files(started)
    sources["run summary"] = [json.dumps(summary, default=str)]
    sources["cli status"] = [status_out.out, status_out.err]
    sources["cli explain (stderr)"] = [explain_out.err]

    hits = [h for src, texts in sources.items() for t in texts for h in scanner.scan(src, t)]
    # explain is the operator's own view of one person (it shows their data on purpose, never logged):
    # no secret may appear in it.
    hits += [h for h in scanner.scan("cli explain", explain_out.out) if h.kind.startswith("secret")]

    counts = {src: len(texts) for src, texts in sources.items()}
    print("scanned:", json.dumps(counts))
    assert not hits, report(hits)

    # Not vacuous: the scan saw the run, its failures and its dead letters, and masked values in them.
    assert run_log_lines > 20 and counts["prefect api logs"] > 10 and counts["prefect artifacts"] >= 3
    assert any(line.startswith("omnisync.") for line in sources["prefect api logs"]), \
        "omnisync's own records reached the API"
    assert counts["prefect states"] > 0
    with session_scope(get_engine()) as s:
        mapped = list(s.exec(select(DeadLetter).where(DeadLetter.stage == "map")))
        letters = list(s.exec(select(DeadLetter)))
    assert len(mapped) >= injected, "every injected bad record was dead-lettered"
    assert all(d.external_id and d.external_id in d.reason for d in mapped), "reasons name the record"
    assert all(set(d.payload) <= {"sealed"} for d in letters), "dead-letter payloads are sealed, never stored in clear"
    assert sum(1 for d in letters if d.payload) >= injected, "the bad records' payloads were kept (sealed) for replay"
    haystack = "\n".join(t for texts in sources.values() for t in texts)
    assert "AuthError" in haystack, "the failing vendor's error is among the scanned messages"
    assert re.search(r"\w\*\*\*@|\*\*\*\d\d", haystack), "masked values were scanned"
    assert scanner.scan("explain", explain_out.out), "explain shows the person: the scanner finds what is there"
