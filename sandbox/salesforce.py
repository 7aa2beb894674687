"""Salesforce REST sandbox (served over TLS: simple-salesforce only speaks https).

Objects Account, Contact, Lead and Task (calls and emails logged as activities), seeded lazily from
:mod:`sandbox.population`: only an index of ``(SystemModstamp, Id)`` pairs is kept per object and
a record is computed from its index until something writes it. Person 0, Amara Okafor, is a
Contact with her work email and a formatted mobile number, and has two call Tasks. Contacts carry
the org's custom ``Customer_Tier__c`` picklist (Platinum, Gold, Silver, Bronze; Amara is Gold) and
``Omnisync_Sms_Opt_Out__c`` checkbox next to the standard ``HasOptedOutOfEmail`` and ``DoNotCall``.

Accounts are the population's employers, one per company (``Name``, ``Industry``, ``Type``, the
head office's switchboard as ``Phone``, ``Website``, ``Billing*`` address, ``NumberOfEmployees``),
created before any contact. A contact's ``AccountId`` is its person's company (duplicates agree);
about 5% are private contacts with none. Amara works at Northwind Traders. These fields are drawn
from random streams of their own, so the rest of every seeded record is as it was before Accounts
existed. A contact's company is read the way an integration reads it from Salesforce, through the
relationship in the same query (``SELECT ..., Account.Name FROM Contact``): no second stream to
join, and the value arrives with the contact. Relationship fields are answered in ``SELECT`` (REST:
a nested ``{"attributes", "Name"}`` object, ``null`` without an account; Bulk 2.0: an
``Account.Name`` CSV column), not in ``WHERE`` or ``ORDER BY``. As in Salesforce, renaming an
account does not change its contacts' ``SystemModstamp``: incremental reads miss it and
reconciliation sweeps catch it.

Vendor behaviour reproduced on purpose (specs/README.md, "Salesforce"):

* ``GET /services/data/vXX.X/query/?q=`` and ``queryAll/`` (deleted rows too, ``IsDeleted`` true,
  merge losers with ``MasterRecordId``) over a real parser of the SOQL subset omnisync uses:
  ``SELECT`` fields ``FROM`` object, ``WHERE`` comparisons (``= != < <= > >=``, ``IN``) on datetime,
  Id, text, boolean and number fields joined by ``AND``/``OR``/``NOT`` with parentheses (mixing
  ``AND`` and ``OR`` unparenthesized is refused, as Salesforce does), ``ORDER BY``, ``LIMIT``.
  Anything else is answered ``MALFORMED_QUERY`` / ``INVALID_FIELD`` / ``INVALID_TYPE``.
* Results in batches of 2,000 (``Sforce-Query-Options: batchSize=200..2000`` lowers it) with a
  ``nextRecordsUrl`` query locator; at most 10 open locators per session (the oldest is dropped)
  and expired locators answer ``INVALID_QUERY_LOCATOR``.
* sObject Collections: create (``POST``), update (``PATCH``), upsert on an external-id field
  (``PATCH /composite/sobjects/{SObject}/{Field}``) and delete, at most 200 records a call, per-record
  results ``{"id","success","errors","created"}``, ``allOrNone`` honoured. ``Omnisync_Golden_Id__c``
  is an external id without the Unique attribute (linked duplicates share it; an upsert matching
  several records fails with ``DUPLICATE_EXTERNAL_ID``); ``Omnisync_Interaction_Id__c`` is unique.
* Bulk API 2.0 query jobs: ``POST /jobs/query`` (``query`` or ``queryAll``), ``GET /jobs/query/{id}``
  (``UploadComplete`` -> ``InProgress`` -> ``JobComplete`` after ``bulk_job_s`` seconds, and not before
  the query, run after the create call has answered, has selected its rows),
  ``GET /jobs/query/{id}/results?maxRecords=&locator=`` as CSV (every value quoted, nulls empty,
  datetimes in UTC with ``Z``) with ``Sforce-Locator`` (``null`` on the last page) and
  ``Sforce-NumberOfRecords`` headers, ``PATCH`` (abort) and ``DELETE``. Results are snapshotted when the
  job runs (just after it is created) and come in Id order (PK chunking), not in
  ``ORDER BY SystemModstamp`` order unless the query asks for it. Aggregates and ``GROUP BY`` are
  refused, as the SOQL subset refuses them.
* Bulk API 2.0 ingest jobs: ``POST /jobs/ingest`` (``insert``, ``update``, ``upsert`` with
  ``externalIdFieldName``, ``delete``; ``hardDelete`` needs a permission this user lacks), one
  ``PUT .../batches`` of ``text/csv`` (201; a second upload makes the close fail, as Salesforce's
  "multiple contents" error), ``PATCH`` to ``UploadComplete`` or ``Aborted``, ``GET`` (``Open`` ->
  ``UploadComplete`` -> ``InProgress`` -> ``JobComplete``/``Failed``, with ``numberRecordsProcessed`` and
  ``numberRecordsFailed``), ``successfulResults/`` (``sf__Id``, ``sf__Created``), ``failedResults/``
  (``sf__Id``, ``sf__Error`` as ``CODE:message:fields --``) and ``unprocessedrecords/``, each followed by the
  row as uploaded, and ``DELETE``. A closed job runs ``bulk_job_s`` later, whether or not anyone polls:
  rows in transactions of 200, the transactions in no particular order (so are the result files),
  each row validated and written exactly as the REST calls write it (same errors, the golden id's
  ``DUPLICATE_EXTERNAL_ID``); a key twice in one transaction fails both rows. An empty cell leaves a
  field unchanged and ``#N/A`` clears it. A header naming an unknown field, a CRLF file declared LF, or
  rows of the wrong width fail the whole job with Salesforce's ``InvalidBatch`` message. Every job call
  counts against the daily allocation and goes through fault injection like any other.
* Task start times: Tasks have no start datetime of their own (``ActivityDate`` is a date), so the org
  has a custom ``Omnisync_Started_At__c`` datetime (millisecond precision) omnisync writes on the
  activities it logs.
* ``GET /sobjects/{SObject}/deleted/?start=&end=`` (at most 15 days back) and ``.../updated/`` (30
  days), ``GET /limits/``.
* ``Sforce-Limit-Info: api-usage=used/total`` on every response; 403 ``REQUEST_LIMIT_EXCEEDED`` once
  the daily allocation is spent; errors as ``[{"message","errorCode"}]``.
* OAuth 2.0 client credentials flow of a connected app: ``POST /services/oauth2/token`` (form
  ``grant_type=client_credentials``, ``client_id``, ``client_secret``; or the client as HTTP Basic)
  answers ``{"access_token", "signature", "scope", "instance_url", "id", "token_type": "Bearer",
  "issued_at"}``, with no lifetime, as Salesforce's. A session lasts ``session_lifetime_s`` (7,200, the
  default timeout) from its issue (Salesforce counts from the last activity: a fixed lifetime is the
  stricter case); any call with an expired or unknown session is 401 ``[{"message": "Session expired
  or invalid", "errorCode": "INVALID_SESSION_ID"}]``. Refusals are 400 ``invalid_client_id`` /
  ``invalid_client`` / ``unsupported_grant_type`` with an ``error_description``. Token requests are
  logged, but do not count against the API allocation (they do not in Salesforce) nor get injected
  faults. ``SESSION_ID`` is a session issued at seeding time, for tools calling the API directly.
* Datetimes as ``2026-11-01T10:00:00.000+0000`` with second precision, so many records share one
  ``SystemModstamp``.

Sandbox-only routes: ``PATCH/DELETE /_sandbox/sobjects/{SObject}/{id}`` (a user edits or deletes),
``POST /_sandbox/merge`` (a user merges contacts), ``POST /_sandbox/limits`` (daily allocation),
``POST /_sandbox/oauth`` (``{"session_lifetime_s"}`` for sessions issued from now on,
``{"expire_sessions": true}`` to end every session issued so far),
``POST /_sandbox/locators/expire``, ``GET /_sandbox/export`` and ``POST /_sandbox/bulk/fail``
(``{"message", "after"}``: the next Bulk job fails with that ``errorMessage``, an ingest job after
writing ``after`` rows, the rest left unprocessed; ``fail_next_job`` in process).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import csv
import hashlib
import heapq
import io
import json
import random
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import Response

from sandbox.framework import Sandbox
from sandbox.population import (
    AREA,
    CITIES,
    COMPANIES,
    EPOCH,
    JUNK_EMAILS,
    JUNK_PHONES,
    contact_person,
    modstamp,
    person,
    phone_variant,
    typo,
)

SESSION_ID = "00Dsandbox!sandbox-session-id"
ORG_ID = "00DDn0000000SBXMA2"
CLIENT_ID = "3MVG9sandbox.omnisync.connected.app"
CLIENT_SECRET = "sandbox-salesforce-consumer-secret"
TOKEN_PATH = "/services/oauth2/token"
SESSION_LIFETIME_S = 7200
API_VERSION = "59.0"
BATCH_DEFAULT = 2000
BATCH_MIN = 200
BULK_RESULTS_DEFAULT = 50_000  # rows a results page holds when maxRecords is not given
BULK_JOB_TYPE = "750"
INGEST_OPERATIONS = ("insert", "update", "upsert", "delete")
INGEST_CHUNK = 200  # rows Salesforce writes in one transaction of an ingest job
COLLECTION_MAX = 200
MAX_LOCATORS = 10
DAILY_LIMIT = 100_000
GET_DELETED_DAYS = 15
GET_UPDATED_DAYS = 30
USER_IDS = [f"005Dn00000{n:05d}" for n in range(11, 23)]

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9-]+)+$")

# The org's custom Contact fields besides omnisync's own ids: Customer_Tier__c, a restricted picklist
# sales sets per customer (the value tier routing and agents see), and Omnisync_Sms_Opt_Out__c, a
# checkbox for SMS opt-outs (Salesforce has standard HasOptedOutOfEmail and DoNotCall, nothing for SMS).
TIERS = ("Platinum", "Gold", "Silver", "Bronze")
# Field kinds: id, ref, str, email, bool, date, datetime, int. Read-only fields are listed apart.
SCHEMA: dict[str, dict[str, str]] = {
    "Account": {"Id": "id", "Name": "str", "Type": "str", "Industry": "str", "Phone": "str", "Website": "str",
                "BillingStreet": "str", "BillingCity": "str", "BillingState": "str", "BillingPostalCode": "str",
                "BillingCountry": "str", "NumberOfEmployees": "int", "MasterRecordId": "ref", "IsDeleted": "bool",
                "CreatedDate": "datetime", "LastModifiedDate": "datetime", "SystemModstamp": "datetime"},
    "Contact": {"Id": "id", "AccountId": "ref", "FirstName": "str", "LastName": "str", "Email": "email", "Phone": "str",
                "MobilePhone": "str", "Title": "str", "Birthdate": "date", "MailingStreet": "str",
                "MailingCity": "str", "MailingState": "str", "MailingPostalCode": "str", "MailingCountry": "str",
                "LeadSource": "str", "HasOptedOutOfEmail": "bool", "DoNotCall": "bool",
                "Omnisync_Sms_Opt_Out__c": "bool", "Customer_Tier__c": "str",
                "Omnisync_Golden_Id__c": "str", "MasterRecordId": "ref", "IsDeleted": "bool",
                "CreatedDate": "datetime", "LastModifiedDate": "datetime", "SystemModstamp": "datetime"},
    "Lead": {"Id": "id", "FirstName": "str", "LastName": "str", "Email": "email", "Phone": "str",
             "MobilePhone": "str", "Company": "str", "Title": "str", "Street": "str", "City": "str", "State": "str",
             "PostalCode": "str", "Country": "str", "Status": "str", "LeadSource": "str",
             "HasOptedOutOfEmail": "bool", "DoNotCall": "bool", "IsConverted": "bool", "ConvertedContactId": "ref",
             "Omnisync_Golden_Id__c": "str", "MasterRecordId": "ref", "IsDeleted": "bool",
             "CreatedDate": "datetime", "LastModifiedDate": "datetime", "SystemModstamp": "datetime"},
    "Task": {"Id": "id", "WhoId": "ref", "OwnerId": "ref", "Subject": "str", "Description": "str",
             "TaskSubtype": "str", "CallType": "str", "CallDurationInSeconds": "int", "CallDisposition": "str",
             "ActivityDate": "date", "Status": "str", "Priority": "str", "Omnisync_Interaction_Id__c": "str",
             "Omnisync_Started_At__c": "datetime", "IsDeleted": "bool", "CreatedDate": "datetime", "LastModifiedDate": "datetime",
             "SystemModstamp": "datetime"},
}
READ_ONLY = {"Id", "MasterRecordId", "IsDeleted", "CreatedDate", "LastModifiedDate", "SystemModstamp", "IsConverted",
             "ConvertedContactId"}
REQUIRED = {"Account": ("Name",), "Contact": ("LastName",), "Lead": ("LastName", "Company"), "Task": ()}
PICKLISTS = {("Task", "TaskSubtype"): ("Call", "Email", "Task"),
             ("Task", "CallType"): ("Inbound", "Outbound", "Internal"),
             ("Task", "Status"): ("Not Started", "In Progress", "Completed"),
             ("Task", "Priority"): ("High", "Normal", "Low"),
             ("Lead", "Status"): ("Open - Not Contacted", "Working - Contacted", "Closed - Converted",
                                  "Closed - Not Converted"),
             ("Contact", "Customer_Tier__c"): TIERS,
             ("Account", "Type"): ("Customer - Direct", "Customer - Channel", "Prospect", "Partner", "Other")}
EXTERNAL_IDS = {"Account": (), "Contact": ("Omnisync_Golden_Id__c",), "Lead": ("Omnisync_Golden_Id__c",),
                "Task": ("Omnisync_Interaction_Id__c",)}
# External-id fields marked Unique. The golden id is not: duplicates that sales keeps apart in the
# CRM are linked to one golden record, so several contacts carry the same golden id.
UNIQUE = {"Task": ("Omnisync_Interaction_Id__c",)}
PREFIX = {"Account": "001", "Contact": "003", "Lead": "00Q", "Task": "00T"}
SALT = {"Account": 53, "Contact": 11, "Lead": 23, "Task": 37}
# Relationship names usable in a SELECT list: (object, relationship) -> (lookup field, parent object).
RELATIONSHIPS = {("Contact", "Account"): ("AccountId", "Account")}
INDUSTRIES = {"Northwind Traders": "Retail", "Contoso": "Technology", "Fabrikam": "Manufacturing",
              "Globex": "Energy", "Initech": "Technology", "Umbrella Health": "Healthcare",
              "Stark Logistics": "Transportation", "Wayne Retail": "Retail", "Acme Corp": "Manufacturing",
              "Hooli": "Technology", "Vandelay Imports": "Wholesale", "Tyrell Systems": "Electronics"}
PRIVATE_CONTACTS = 0.05  # contacts with no account
DISPOSITIONS = ("Connected", "Left voicemail", "No answer", "Busy")
TOPICS = ("a refund", "a late delivery", "upgrading the plan", "a billing question", "a password reset",
          "a damaged item", "changing the address")
TITLES = ("Office Manager", "Engineer", "Buyer", "Director of Operations", "Analyst", "Nurse", "Teacher", "CFO")
LEAD_SOURCES = ("Web", "Phone Inquiry", "Partner Referral", "Trade Show", "Webinar")


# --- ids and formats -----------------------------------------------------------------------------

def sf_id(sobject: str, num: int) -> str:
    """An 18-character Salesforce id: key prefix, pod, base-62 number, case-safe checksum.

    Fixed width, so string order is number order (as Salesforce's own Id ordering)."""
    digits = ""
    n = num
    for _ in range(9):
        n, r = divmod(n, 62)
        digits = _B62[r] + digits
    body = PREFIX[sobject] + "Dn0" + digits
    suffix = ""
    for k in range(3):
        bits = sum(1 << i for i, c in enumerate(body[k * 5:k * 5 + 5]) if c.isupper())
        suffix += "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"[bits]
    return body + suffix


def parse_id(value: str) -> tuple[str, int] | None:
    """(sObject, number) of a 15- or 18-character id this org issued; None otherwise."""
    s = str(value)
    if len(s) not in (15, 18) or s[3:6] != "Dn0":
        return None
    sobject = next((o for o, p in PREFIX.items() if p == s[:3]), None)
    if sobject is None or any(c not in _B62 for c in s[6:15]):
        return None
    num = 0
    for c in s[6:15]:
        num = num * 62 + _B62.index(c)
    return sobject, num


def sf_datetime(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}+0000"


def parse_datetime_ms(value: Any) -> int | None:
    """Epoch ms of an ISO 8601 datetime as Salesforce accepts it (``Z``, ``+00:00`` or ``+0000``);
    None when it is not one. A value without an offset is refused: Salesforce would read it as GMT,
    which hides a caller's bug."""
    s = str(value).strip()
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?)(Z|[+-]\d{2}:?\d{2})", s)
    if m is None:
        return None
    off = "+00:00" if m.group(2) == "Z" else m.group(2)
    if len(off) == 5:
        off = off[:3] + ":" + off[3:]
    try:
        return int(round(datetime.fromisoformat(m.group(1) + off).timestamp() * 1000))
    except ValueError:
        return None


