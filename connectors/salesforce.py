"""Salesforce through simple-salesforce (the real SDK, in session-id mode, over https).

Reads are one SOQL ``queryAll`` per stream ordered by ``(SystemModstamp, Id)``: live rows, deleted
rows (``IsDeleted``) and merge losers (``MasterRecordId``, reported as ``merged_into``) arrive in
one ordered pass, so a single compound cursor covers changes and deletions alike. The lower bound
is built with ``format_soql``: the stored cursor minus the overlap window, or, with no overlap
(and whenever a query locator is lost mid-read), the exact ``(SystemModstamp, Id)`` pair, so rows
sharing one second are never skipped nor repeated.

Large reads switch to Bulk API 2.0: when the first REST page says more than ``bulk_threshold`` rows
match (``totalSize``), its rows are delivered and the rest (everything after the last row delivered)
is read by one ``queryAll`` query job: create, poll its state, then fetch CSV pages of
``bulk_page`` rows following ``Sforce-Locator``. A page whose row count differs from
``Sforce-NumberOfRecords``, or that does not end with a line break, was cut short and is fetched
again with the same locator. Bulk results
come in Id order (PK chunking), so the cursor moves only with the job's last page.

Tasks carry their start time in the custom ``Omnisync_Started_At__c`` (``ActivityDate`` is only a
date): omnisync writes it, and the ``ActivityDate`` of that day in UTC, on the activities it logs
(a Task logged in Salesforce has none: the mapping falls back to its ``CreatedDate``).

Writes are updates by Id and upserts on an external-id field (``Omnisync_Golden_Id__c`` for people,
``Omnisync_Interaction_Id__c`` for activities). Up to ``bulk_write_threshold`` (2,000, Salesforce's
own line) records of one kind go through sObject Collections, 200 a call with ``allOrNone`` false,
each result tied to its input by position. Above it they go to a Bulk API 2.0 ingest job (an
``upsert`` or ``update`` job, up to 100,000 records): the CSV is uploaded once, and the result files,
which come in no particular order, are tied to the inputs by the key column each result row echoes
(a key goes once into a job; its repeats follow through Collections). A job failing part way
confirms what it wrote; the rest is reported not written, retryable unless Salesforce refused the
data itself. ``Sforce-Limit-Info`` feeds the daily budget; the sync stops cleanly before the
allocation is spent, and a bulk job is not started when the allocation cannot finish it.

Auth is the OAuth 2.0 client credentials flow of a connected app (``POST
{instance_url}/services/oauth2/token``): the SDK runs in session-id mode (its own login flows only
reach salesforce.com), and the HTTP session under it puts the current access token on every request,
REST, queryMore and Bulk 2.0 alike. Salesforce names no lifetime (a session ends after the org's
idle timeout, two hours by default), so the token, one per connected app and process, is kept
until a call is refused ``401 INVALID_SESSION_ID``: then a new one is fetched, the SDK's own session
id updated, and the call sent again, once. A static ``session_id`` still works, until Salesforce
refuses it.
"""

from __future__ import annotations

import csv
import io
import json
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import requests
from simple_salesforce import Salesforce
from simple_salesforce.bulk2 import Operation
from simple_salesforce.exceptions import SalesforceError
from simple_salesforce.format import format_soql

from connectors.base import Connector, StreamSpec, chunks
from connectors.credentials import SalesforceCredentials
from connectors.errors import (
    AuthError,
    ConnectorError,
    QuotaExhaustedError,
    TransientError,
    error_for,
)
from connectors.http import (
    IssuedToken,
    RateBudget,
    RetryPolicy,
    TokenSource,
    fetch_token,
    shared_tokens,
    with_retries,
)
from omnisync.privacy import mask_text
from omnisync.records import Cursor, OutboundRecord, Page, SourceRecord, WriteOutcome, WriteStatus