def _now_s() -> int:
    return int(time.time())


@dataclass
class Rec:
    num: int
    fields: dict[str, Any]  # everything but Id / IsDeleted / SystemModstamp / LastModifiedDate
    ts: int  # SystemModstamp in ms (whole seconds)
    created: int
    deleted: bool = False


class ApiError(Exception):
    """An error answered in Salesforce's shape: a JSON array of ``{"message","errorCode"}``."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None):
        self.status, self.code, self.message, self.fields = status, code, message, fields
        super().__init__(message)

    def body(self) -> list[dict[str, Any]]:
        out: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            out["fields"] = self.fields
        return [out]


class Table:
    """One sObject: seeded records computed on demand from an index sorted by (SystemModstamp, number);
    written ones kept in ``over`` with their own sorted index."""

    def __init__(self, sobject: str, n: int, make: Callable[[int], Rec]):
        self.sobject = sobject
        self.n = n
        self.make = make
        self.base: list[tuple[int, int]] = []
        self.over: dict[int, Rec] = {}
        self.delta: list[tuple[int, int]] = []
        self.next_num = n + 1
        self.ext: dict[str, dict[str, int]] = {}

    def seeded(self, num: int) -> bool:
        return 1 <= num <= self.n

    def get(self, num: int) -> Rec | None:
        rec = self.over.get(num)
        if rec is None and self.seeded(num):
            rec = self.make(num - 1)
        return rec

    def put(self, rec: Rec) -> None:
        # Superseded (ts, num) entries stay in ``delta`` and are skipped when read: removing them
        # from the middle of a long list made bulk updates quadratic.
        old = self.over.get(rec.num)
        fresh = old is None or old.ts != rec.ts
        if old is None:
            old = self.get(rec.num)
        for fname, idx in self.ext.items():
            if old is not None and old.fields.get(fname):
                holders = idx.get(old.fields[fname], set())
                holders.discard(rec.num)
                if not holders:
                    idx.pop(old.fields[fname], None)
            if not rec.deleted and rec.fields.get(fname):
                idx.setdefault(rec.fields[fname], set()).add(rec.num)
        self.over[rec.num] = rec
        if fresh:
            bisect.insort(self.delta, (rec.ts, rec.num))

    def by_ts(self, lo: int | None) -> Iterator[tuple[int, int]]:
        """(SystemModstamp, number) of every record, live or deleted, ascending from ``lo``."""
        start = 0 if lo is None else bisect.bisect_left(self.base, (lo, -1))
        base = (e for e in itertools_slice(self.base, start) if e[1] not in self.over)
        dstart = 0 if lo is None else bisect.bisect_left(self.delta, (lo, -1))
        current = (e for e in itertools_slice(self.delta, dstart) if self.over[e[1]].ts == e[0])
        return heapq.merge(base, current)

    def external_index(self, fname: str) -> dict[str, set[int]]:
        """value -> live records holding it, built on first use (one pass over the seed)."""
        idx = self.ext.get(fname)
        if idx is None:
            idx = {}
            for _, num in self.by_ts(None):
                rec = self.get(num)
                if rec is not None and not rec.deleted and rec.fields.get(fname):
                    idx.setdefault(rec.fields[fname], set()).add(num)
            self.ext[fname] = idx
        return idx


def itertools_slice(seq: list, start: int) -> Iterator:
    for k in range(start, len(seq)):
        yield seq[k]


# --- SOQL ------------------------------------------------------------------------------------------

class SoqlError(ApiError):
    def __init__(self, message: str, code: str = "MALFORMED_QUERY"):
        super().__init__(400, code, message)


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[(),])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
""", re.VERBOSE)
_KEYWORDS = {"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "ORDER", "BY", "ASC", "DESC", "LIMIT", "IN", "NULLS",
             "FIRST", "LAST", "TRUE", "FALSE", "NULL"}
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "'": "'", '"': '"', "\\": "\\"}


@dataclass
class Tok:
    kind: str
    text: str
    col: int


def tokenize(q: str) -> list[Tok]:
    out: list[Tok] = []
    pos = 0
    while pos < len(q):
        m = _TOKEN.match(q, pos)
        if m is None:
            raise SoqlError(f"line 1:{pos} no viable alternative at character '{q[pos]}'")
        kind = m.lastgroup or ""
        if kind != "ws":
            text = m.group()
            if kind == "ident" and text.upper() in _KEYWORDS:
                kind, text = "kw", text.upper()
            out.append(Tok(kind, text, pos + 1))
        pos = m.end()
    out.append(Tok("eof", "<EOF>", len(q) + 1))
    return out


@dataclass
class Query:
    fields: list[str]
    sobject: str
    where: Any  # nested tuples: ("and"|"or", [..]) | ("not", x) | ("cmp", field, op, value) | ("in", field, values)
    order: list[tuple[str, bool]]  # (field, descending)
    limit: int | None


class _Parser:
    def __init__(self, q: str):
        self.toks = tokenize(q)
        self.i = 0

    def peek(self) -> Tok:
        return self.toks[self.i]

    def take(self) -> Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def unexpected(self, t: Tok) -> SoqlError:
        return SoqlError(f"ERROR at Row:1:Column:{t.col}\nunexpected token: {t.text}")

    def expect(self, kind: str, text: str | None = None) -> Tok:
        t = self.take()
        if t.kind != kind or (text is not None and t.text != text):
            raise self.unexpected(t)
        return t

    def parse(self) -> Query:
        self.expect("kw", "SELECT")
        fields = [self.expect("ident").text]
        while self.peek().text == ",":
            self.take()
            fields.append(self.expect("ident").text)
        self.expect("kw", "FROM")
        sobject = self.expect("ident").text
        where = order_by = limit = None
        if self.peek().text == "WHERE":
            self.take()
            where = self.expr()
        order: list[tuple[str, bool]] = []
        if self.peek().text == "ORDER":
            self.take()
            self.expect("kw", "BY")
            while True:
                f = self.expect("ident").text
                desc = False
                if self.peek().text in ("ASC", "DESC"):
                    desc = self.take().text == "DESC"
                order.append((f, desc))
                if self.peek().text != ",":
                    break
                self.take()
            order_by = order
        if self.peek().text == "LIMIT":
            self.take()
            t = self.expect("number")
            if not t.text.isdigit():
                raise self.unexpected(t)
            limit = int(t.text)
        if self.peek().kind != "eof":
            raise self.unexpected(self.peek())
        return Query(fields, sobject, where, order_by or [], limit)

    def expr(self) -> Any:
        parts = [self.factor()]
        joiner: str | None = None
        while self.peek().text in ("AND", "OR"):
            t = self.take()
            if joiner is not None and t.text != joiner:
                # Salesforce needs parentheses to mix AND and OR at one level.
                raise self.unexpected(t)
            joiner = t.text
            parts.append(self.factor())
        return parts[0] if joiner is None else (joiner.lower(), parts)

    def factor(self) -> Any:
        t = self.peek()
        if t.text == "NOT":
            self.take()
            return ("not", self.factor())
        if t.text == "(":
            self.take()
            inner = self.expr()
            self.expect("punct", ")")
            return inner
        field = self.expect("ident").text
        t = self.take()
        if t.text == "IN" or (t.text == "NOT" and self.peek().text == "IN"):
            negate = t.text == "NOT"
            if negate:
                self.take()
            self.expect("punct", "(")
            values = [self.literal()]
            while self.peek().text == ",":
                self.take()
                values.append(self.literal())
            self.expect("punct", ")")
            node = ("in", field, values)
            return ("not", node) if negate else node
        if t.kind != "op":
            raise self.unexpected(t)
        return ("cmp", field, "!=" if t.text == "<>" else t.text, self.literal())

    def literal(self) -> tuple[str, Any]:
        t = self.take()
        if t.kind == "string":
            body = t.text[1:-1]
            return "string", re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)
        if t.kind == "datetime":
            s = t.text.replace("Z", "+00:00")
            if re.search(r"[+-]\d{4}$", s):
                s = s[:-2] + ":" + s[-2:]
            return "datetime", int(datetime.fromisoformat(s).timestamp() * 1000)
        if t.kind == "date":
            return "date", t.text
        if t.kind == "number":
            return "number", float(t.text)
        if t.text in ("TRUE", "FALSE"):
            return "bool", t.text == "TRUE"
        if t.text == "NULL":
            return "null", None
        raise self.unexpected(t)