COLLECTION = 200
QUERY_BATCH = 2000
# Above this many rows a read goes to Bulk API 2.0: 50,000 rows a call instead of 2,000.
BULK_THRESHOLD = 10_000
BULK_PAGE = 50_000
BULK_POLL_S = 0.5
BULK_TIMEOUT_S = 3600.0
# Above this many records a write goes to a Bulk API 2.0 ingest job: Salesforce's own guidance
# (Bulk above 2,000 records), and where a job's ~5 calls (create, upload, close, poll, results)
# clearly beat Collections (10 calls for 2,000). Smaller writes stay synchronous: a job is queued
# behind the org's other jobs and can take minutes.
BULK_WRITE_THRESHOLD = 2_000
BULK_MIN_CALLS = 5
# Records one ingest job carries: Salesforce processes a job in internal batches of 10,000, each
# counted against the daily batch allocation; 100,000 contact rows are ~30 MB, well under the 100 MB
# upload limit.
BULK_JOB_RECORDS = 100_000
# Records the push flow hands over per write (StreamSpec.write_batch): one internal Bulk batch, so
# pushes above the threshold reach Bulk, and a crash re-sends at most this many (idempotent upserts).
WRITE_CHUNK = 10_000
# Keep a reserve of the daily allocation for people working in Salesforce itself.
QUOTA_RESERVE = 0.02
SYSTEM_FIELDS = ["Id", "IsDeleted", "MasterRecordId", "CreatedDate", "LastModifiedDate", "SystemModstamp"]
FIELDS = {
    # Account.Name: the contact's company, read through the relationship in the same query.
    "contacts": ["AccountId", "Account.Name", "FirstName", "LastName", "Email", "Phone", "MobilePhone", "Title",
                 "Birthdate", "MailingStreet",
                 "MailingCity", "MailingState", "MailingPostalCode", "MailingCountry", "LeadSource",
                 "HasOptedOutOfEmail", "DoNotCall", "Omnisync_Sms_Opt_Out__c", "Customer_Tier__c",
                 "Omnisync_Golden_Id__c"],
    "leads": ["FirstName", "LastName", "Email", "Phone", "MobilePhone", "Company", "Title", "Street", "City", "State",
              "PostalCode", "Country", "Status", "LeadSource", "HasOptedOutOfEmail", "DoNotCall", "IsConverted",
              "ConvertedContactId", "Omnisync_Golden_Id__c"],
    "tasks": ["WhoId", "OwnerId", "Subject", "Description", "TaskSubtype", "CallType", "CallDurationInSeconds",
              "CallDisposition", "ActivityDate", "Status", "Omnisync_Interaction_Id__c", "Omnisync_Started_At__c"],
}
# Typed fields, to give CSV rows (Bulk API) the shape REST returns.
BOOL_FIELDS = {"IsDeleted", "HasOptedOutOfEmail", "DoNotCall", "Omnisync_Sms_Opt_Out__c", "IsConverted"}
INT_FIELDS = {"CallDurationInSeconds"}
DATETIME_FIELDS = {"CreatedDate", "LastModifiedDate", "SystemModstamp", "Omnisync_Started_At__c"}
STARTED_AT = "Omnisync_Started_At__c"
SOBJECT = {"contacts": "Contact", "leads": "Lead", "tasks": "Task"}
EXTERNAL_ID = {"contacts": "Omnisync_Golden_Id__c", "leads": "Omnisync_Golden_Id__c",
               "tasks": "Omnisync_Interaction_Id__c"}
# Only calls and emails are customer interactions; other Tasks are reps' to-dos.
TASK_FILTER = " AND TaskSubtype IN ('Call', 'Email')"
RETRYABLE_CODES = {"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "UNKNOWN_EXCEPTION"}
TOKEN_PATH = "/services/oauth2/token"
WHERE_CREDENTIALS = ("the credentials block omnisync-salesforce (or OMNISYNC_SALESFORCE_CLIENT_ID and "
                     "OMNISYNC_SALESFORCE_CLIENT_SECRET)")
CLIENT_REFUSED = (f"Check the connected app's client_id (consumer key) and client_secret in {WHERE_CREDENTIALS}, that "
                  "instance_url is the org's My Domain URL, and that the app's client credentials flow is enabled "
                  "with a run-as user.")
SESSION_REFUSED = ("A session just issued by the client credentials flow was refused: check that the connected app's "
                   f"run-as user is active and has the API Enabled permission, and {WHERE_CREDENTIALS}.")
STATIC_REFUSED = ("The session_id in the credentials was refused (Salesforce sessions expire, after two hours idle by "
                  f"default): give the connected app's client_id and client_secret in {WHERE_CREDENTIALS} so "
                  "omnisync fetches and renews sessions itself.")
HINTS = {
    "INVALID_EMAIL_ADDRESS": "fix the golden email (it is not a valid address)",
    "REQUIRED_FIELD_MISSING": "the mapping must write the required field named",
    "DUPLICATE_VALUE": "another Salesforce record already holds this external id; link or merge them",
    "DUPLICATE_EXTERNAL_ID": "several Salesforce records carry this golden id (linked duplicates): write each by "
                             "its Id",
    "ENTITY_IS_DELETED": "the record was deleted or merged in Salesforce; sync it again, then re-run the push",
    "INVALID_CROSS_REFERENCE_KEY": "the related record (WhoId) does not exist; sync contacts, then re-run the push",
    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST": "the value is not in the picklist: fix the vocabulary in "
                                               "mappings/vocab_salesforce.py",
    "INVALID_FIELD_FOR_INSERT_UPDATE": "the field is read-only: set its direction to 'in' in the mapping",
    "INVALID_FIELD": "the field does not exist in this org: fix the mapping or create the field",
}


class _Instrumented(requests.Session):
    """The SDK's HTTP session: every request is budgeted, counted, bounded in time, and its
    ``Sforce-Limit-Info`` header read, so SDK calls obey the same policy as the HTTP layer."""

    def __init__(self, owner: "SalesforceConnector", verify: Any, timeout: tuple[float, float]):
        super().__init__()
        self.owner = owner
        self.verify = verify
        self.default_timeout = timeout

    def request(self, method: str, url: str, *args: Any, **kw: Any) -> requests.Response:  # type: ignore[override]
        owner = self.owner
        kw.setdefault("timeout", self.default_timeout)
        # Explicitly: requests would let REQUESTS_CA_BUNDLE replace the session's CA file.
        kw.setdefault("verify", self.verify)
        # The current token, whatever session id the SDK object (or a Bulk 2.0 client made from it) holds.
        token = owner.tokens.current()
        kw["headers"] = {**(kw.get("headers") or {}), "Authorization": f"Bearer {token}"}
        resp = self._send(method, url, args, kw)
        if resp.status_code == 401 and owner.tokens.renewable and _invalid_session(resp):
            fresh = owner._renew(token)
            if fresh is not None:
                kw["headers"]["Authorization"] = f"Bearer {fresh}"
                resp = self._send(method, url, args, kw)
        return resp

    def _send(self, method: str, url: str, args: tuple, kw: dict[str, Any]) -> requests.Response:
        self.owner._before_call()
        self.owner.calls[f"{method} {_endpoint(url)}"] += 1
        resp = super().request(method, url, *args, **kw)
        self.owner._observe(resp.headers.get("Sforce-Limit-Info"))
        return resp


class SalesforceConnector(Connector):
    system = "salesforce"
    streams = {
        "contacts": StreamSpec("contacts", "profile", "Contact", page_size=QUERY_BATCH, write_batch=WRITE_CHUNK),
        "leads": StreamSpec("leads", "profile", "Lead", page_size=QUERY_BATCH),
        "tasks": StreamSpec("tasks", "interaction", "Task", page_size=QUERY_BATCH, write_batch=WRITE_CHUNK),
    }

    def __init__(self, credentials: SalesforceCredentials, *, budget: RateBudget | None = None,
                 policy: RetryPolicy | None = None, timeout: float = 60.0, query_batch: int = QUERY_BATCH,
                 overlap: timedelta | None = None, bulk_threshold: int | None = BULK_THRESHOLD,
                 bulk_page: int = BULK_PAGE, bulk_poll_s: float = BULK_POLL_S,
                 bulk_timeout_s: float = BULK_TIMEOUT_S, bulk_write_threshold: int | None = BULK_WRITE_THRESHOLD):
        """``bulk_threshold``: rows above which a read goes to Bulk API 2.0; ``bulk_write_threshold``:
        records above which a write does (None: never)."""
        self.creds = credentials
        self.bulk_threshold = bulk_threshold
        self.bulk_write_threshold = bulk_write_threshold
        self.bulk_page = bulk_page
        self.bulk_poll_s = bulk_poll_s
        self.bulk_timeout_s = bulk_timeout_s
        self.budget = budget or RateBudget(25.0, 25)
        self.policy = policy or RetryPolicy()
        self.query_batch = query_batch
        self.overlap = overlap
        self.calls: Counter = Counter()
        self.bulk_jobs: list[str] = []
        self.retries = 0
        self.usage: tuple[int, int] | None = None  # (used, total) from Sforce-Limit-Info
        given = credentials.session_id.get_secret_value() if credentials.session_id else None
        if credentials.oauth and given is None:
            self.tokens = shared_tokens(credentials.instance_url.rstrip("/") + TOKEN_PATH, str(credentials.client_id),
                                        credentials.client_secret.get_secret_value(),
                                        lambda: _fetch_token(credentials, timeout))
        elif credentials.oauth:  # a session given by hand first, the connected app once it is refused
            self.tokens = TokenSource(lambda: _fetch_token(credentials, timeout), initial=given)
        else:
            self.tokens = TokenSource(None, initial=given)
        self.session = _Instrumented(self, credentials.ca_bundle or True, (min(timeout, 10.0), timeout))
        self._sf: Salesforce | None = None
        self._sf_lock = threading.Lock()

    @property
    def sf(self) -> Salesforce:
        """The SDK client, made on first use (after the first token: the token names the instance)."""
        with self._sf_lock:
            if self._sf is None:
                token = self.tokens.current()
                instance = self.tokens.extra.get("instance_url") or self.creds.instance_url
                self._sf = Salesforce(instance_url=instance, session_id=token, version=self.creds.api_version,
                                      session=self.session)
            return self._sf

    def _renew(self, refused: str) -> str | None:
        """A new session for one Salesforce refused; the SDK client is told, so what it holds is current."""
        fresh = self.tokens.renew(refused)
        sf = self._sf
        if fresh is not None and sf is not None:
            sf.session_id = fresh
            sf.headers["Authorization"] = f"Bearer {fresh}"
        return fresh

    # --- plumbing ------------------------------------------------------------------------------
    @property
    def api_calls(self) -> int:
        return sum(self.calls.values())

    def close(self) -> None:
        self.session.close()

    def _before_call(self) -> None:
        if self.usage is not None:
            used, total = self.usage
            if used >= total - int(total * QUOTA_RESERVE):
                raise QuotaExhaustedError(f"daily API allocation nearly spent ({used} of {total} requests used)",
                                          system=self.system, status=403, code="REQUEST_LIMIT_EXCEEDED",
                                          resume_at=_resume_at())
        self.budget.acquire()

    def _observe(self, limit_info: str | None) -> None:
        m = re.search(r"api-usage=(\d+)/(\d+)", limit_info or "")
        if m:
            self.usage = (int(m.group(1)), int(m.group(2)))

    def _room(self, calls: int, what: str) -> None:
        """Refuse to start work needing ``calls`` requests that the daily allocation cannot finish."""
        if self.usage is not None:
            used, total = self.usage
            if used + calls > total - int(total * QUOTA_RESERVE):
                raise QuotaExhaustedError(f"{what} needs about {calls} requests; {used} of {total} used today",
                                          system=self.system, status=403, code="REQUEST_LIMIT_EXCEEDED",
                                          resume_at=_resume_at())

    def _call(self, what: str, fn: Callable[[], Any], *, retry: bool = True) -> Any:
        """One SDK call with the shared retries (``retry=False``: once); SDK and transport errors
        translated."""
        def once() -> Any:
            try:
                return fn()
            except ConnectorError:
                raise
            except SalesforceError as e:
                raise self._translate(e, what) from None
            except requests.exceptions.SSLError as e:
                raise ConnectorError(f"{what}: TLS verification failed ({type(e).__name__})", system=self.system,
                                     action="Check the instance URL and the CA bundle in the Salesforce "
                                            "credentials (ca_bundle).") from e
            except requests.Timeout as e:
                raise TransientError(f"{what}: timed out", system=self.system) from e
            except requests.ConnectionError as e:
                raise TransientError(f"{what}: connection failed ({type(e).__name__})", system=self.system) from e
            except ValueError as e:  # a truncated body is a transport fault in disguise
                raise TransientError(f"{what}: unreadable body (truncated response)", system=self.system) from e

        def on_retry(_: BaseException) -> None:
            self.retries += 1

        return with_retries(once, policy=self.policy, on_retry=on_retry) if retry else once()

    def _translate(self, e: SalesforceError, what: str) -> ConnectorError:
        first = e.content[0] if isinstance(e.content, list) and e.content and isinstance(e.content[0], dict) else {}
        code = first.get("errorCode")
        message = f"{what} failed"
        if first.get("message") and code not in ("INVALID_SESSION_ID", "REQUEST_LIMIT_EXCEEDED"):
            message += f": {_scrub(first['message'])[:200]}"
        if code == "INVALID_SESSION_ID" or int(e.status) == 401:
            return AuthError(message + ": the session was refused (expired or revoked)", system=self.system,
                             status=int(e.status), code=code,
                             action=SESSION_REFUSED if self.tokens.renewable else STATIC_REFUSED)
        return error_for(int(e.status), message, system=self.system, code=code,
                         resume_at=_resume_at() if code == "REQUEST_LIMIT_EXCEEDED" else None)

    def check(self) -> None:
        self._call("read limits", lambda: self.sf.limits())

    # --- reading -------------------------------------------------------------------------------
    def soql(self, stream: str, after: tuple[datetime, str] | None, since: datetime | None,
             until: datetime | None, *, ordered: bool = True) -> str:
        """The read query: every field of ``stream`` after a compound ``(SystemModstamp, Id)`` mark,
        or from ``since`` inclusive; values quoted by ``format_soql``, never concatenated.
        ``ordered=False`` for Bulk jobs: ORDER BY turns Salesforce's PK chunking off."""
        system = [f for f in SYSTEM_FIELDS if stream != "tasks" or f != "MasterRecordId"]  # Tasks never merge
        fields = ", ".join(system + FIELDS[stream])
        conditions: list[str] = []
        if after is not None:
            conditions.append(format_soql("(SystemModstamp > {ts} OR (SystemModstamp = {ts} AND Id > {id}))",
                                          ts=after[0], id=after[1]))
        elif since is not None:
            conditions.append(format_soql("SystemModstamp >= {ts}", ts=since))
        if until is not None:
            conditions.append(format_soql("SystemModstamp < {ts}", ts=until))
        where = " AND ".join(conditions) if conditions else ""
        if stream == "tasks":
            where = (where + TASK_FILTER) if where else TASK_FILTER.removeprefix(" AND ")
        return f"SELECT {fields} FROM {SOBJECT[stream]}" + (f" WHERE {where}" if where else "") + \
            (" ORDER BY SystemModstamp, Id" if ordered else "")

    def read(self, stream: str, cursor: Cursor | None = None, *, until: datetime | None = None) -> Iterator[Page]:
        spec = self.stream(stream)
        cur = cursor or Cursor()
        overlap = spec.overlap if self.overlap is None else self.overlap
        after = since = None
        if cur.modified_at is not None:
            if overlap:
                since = cur.read_from(overlap)
            else:
                after = (cur.modified_at, cur.last_id or "")
        headers = {"Sforce-Query-Options": f"batchSize={self.query_batch}"}
        body = self._call(f"query {stream}", lambda: self.sf.query(
            self.soql(stream, after, since, until), include_deleted=True, headers=headers))
        last: tuple[datetime, str] | None = None  # the last row delivered (the cursor may be ahead of it)
        bulk = self.bulk_threshold is not None and not body.get("done", True) and \
            int(body.get("totalSize") or 0) > self.bulk_threshold
        while True:
            records = [self._record(stream, row) for row in body.get("records") or []]
            cur = cur.advance(records)
            if records:
                last = (records[-1].modified_at, records[-1].external_id)
                yield Page(records, cur)
            if body.get("done", True) or not body.get("nextRecordsUrl"):
                return
            if bulk and last is not None:
                # The locator is simply left to expire (Salesforce has no call to close one).
                yield from self._bulk_read(stream, last, until, cur)
                return
            try:
                body = self._call(f"query more {stream}", lambda u=body["nextRecordsUrl"]: self.sf.query_more(
                    u, identifier_is_url=True, headers=headers))
            except ConnectorError as e:
                if e.code != "INVALID_QUERY_LOCATOR" or last is None:
                    raise
                # The locator expired (15 minutes idle, or more than 10 open): restart exactly after
                # the last row delivered, so the rest of the overlap window is still re-read.
                body = self._call(f"query {stream}", lambda m=last: self.sf.query(
                    self.soql(stream, m, None, until), include_deleted=True, headers=headers))

    def _bulk_read(self, stream: str, after: tuple[datetime, str], until: datetime | None,
                   cur: Cursor) -> Iterator[Page]:
        """Every row after ``after`` through one Bulk 2.0 ``queryAll`` job.

        Pages before the last carry the cursor the read started from: the rows are in Id order, so
        no mark is safe until all of them are durable. A crash mid-job re-reads the job's rows.
        A results call brings up to ``bulk_page`` rows (calls are what Salesforce counts), but they
        are handed on ``query_batch`` at a time: the store's work per page, and the memory it
        holds, is then the size of a REST page, not of 50,000 rows (500 MB at 60,000 contacts)."""
        sobject = SOBJECT[stream]
        client = getattr(self.sf.bulk2, sobject)._client  # the SDK's job calls, one at a time, each retried
        soql = self.soql(stream, after, None, until, ordered=False)
        job = self._call(f"bulk query {stream}", lambda: client.create_job(Operation.query_all, soql))
        job_id = job["id"]
        self.bulk_jobs.append(job_id)
        info = self._bulk_wait(client, job_id, f"bulk query job {job_id} for {stream}", query=True)
        if info.get("state") != "JobComplete":
            raise ConnectorError(f"bulk query job {job_id} for {stream} {str(info.get('state')).lower()}: "
                                 f"{_scrub(info.get('errorMessage') or 'no reason given')[:200]}",
                                 system=self.system,
                                 action="Re-run the sync: it resumes from the stored cursor with a new job. If it "
                                        "fails again for the same reason, look the job up in Salesforce Setup, "
                                        "Bulk Data Load Jobs.")
        start, best, locator = cur, cur, ""
        while True:
            page = self._call(f"bulk results {stream}", lambda loc=locator: self._bulk_page(client, job_id, loc))
            rows, locator = page["rows"], page["locator"]
            del page
            rows.reverse()  # taken from the end, so the rows handed on are freed as the read goes
            empty = not rows
            while rows:
                records = [self._record(stream, rows.pop()) for _ in range(min(self.query_batch, len(rows)))]
                best = best.advance(records)
                yield Page(records, best if not (locator or rows) else start)
            if not locator:
                if empty and best != start:
                    yield Page([], best)
                return

    def _bulk_wait(self, client: Any, job_id: str, what: str, *, query: bool) -> dict[str, Any]:
        """Poll a job (backing off to 10 s) until it is JobComplete, Failed or Aborted."""
        deadline = time.monotonic() + self.bulk_timeout_s
        wait = self.bulk_poll_s
        while True:
            time.sleep(wait)
            info = self._call(what, lambda: client.get_job(job_id, query))
            state = info.get("state")
            if state in ("JobComplete", "Failed", "Aborted"):
                return info
            if time.monotonic() > deadline:
                raise TransientError(f"{what} still {state} after {self.bulk_timeout_s:.0f} s", system=self.system)
            wait = min(wait * 1.5, 10.0)

    def _bulk_page(self, client: Any, job_id: str, locator: str) -> dict[str, Any]:
        res = client.get_query_results(job_id, locator, self.bulk_page)
        text = res["records"]
        rows = [bulk_row(r) for r in csv.DictReader(io.StringIO(text, newline=""))]
        # A cut inside the last row still parses (to a shortened value): Salesforce ends every line.
        if len(rows) != res["number_of_records"] or not text.endswith("\n"):
            raise TransientError(f"bulk results of job {job_id}: {len(rows)} rows where Sforce-NumberOfRecords "
                                 f"says {res['number_of_records']} (truncated response)", system=self.system)
        return {"rows": rows, "locator": res["locator"]}

    def _record(self, stream: str, row: dict[str, Any]) -> SourceRecord:
        # Relationship objects (Account) carry attributes of their own: REST and Bulk rows agree without them.
        row = {k: ({f: x for f, x in v.items() if f != "attributes"} if isinstance(v, dict) else v)
               for k, v in row.items() if k != "attributes"}
        master = row.get("MasterRecordId") if row.get("IsDeleted") else None
        return SourceRecord(system=self.system, stream=stream, external_id=row["Id"],
                            modified_at=_parse_dt(row["SystemModstamp"]), deleted=bool(row.get("IsDeleted")),
                            merged_into=master or None, payload=row)

    # --- writing -------------------------------------------------------------------------------
    def write(self, stream: str, records: Sequence[OutboundRecord]) -> list[WriteOutcome]:
        spec = self.stream(stream)
        if not spec.write_batch:
            raise NotImplementedError(f"salesforce stream {stream!r} is read-only")
        sobject, ext = SOBJECT[stream], EXTERNAL_ID[stream]
        outcomes: dict[int, WriteOutcome] = {}
        updates: list[tuple[int, OutboundRecord, dict[str, Any]]] = []
        upserts: list[tuple[int, OutboundRecord, dict[str, Any]]] = []
        for i, r in enumerate(records):
            fields = _fields(r)
            if stream == "tasks":
                fields[ext] = fields.get(ext) or r.key
                fields.setdefault("Status", "Completed")  # omnisync logs activities that happened
                started = fields.get(STARTED_AT)
                if started and not fields.get("ActivityDate"):
                    try:
                        fields["ActivityDate"] = _parse_dt(str(started)).astimezone(timezone.utc).date().isoformat()
                    except ValueError:
                        pass  # Salesforce names the bad start time in the record's own result
                if r.associations.get("contact"):
                    fields["WhoId"] = r.associations["contact"]
                upserts.append((i, r, fields))
            elif r.external_id:
                updates.append((i, r, {"Id": r.external_id, **fields}))
            elif r.match.get(ext) or fields.get(ext):
                fields[ext] = fields.get(ext) or r.match[ext]
                upserts.append((i, r, fields))
            else:
                outcomes[i] = WriteOutcome(r.key, WriteStatus.failed, error=(
                    f"salesforce/{stream} record {r.key}: no Id and no {ext} to upsert on; Salesforce contacts are "
                    "linked by id, or created only by the golden id"))
        try:
            for op, key, group in (("update", "Id", updates), ("upsert", ext, upserts)):
                if self.bulk_write_threshold is not None and len(group) > self.bulk_write_threshold:
                    self._bulk_write(stream, sobject, op, key, group, outcomes)
                else:
                    self._collections(stream, sobject, op, key, group, outcomes)
        except (QuotaExhaustedError, TransientError, AuthError) as e:
            for i, r in enumerate(records):  # stop: whatever was not confirmed is retried next run
                outcomes.setdefault(i, WriteOutcome(r.key, WriteStatus.failed, error=str(e), retryable=True))
        return [outcomes.get(i) or WriteOutcome(r.key, WriteStatus.failed, retryable=True,
                                                error=f"salesforce/{stream} record {r.key}: no result returned")
                for i, r in enumerate(records)]

    def _collections(self, stream: str, sobject: str, op: str, key: str,
                     items: Sequence[tuple[int, OutboundRecord, dict[str, Any]]],
                     outcomes: dict[int, WriteOutcome]) -> None:
        path = "composite/sobjects" if op == "update" else f"composite/sobjects/{sobject}/{key}"
        for part in chunks(items, COLLECTION):
            self._collection(stream, sobject, part, outcomes, lambda body: self.sf.restful(
                path, method="PATCH", data=json.dumps(body)))

    def _bulk_write(self, stream: str, sobject: str, op: str, key: str,
                    items: Sequence[tuple[int, OutboundRecord, dict[str, Any]]],
                    outcomes: dict[int, WriteOutcome]) -> None:
        """Records through Bulk 2.0 ingest jobs: ``upsert`` on the external id, ``update`` by Id.

        A key goes once into a job (one transaction cannot write a key twice, and results are
        matched to inputs by it); its repeats follow through Collections, in input order."""
        first: list[tuple[int, OutboundRecord, dict[str, Any]]] = []
        repeats: list[tuple[int, OutboundRecord, dict[str, Any]]] = []
        seen: set[str] = set()
        for item in items:
            k = _cell(item[2][key])
            (repeats if k in seen else first).append(item)
            seen.add(k)
        for part in chunks(first, BULK_JOB_RECORDS):
            self._bulk_job(stream, sobject, op, key, part, outcomes)
        self._collections(stream, sobject, op, key, repeats, outcomes)

    def _bulk_job(self, stream: str, sobject: str, op: str, key: str,
                  part: Sequence[tuple[int, OutboundRecord, dict[str, Any]]],
                  outcomes: dict[int, WriteOutcome]) -> None:
        """One ingest job: create, upload the CSV once, close, poll, read the result files.

        Result rows come in no particular order and carry the uploaded row, so each is tied to its
        input by the key column (unique in the job). Counts from the job info check that a result
        file arrived whole. A failed upload abandons its job (the data may have landed, and a job
        takes one upload only) and starts another; a job created by a retried call whose first
        attempt landed stays Open and unused (Salesforce discards it after a day)."""
        client = getattr(self.sf.bulk2, sobject)._client
        columns = [key] + sorted({f for _, _, fields in part for f in fields} - {key})
        rows = [[_cell(fields[c]) if c in fields else "" for c in columns] for _, _, fields in part]
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([columns, *rows])
        by_key = {row[0]: (i, r) for (i, r, _), row in zip(part, rows)}
        self._room(BULK_MIN_CALLS, f"a bulk {op} of {len(part)} {stream}")
        job_id = self._bulk_submit(client, stream, op, key, out.getvalue())
        info = self._bulk_wait(client, job_id, f"bulk {op} job {job_id} for {stream}", query=False)
        state = info.get("state")
        processed = int(info.get("numberRecordsProcessed") or 0)
        failed = int(info.get("numberRecordsFailed") or 0)
        if processed - failed:
            for row in self._call(f"bulk results {stream}", lambda: self._ingest_rows(
                    client, job_id, "successfulResults", processed - failed)):
                hit = by_key.get(row.get(key, ""))
                if hit is not None:
                    created = row.get("sf__Created") == "true"
                    outcomes[hit[0]] = WriteOutcome(hit[1].key, WriteStatus.created if created else WriteStatus.updated,
                                                    external_id=row.get("sf__Id") or None)
        if failed:
            for row in self._call(f"bulk failures {stream}", lambda: self._ingest_rows(
                    client, job_id, "failedResults", failed)):
                hit = by_key.get(row.get(key, ""))
                if hit is not None:
                    i, r = hit
                    err = _bulk_error(row.get("sf__Error", ""))
                    outcomes[i] = WriteOutcome(r.key, WriteStatus.failed,
                                               external_id=r.external_id or row.get("sf__Id") or None,
                                               error=_record_error(stream, r.key, err),
                                               retryable=err["statusCode"] in RETRYABLE_CODES)
        if state != "JobComplete":
            # Rows without a result were never processed (Salesforce lists them as unprocessed).
            reason = _scrub(info.get("errorMessage") or "no reason given")[:200]
            bad_data = reason.startswith(("InvalidBatch", "ClientInputError"))
            hint = HINTS["INVALID_FIELD"] if "Field name not found" in reason else (
                "fix the mapping for the field named" if bad_data else "the next push sends it again")
            for i, r in by_key.values():
                if i not in outcomes:
                    outcomes[i] = WriteOutcome(r.key, WriteStatus.failed, external_id=r.external_id,
                                               retryable=not bad_data, error=(
                                                   f"salesforce/{stream} record {r.key}: not written, bulk {op} job "
                                                   f"{job_id} {str(state).lower()}: {reason}; {hint}"))

    def _bulk_submit(self, client: Any, stream: str, op: str, key: str, data: str) -> str:
        """Create a job, upload ``data`` once and close the job; its id."""
        attempt = 0
        while True:
            attempt += 1
            job = self._call(f"bulk {op} {stream}", lambda: client.create_job(
                Operation(op), external_id_field=key if op == "upsert" else None))
            job_id = job["id"]
            self.bulk_jobs.append(job_id)
            try:
                self._call(f"bulk upload {stream}", lambda: client.upload_job_data(job_id, data), retry=False)
                break
            except TransientError:
                try:
                    self._call(f"bulk abort {stream}", lambda: client.abort_job(job_id, False), retry=False)
                except ConnectorError:
                    pass  # an unclosed job is never processed: abandoning it is enough
                if attempt >= self.policy.attempts:
                    raise
                self.retries += 1
                time.sleep(min(self.policy.backoff_initial * 2 ** attempt, self.policy.backoff_max))
        try:
            self._call(f"bulk close {stream}", lambda: client.close_job(job_id))
        except (QuotaExhaustedError, AuthError):
            raise
        except ConnectorError:
            # A close retried after its first attempt landed is refused: the job is no longer Open.
            info = self._call(f"bulk job {stream}", lambda: client.get_job(job_id, False))
            if info.get("state") in ("Open", "Aborted"):
                raise
        return job_id

    def _ingest_rows(self, client: Any, job_id: str, kind: str, expected: int) -> list[dict[str, str]]:
        text = client.get_ingest_results(job_id, kind)
        rows = list(csv.reader(io.StringIO(text, newline="")))
        header, body = (rows[0], rows[1:]) if rows else ([], [])
        if len(body) != expected or not text.endswith("\n") or any(len(r) != len(header) for r in body):
            raise TransientError(f"bulk {kind} of job {job_id}: {len(body)} rows where the job reports {expected} "
                                 "(truncated response)", system=self.system)
        return [dict(zip(header, r)) for r in body]

    def _collection(self, stream: str, sobject: str, part: Sequence[tuple[int, OutboundRecord, dict[str, Any]]],
                    outcomes: dict[int, WriteOutcome], send: Callable[[dict[str, Any]], Any]) -> None:
        body = {"allOrNone": False,
                "records": [{"attributes": {"type": sobject}, **fields} for _, _, fields in part]}
        try:
            results = self._call(f"write {stream}", lambda: send(body)) or []
        except (QuotaExhaustedError, TransientError, AuthError):
            raise
        except ConnectorError as e:  # the whole call was refused: every record says why
            for i, r, _ in part:
                outcomes[i] = WriteOutcome(r.key, WriteStatus.failed, error=f"salesforce/{stream} record {r.key}: {e}")
            return
        # Collections answer one result per input, in input order.
        for (i, r, _), res in zip(part, results):
            if res.get("success"):
                status = WriteStatus.created if res.get("created") else WriteStatus.updated
                outcomes[i] = WriteOutcome(r.key, status, external_id=res.get("id"))
            else:
                errs = res.get("errors") or [{}]
                outcomes[i] = WriteOutcome(r.key, WriteStatus.failed, external_id=r.external_id,
                                           error=_record_error(stream, r.key, errs[0]),
                                           retryable=errs[0].get("statusCode") in RETRYABLE_CODES)

    # --- erasure -------------------------------------------------------------------------------
    def erase(self, stream: str, ids: Sequence[str]) -> list[WriteOutcome]:
        """Delete a person's records (Collections DELETE, 200 ids a call).

        Salesforce keeps deleted rows in the recycle bin for 15 days before purging them; the REST
        API offers no hard delete (Bulk API ``hardDelete`` needs a permission few integrations hold),
        so the outcome says so and the erasure audit can name it. Deleting a contact deletes its
        activities. An id Salesforce reports as already deleted counts as erased.
        """
        self.stream(stream)
        out: list[WriteOutcome] = []
        for part in chunks(list(ids), COLLECTION):
            try:
                results = self._call(f"delete {stream}", lambda p=part: self.sf.restful(
                    "composite/sobjects", method="DELETE", params={"ids": ",".join(p), "allOrNone": "false"})) or []
            except (QuotaExhaustedError, AuthError):
                raise
            except ConnectorError as e:
                out += [WriteOutcome(str(i), WriteStatus.failed, external_id=str(i), retryable=e.retryable,
                                     error=f"salesforce/{stream} record {i}: {e}") for i in part]
                continue
            for rid, res in zip(part, results):
                code = ((res.get("errors") or [{}])[0]).get("statusCode")
                if res.get("success"):
                    out.append(WriteOutcome(rid, WriteStatus.deleted, external_id=rid, error=(
                        "in the recycle bin until Salesforce purges it (15 days)")))
                elif code in ("ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY"):
                    out.append(WriteOutcome(rid, WriteStatus.unchanged, external_id=rid))
                else:
                    out.append(WriteOutcome(rid, WriteStatus.failed, external_id=rid,
                                            error=_record_error(stream, rid, (res.get("errors") or [{}])[0])))
        return out


# --- helpers --------------------------------------------------------------------------------------



def bulk_row(row: dict[str, str]) -> dict[str, Any]:
    """A Bulk 2.0 CSV row in the shape REST returns: nulls, booleans, numbers and ``+0000`` datetimes;
    relationship columns (``Account.Name``) nested, the relationship ``None`` when all of them are empty."""
    out: dict[str, Any] = {}
    related: dict[str, dict[str, Any]] = {}
    for k, v in row.items():
        if "." in k:
            rel, sub = k.split(".", 1)
            related.setdefault(rel, {})[sub] = None if v in ("", None) else v
            out[rel] = None  # keeps the column's place; filled below
            continue
        if v == "" or v is None:
            out[k] = False if k in BOOL_FIELDS else None
        elif k in BOOL_FIELDS:
            out[k] = v == "true"
        elif k in INT_FIELDS:
            out[k] = int(float(v))
        elif k in DATETIME_FIELDS and v.endswith("Z"):
            out[k] = v[:-1] + "+0000"
        else:
            out[k] = v
    for rel, node in related.items():
        out[rel] = node if any(x is not None for x in node.values()) else None
    return out


def _cell(v: Any) -> str:
    """A value as a Bulk CSV cell. An empty cell leaves a field as it is, so a null (REST's "clear
    it", and an empty string, which Salesforce stores as null) is written ``#N/A``."""
    if v is None or v == "":
        return "#N/A"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _bulk_error(text: str) -> dict[str, Any]:
    """``sf__Error`` (``CODE:message:field,field --``) in the shape of a REST error."""
    code, _, rest = text.partition(":")
    message, sep, tail = rest.rpartition(":")
    if not sep or not tail.strip().endswith("--"):
        message, tail = rest, ""
    fields = [f.strip() for f in tail.strip().removesuffix("--").split(",") if f.strip()]
    return {"statusCode": code.strip() or "error", "message": message, "fields": fields}


def _fields(r: OutboundRecord) -> dict[str, Any]:
    return {k: v for k, v in r.payload.items() if k not in ("attributes", "Id")}


def _parse_dt(value: str) -> datetime:
    s = value.replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", s):
        s = s[:-2] + ":" + s[-2:]
    dt = datetime.fromisoformat(s)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _fetch_token(c: SalesforceCredentials, timeout: float) -> IssuedToken:
    return fetch_token(system="salesforce", url=c.instance_url.rstrip("/") + TOKEN_PATH, timeout=timeout,
                       form={"grant_type": "client_credentials", "client_id": str(c.client_id),
                             "client_secret": c.client_secret.get_secret_value()},
                       verify=ssl.create_default_context(cafile=c.ca_bundle) if c.ca_bundle else True,
                       refused=CLIENT_REFUSED)


def _invalid_session(resp: requests.Response) -> bool:
    try:
        body = resp.json()
    except ValueError:
        return False
    return isinstance(body, list) and any(isinstance(e, dict) and e.get("errorCode") == "INVALID_SESSION_ID"
                                          for e in body)


def _endpoint(url: str) -> str:
    path = url.split("://", 1)[-1].split("/", 1)[-1].split("?")[0]
    parts = []
    for p in path.split("/"):
        if re.fullmatch(r"[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?", p) and any(c.isdigit() for c in p):
            p = "{id}"
        elif re.fullmatch(r"01g\w+-\d+", p):
            p = "{locator}"
        parts.append(p)
    return "/" + "/".join(parts)


def _record_error(stream: str, key: str, err: dict[str, Any]) -> str:
    code = err.get("statusCode") or "error"
    fields = ", ".join(err.get("fields") or [])
    where = f" field {fields}" if fields else ""
    hint = HINTS.get(code, "fix the mapping or the golden value for the field named")
    return f"salesforce/{stream} record {key}:{where} rejected ({code}): {_scrub(err.get('message', ''))[:160]}; {hint}"


def _scrub(text: Any) -> str:
    """Salesforce messages echo rejected values (addresses included): mask them."""
    text = re.sub(r"(invalid email address:).*", r"\1 ***", str(text))
    return re.sub(r"\S*@\S*", "***", mask_text(text))


def _resume_at() -> datetime:
    """The allocation is a rolling 24-hour window: capacity frees up as the oldest calls age out."""
    return datetime.now(timezone.utc) + timedelta(hours=1)