def parse_soql(q: str) -> Query:
    """Parse the supported SOQL subset; :class:`SoqlError` (MALFORMED_QUERY) for anything else."""
    return _Parser(q).parse()


def _check_fields(query: Query) -> None:
    schema = SCHEMA.get(query.sobject)
    if schema is None:
        raise SoqlError(f"\n{query.sobject}\n^\nERROR at Row:1:Column:1\nsObject type '{query.sobject}' is not "
                        "supported. If you are attempting to use a custom object, be sure to append the '__c' after "
                        "the entity name.", code="INVALID_TYPE")

    def related(f: str) -> None:
        rel, _, sub = f.partition(".")
        link = RELATIONSHIPS.get((query.sobject, rel))
        if link is None or "." in sub:
            raise SoqlError(f"\nERROR at Row:1:Column:1\nDidn't understand relationship '{rel}' in field path. If you "
                            "are attempting to use a custom relationship, be sure to append the '__r' after the "
                            "custom relationship name.", code="INVALID_FIELD")
        if sub not in SCHEMA[link[1]]:
            raise SoqlError(f"\nERROR at Row:1:Column:1\nNo such column '{sub}' on entity '{link[1]}'. If you are "
                            "attempting to use a custom field, be sure to append the '__c' after the custom field "
                            "name.", code="INVALID_FIELD")

    def known(f: str) -> None:
        if "." in f:
            # A sandbox limit, said as such: relationship paths are answered in SELECT only.
            raise SoqlError(f"\nERROR at Row:1:Column:1\nrelationship field '{f}' is supported in SELECT only by "
                            "this sandbox", code="INVALID_FIELD")
        if f not in schema:
            raise SoqlError(f"\nERROR at Row:1:Column:1\nNo such column '{f}' on entity '{query.sobject}'. If you "
                            "are attempting to use a custom field, be sure to append the '__c' after the custom "
                            "field name.", code="INVALID_FIELD")

    for f in query.fields:
        if "." in f:
            related(f)
        else:
            known(f)
    for f, _ in query.order:
        known(f)

    def walk(node: Any) -> None:
        if node is None:
            return
        if node[0] in ("and", "or"):
            for n in node[1]:
                walk(n)
        elif node[0] == "not":
            walk(node[1])
        else:
            known(node[1])
            kind = schema[node[1]]
            lits = node[3:4] if node[0] == "cmp" else node[2]
            for lk, _ in lits:
                if lk == "null":
                    continue
                ok = {"datetime": ("datetime",), "date": ("date",), "bool": ("bool",), "int": ("number",)}.get(
                    kind, ("string",))
                if lk not in ok:
                    raise SoqlError(f"value of filter criterion for field '{node[1]}' must be of type {kind} and "
                                    "should not be enclosed in quotes" if lk == "string" else
                                    f"value of filter criterion for field '{node[1]}' must be of type {kind}",
                                    code="INVALID_QUERY_FILTER_OPERATOR")

    walk(query.where)


def lower_bound(node: Any) -> int | None:
    """The smallest SystemModstamp (ms) any row matching ``node`` can have; None = unbounded."""
    if node is None:
        return None
    if node[0] == "cmp":
        _, f, op, (lk, v) = node
        return v if f == "SystemModstamp" and lk == "datetime" and op in (">", ">=", "=") else None
    if node[0] == "and":
        bounds = [b for b in (lower_bound(n) for n in node[1]) if b is not None]
        return max(bounds) if bounds else None
    if node[0] == "or":
        bounds = [lower_bound(n) for n in node[1]]
        return None if any(b is None for b in bounds) else min(bounds)
    return None


def _compare(value: Any, op: str, lit: Any) -> bool:
    if op == "=":
        return value == lit
    if op == "!=":
        return value != lit
    if value is None or lit is None:
        return False
    return {"<": value < lit, "<=": value <= lit, ">": value > lit, ">=": value >= lit}[op]


def evaluate(node: Any, row: dict[str, Any]) -> bool:
    """Does ``row`` (field -> comparable value) satisfy ``node``?"""
    if node is None:
        return True
    kind = node[0]
    if kind == "and":
        return all(evaluate(n, row) for n in node[1])
    if kind == "or":
        return any(evaluate(n, row) for n in node[1])
    if kind == "not":
        return not evaluate(node[1], row)
    if kind == "in":
        return row.get(node[1]) in {_norm_lit(node[1], lit) for lit in node[2]}
    _, f, op, lit = node
    return _compare(row.get(f), op, _norm_lit(f, lit))


def _norm_lit(field: str, lit: tuple[str, Any]) -> Any:
    lk, v = lit
    if lk == "string" and field in ("Id", "WhoId", "OwnerId", "MasterRecordId", "ConvertedContactId"):
        return v[:15]  # 15- and 18-character ids name the same record
    return v


# --- the sandbox -----------------------------------------------------------------------------------

@dataclass
class Locator:
    sobject: str
    fields: list[str]
    nums: list[int]
    pos: int
    batch: int
    all_rows: bool
    expires: float


@dataclass
class QueryJob:
    id: str
    operation: str
    query: str
    sobject: str
    fields: list[str]
    recs: list[Rec]  # the rows as they were when the job ran (records are replaced, never mutated)
    created: int  # ms
    ready_at: float  # monotonic time the job completes (and not before its rows are selected)
    state: str = "UploadComplete"
    delimiter: str = ","
    line_ending: str = "\n"
    error: str | None = None  # set when the job is to fail (sandbox switch ``fail_next_job``)
    selected: threading.Event = field(default_factory=threading.Event)


@dataclass
class IngestJob:
    id: str
    operation: str
    sobject: str
    ext_field: str | None
    created: int  # ms
    delimiter: str = ","
    line_ending: str = "\n"
    state: str = "Open"
    uploads: list[bytes] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    ready_at: float = 0.0
    done: list[tuple[int, str, str | None]] = field(default_factory=list)  # (row, sf__Id, error or None) in
    created_rows: set[int] = field(default_factory=set)  # processing order; rows whose record was created
    unprocessed: list[int] = field(default_factory=list)
    error: str | None = None
    fail_with: tuple[str, int] | None = None  # sandbox switch: (errorMessage, rows processed before failing)

    @property
    def failed(self) -> int:
        return sum(1 for _, _, err in self.done if err is not None)


class SalesforceSandbox(Sandbox):
    name = "salesforce"
    tls = True
    unmetered_paths = frozenset({TOKEN_PATH})  # the login service, not the org's API allocation

    def __init__(self, *, size: int = 100, seed: int = 1, keep_alive: bool = False):
        # Idle keep-alive TLS connections hold up uvicorn's shutdown (it waits for the client's
        # close_notify, and SandboxServer.stop gives up after 10 s): by default each response closes
        # its connection. keep_alive=True is for long runs (the benchmark) that stop once.
        self.keep_alive = keep_alive
        self.daily_limit = DAILY_LIMIT
        self.locator_ttl_s = 15 * 60.0
        self.bulk_job_s = 0.05  # how long a Bulk 2.0 job runs before JobComplete
        self.session_lifetime_s = SESSION_LIFETIME_S
        # Issued sessions and when they end (epoch seconds); kept across resets, as the org's are.
        self.sessions: dict[str, float] = {}
        self.sessions_issued = 0
        super().__init__(size=size, seed=seed)

    # --- OAuth ------------------------------------------------------------------------------------
    def issue_session(self) -> str:
        token = f"{ORG_ID[:15]}!" + secrets.token_urlsafe(48)
        now = time.time()
        with self.lock:
            self.sessions = {t: end for t, end in self.sessions.items() if end > now - 600}
            self.sessions[token] = now + self.session_lifetime_s
            self.sessions_issued += 1
        return token

    def expire_sessions(self) -> int:
        """End every session issued so far (a timeout, or an admin revoking the app's sessions)."""
        now = time.time()
        with self.lock:
            for t in self.sessions:
                self.sessions[t] = min(self.sessions[t], now - 1)
            return len(self.sessions)

    def token(self, request: Request, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        header = request.headers.get("authorization", "")
        if header[:6].lower() == "basic ":
            try:
                client_id, _, secret = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                pass
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type", "error_description": "grant type not supported"}
        if not secrets.compare_digest(client_id.encode(), CLIENT_ID.encode()):
            return 400, {"error": "invalid_client_id", "error_description": "client identifier invalid"}
        if not secrets.compare_digest(secret.encode(), CLIENT_SECRET.encode()):
            return 400, {"error": "invalid_client", "error_description": "invalid client credentials"}
        token = self.issue_session()
        issued = str(int(time.time() * 1000))
        base = self.base_url or "https://omnisync-sandbox.my.salesforce.com"
        signature = base64.b64encode(hashlib.sha256(f"{base}{issued}{token}".encode()).digest()).decode()
        return 200, {"access_token": token, "signature": signature, "scope": "api",
                     "instance_url": base, "id": f"{base}/id/{ORG_ID}/{USER_IDS[0]}AAA",
                     "token_type": "Bearer", "issued_at": issued}

    # --- framework hooks ------------------------------------------------------------------------
    def credentials(self) -> dict[str, Any]:
        return {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "api_version": API_VERSION}

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("bearer", "oauth"):
            return False
        with self.lock:
            end = self.sessions.get(token.strip())
        return end is not None and end > time.time()

    def unauthorized(self) -> Response:
        return _json(ApiError(401, "INVALID_SESSION_ID", "Session expired or invalid").body(), 401)

    def rate_limited(self) -> Response:
        # Salesforce has no 429: a burst beyond the concurrent-request limit is refused as unavailable.
        return _json(ApiError(503, "SERVER_UNAVAILABLE", "Too many concurrent requests; try again later").body(), 503)

    def server_error(self) -> Response:
        return _json(ApiError(500, "UNKNOWN_EXCEPTION", "An unexpected error occurred. Please include this "
                              "ErrorId if you contact support: 1930502211-57201 (-1234567)").body(), 500)

    def quota_exhausted(self) -> Response:
        total = self._total()
        return _json(ApiError(403, "REQUEST_LIMIT_EXCEEDED",
                              f"TotalRequests Limit exceeded. Daily API request limit of {total} reached.").body(), 403)

    def response_headers(self) -> dict[str, str]:
        headers = {"Sforce-Limit-Info": f"api-usage={min(self.calls_used, self._total())}/{self._total()}"}
        if not self.keep_alive:
            headers["Connection"] = "close"
        return headers

    def _total(self) -> int:
        return self.faults.daily_quota if self.faults.daily_quota is not None else self.daily_limit

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, t in self.tables.items():
            live = deleted = merged = 0
            for _, num in t.by_ts(None):
                rec = t.get(num)
                if rec.deleted:
                    deleted += 1
                    merged += bool(rec.fields.get("MasterRecordId"))
                else:
                    live += 1
            out[name] = {"live": live, "deleted": deleted - merged, "merged": merged}
        out["calls_used"] = self.calls_used
        out["sessions_issued"] = self.sessions_issued
        return out

    # --- seeding --------------------------------------------------------------------------------
    def seed(self) -> None:
        n, s = self.size, self.seed_value
        self.locators: OrderedDict[str, Locator] = OrderedDict()
        self.jobs: dict[str, QueryJob] = {}
        self.ingest_jobs: dict[str, IngestJob] = {}
        self.pending: set[str] = set()  # closed ingest jobs not processed yet
        self.fail_next_job: tuple[str, int] | None = None  # (errorMessage, rows processed first)
        with self.lock:
            self.sessions[SESSION_ID] = time.time() + SESSION_LIFETIME_S
        self.job_seq = 0
        self.locator_seq = 0
        self._who_cache: dict[int, tuple[int, int]] = {}
        self.junk_at = {n * k // 5 + 3: JUNK_EMAILS[k - 1] for k in range(1, 5)} if n >= 50 else {}
        self.tables: dict[str, Table] = {}
        self.tasks_n = max(3, int(n * 0.4))
        self.leads_n = max(1, n // 5)
        for sobject, count, make in (("Account", len(COMPANIES), self._make_account), ("Contact", n, self._make_contact),
                                     ("Lead", self.leads_n, self._make_lead), ("Task", self.tasks_n, self._make_task)):
            t = Table(sobject, count, make)
            t.base = sorted((self._stamp(sobject, i), i + 1) for i in range(count))
            self.tables[sobject] = t
        top = max(t.base[-1][0] for t in self.tables.values() if t.base)
        # Seeded data runs a few days ahead of the wall clock: so must the org's clock, so that a change
        # made now is later than every seeded one.
        self.clock_offset = max(0, top // 1000 + 60 - _now_s())

    def now_ms(self) -> int:
        return (_now_s() + self.clock_offset) * 1000

    def _rng(self, sobject: str, i: int, salt: int = 0) -> random.Random:
        return random.Random((self.seed_value * 1_000_003 + i) * 41 + SALT[sobject] * 101 + salt)

    def _stamp(self, sobject: str, i: int) -> int:
        if sobject == "Account":
            # Accounts were set up before the people working there: never the latest change.
            r = random.Random(f"salesforce-account-stamp:{self.seed_value}:{i}")
            return int((EPOCH + timedelta(seconds=r.randrange(0, 86400 * 290))).timestamp()) * 1000
        if sobject == "Task":
            c = self._task_contact(i)
            if c is not None and self._contact_state(c) == "deleted":
                # Deleting a contact deletes its activities with it.
                return max(self._stamp("Contact", c), int(modstamp(i, self.seed_value, 300).timestamp()) * 1000)
        return int(modstamp(i, self.seed_value, SALT[sobject] + 300).timestamp()) * 1000

    def _who(self, i: int) -> tuple[int, int]:
        hit = self._who_cache.get(i)
        if hit is None:
            hit = contact_person("salesforce", i, self.size, self.seed_value)
            if len(self._who_cache) < 200_000:
                self._who_cache[i] = hit
        return hit

    def _original(self, i: int) -> int:
        pid, copy = self._who(i)
        while copy and i > 0:
            i -= 1
            p, copy = self._who(i)
            if p != pid:
                return i + 1
        return i

    def _contact_state(self, i: int) -> str:
        if i == 0:
            return "live"
        r = self._rng("Contact", i, 1).random()
        if self._who(i)[1]:
            orig = self._original(i)
            if r < 0.25 and orig != i and self._contact_state(orig) == "live":
                return "merged"
            return "live"
        return "deleted" if r < 0.01 else "live"

    def _make_contact(self, i: int) -> Rec:
        pid, copy = self._who(i)
        p = person(pid, self.seed_value)
        r = self._rng("Contact", i, 2)
        state = self._contact_state(i)
        created = int(p.created_at.timestamp()) * 1000 + (r.randrange(1, 86400 * 30) * 1000 if copy else 0)
        if i == 0:
            f: dict[str, Any] = {
                "FirstName": "Amara", "LastName": "Okafor", "Email": p.work_email, "MobilePhone": "+1 415-555-0142",
                "Phone": "(415) 555-0100", "Title": "Office Manager", "Birthdate": p.birth_date.isoformat(),
                "MailingStreet": p.street, "MailingCity": p.city, "MailingState": p.state,
                "MailingPostalCode": p.postcode, "MailingCountry": "United States", "LeadSource": "Webinar",
                "HasOptedOutOfEmail": False, "DoNotCall": False}
        else:
            first, last = p.first, p.last
            if copy and r.random() < 0.5:
                first = typo(first, r) if r.random() < 0.5 else first
                last = typo(last, r) if r.random() < 0.5 else last
            e = r.random()
            email = p.work_email if e < 0.7 else (p.personal_email if e < 0.9 else None)
            if copy and r.random() < 0.5:
                email = None
            email = self.junk_at.get(i, email)
            mobile = phone_variant(p.mobile, r) if r.random() < 0.7 else None
            if r.random() < 0.005:
                mobile = r.choice(JUNK_PHONES)
            f = {"FirstName": first, "LastName": last, "Email": email, "MobilePhone": mobile,
                 "Phone": phone_variant(p.switchboard, r) if r.random() < 0.5 else None,
                 "Title": r.choice(TITLES) if r.random() < 0.6 else None,
                 "Birthdate": p.birth_date.isoformat() if r.random() < 0.2 else None,
                 "MailingStreet": p.street if r.random() < 0.6 else None,
                 "MailingCity": p.city if r.random() < 0.8 else None,
                 "MailingState": p.state if r.random() < 0.8 else None,
                 "MailingPostalCode": p.postcode if r.random() < 0.7 else None,
                 "MailingCountry": r.choice(("US", "United States", "USA", None)),
                 "LeadSource": r.choice(LEAD_SOURCES) if r.random() < 0.5 else None,
                 "HasOptedOutOfEmail": r.random() < 0.04, "DoNotCall": r.random() < 0.02}
        f.update(self._custom_fields(i, pid))
        f.update({"AccountId": self._account_id(i, pid), "Omnisync_Golden_Id__c": None, "CreatedDate": created,
                  "MasterRecordId": sf_id("Contact", self._original(i) + 1) if state == "merged" else None})
        return Rec(i + 1, f, self._stamp("Contact", i), created, deleted=state != "live")

    def _make_account(self, i: int) -> Rec:
        name = COMPANIES[i]
        r = random.Random(f"salesforce-account:{self.seed_value}:{name}")
        city, state, zip3 = CITIES[0] if name == "Northwind Traders" else r.choice(CITIES)
        stamp = self._stamp("Account", i)
        created = stamp - r.randrange(0, 86400 * 60) * 1000
        f = {"Name": name, "Type": "Customer - Direct" if r.random() < 0.8 else "Customer - Channel",
             "Industry": INDUSTRIES.get(name), "Phone": f"+1{AREA[city]}5550{100 + i}",
             "Website": f"https://www.{name.lower().replace(' ', '')}.example",
             "BillingStreet": f"{r.randrange(100, 9999)} {r.choice(('Market St', 'Commerce Way', 'Industrial Pkwy', 'Main St'))}",
             "BillingCity": city, "BillingState": state, "BillingPostalCode": f"{zip3}{r.randrange(0, 100):02d}",
             "BillingCountry": "United States", "NumberOfEmployees": r.choice((40, 120, 350, 900, 2500, 12000)),
             "MasterRecordId": None, "CreatedDate": created}
        return Rec(i + 1, f, stamp, created)

    def _account_id(self, i: int, pid: int) -> str | None:
        """The contact's employer, from a random stream of the person's own (duplicates agree)."""
        if i != 0 and random.Random(f"salesforce-account-of:{self.seed_value}:{pid}").random() < PRIVATE_CONTACTS:
            return None
        return sf_id("Account", COMPANIES.index(person(pid, self.seed_value).company) + 1)

    def _custom_fields(self, i: int, pid: int) -> dict[str, Any]:
        """The org's custom fields, drawn apart from the standard ones so adding them changed no one else.
        The tier belongs to the person (duplicates agree); most customers have one, more of the lower
        tiers. The heroine is a Gold customer who has not opted out of SMS in Salesforce."""
        if i == 0:
            return {"Customer_Tier__c": "Gold", "Omnisync_Sms_Opt_Out__c": False}
        t = random.Random(f"salesforce-tier:{self.seed_value}:{pid}")
        tier = t.choices(TIERS, weights=(5, 15, 30, 50))[0] if t.random() < 0.7 else None
        return {"Customer_Tier__c": tier, "Omnisync_Sms_Opt_Out__c": self._rng("Contact", i, 5).random() < 0.03}

    def _make_lead(self, k: int) -> Rec:
        # Leads are prospects Salesforce holds as no contact: the people only HubSpot also knows.
        pid = self.size + 7 + 10 * k
        p = person(pid, self.seed_value)
        r = self._rng("Lead", k, 2)
        created = int(p.created_at.timestamp()) * 1000
        f = {"FirstName": p.first, "LastName": p.last, "Email": p.personal_email if r.random() < 0.85 else None,
             "Phone": None, "MobilePhone": phone_variant(p.mobile, r) if r.random() < 0.6 else None,
             "Company": p.company if r.random() < 0.7 else "[not provided]", "Title": None,
             "Street": None, "City": p.city if r.random() < 0.5 else None, "State": p.state, "PostalCode": None,
             "Country": "US", "Status": r.choice(PICKLISTS[("Lead", "Status")][:2]),
             "LeadSource": r.choice(LEAD_SOURCES), "HasOptedOutOfEmail": r.random() < 0.05, "DoNotCall": False,
             "IsConverted": False, "ConvertedContactId": None, "Omnisync_Golden_Id__c": None, "MasterRecordId": None,
             "CreatedDate": created}
        return Rec(k + 1, f, self._stamp("Lead", k), created, deleted=r.random() < 0.01)

    def _task_contact(self, k: int) -> int | None:
        if k < 2:
            return 0
        return self._rng("Task", k, 3).randrange(self.size)

    def _make_task(self, k: int) -> Rec:
        r = self._rng("Task", k, 4)
        ci = self._task_contact(k)
        ts = self._stamp("Task", k)
        state = self._contact_state(ci)
        who = self._original(ci) if state == "merged" else ci  # a merge re-parents the loser's activities
        topic = r.choice(TOPICS)
        if k == 0:
            when = int(datetime(2026, 10, 28, 16, 5, tzinfo=timezone.utc).timestamp()) * 1000
            f: dict[str, Any] = {"Subject": "Call: onboarding check-in", "TaskSubtype": "Call", "CallType": "Outbound",
                                 "CallDurationInSeconds": 540, "CallDisposition": "Connected",
                                 "Description": "Walked Amara through the new billing portal; she asked about "
                                                "refunds for damaged items."}
        elif k == 1:
            when = int(datetime(2026, 11, 4, 9, 30, tzinfo=timezone.utc).timestamp()) * 1000
            f = {"Subject": "Call: refund follow-up", "TaskSubtype": "Call", "CallType": "Outbound",
                 "CallDurationInSeconds": 0, "CallDisposition": "Left voicemail",
                 "Description": "Left a voicemail confirming the refund for order 88412."}
        else:
            when = ts - r.randrange(0, 3600) * 1000
            kind = r.random()
            if kind < 0.55:
                disp = r.choice(DISPOSITIONS)
                f = {"Subject": f"Call about {topic}", "TaskSubtype": "Call",
                     "CallType": "Inbound" if r.random() < 0.6 else "Outbound",
                     "CallDurationInSeconds": r.randrange(30, 1800) if disp == "Connected" else 0,
                     "CallDisposition": disp, "Description": f"Customer called about {topic}."}
            elif kind < 0.9:
                f = {"Subject": f"Email: Re: {topic}", "TaskSubtype": "Email", "CallType": None,
                     "CallDurationInSeconds": None, "CallDisposition": None, "Description": f"About {topic}."}
            else:
                f = {"Subject": f"Follow up on {topic}", "TaskSubtype": "Task", "CallType": None,
                     "CallDurationInSeconds": None, "CallDisposition": None, "Description": None}
        when = min(when, ts)
        f.update({"WhoId": sf_id("Contact", who + 1), "OwnerId": r.choice(USER_IDS),
                  "ActivityDate": time.strftime("%Y-%m-%d", time.gmtime(when // 1000)), "Status": "Completed",
                  "Priority": "Normal", "Omnisync_Interaction_Id__c": None, "Omnisync_Started_At__c": None,
                  "CreatedDate": when})
        return Rec(k + 1, f, ts, when, deleted=state == "deleted")

    # --- rendering --------------------------------------------------------------------------------
    def render(self, sobject: str, rec: Rec, fields: list[str] | None = None) -> dict[str, Any]:
        """A record as REST returns it; a relationship field (``Account.Name``) as a nested object
        carrying its own ``attributes``, or ``null`` when the lookup is empty."""
        sid = sf_id(sobject, rec.num)
        full = {"Id": sid, **rec.fields, "IsDeleted": rec.deleted, "LastModifiedDate": rec.ts,
                "SystemModstamp": rec.ts}
        out: dict[str, Any] = {"attributes": {"type": sobject,
                                              "url": f"/services/data/v{API_VERSION}/sobjects/{sobject}/{sid}"}}
        for f in fields if fields is not None else list(SCHEMA[sobject]):
            if "." in f:
                rel, sub = f.split(".", 1)
                parent = self._parent(sobject, rel, full)
                if parent is None:
                    out[rel] = None
                else:
                    target = RELATIONSHIPS[(sobject, rel)][1]
                    out[rel] = out.get(rel) or self.render(target, parent, [])
                    out[rel][sub] = self.render(target, parent, [sub])[sub]
                continue
            v = full.get(f)
            out[f] = sf_datetime(v) if SCHEMA[sobject][f] == "datetime" and v is not None else v
        return out

    def _parent(self, sobject: str, rel: str, full: dict[str, Any]) -> Rec | None:
        fk, target = RELATIONSHIPS[(sobject, rel)]
        ref = parse_id(full.get(fk) or "")
        parent = self.tables[target].get(ref[1]) if ref and ref[0] == target else None
        return None if parent is None or parent.deleted else parent

    def _row(self, sobject: str, rec: Rec) -> dict[str, Any]:
        """Comparable values for WHERE evaluation (ids shortened to 15 characters)."""
        row = {"Id": sf_id(sobject, rec.num)[:15], **rec.fields, "IsDeleted": rec.deleted,
               "LastModifiedDate": rec.ts, "SystemModstamp": rec.ts}
        for f, kind in SCHEMA[sobject].items():
            if kind == "ref" and row.get(f):
                row[f] = row[f][:15]
            elif kind == "int" and row.get(f) is not None:
                row[f] = float(row[f])
        return row

    # --- queries ----------------------------------------------------------------------------------
    def query(self, q: str, *, all_rows: bool, batch: int) -> dict[str, Any]:
        query = parse_soql(q)
        _check_fields(query)
        t = self.tables[query.sobject]
        by_index = all(f in ("SystemModstamp", "LastModifiedDate", "Id") and not d for f, d in query.order[:1]) and \
            all(f == "Id" and not d for f, d in query.order[1:]) and \
            (not query.order or query.order[0][0] != "Id")
        nums: list[int] = []
        for ts, num in t.by_ts(lower_bound(query.where)):
            rec = t.get(num)
            if rec is None or (rec.deleted and not all_rows):
                continue
            if evaluate(query.where, self._row(query.sobject, rec)):
                nums.append(num)
                if by_index and query.limit is not None and len(nums) >= query.limit:
                    break
        if not by_index:
            for f, desc in reversed(query.order):
                nums.sort(key=lambda n: _sort_key(self._row(query.sobject, t.get(n)).get(f)), reverse=desc)
        if query.limit is not None:
            nums = nums[:query.limit]
        loc = Locator(query.sobject, query.fields, nums, 0, batch, all_rows, time.monotonic() + self.locator_ttl_s)
        return self._page(loc, None)

    def _page(self, loc: Locator, key: str | None) -> dict[str, Any]:
        t = self.tables[loc.sobject]
        part = loc.nums[loc.pos:loc.pos + loc.batch]
        records = []
        for num in part:
            rec = t.get(num)
            records.append(self.render(loc.sobject, rec, loc.fields))
        loc.pos += len(part)
        out: dict[str, Any] = {"totalSize": len(loc.nums), "done": loc.pos >= len(loc.nums), "records": records}
        if key is not None:
            self.locators.pop(key, None)
        if not out["done"]:
            self.locator_seq += 1
            base = f"01gDn{self.locator_seq:012d}"
            key = f"{base}-{loc.pos}"
            self.locators[key] = loc
            while len(self.locators) > MAX_LOCATORS:
                self.locators.popitem(last=False)
            kind = "queryAll" if loc.all_rows else "query"
            out["nextRecordsUrl"] = f"/services/data/v{API_VERSION}/{kind}/{key}"
        return out

    def query_more(self, key: str) -> dict[str, Any]:
        loc = self.locators.get(key)
        if loc is None or loc.expires < time.monotonic():
            self.locators.pop(key, None)
            raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._page(loc, key)

    # --- Bulk API 2.0 query jobs ----------------------------------------------------------------------
    def _select(self, query: Query, *, all_rows: bool) -> list[int]:
        t = self.tables[query.sobject]
        nums = []
        for _, num in t.by_ts(lower_bound(query.where)):
            rec = t.get(num)
            if rec is None or (rec.deleted and not all_rows):
                continue
            if evaluate(query.where, self._row(query.sobject, rec)):
                nums.append(num)
        return nums

    def create_query_job(self, body: Any) -> QueryJob:
        if not isinstance(body, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        op = body.get("operation")
        if op not in ("query", "queryAll"):
            raise ApiError(400, "INVALIDJOB", f"InvalidJob : operation must be query or queryAll, not "
                           f"{str(op)[:20]!r}")
        delim, ending = _csv_format(body)
        q = body.get("query")
        if not isinstance(q, str) or not q.strip():
            raise ApiError(400, "INVALIDJOB", "InvalidJob : a query job needs a query")
        query = parse_soql(q)
        _check_fields(query)
        fail = self.fail_next_job
        self.fail_next_job = None
        job = QueryJob(id=self._job_id(), operation=op, query=q, sobject=query.sobject,
                       fields=query.fields, recs=[], created=self.now_ms(),
                       ready_at=time.monotonic() + self.bulk_job_s, delimiter=delim, line_ending=ending,
                       error=fail[0] if fail else None)
        self.jobs[job.id] = job
        # Salesforce answers at once and runs the query afterwards: selecting a million rows
        # inside the request made the create call outlast any client timeout.
        threading.Thread(target=self._select_job_rows, args=(job, query), daemon=True,
                         name=f"query-job-{job.id}").start()
        return job

    def _select_job_rows(self, job: QueryJob, query: Any) -> None:
        try:
            t = self.tables[query.sobject]
            nums = self._select(query, all_rows=job.operation == "queryAll")
            if query.order:
                for f, desc in reversed(query.order):
                    nums.sort(key=lambda n: _sort_key(self._row(query.sobject, t.get(n)).get(f)), reverse=desc)
            else:
                nums.sort()  # PK chunking: Id ranges, not modification order
            if query.limit is not None:
                nums = nums[:query.limit]
            job.recs = [t.get(num) for num in nums]
        except Exception as e:  # the job fails, as Salesforce reports a query that fails while running
            job.error = job.error or f"{type(e).__name__}: {e}"[:200]
        finally:
            job.selected.set()

    def _job_id(self) -> str:
        """A job id (key prefix 750), query and ingest jobs numbered in one sequence."""
        self.job_seq += 1
        digits = ""
        n = self.job_seq
        for _ in range(9):
            n, r = divmod(n, 62)
            digits = _B62[r] + digits
        return f"{BULK_JOB_TYPE}Dn0{digits}AAA"

    def job(self, job_id: str) -> QueryJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        if job.state in ("UploadComplete", "InProgress"):
            if time.monotonic() < job.ready_at or not job.selected.is_set():
                job.state = "InProgress"
            else:
                job.state = "Failed" if job.error else "JobComplete"
        return job

    def job_info(self, job: QueryJob) -> dict[str, Any]:
        done = job.state == "JobComplete"
        return {"id": job.id, "operation": job.operation, "object": job.sobject, "createdById": USER_IDS[0],
                "createdDate": sf_datetime(job.created), "systemModstamp": sf_datetime(job.created),
                "state": job.state, "concurrencyMode": "Parallel", "contentType": "CSV",
                "apiVersion": float(API_VERSION), "jobType": "V2Query", "lineEnding":
                    "LF" if job.line_ending == "\n" else "CRLF",
                "columnDelimiter": {v: k for k, v in DELIMITERS.items()}[job.delimiter],
                "numberRecordsProcessed": len(job.recs) if done else 0, "retries": 0,
                "totalProcessingTime": int(self.bulk_job_s * 1000) if done else 0,
                **({"errorMessage": job.error} if job.state == "Failed" else {})}

    def job_results(self, job_id: str, locator: str | None, max_records: str | None) -> tuple[str, str, int]:
        """(CSV, next locator or "null", rows in this page) of a completed query job."""
        job = self.job(job_id)
        if job.state != "JobComplete":
            raise ApiError(400, "INVALIDJOBSTATE", f"Job {job.id} is not complete (state {job.state})")
        try:
            size = BULK_RESULTS_DEFAULT if max_records in (None, "") else int(max_records)
        except ValueError:
            size = 0
        if size <= 0:
            raise ApiError(400, "INVALIDMAXRECORDS", "maxRecords must be a positive integer")
        start = 0
        if locator not in (None, ""):
            try:
                start = int(base64.b64decode(locator.encode(), validate=True).decode())
            except ValueError:
                start = -1
            if not 0 < start <= len(job.recs):
                raise ApiError(400, "INVALIDLOCATOR", f"Invalid locator: {locator[:40]}")
        part = job.recs[start:start + size]
        out = io.StringIO()
        w = csv.writer(out, delimiter=job.delimiter, lineterminator=job.line_ending, quoting=csv.QUOTE_ALL)
        w.writerow(job.fields)
        for rec in part:
            row = self.render(job.sobject, rec, job.fields)
            w.writerow([_csv_value(_kind(job.sobject, f), _dig(row, f)) for f in job.fields])
        end = start + len(part)
        nxt = base64.b64encode(str(end).encode()).decode() if end < len(job.recs) else "null"
        return out.getvalue(), nxt, len(part)

    # --- Bulk API 2.0 ingest jobs ---------------------------------------------------------------------
    def create_ingest_job(self, body: Any) -> IngestJob:
        if not isinstance(body, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        op = body.get("operation")
        if op == "hardDelete":
            raise ApiError(400, "INVALIDJOB", "InvalidJob : hardDelete requires the Bulk API Hard Delete user "
                           "permission")
        if op not in INGEST_OPERATIONS:
            raise ApiError(400, "INVALIDJOB", f"InvalidJob : operation must be one of {', '.join(INGEST_OPERATIONS)}, "
                           f"not {str(op)[:20]!r}")
        sobject = body.get("object")
        if sobject not in SCHEMA:
            raise ApiError(400, "INVALIDJOB", f"InvalidJob : Unable to find object: {str(sobject)[:40]}")
        ext = body.get("externalIdFieldName")
        if op == "upsert":
            if not ext:
                raise ApiError(400, "INVALIDJOB", "InvalidJob : External ID field is required for upsert")
            if ext != "Id" and ext not in EXTERNAL_IDS[sobject]:
                raise ApiError(400, "INVALIDJOB", f"InvalidJob : Field name provided, {str(ext)[:40]} is not an "
                               f"External ID or indexed field for {sobject}")
        delim, ending = _csv_format(body)
        job = IngestJob(id=self._job_id(), operation=op, sobject=sobject, ext_field=ext if op == "upsert" else None,
                        created=self.now_ms(), delimiter=delim, line_ending=ending, fail_with=self.fail_next_job)
        self.fail_next_job = None
        self.ingest_jobs[job.id] = job
        return job

    def ingest_job(self, job_id: str) -> IngestJob:
        job = self.ingest_jobs.get(job_id)
        if job is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        self._advance(job)
        return job

    def advance_jobs(self) -> None:
        """Salesforce processes closed jobs whether or not anyone asks: run those whose time has come."""
        for job_id in list(self.pending):
            self._advance(self.ingest_jobs[job_id])

    def _advance(self, job: IngestJob) -> None:
        if job.state in ("UploadComplete", "InProgress"):
            if time.monotonic() < job.ready_at:
                job.state = "InProgress"
            else:
                self.pending.discard(job.id)
                self._process(job)

    def upload(self, job_id: str, content_type: str, data: bytes) -> None:
        job = self.ingest_job(job_id)
        if job.state != "Open":
            raise ApiError(400, "INVALIDJOBSTATE", f"Job {job.id} is not open for data upload (state {job.state})")
        if not content_type.lower().startswith("text/csv"):
            raise ApiError(400, "INVALIDJOB", "InvalidJob : job data must be sent as text/csv")
        job.uploads.append(data)

    def set_ingest_state(self, job_id: str, body: Any) -> IngestJob:
        job = self.ingest_job(job_id)
        state = (body or {}).get("state") if isinstance(body, dict) else None
        if state == "UploadComplete":
            if job.state != "Open":
                raise ApiError(400, "INVALIDJOBSTATE", f"Job {job.id} is {job.state}: only an Open job can be closed")
            if len(job.uploads) > 1:
                raise ApiError(400, "INVALIDJOB", f"Found multipe contents for job: <{job.id}>, please 'Close' / "
                               "'Abort' / 'Delete' the current Job then create a new Job and make sure you only do "
                               "'PUT' once on a given Job.")
            job.state = "UploadComplete"
            job.ready_at = time.monotonic() + self.bulk_job_s
            self.pending.add(job.id)
        elif state == "Aborted":
            if job.state not in ("Open", "UploadComplete", "InProgress"):
                raise ApiError(400, "INVALIDJOBSTATE", f"Job {job.id} is already {job.state}")
            self.pending.discard(job.id)
            self._parse(job)
            job.unprocessed = list(range(len(job.rows)))
            job.state = "Aborted"
        else:
            raise ApiError(400, "INVALIDJOBSTATE", f"an ingest job can be set to UploadComplete or Aborted, not "
                           f"{str(state)[:20]!r}")
        return job

    def delete_ingest_job(self, job_id: str) -> None:
        job = self.ingest_job(job_id)
        if job.state in ("Open", "InProgress"):
            raise ApiError(400, "INVALIDJOBSTATE", f"Job {job.id} is {job.state}: abort it or wait for it to finish")
        del self.ingest_jobs[job.id]

    def _parse(self, job: IngestJob) -> str | None:
        """Read the uploaded CSV into ``job.columns``/``job.rows``; the job-level error, if any."""
        if job.columns or not job.uploads:
            return None if job.columns else "InvalidBatch : No data was uploaded for this job"
        try:
            text = job.uploads[0].decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError:
            return "InvalidBatch : The job data is not valid UTF-8"
        first = text.split("\n", 1)[0]
        if job.line_ending == "\n" and first.endswith("\r"):
            return "ClientInputError : LineEnding is invalid on user data. Current LineEnding setting is LF"
        try:
            rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=job.delimiter, strict=True) if r]
        except csv.Error as e:
            return f"InvalidBatch : The CSV data could not be parsed: {str(e)[:80]}"
        if not rows:
            return "InvalidBatch : No data was uploaded for this job"
        header, body = rows[0], rows[1:]
        job.columns = header
        job.rows = body
        for col in header:
            if col not in SCHEMA[job.sobject]:
                return f"InvalidBatch : Field name not found : {col[:80]}"
        if len(set(header)) != len(header):
            return "InvalidBatch : Duplicate field name in the header row"
        if job.operation == "delete" and header != ["Id"]:
            return "InvalidBatch : The 'delete' batch must contain only 'Id' field"
        for n, row in enumerate(body, start=2):
            if len(row) != len(header):
                return f"InvalidBatch : Row {n} has {len(row)} fields where the header has {len(header)}"
        return None

    def _process(self, job: IngestJob) -> None:
        """Run a closed job: rows in chunks of 200 (one transaction each), chunks in no particular
        order, as Salesforce's parallel processing returns them."""
        error = self._parse(job)
        if error is not None:
            job.state, job.error = "Failed", error
            job.unprocessed = list(range(len(job.rows)))
            return
        starts = list(range(0, len(job.rows), INGEST_CHUNK))
        random.Random(job.id).shuffle(starts)
        limit = job.fail_with[1] if job.fail_with else None
        key = "Id" if job.operation in ("update", "delete") or job.ext_field == "Id" else job.ext_field
        pos = job.columns.index(key) if key in job.columns else None
        for start in starts:
            part = range(start, min(start + INGEST_CHUNK, len(job.rows)))
            seen: dict[str, int] = {}
            for i in part:
                if pos is not None and job.rows[i][pos] not in ("", "#N/A"):
                    seen[job.rows[i][pos]] = seen.get(job.rows[i][pos], 0) + 1
            for i in part:
                if limit is not None and len(job.done) >= limit:
                    job.unprocessed.append(i)
                    continue
                values = dict(zip(job.columns, job.rows[i]))
                target = parse_id(values.get("Id") or "")
                sid = sf_id(*target) if target and target[0] == job.sobject else ""
                try:
                    if pos is not None and seen.get(job.rows[i][pos], 0) > 1:
                        # One transaction cannot write one key twice.
                        raise ApiError(400, "DUPLICATE_EXTERNAL_ID" if key != "Id" else "DUPLICATE_ID",
                                       f"Duplicate {'external id' if key != 'Id' else 'id'} specified: "
                                       f"{job.rows[i][pos][:40]}", [key])
                    sid, created = self._ingest_row(job, values)
                except ApiError as e:
                    job.done.append((i, sid, _bulk_error(e)))
                    continue
                job.done.append((i, sid, None))
                if created:
                    job.created_rows.add(i)
        job.unprocessed.sort()
        if job.fail_with:
            job.state, job.error = "Failed", job.fail_with[0]
        else:
            job.state = "JobComplete"

    def _ingest_row(self, job: IngestJob, values: dict[str, str]) -> tuple[str, bool]:
        """Write one CSV row as the REST calls would; (sf__Id, created). An empty cell leaves the field
        as it is, ``#N/A`` clears it."""
        typed: dict[str, Any] = {}
        for name, v in values.items():
            if v == "":
                continue
            if v == "#N/A":
                typed[name] = None
            elif SCHEMA[job.sobject][name] == "bool":
                flag = {"true": True, "1": True, "false": False, "0": False}.get(v.strip().lower())
                if flag is None:
                    raise ApiError(400, "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{name}: value not of required type: "
                                   f"{v[:40]}", [name])
                typed[name] = flag
            else:
                typed[name] = v
        rec = {"attributes": {"type": job.sobject}, **typed}
        op, ext = job.operation, job.ext_field
        if op == "delete":
            res = self.delete_collection([str(typed.get("Id") or "")], False)[0]
            if not res["success"]:
                err = res["errors"][0]
                raise ApiError(400, err["statusCode"], err["message"], err["fields"])
            return res["id"], False
        if op == "update" or (op == "upsert" and ext == "Id" and typed.get("Id")):
            if not typed.get("Id"):
                raise ApiError(400, "MISSING_ARGUMENT", "Id not specified in an update call", [])
            return self._one("PATCH", rec, None, None)["id"], False
        if op == "insert" or ext == "Id":
            return self._one("POST", rec, job.sobject, None)["id"], True
        if not typed.get(ext):
            raise ApiError(400, "MISSING_ARGUMENT", f"{ext} not specified", [])
        res = self._one("PATCH", rec, job.sobject, ext)
        return res["id"], bool(res.get("created"))

    def ingest_info(self, job: IngestJob) -> dict[str, Any]:
        processed = len(job.done)
        info: dict[str, Any] = {
            "id": job.id, "operation": job.operation, "object": job.sobject, "createdById": USER_IDS[0],
            "createdDate": sf_datetime(job.created), "systemModstamp": sf_datetime(job.created), "state": job.state}
        if job.ext_field:
            info["externalIdFieldName"] = job.ext_field
        info.update({
            "concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": float(API_VERSION),
            "jobType": "V2Ingest", "contentUrl": f"services/data/v{API_VERSION}/jobs/ingest/{job.id}/batches",
            "lineEnding": "LF" if job.line_ending == "\n" else "CRLF",
            "columnDelimiter": {v: k for k, v in DELIMITERS.items()}[job.delimiter],
            "numberRecordsProcessed": processed, "numberRecordsFailed": job.failed, "retries": 0,
            "totalProcessingTime": processed // 10, "apiActiveProcessingTime": processed // 20,
            "apexProcessingTime": 0})
        if job.state == "Failed":
            info["errorMessage"] = job.error
        return info

    def ingest_results(self, job_id: str, kind: str) -> str:
        """successfulResults, failedResults or unprocessedrecords of a finished job, as CSV: Salesforce's
        columns first, then the uploaded row as it was sent (header names unquoted, values quoted)."""
        job = self.ingest_job(job_id)
        if job.state in ("Open", "UploadComplete", "InProgress"):
            raise ApiError(400, "INVALIDJOBSTATE", f"Job {job.id} is not finished (state {job.state})")
        d, le = job.delimiter, job.line_ending
        out = io.StringIO()
        w = csv.writer(out, delimiter=d, lineterminator=le, quoting=csv.QUOTE_ALL)
        head = d.join(job.columns)
        kind = kind.lower()
        if kind == "successfulresults":
            out.write(d.join(['"sf__Id"', '"sf__Created"'] + ([head] if head else [])) + le)
            for i, sid, err in job.done:
                if err is None:
                    w.writerow([sid, "true" if i in job.created_rows else "false", *job.rows[i]])
        elif kind == "failedresults":
            out.write(d.join(['"sf__Id"', '"sf__Error"'] + ([head] if head else [])) + le)
            for i, sid, err in job.done:
                if err is not None:
                    w.writerow([sid, err, *job.rows[i]])
        else:
            out.write(head + le)
            for i in job.unprocessed:
                w.writerow(job.rows[i])
        return out.getvalue()

    # --- writes -----------------------------------------------------------------------------------
    def _clean(self, sobject: str, values: dict[str, Any], *, creating: bool) -> dict[str, Any]:
        schema = SCHEMA[sobject]
        out: dict[str, Any] = {}
        for name, v in values.items():
            if name in ("attributes", "Id"):
                continue
            kind = schema.get(name)
            if kind is None:
                raise ApiError(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {sobject}", [name])
            if name in READ_ONLY:
                raise ApiError(400, "INVALID_FIELD_FOR_INSERT_UPDATE",
                               f"Unable to create/update fields: {name}. Please check the security settings of this "
                               "field and verify that it is read/write for your profile or permission set.", [name])
            if v is None or v == "":
                out[name] = False if kind == "bool" else None
                continue
            if kind == "email":
                if not isinstance(v, str) or not _EMAIL_RE.match(v.strip()):
                    raise ApiError(400, "INVALID_EMAIL_ADDRESS", f"{name}: invalid email address: {v}", [name])
                v = v.strip()
            elif kind == "bool":
                if not isinstance(v, bool):
                    raise ApiError(400, "JSON_PARSER_ERROR", f"Cannot deserialize instance of boolean from "
                                   f"{type(v).__name__} value for {name}", [name])
            elif kind == "int":
                try:
                    v = int(v)
                except (TypeError, ValueError):
                    raise ApiError(400, "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{name}: value not of required type",
                                   [name]) from None
            elif kind == "datetime":
                ms = parse_datetime_ms(v)
                if ms is None:
                    raise ApiError(400, "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{name}: value not of required type: "
                                   "expected an ISO 8601 datetime with an offset", [name])
                v = ms
            elif kind == "date":
                if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(v)):
                    raise ApiError(400, "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{name}: value not of required type: "
                                   "expected YYYY-MM-DD", [name])
            elif kind == "ref":
                target = parse_id(str(v))
                if target is None or self.tables[target[0]].get(target[1]) is None or \
                        self.tables[target[0]].get(target[1]).deleted:
                    raise ApiError(400, "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id", [name])
                v = sf_id(*target)
            else:
                v = str(v)
                if len(v) > (32_000 if name == "Description" else 255):
                    raise ApiError(400, "STRING_TOO_LONG", f"{name}: data value too large", [name])
            if (sobject, name) in PICKLISTS and v not in PICKLISTS[(sobject, name)]:
                raise ApiError(400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                               f"{name}: bad value for restricted picklist field", [name])
            out[name] = v
        if creating:
            missing = [f for f in REQUIRED[sobject] if not out.get(f)]
            if missing:
                raise ApiError(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]",
                               missing)
        return out

    def _unique(self, sobject: str, values: dict[str, Any], num: int | None) -> None:
        t = self.tables[sobject]
        for f in UNIQUE.get(sobject, ()):
            v = values.get(f)
            if v:
                others = t.external_index(f).get(v, set()) - {num}
                if others:
                    raise ApiError(400, "DUPLICATE_VALUE", f"duplicate value found: {f} duplicates value on record "
                                   f"with id: {sf_id(sobject, min(others))}", [f])

    def create(self, sobject: str, values: dict[str, Any]) -> Rec:
        t = self.tables[sobject]
        clean = self._clean(sobject, values, creating=True)
        self._unique(sobject, clean, None)
        now = self.now_ms()
        fields = {f: (False if k == "bool" else None) for f, k in SCHEMA[sobject].items()
                  if f not in ("Id", "IsDeleted", "LastModifiedDate", "SystemModstamp")}
        if sobject == "Task":
            fields.update({"Status": "Not Started", "Priority": "Normal"})
        fields.update(clean)
        fields["CreatedDate"] = now
        num = t.next_num
        t.next_num += 1
        rec = Rec(num, fields, now, now)
        t.put(rec)
        return rec

    def update(self, sobject: str, num: int, values: dict[str, Any]) -> Rec:
        t = self.tables[sobject]
        old = t.get(num)
        if old is None or old.deleted:
            raise ApiError(404, "ENTITY_IS_DELETED" if old is not None else "NOT_FOUND",
                           "entity is deleted" if old is not None else "The requested resource does not exist", [])
        clean = self._clean(sobject, values, creating=False)
        self._unique(sobject, clean, num)
        # A save always bumps SystemModstamp, even when no value changed (as Salesforce does).
        rec = Rec(num, {**old.fields, **clean}, self.now_ms(), old.created)
        t.put(rec)
        return rec

    def delete(self, sobject: str, num: int, *, master: str | None = None) -> bool:
        t = self.tables[sobject]
        old = t.get(num)
        if old is None or old.deleted:
            return False
        now = self.now_ms()
        t.put(Rec(num, {**old.fields, "MasterRecordId": master} if master else dict(old.fields), now, old.created,
                  deleted=True))
        if sobject == "Contact":
            tasks = self.tables["Task"]
            sid = sf_id("Contact", num)
            for _, tnum in list(tasks.by_ts(None)):
                task = tasks.get(tnum)
                if not task.deleted and task.fields.get("WhoId") == sid:
                    if master:
                        tasks.put(Rec(tnum, {**task.fields, "WhoId": master}, now, task.created))
                    else:
                        tasks.put(Rec(tnum, dict(task.fields), now, task.created, deleted=True))
        return True

    def merge(self, master: str, losers: list[str]) -> Rec:
        """Merge contacts as a user does: the master keeps its id and fills its blanks from the losers,
        which are deleted with ``MasterRecordId`` set; their activities move to the master."""
        m = parse_id(master)
        t = self.tables["Contact"]
        if m is None or m[0] != "Contact" or t.get(m[1]) is None or t.get(m[1]).deleted:
            raise ApiError(400, "INVALID_ID_FIELD", "master record id is not a live contact")
        fields = dict(t.get(m[1]).fields)
        for lid in losers:
            loser = parse_id(lid)
            if loser is None or loser[0] != "Contact" or loser[1] == m[1]:
                raise ApiError(400, "INVALID_ID_FIELD", "merged record id is not another contact")
            rec = t.get(loser[1])
            if rec is None or rec.deleted:
                raise ApiError(400, "ENTITY_IS_DELETED", "merged record is deleted")
            for k, v in rec.fields.items():
                if fields.get(k) in (None, "") and v not in (None, "") and k not in EXTERNAL_IDS["Contact"]:
                    fields[k] = v
            self.delete("Contact", loser[1], master=sf_id("Contact", m[1]))
        rec = Rec(m[1], fields, self.now_ms(), t.get(m[1]).created)
        t.put(rec)
        return rec

    def collection(self, method: str, body: Any, sobject_path: str | None = None,
                   ext_field: str | None = None) -> list[dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be an object with a records array")
        records = body["records"]
        if len(records) > COLLECTION_MAX:
            raise ApiError(400, "EXCEEDED_ID_LIMIT", f"record limit reached. cannot submit more than "
                           f"{COLLECTION_MAX} records into this call")
        all_or_none = bool(body.get("allOrNone", False))
        if sobject_path is not None:
            if sobject_path not in SCHEMA:
                raise ApiError(404, "NOT_FOUND", f"The requested resource does not exist")
            if ext_field not in EXTERNAL_IDS[sobject_path]:
                raise ApiError(404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: "
                               f"{ext_field}")
        snapshot = {name: (dict(t.over), list(t.delta), t.next_num,
                           {k: {v: set(n) for v, n in idx.items()} for k, idx in t.ext.items()})
                    for name, t in self.tables.items()} if all_or_none else None
        results = []
        for rec in records:
            try:
                results.append(self._one(method, rec, sobject_path, ext_field))
            except ApiError as e:
                results.append({"id": None, "success": False,
                                "errors": [{"statusCode": e.code, "message": e.message, "fields": e.fields or []}]})
        if all_or_none and any(not r["success"] for r in results):
            for name, (over, delta, nxt, ext) in snapshot.items():
                t = self.tables[name]
                t.over, t.delta, t.next_num, t.ext = over, delta, nxt, ext
            results = [r if not r["success"] else
                       {"id": None, "success": False, "errors": [{"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                                                                  "message": "Record rolled back because not all "
                                                                             "records were valid and the request "
                                                                             "was using AllOrNone header",
                                                                  "fields": []}]}
                       for r in results]
        return results

    def _one(self, method: str, rec: Any, sobject_path: str | None, ext_field: str | None) -> dict[str, Any]:
        if not isinstance(rec, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "each record must be an object")
        sobject = (rec.get("attributes") or {}).get("type")
        if sobject not in SCHEMA:
            raise ApiError(400, "INVALID_TYPE", "Must send a concrete entity type (attributes.type)")
        if sobject_path is not None and sobject != sobject_path:
            raise ApiError(400, "INVALID_TYPE", f"records must all be of type {sobject_path}")
        if method == "POST":
            if rec.get("Id"):
                raise ApiError(400, "INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])
            made = self.create(sobject, rec)
            return {"id": sf_id(sobject, made.num), "success": True, "errors": []}
        if ext_field is None:
            target = parse_id(str(rec.get("Id") or ""))
            if target is None or target[0] != sobject:
                raise ApiError(400, "MALFORMED_ID", f"Id in update: bad id {str(rec.get('Id'))[:20]}", ["Id"])
            made = self.update(sobject, target[1], rec)
            return {"id": sf_id(sobject, made.num), "success": True, "errors": []}
        key = rec.get(ext_field)
        if not key:
            raise ApiError(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{ext_field}]", [ext_field])
        holders = sorted(self.tables[sobject].external_index(ext_field).get(str(key), ()))
        if len(holders) > 1:
            raise ApiError(300, "DUPLICATE_EXTERNAL_ID", f"{ext_field}: more than one record found for external id "
                           f"field: [{', '.join(sf_id(sobject, h) for h in holders)}]", [ext_field])
        holder = holders[0] if holders else None
        if holder is None:
            made = self.create(sobject, rec)
            return {"id": sf_id(sobject, made.num), "success": True, "errors": [], "created": True}
        made = self.update(sobject, holder, {k: v for k, v in rec.items() if k != ext_field})
        return {"id": sf_id(sobject, made.num), "success": True, "errors": [], "created": False}

    def delete_collection(self, ids: list[str], all_or_none: bool) -> list[dict[str, Any]]:
        if len(ids) > COLLECTION_MAX:
            raise ApiError(400, "EXCEEDED_ID_LIMIT", f"record limit reached. cannot submit more than "
                           f"{COLLECTION_MAX} records into this call")
        out = []
        for raw in ids:
            target = parse_id(raw)
            rec = self.tables[target[0]].get(target[1]) if target else None
            if rec is None:
                out.append({"id": raw, "success": False, "errors": [
                    {"statusCode": "MALFORMED_ID" if target is None else "INVALID_CROSS_REFERENCE_KEY",
                     "message": "invalid cross reference id", "fields": []}]})
            elif rec.deleted:
                out.append({"id": raw, "success": False, "errors": [
                    {"statusCode": "ENTITY_IS_DELETED", "message": "entity is deleted", "fields": []}]})
            else:
                self.delete(target[0], target[1])
                out.append({"id": sf_id(*target), "success": True, "errors": []})
        return out

    def replication(self, sobject: str, start: str, end: str, *, deleted: bool) -> dict[str, Any]:
        """getDeleted (at most 15 days back) or getUpdated (30 days) for ``[start, end]``."""
        def parse(v: str) -> int:
            try:
                return int(datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000)
            except ValueError:
                raise ApiError(400, "INVALID_REPLICATION_DATE", f"invalid date: {v[:40]}") from None

        lo, hi = parse(start), parse(end)
        now = self.now_ms()
        earliest = now - (GET_DELETED_DAYS if deleted else GET_UPDATED_DAYS) * 86_400_000
        if lo < earliest - 60_000:
            raise ApiError(400, "INVALID_REPLICATION_DATE",
                           f"startDate cannot be more than {GET_DELETED_DAYS if deleted else GET_UPDATED_DAYS} "
                           "days ago")
        if hi <= lo:
            raise ApiError(400, "INVALID_REPLICATION_DATE", "endDate must chronologically follow the startDate")
        t = self.tables[sobject]
        rows: list[Any] = []
        for ts, num in t.by_ts(lo):
            if ts > hi:
                break
            if t.get(num).deleted == deleted:
                rows.append({"id": sf_id(sobject, num), "deletedDate": sf_datetime(ts)} if deleted else
                            sf_id(sobject, num))
        covered = sf_datetime(min(hi, now) // 60_000 * 60_000)
        if deleted:
            return {"deletedRecords": rows, "earliestDateAvailable": sf_datetime(earliest),
                    "latestDateCovered": covered}
        return {"ids": rows, "latestDateCovered": covered}

    def export(self) -> dict[str, Any]:
        """Every record the org holds (recycle bin included), as an administrator's export sees it."""
        return {name: [self.render(name, t.get(num)) for _, num in t.by_ts(None)] for name, t in self.tables.items()}

    # --- routes -----------------------------------------------------------------------------------
    def routes(self, app: FastAPI) -> None:
        sb = self
        base = "/services/data/v{version}"

        def handler(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def wrapped(request: Request) -> Response:
                body: Any = None
                if request.method in ("POST", "PATCH", "PUT"):
                    raw = await request.body()
                    try:
                        body = json.loads(raw) if raw else {}
                    except ValueError:
                        return _json(ApiError(400, "JSON_PARSER_ERROR", "Unexpected character in request body")
                                     .body(), 400)
                try:
                    with sb.lock:
                        sb.advance_jobs()
                        status, payload = fn(request, body, **request.path_params)
                except ApiError as e:
                    return _json(e.body(), e.status)
                if status == 204:
                    return Response(status_code=204)
                return _json(payload, status)

            return wrapped

        def batch_size(request: Request) -> int:
            opts = request.headers.get("sforce-query-options", "")
            m = re.search(r"batchSize=(\d+)", opts)
            return max(BATCH_MIN, min(BATCH_DEFAULT, int(m.group(1)))) if m else BATCH_DEFAULT

        def run(request: Request, all_rows: bool) -> tuple[int, Any]:
            q = request.query_params.get("q")
            if not q:
                raise ApiError(400, "MALFORMED_QUERY", "A query string has to be specified")
            return 200, sb.query(q, all_rows=all_rows, batch=batch_size(request))

        @handler
        def query(request: Request, body: Any, version: str):
            return run(request, False)

        @handler
        def query_all(request: Request, body: Any, version: str):
            return run(request, True)

        @handler
        def more(request: Request, body: Any, version: str, locator: str):
            return 200, sb.query_more(locator)

        @handler
        def limits(request: Request, body: Any, version: str):
            total = sb._total()
            return 200, {"DailyApiRequests": {"Max": total, "Remaining": max(0, total - sb.calls_used)}}

        @handler
        def composite(request: Request, body: Any, version: str):
            if request.method == "DELETE":
                ids = [i for i in (request.query_params.get("ids") or "").split(",") if i]
                return 200, sb.delete_collection(ids, request.query_params.get("allOrNone") == "true")
            return 200, sb.collection(request.method, body)

        @handler
        def upsert(request: Request, body: Any, version: str, sobject: str, field: str):
            return 200, sb.collection("PATCH", body, sobject, field)

        @handler
        def replication(request: Request, body: Any, version: str, sobject: str, kind: str):
            if sobject not in SCHEMA or kind not in ("deleted", "updated"):
                raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
            return 200, sb.replication(sobject, request.query_params.get("start", ""),
                                       request.query_params.get("end", ""), deleted=kind == "deleted")

        @handler
        def get_one(request: Request, body: Any, version: str, sobject: str, record_id: str):
            target = parse_id(record_id)
            rec = sb.tables[sobject].get(target[1]) if target and target[0] == sobject and sobject in SCHEMA else None
            if rec is None or rec.deleted:
                raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
            return 200, sb.render(sobject, rec)

        @handler
        def job_create(request: Request, body: Any, version: str):
            return 200, sb.job_info(sb.create_query_job(body))

        @handler
        def job_list(request: Request, body: Any, version: str):
            return 200, {"done": True, "records": [sb.job_info(sb.job(j)) for j in sb.jobs], "nextRecordsUrl": None}

        @handler
        def job_one(request: Request, body: Any, version: str, job_id: str):
            job = sb.job(job_id)
            if request.method == "DELETE":
                sb.jobs.pop(job_id, None)
                return 204, None
            if request.method == "PATCH":
                if (body or {}).get("state") != "Aborted":
                    raise ApiError(400, "INVALIDJOBSTATE", "a query job can only be set to Aborted")
                if job.state == "JobComplete":
                    raise ApiError(400, "INVALIDJOBSTATE", f"Job {job.id} is already complete")
                job.state = "Aborted"
            return 200, sb.job_info(job)

        async def job_results(request: Request) -> Response:
            try:
                with sb.lock:
                    sb.advance_jobs()
                    text, nxt, count = sb.job_results(request.path_params["job_id"],
                                                      request.query_params.get("locator"),
                                                      request.query_params.get("maxRecords"))
            except ApiError as e:
                return _json(e.body(), e.status)
            return Response(text, media_type="text/csv",
                            headers={"Sforce-Locator": nxt, "Sforce-NumberOfRecords": str(count)})

        @handler
        def ingest_create(request: Request, body: Any, version: str):
            return 200, sb.ingest_info(sb.create_ingest_job(body))

        @handler
        def ingest_list(request: Request, body: Any, version: str):
            return 200, {"done": True, "records": [sb.ingest_info(j) for j in sb.ingest_jobs.values()],
                         "nextRecordsUrl": None}

        @handler
        def ingest_one(request: Request, body: Any, version: str, job_id: str):
            if request.method == "DELETE":
                sb.delete_ingest_job(job_id)
                return 204, None
            if request.method == "PATCH":
                return 200, sb.ingest_info(sb.set_ingest_state(job_id, body))
            return 200, sb.ingest_info(sb.ingest_job(job_id))

        async def ingest_upload(request: Request) -> Response:
            data = await request.body()
            try:
                with sb.lock:
                    sb.advance_jobs()
                    sb.upload(request.path_params["job_id"], request.headers.get("content-type", ""), data)
            except ApiError as e:
                return _json(e.body(), e.status)
            return Response(status_code=201)

        async def ingest_results(request: Request) -> Response:
            kind = request.path_params["kind"]
            if kind.lower() not in ("successfulresults", "failedresults", "unprocessedrecords"):
                return _json(ApiError(404, "NOT_FOUND", "The requested resource does not exist").body(), 404)
            try:
                with sb.lock:
                    sb.advance_jobs()
                    text = sb.ingest_results(request.path_params["job_id"], kind)
            except ApiError as e:
                return _json(e.body(), e.status)
            return Response(text, media_type="text/csv")

        async def token(request: Request) -> Response:
            raw = (await request.body()).decode("utf-8", "replace")
            form = dict(parse_qsl(raw)) if "x-www-form-urlencoded" in request.headers.get("content-type", "") else {}
            status, payload = sb.token(request, {**dict(request.query_params), **form})
            return _json(payload, status)

        async def oauth_switches(request: Request) -> Response:
            raw = await request.body()
            body = json.loads(raw) if raw else {}
            if "session_lifetime_s" in body:
                sb.session_lifetime_s = float(body["session_lifetime_s"])
            ended = sb.expire_sessions() if body.get("expire_sessions") else 0
            return _json({"session_lifetime_s": sb.session_lifetime_s, "expired": ended,
                          "sessions_issued": sb.sessions_issued}, 200)

        app.add_api_route(TOKEN_PATH, token, methods=["POST"])
        app.add_api_route("/_sandbox/oauth", oauth_switches, methods=["POST"], include_in_schema=False)
        app.add_api_route(base + "/jobs/ingest", ingest_create, methods=["POST"])
        app.add_api_route(base + "/jobs/ingest", ingest_list, methods=["GET"])
        app.add_api_route(base + "/jobs/ingest/{job_id}", ingest_one, methods=["GET", "PATCH", "DELETE"])
        app.add_api_route(base + "/jobs/ingest/{job_id}/batches", ingest_upload, methods=["PUT"])
        app.add_api_route(base + "/jobs/ingest/{job_id}/batches/", ingest_upload, methods=["PUT"])
        app.add_api_route(base + "/jobs/ingest/{job_id}/{kind}", ingest_results, methods=["GET"])
        app.add_api_route(base + "/jobs/ingest/{job_id}/{kind}/", ingest_results, methods=["GET"])
        app.add_api_route(base + "/jobs/query", job_create, methods=["POST"])
        app.add_api_route(base + "/jobs/query", job_list, methods=["GET"])
        app.add_api_route(base + "/jobs/query/{job_id}", job_one, methods=["GET", "PATCH", "DELETE"])
        app.add_api_route(base + "/jobs/query/{job_id}/results", job_results, methods=["GET"])
        app.add_api_route(base + "/query/", query, methods=["GET"])
        app.add_api_route(base + "/queryAll/", query_all, methods=["GET"])
        app.add_api_route(base + "/query/{locator}", more, methods=["GET"])
        app.add_api_route(base + "/queryAll/{locator}", more, methods=["GET"])
        app.add_api_route(base + "/limits/", limits, methods=["GET"])
        app.add_api_route(base + "/composite/sobjects", composite, methods=["POST", "PATCH", "DELETE"])
        app.add_api_route(base + "/composite/sobjects/{sobject}/{field}", upsert, methods=["PATCH"])
        app.add_api_route(base + "/sobjects/{sobject}/{kind}/", replication, methods=["GET"])
        app.add_api_route(base + "/sobjects/{sobject}/{record_id}", get_one, methods=["GET"])
        self._admin_routes(app, handler)

    def _admin_routes(self, app: FastAPI, handler: Callable[..., Any]) -> None:
        """Changes as a user would make them in Salesforce's UI, for tests and the demo."""
        sb = self

        def target(sobject: str, record_id: str) -> int:
            t = parse_id(record_id)
            if t is None or t[0] != sobject:
                raise ApiError(400, "MALFORMED_ID", "bad id")
            return t[1]

        @handler
        def edit(request: Request, body: Any, sobject: str, record_id: str):
            rec = sb.update(sobject, target(sobject, record_id), body or {})
            return 200, sb.render(sobject, rec)

        @handler
        def remove(request: Request, body: Any, sobject: str, record_id: str):
            return 200, {"deleted": sb.delete(sobject, target(sobject, record_id))}

        @handler
        def merge(request: Request, body: Any):
            rec = sb.merge(str(body.get("master")), [str(x) for x in body.get("losers") or []])
            return 200, sb.render("Contact", rec)

        @handler
        def set_limits(request: Request, body: Any):
            sb.daily_limit = int((body or {}).get("daily", sb.daily_limit))
            return 200, {"daily": sb.daily_limit}

        @handler
        def expire(request: Request, body: Any):
            n = len(sb.locators)
            sb.locators.clear()
            return 200, {"expired": n}

        @handler
        def export(request: Request, body: Any):
            return 200, sb.export()

        @handler
        def fail_job(request: Request, body: Any):
            body = body or {}
            sb.fail_next_job = (str(body.get("message") or "InternalServerError : the job failed"),
                                int(body.get("after", 0)))
            return 200, {"message": sb.fail_next_job[0], "after": sb.fail_next_job[1]}

        app.add_api_route("/_sandbox/sobjects/{sobject}/{record_id}", edit, methods=["PATCH"], include_in_schema=False)
        app.add_api_route("/_sandbox/sobjects/{sobject}/{record_id}", remove, methods=["DELETE"],
                          include_in_schema=False)
        app.add_api_route("/_sandbox/merge", merge, methods=["POST"], include_in_schema=False)
        app.add_api_route("/_sandbox/limits", set_limits, methods=["POST"], include_in_schema=False)
        app.add_api_route("/_sandbox/locators/expire", expire, methods=["POST"], include_in_schema=False)
        app.add_api_route("/_sandbox/export", export, methods=["GET"], include_in_schema=False)
        app.add_api_route("/_sandbox/bulk/fail", fail_job, methods=["POST"], include_in_schema=False)


DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}


def _csv_format(body: dict[str, Any]) -> tuple[str, str]:
    """(column delimiter, line ending) a job's CSV uses; contentType must be CSV."""
    if body.get("contentType", "CSV") != "CSV":
        raise ApiError(400, "INVALIDJOB", "InvalidJob : contentType must be CSV")
    delim = DELIMITERS.get(body.get("columnDelimiter", "COMMA"))
    ending = LINE_ENDINGS.get(body.get("lineEnding", "LF"))
    if delim is None or ending is None:
        raise ApiError(400, "INVALIDJOB", "InvalidJob : unknown columnDelimiter or lineEnding")
    return delim, ending


def _bulk_error(e: ApiError) -> str:
    """``sf__Error`` as Bulk 2.0 writes it: ``CODE:message:field,field --`` (``CODE:message:--`` without fields)."""
    fields = ",".join(e.fields or [])
    return f"{e.code}:{e.message}:{fields} --" if fields else f"{e.code}:{e.message}:--"


def _csv_value(kind: str, v: Any) -> str:
    """A REST value as Bulk 2.0 writes it in CSV: nulls empty, booleans lower-case, datetimes in Z."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if kind == "datetime":
        return str(v).replace("+0000", "Z")
    return str(v)


def _kind(sobject: str, field: str) -> str:
    if "." in field:
        rel, sub = field.split(".", 1)
        return SCHEMA[RELATIONSHIPS[(sobject, rel)][1]][sub]
    return SCHEMA[sobject][field]


def _dig(row: dict[str, Any], field: str) -> Any:
    """A rendered row's value for a field path (``Account.Name`` inside its nested object)."""
    cur: Any = row
    for part in field.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, "") if v is None else (1, v)


def _json(payload: Any, status: int) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), status_code=status, media_type="application/json")
