"""HubSpot CRM sandbox: objects v3 (contacts, companies, calls, emails, notes, communications),
search, batch endpoints, merges, associations v4, rate limits and signed webhooks v3.

State is seeded lazily: a record that was never written is computed from its index (population.py),
and only written records are kept, so a 1,000,000-contact seed costs an index of (timestamp, id)
pairs, not a million dicts. Vendor behaviour reproduced on purpose:

* list pages of at most 100 (``paging.next.after``), ``archived=true`` for deleted records;
* search: 200 per page, filter groups (OR of ANDed filters; 5 groups, 6 filters each, 18 in all),
  one sort, ``total``, and a 400 when paging past 10,000 results; archived records never match;
* batch read/create/update/upsert/archive of at most 100 inputs, per-input failures as HTTP 207
  with ``errors[].context.objectWriteTraceId`` naming the failing input;
* unique properties (contact ``email``, ``omnisync_golden_id``; engagement ``omnisync_interaction_id``),
  e-mail validation, enumeration options, read-only properties;
* merges keep the primary id and list the merged ids in ``hs_merged_object_ids``; a merged id
  still answers GET with the survivor, as HubSpot redirects it;
* ten-secondly rolling and daily limits (429 with ``policyName`` and ``X-HubSpot-RateLimit-*``
  headers), and the search endpoints' own few-requests-per-second limit;
* webhooks v3 (``contact.creation``/``propertyChange``/``deletion``/``merge``) delivered from an
  outbox by ``POST /_sandbox/webhooks/deliver``, signed ``X-HubSpot-Signature-v3``.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import heapq
import itertools
import json
import random
import re
import time
import uuid
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from sandbox.framework import Sandbox
from sandbox.population import (
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

TOKEN = "sandbox-token"
CLIENT_SECRET = "sandbox-client-secret"
PORTAL_ID = 62515
APP_ID = 54321
SEARCH_CAP = 10_000
BATCH_MAX = 100
ASSOC_READ_MAX = 1000
ASSOC_WRITE_MAX = 2000

TYPE_IDS = {"contacts": "0-1", "companies": "0-2", "calls": "0-48", "emails": "0-49", "notes": "0-46",
            "communications": "0-18"}
SINGULAR = {"contacts": "contact", "companies": "company", "calls": "call", "emails": "email", "notes": "note",
            "communications": "communication"}
ENGAGEMENTS = ("calls", "emails", "notes", "communications")
# HUBSPOT_DEFINED default association type ids, (from, to) -> typeId
ASSOC_TYPE = {("contacts", "companies"): 279, ("companies", "contacts"): 280,
              ("calls", "contacts"): 194, ("contacts", "calls"): 193,
              ("emails", "contacts"): 198, ("contacts", "emails"): 197,
              ("notes", "contacts"): 202, ("contacts", "notes"): 201,
              ("communications", "contacts"): 82, ("contacts", "communications"): 81}

DISPOSITIONS = {"connected": "f240bbac-87c9-4f6e-bf70-924b57d47db7",
                "no_answer": "73a0d17f-1163-4015-bdd5-ec830791da20",
                "left_voicemail": "b2cf5968-551e-4856-9783-52b3da59a7d0",
                "busy": "9d9162e7-6cf3-4944-bf63-4dff82258764"}
LIFECYCLE = ("subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer",
             "evangelist", "other")
CHANNEL_TYPES = ("SMS", "WHATS_APP", "LINKEDIN_MESSAGE", "PHYSICAL_MAIL", "CUSTOM_CHANNEL_CONVERSATION")
TITLES = ("Office Manager", "Engineer", "Buyer", "Director of Operations", "Analyst", "Nurse", "Teacher", "CFO")
TOPICS = ("a refund", "a late delivery", "upgrading the plan", "a billing question", "password reset",
          "a damaged item", "changing the address")

# Property schemas: name -> kind. "ro" = read-only; enum kinds list their options.
_COMMON_RO = {"hs_object_id": "ro", "hs_createdate": "ro", "hs_lastmodifieddate": "ro"}
PROPS: dict[str, dict[str, Any]] = {
    "contacts": {
        "email": "email", "firstname": "str", "lastname": "str", "phone": "str", "mobilephone": "str",
        "company": "str", "jobtitle": "str", "date_of_birth": "date", "address": "str", "city": "str",
        "state": "str", "zip": "str", "country": "str", "hs_language": "str",
        "lifecyclestage": LIFECYCLE, "hs_email_optout": ("true", "false"), "hs_additional_emails": "str",
        # Custom single-checkbox properties of the portal for SMS and call opt-outs: HubSpot keeps SMS
        # consent as subscription statuses (Communication Preferences API) and has no do-not-call field.
        "omnisync_sms_opt_out": ("true", "false"), "omnisync_do_not_call": ("true", "false"),
        "omnisync_golden_id": "str", "createdate": "ro", "lastmodifieddate": "ro", "hs_object_id": "ro",
        "hs_merged_object_ids": "ro",
    },
    "companies": {"name": "str", "domain": "str", "phone": "str", "city": "str", "state": "str",
                  "country": "str", "createdate": "ro", "hs_merged_object_ids": "ro", **_COMMON_RO},
    "calls": {"hs_timestamp": "datetime", "hs_call_title": "str", "hs_call_body": "str",
              "hs_call_direction": ("INBOUND", "OUTBOUND"), "hs_call_duration": "number",
              "hs_call_disposition": "str", "hs_call_status": ("COMPLETED", "BUSY", "NO_ANSWER", "FAILED",
                                                                "CANCELED", "IN_PROGRESS"),
              "hs_call_from_number": "str", "hs_call_to_number": "str", "hubspot_owner_id": "str",
              "omnisync_interaction_id": "str", **_COMMON_RO},
    "emails": {"hs_timestamp": "datetime", "hs_email_direction": ("EMAIL", "INCOMING_EMAIL", "FORWARDED_EMAIL"),
               "hs_email_subject": "str", "hs_email_text": "str",
               "hs_email_status": ("BOUNCED", "FAILED", "SCHEDULED", "SENDING", "SENT"),
               "hubspot_owner_id": "str", "omnisync_interaction_id": "str", **_COMMON_RO},
    "notes": {"hs_timestamp": "datetime", "hs_note_body": "str", "hubspot_owner_id": "str",
              "omnisync_interaction_id": "str", **_COMMON_RO},
    "communications": {"hs_timestamp": "datetime", "hs_communication_channel_type": CHANNEL_TYPES,
                       "hs_communication_logged_from": ("CRM",), "hs_communication_body": "str",
                       "hubspot_owner_id": "str", "omnisync_interaction_id": "str", **_COMMON_RO},
}
UNIQUE = {"contacts": ("email", "omnisync_golden_id"), "companies": (),
          **{t: ("omnisync_interaction_id",) for t in ENGAGEMENTS}}
DEFAULT_PROPS = {"contacts": ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"),
                 "companies": ("createdate", "domain", "hs_lastmodifieddate", "hs_object_id", "name")}
ID_BASE = {"contacts": 1000, "companies": 500, "calls": 31_000_000_000, "emails": 32_000_000_000,
           "notes": 33_000_000_000, "communications": 34_000_000_000}
SUBSCRIPTIONS = {"creation": 1001, "propertyChange": 1002, "deletion": 1003, "merge": 1004, "privacyDeletion": 1005}
ENGAGEMENT_SHARE = {"calls": 0.15, "emails": 0.25, "notes": 0.08, "communications": 0.07}
_EMAIL_RE = re.compile(r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9-]+)+$")
_SALT = {t: i * 7919 + 13 for i, t in enumerate(TYPE_IDS)}


def ts_prop(otype: str) -> str:
    """The last-modified property search sorts and filters on (contacts have their own name)."""
    return "lastmodifieddate" if otype == "contacts" else "hs_lastmodifieddate"


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def parse_ms(value: Any) -> int:
    """A datetime filter or property value: epoch milliseconds or ISO 8601, as HubSpot accepts both."""
    s = str(value).strip()
    if s.lstrip("-").isdigit():
        return int(s)
    from datetime import datetime, timezone

    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def _stamp(i: int, seed: int, salt: int) -> int:
    """A seeded last-modified time in ms (many records share one, as in real exports)."""
    return int(modstamp(i, seed, salt).timestamp()) * 1000


def _rng(i: int, seed: int, salt: int) -> random.Random:
    return random.Random((seed * 1_000_003 + i) * 37 + salt)


def _blocklist_hash(email: str) -> str:
    # The sandbox keeps no erased address in clear: a blocklisted one is remembered as a hash.
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def sign_v3(secret: str, method: str, uri: str, body: bytes, timestamp_ms: int) -> str:
    """``X-HubSpot-Signature-v3``: base64 HMAC-SHA256 of method + URI + body + timestamp."""
    msg = method.upper().encode() + uri.encode() + body + str(timestamp_ms).encode()
    return base64.b64encode(hmac.new(secret.encode(), msg, hashlib.sha256).digest()).decode()


@dataclass
class Obj:
    id: int
    props: dict[str, str | None]
    created: int
    updated: int
    archived_at: int | None = None


class ApiError(Exception):
    """A vendor error answered as HubSpot's error body."""

    def __init__(self, status: int, category: str, message: str, *, context: dict | None = None,
                 sub: str | None = None):
        self.status, self.category, self.message, self.context, self.sub = status, category, message, context, sub
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": "error", "message": self.message, "correlationId": str(uuid.uuid4()),
                               "category": self.category}
        if self.sub:
            out["subCategory"] = self.sub
        if self.context:
            out["context"] = self.context
        return out


class Store:
    """One object type: seeded records computed on demand, written ones kept, and an index by
    (last-modified ms, id) so search windows and totals cost a bisect, not a scan."""

    def __init__(self, otype: str, n: int, make: Callable[[int], Obj]):
        self.otype = otype
        self.n = n
        self.base = ID_BASE[otype]
        self.make = make
        self.over: dict[int, Obj] = {}
        self.gone: dict[int, int] = {}  # merged-away id -> survivor id
        self.purged: set[int] = set()  # permanently deleted (GDPR): neither live nor archived
        self.seed_archived: set[int] = set()
        self.next_id = self.base + n + 1
        self.base_ts = array("q")
        self.base_ids = array("q")
        self.base_pos: dict[int, int] = {}
        self.stale_pos: list[int] = []  # sorted positions in base_* superseded by writes
        self.delta: list[tuple[int, int]] = []  # sorted (ts, id) of written live records
        self.unique: dict[str, dict[str, int]] = {}

    # --- seeding -------------------------------------------------------------------------------
    def build_index(self, entries: list[tuple[int, int]]) -> None:
        entries.sort()
        self.base_ts = array("q", (t for t, _ in entries))
        self.base_ids = array("q", (i for _, i in entries))
        self.base_pos = {}

    def seeded(self, oid: int) -> bool:
        return self.base < oid <= self.base + self.n

    # --- access --------------------------------------------------------------------------------
    def get(self, oid: int, *, archived: bool = False) -> Obj | None:
        """The live (or, with ``archived``, the archived) record with this id."""
        if oid in self.purged:
            return None
        obj = self.over.get(oid)
        if obj is None and self.seeded(oid) and oid not in self.gone:
            if oid in self.seed_archived and not archived:
                return None
            obj = self.make(oid - self.base - 1)
        if obj is None or (obj.archived_at is not None) != archived:
            return None
        return obj

    def resolve(self, oid: int) -> int:
        seen = 0
        while oid in self.gone and seen < 100:
            oid, seen = self.gone[oid], seen + 1
        return oid

    def put(self, obj: Obj, *, old: Obj | None) -> None:
        if old is not None:
            self._unindex(old)
        self.over[obj.id] = obj
        if obj.archived_at is None:
            bisect.insort(self.delta, (obj.updated, obj.id))
        for prop, idx in self.unique.items():
            if old is not None and old.props.get(prop):
                idx.pop(old.props[prop], None)
            if obj.archived_at is None and obj.props.get(prop):
                idx[obj.props[prop]] = obj.id

    def drop(self, obj: Obj, survivor: int) -> None:
        """Remove a merged-away record (it no longer exists, its id redirects)."""
        self._unindex(obj)
        self.over.pop(obj.id, None)
        self.gone[obj.id] = survivor
        for prop, idx in self.unique.items():
            if obj.props.get(prop) and idx.get(obj.props[prop]) == obj.id:
                del idx[obj.props[prop]]

    def purge(self, obj: Obj) -> None:
        """Delete a record for good: no archived copy, no redirect, its unique values released."""
        self._unindex(obj)
        self.over.pop(obj.id, None)
        self.seed_archived.discard(obj.id)
        self.purged.add(obj.id)
        for prop, idx in self.unique.items():
            if obj.props.get(prop) and idx.get(obj.props[prop]) == obj.id:
                del idx[obj.props[prop]]

    def _unindex(self, old: Obj) -> None:
        if old.id in self.over:
            if old.archived_at is None:
                k = bisect.bisect_left(self.delta, (old.updated, old.id))
                if k < len(self.delta) and self.delta[k] == (old.updated, old.id):
                    del self.delta[k]
        elif self.seeded(old.id):
            pos = self._base_position(old.id, old.updated)
            if pos is not None:
                bisect.insort(self.stale_pos, pos)

    def _base_position(self, oid: int, ts: int) -> int | None:
        lo = bisect.bisect_left(self.base_ts, ts)
        hi = bisect.bisect_right(self.base_ts, ts)
        for k in range(lo, hi):
            if self.base_ids[k] == oid:
                return k
        return None

    def _stale(self, pos: int) -> bool:
        k = bisect.bisect_left(self.stale_pos, pos)
        return k < len(self.stale_pos) and self.stale_pos[k] == pos

    def new_id(self) -> int:
        oid = self.next_id
        self.next_id += 1
        return oid

    # --- iteration -----------------------------------------------------------------------------
    def by_ts(self, lo: int | None = None) -> Iterator[tuple[int, int]]:
        """Live (ts, id) pairs in ascending order from ``lo`` (inclusive)."""
        start = 0 if lo is None else bisect.bisect_left(self.base_ts, lo)

        def base() -> Iterator[tuple[int, int]]:
            for k in range(start, len(self.base_ts)):
                if self.stale_pos and self._stale(k):
                    continue
                yield self.base_ts[k], self.base_ids[k]

        dstart = 0 if lo is None else bisect.bisect_left(self.delta, (lo, -1))
        delta = itertools.islice(self.delta, dstart, None)
        return heapq.merge(base(), delta)

    def count_range(self, lo: int | None, lo_incl: bool, hi: int | None, hi_incl: bool) -> int:
        """How many live records have lo <(=) ts <(=) hi, without touching them."""
        def bounds(seq_ts: Any, key: Callable[[int], Any]) -> tuple[int, int]:
            a = 0 if lo is None else (bisect.bisect_left(seq_ts, key(lo)) if lo_incl else
                                      bisect.bisect_right(seq_ts, key(lo)))
            b = len(seq_ts) if hi is None else (bisect.bisect_right(seq_ts, key(hi)) if hi_incl else
                                                bisect.bisect_left(seq_ts, key(hi)))
            return a, max(a, b)

        a, b = bounds(self.base_ts, lambda t: t)
        stale = bisect.bisect_left(self.stale_pos, b) - bisect.bisect_left(self.stale_pos, a)
        da = 0 if lo is None else (bisect.bisect_left(self.delta, (lo, -1)) if lo_incl else
                                   bisect.bisect_right(self.delta, (lo, 1 << 62)))
        db = len(self.delta) if hi is None else (bisect.bisect_right(self.delta, (hi, 1 << 62)) if hi_incl else
                                                 bisect.bisect_left(self.delta, (hi, -1)))
        return (b - a - stale) + max(0, db - da)

    def ids(self, after: int, *, archived: bool) -> Iterator[int]:
        """Ids in ascending order after ``after`` (live, or archived), without building records."""
        if archived:
            yield from sorted([i for i in self.seed_archived if i > after and i not in self.over and i not in self.purged]
                              + [i for i, o in self.over.items() if i > after and o.archived_at is not None])
            return
        written = sorted(i for i, o in self.over.items() if i > after and o.archived_at is None)
        seeded = (i for i in range(max(after + 1, self.base + 1), self.base + self.n + 1)
                  if i not in self.over and i not in self.gone and i not in self.seed_archived and i not in self.purged)
        yield from heapq.merge(seeded, written)

    def live_count(self) -> int:
        return self.count_range(None, True, None, True)

    def unique_index(self, prop: str) -> dict[str, int]:
        """value -> id for a unique property, built on first use (a full pass over the seed)."""
        idx = self.unique.get(prop)
        if idx is None:
            idx = {}
            for _, oid in self.by_ts():
                obj = self.get(oid)
                if obj is not None and obj.props.get(prop):
                    idx[obj.props[prop]] = oid
            self.unique[prop] = idx
        return idx


@dataclass
class Limits:
    """HubSpot's documented API limits (defaults: Free/Starter burst, Pro daily)."""

    enabled: bool = True
    ten_secondly: int = 100  # requests per rolling interval (the name HubSpot gives its policy)
    interval_s: float = 10.0  # shortened only by tests that must not wait ten seconds
    search_per_second: int = 5
    daily: int = 650_000


class HubSpotSandbox(Sandbox):
    name = "hubspot"

    def __init__(self, *, size: int = 100, seed: int = 1, limits: Limits | None = None):
        self.limits = limits or Limits()
        self.window: deque[float] = deque()
        self.search_window: deque[float] = deque()
        self.daily_used = 0
        self.outbox: list[dict[str, Any]] = []
        self.delivered = 0
        self.subscriber: str | None = None
        self.event_seq = itertools.count(1)
        super().__init__(size=size, seed=seed)

    # --- framework hooks -----------------------------------------------------------------------
    def credentials(self) -> dict[str, Any]:
        return {"access_token": TOKEN, "client_secret": CLIENT_SECRET}

    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Bearer {TOKEN}"

    def unauthorized(self) -> Response:
        return _json(ApiError(401, "INVALID_AUTHENTICATION",
                              "Authentication credentials not found. This API supports OAuth 2.0 authentication and "
                              "you can find more details at "
                              "https://developers.hubspot.com/docs/methods/auth/oauth-overview"
                              ).body(), 401)

    def rate_limited(self) -> Response:
        return self._limit_response("TEN_SECONDLY_ROLLING", 1)

    def quota_exhausted(self) -> Response:
        return self._limit_response("DAILY", None)

    def server_error(self) -> Response:
        return _json({"status": "error", "message": "internal error", "correlationId": str(uuid.uuid4()),
                      "category": "INTERNAL_ERROR"}, 502)

    def response_headers(self) -> dict[str, str]:
        return self._usage_headers(time.monotonic())

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for t, st in self.stores.items():
            archived = sum(1 for _ in st.ids(0, archived=True))
            out[t] = {"live": st.live_count(), "archived": archived, "merged": len(st.gone)}
        out["webhooks"] = {"pending": len(self.outbox) - self.delivered, "delivered": self.delivered}
        out["daily_used"] = self.daily_used
        return out

    # --- seeding -------------------------------------------------------------------------------
    def seed(self) -> None:
        n, s = self.size, self.seed_value
        self.window.clear()
        self.search_window.clear()
        self.daily_used = 0
        self.outbox, self.delivered, self.event_seq = [], 0, itertools.count(1)
        self._contact_cache: dict[int, tuple[int, int]] = {}
        self.junk_at = {n * k // 5 + 3: JUNK_EMAILS[k - 1] for k in range(1, 5)} if n >= 50 else {}
        self.stores: dict[str, Store] = {}
        contacts = Store("contacts", n, self._make_contact)
        entries = []
        for i in range(n):
            state = self._contact_state(i)
            oid = contacts.base + 1 + i
            if state == "live":
                entries.append((_stamp(i, s, _SALT["contacts"]), oid))
            elif state == "archived":
                contacts.seed_archived.add(oid)
            else:
                contacts.gone[oid] = contacts.base + 1 + self._original(i)
        contacts.build_index(entries)
        self.stores["contacts"] = contacts
        companies = Store("companies", len(COMPANIES), self._make_company)
        companies.build_index([(self._company_ts(i), companies.base + 1 + i) for i in range(len(COMPANIES))])
        self.stores["companies"] = companies
        for t in ENGAGEMENTS:
            m = max(1, int(n * ENGAGEMENT_SHARE[t]))
            st = Store(t, m, lambda k, t=t: self._make_engagement(t, k))
            entries = []
            for k in range(m):
                ts, archived = self._engagement_ts(t, k)
                if archived:
                    st.seed_archived.add(st.base + 1 + k)
                else:
                    entries.append((ts, st.base + 1 + k))
            st.build_index(entries)
            self.stores[t] = st
        self.links: dict[tuple[str, int, str], set[int]] = {}
        self.blocklist: set[str] = set()
        self.unlinked: set[tuple[str, int, str, int]] = set()
        self.reverse: dict[str, dict[int, list[int]]] = {}
        top = max([st.base_ts[-1] for st in self.stores.values() if len(st.base_ts)] + [0])
        # Seeded data lies a few days ahead of the wall clock: run the sandbox clock ahead too, so a
        # change made now is always later than every seeded modification.
        self.clock_offset = max(0, top + 60_000 - int(time.time() * 1000))

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_offset

    def _who(self, i: int) -> tuple[int, int]:
        hit = self._contact_cache.get(i)
        if hit is None:
            hit = contact_person("hubspot", i, self.size, self.seed_value)
            if len(self._contact_cache) < 200_000:
                self._contact_cache[i] = hit
        return hit

    def _original(self, i: int) -> int:
        """The index of the first copy of contact ``i``'s person (itself when it is an original)."""
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
        r = _rng(i, self.seed_value, 101).random()
        _, copy = self._who(i)
        if copy:
            orig = self._original(i)
            if r < 0.25 and orig != i and self._contact_state(orig) == "live":
                return "merged"
            return "live"
        return "archived" if r < 0.01 else "live"

    def _make_contact(self, i: int) -> Obj:
        s = self.seed_value
        pid, copy = self._who(i)
        p = person(pid, s)
        r = _rng(i, s, 202)
        oid = ID_BASE["contacts"] + 1 + i
        created = int(p.created_at.timestamp() * 1000) + (r.randrange(1, 86400 * 30) * 1000 if copy else 0)
        updated = _stamp(i, s, _SALT["contacts"])
        state = self._contact_state(i)
        if i == 0:
            props = {"firstname": "Amara", "lastname": "Okafor", "email": p.personal_email,
                     "mobilephone": "(415) 555-0142", "phone": None, "company": None, "jobtitle": None,
                     "date_of_birth": None, "address": p.street, "city": p.city, "state": p.state,
                     "zip": p.postcode, "country": "US", "hs_language": "en", "lifecyclestage": "lead",
                     "hs_email_optout": "false"}
        else:
            first, last = p.first, p.last
            if copy and r.random() < 0.5:
                first = typo(first, r) if r.random() < 0.5 else first
                last = typo(last, r) if r.random() < 0.5 else last
            case = r.random()
            if case < 0.03:
                first, last = first.lower(), last.lower()
            elif case < 0.05:
                first, last = first.upper(), last.upper()
            if copy:
                local, _, domain = p.personal_email.partition("@")
                email = f"{local}+{i}@{domain}" if r.random() < 0.4 else None
            else:
                e = r.random()
                email = p.personal_email if e < 0.9 else (p.work_email if e < 0.95 else None)
            email = self.junk_at.get(i, email)
            mobile = phone_variant(p.mobile, r) if r.random() < 0.8 else None
            if r.random() < 0.005:
                mobile = r.choice(JUNK_PHONES)
            ph = r.random()
            phone = (phone_variant(p.landline, r) if p.landline and ph < 0.6 else
                     phone_variant(p.switchboard, r) if ph > 0.9 else None)
            c = r.random()
            props = {"firstname": first, "lastname": last, "email": email, "mobilephone": mobile,
                     "phone": phone, "company": p.company if r.random() < 0.6 else None,
                     "jobtitle": r.choice(TITLES) if r.random() < 0.4 else None,
                     "date_of_birth": p.birth_date.isoformat() if r.random() < 0.3 else None,
                     "address": p.street if r.random() < 0.5 else None,
                     "city": p.city if r.random() < 0.7 else None, "state": p.state if r.random() < 0.7 else None,
                     "zip": p.postcode if r.random() < 0.6 else None,
                     "country": "US" if c < 0.6 else ("United States" if c < 0.7 else None),
                     "hs_language": p.locale.lower().removesuffix("-us"),
                     "lifecyclestage": r.choices(LIFECYCLE, weights=(10, 30, 15, 10, 8, 20, 2, 5))[0],
                     "hs_email_optout": "true" if r.random() < 0.03 else "false"}
        merged = [ID_BASE["contacts"] + 1 + j for j in self._merged_into(i)]
        props.update({"hs_additional_emails": None, "omnisync_golden_id": None, "omnisync_sms_opt_out": None,
                      "omnisync_do_not_call": None, "createdate": iso(created),
                      "lastmodifieddate": iso(updated), "hs_object_id": str(oid),
                      "hs_merged_object_ids": ";".join(map(str, merged)) or None})
        return Obj(oid, props, created, updated, archived_at=updated if state == "archived" else None)

    def _merged_into(self, i: int) -> list[int]:
        pid, copy = self._who(i)
        out = []
        if copy:
            return out
        j = i + 1
        while j < self.size:
            p, c = self._who(j)
            if not c or p != pid:
                break
            if self._contact_state(j) == "merged":
                out.append(j)
            j += 1
        return out

    def _company_ts(self, i: int) -> int:
        return _stamp(i, self.seed_value, _SALT["companies"])

    def _make_company(self, i: int) -> Obj:
        name = COMPANIES[i]
        oid = ID_BASE["companies"] + 1 + i
        ts = self._company_ts(i)
        created = int(EPOCH.timestamp() * 1000) + i * 86_400_000
        props = {"name": name, "domain": name.lower().replace(" ", "") + ".example", "phone": None,
                 "city": None, "state": None, "country": "US", "createdate": iso(created),
                 "hs_createdate": iso(created), "hs_lastmodifieddate": iso(ts), "hs_object_id": str(oid),
                 "hs_merged_object_ids": None}
        return Obj(oid, props, created, ts)

    def _engagement_contact(self, otype: str, k: int) -> int:
        if k == 0 and otype in ("emails", "notes"):
            return 0
        return _rng(k, self.seed_value, _SALT[otype] + 1).randrange(self.size)

    def _engagement_ts(self, otype: str, k: int) -> tuple[int, bool]:
        r = _rng(k, self.seed_value, _SALT[otype] + 2)
        ts = _stamp(k, self.seed_value, _SALT[otype])
        return ts, (k != 0 and r.random() < 0.01)

    def _make_engagement(self, otype: str, k: int) -> Obj:
        s = self.seed_value
        r = _rng(k, s, _SALT[otype] + 3)
        ci = self._engagement_contact(otype, k)
        p = person(self._who(ci)[0], s)
        updated, archived = self._engagement_ts(otype, k)
        when = updated - r.randrange(0, 3600) * 1000
        oid = ID_BASE[otype] + 1 + k
        topic = r.choice(TOPICS)
        props: dict[str, str | None] = {"hs_timestamp": iso(when), "hubspot_owner_id": str(r.randrange(100, 120))}
        if otype == "calls":
            inbound = r.random() < 0.6
            disp = r.choice(list(DISPOSITIONS.values()))
            connected = disp == DISPOSITIONS["connected"]
            props.update({"hs_call_title": "Support call", "hs_call_body": f"Customer called about {topic}.",
                          "hs_call_direction": "INBOUND" if inbound else "OUTBOUND",
                          "hs_call_duration": str(r.randrange(30, 1800) * 1000 if connected else 0),
                          "hs_call_disposition": disp, "hs_call_status": "COMPLETED",
                          "hs_call_from_number": p.mobile if inbound else "+14155550100",
                          "hs_call_to_number": "+14155550100" if inbound else p.mobile})
        elif otype == "emails":
            if k == 0:
                props.update({"hs_email_direction": "EMAIL", "hs_email_subject": "Welcome to Northwind",
                              "hs_email_text": "Thanks for joining our webinar, Amara.", "hs_email_status": "SENT"})
            else:
                incoming = r.random() < 0.4
                props.update({"hs_email_direction": "INCOMING_EMAIL" if incoming else "EMAIL",
                              "hs_email_subject": f"Re: {topic}", "hs_email_text": f"About {topic}.",
                              "hs_email_status": "SENT"})
        elif otype == "notes":
            props["hs_note_body"] = ("Met Amara at the spring webinar; interested in the premium plan."
                                     if k == 0 else f"Follow up on {topic}.")
        else:
            props.update({"hs_communication_channel_type": r.choices(CHANNEL_TYPES[:3], weights=(6, 3, 1))[0],
                          "hs_communication_logged_from": "CRM",
                          "hs_communication_body": f"Customer wrote about {topic}."})
        props.update({"omnisync_interaction_id": None, "hs_createdate": iso(when), "hs_lastmodifieddate": iso(updated),
                      "hs_object_id": str(oid)})
        return Obj(oid, props, when, updated, archived_at=updated if archived else None)

    # --- associations ---------------------------------------------------------------------------
    def associated(self, ftype: str, fid: int, ttype: str) -> list[int]:
        """Ids of ``ttype`` records associated with ``ftype`` ``fid`` (seeded + written, live only)."""
        out: set[int] = set(self.links.get((ftype, fid, ttype), ()))
        st = self.stores[ftype]
        if st.seeded(fid):
            k = fid - st.base - 1
            if ftype in ENGAGEMENTS and ttype == "contacts":
                out.add(self.stores["contacts"].resolve(ID_BASE["contacts"] + 1 + self._engagement_contact(ftype, k)))
            elif ftype == "contacts" and ttype == "companies":
                me = st.get(fid)
                company = me.props.get("company") if me is not None else None
                if company in COMPANIES:
                    out.add(ID_BASE["companies"] + 1 + COMPANIES.index(company))
        if ftype == "contacts" and ttype in ENGAGEMENTS:
            out.update(self._reverse(ttype).get(fid, ()))
            contacts = self.stores["contacts"]
            for old in contacts.gone:
                if contacts.resolve(old) == fid:
                    out.update(self._reverse(ttype).get(old, ()))
        to = self.stores[ttype]
        return sorted(t for t in out if (ftype, fid, ttype, t) not in self.unlinked and to.get(t) is not None)

    def _reverse(self, etype: str) -> dict[int, list[int]]:
        rev = self.reverse.get(etype)
        if rev is None:
            rev = {}
            st = self.stores[etype]
            for k in range(st.n):
                cid = ID_BASE["contacts"] + 1 + self._engagement_contact(etype, k)
                rev.setdefault(cid, []).append(st.base + 1 + k)
            self.reverse[etype] = rev
        return rev

    def link(self, ftype: str, fid: int, ttype: str, tid: int) -> None:
        for a, ai, b, bi in ((ftype, fid, ttype, tid), (ttype, tid, ftype, fid)):
            self.links.setdefault((a, ai, b), set()).add(bi)
            self.unlinked.discard((a, ai, b, bi))

    def unlink(self, ftype: str, fid: int, ttype: str, tid: int) -> None:
        for a, ai, b, bi in ((ftype, fid, ttype, tid), (ttype, tid, ftype, fid)):
            self.links.get((a, ai, b), set()).discard(bi)
            self.unlinked.add((a, ai, b, bi))

    # --- writes ----------------------------------------------------------------------------------
    def _validate(self, otype: str, props: dict[str, Any]) -> dict[str, str | None]:
        schema = PROPS[otype]
        clean: dict[str, str | None] = {}
        for name, raw in props.items():
            kind = schema.get(name)
            if kind is None:
                raise ApiError(400, "VALIDATION_ERROR", f'Property "{name}" does not exist',
                               context={"propertyName": [name]}, sub="PROPERTY_DOESNT_EXIST")
            if kind == "ro":
                raise ApiError(400, "VALIDATION_ERROR", f'Property "{name}" is read-only',
                               context={"propertyName": [name]}, sub="READ_ONLY_VALUE")
            if raw is None or raw == "":
                clean[name] = None
                continue
            value = raw if isinstance(raw, str) else (str(raw).lower() if isinstance(raw, bool) else str(raw))
            if kind == "email":
                value = value.strip().lower()
                if not _EMAIL_RE.match(value):
                    raise ApiError(400, "VALIDATION_ERROR", "Property values were not valid: email is not a valid "
                                   "email address", context={"propertyName": [name]}, sub="INVALID_EMAIL")
            elif kind == "datetime":
                try:
                    value = iso(parse_ms(value))
                except ValueError:
                    raise ApiError(400, "VALIDATION_ERROR", f"{name} was not a valid datetime",
                                   context={"propertyName": [name]}, sub="INVALID_DATE") from None
            elif kind == "date":
                try:
                    ms = parse_ms(value) if value.isdigit() else parse_ms(value[:10] + "T00:00:00Z")
                except ValueError:
                    raise ApiError(400, "VALIDATION_ERROR", f"{name} was not a valid date",
                                   context={"propertyName": [name]}, sub="INVALID_DATE") from None
                value = iso(ms)[:10]
            elif kind == "number":
                try:
                    float(value)
                except ValueError:
                    raise ApiError(400, "VALIDATION_ERROR", f"{name} was not a valid number",
                                   context={"propertyName": [name]}, sub="INVALID_INTEGER") from None
            elif isinstance(kind, tuple) and value not in kind:
                raise ApiError(400, "VALIDATION_ERROR", f"{name} was not one of the allowed options",
                               context={"propertyName": [name]}, sub="INVALID_OPTION")
            clean[name] = value
        return clean

    def _check_unique(self, otype: str, props: dict[str, str | None], oid: int | None) -> None:
        st = self.stores[otype]
        if otype == "contacts" and props.get("email") and _blocklist_hash(props["email"]) in self.blocklist:
            raise ApiError(400, "VALIDATION_ERROR", "Property values were not valid: email is blocklisted after a "
                           "GDPR delete", context={"propertyName": ["email"]}, sub="INVALID_EMAIL")
        for prop in UNIQUE[otype]:
            v = props.get(prop)
            if v:
                holder = st.unique_index(prop).get(v)
                if holder is not None and holder != oid:
                    raise ApiError(409, "CONFLICT", f"A {SINGULAR[otype]} with this {prop} already exists "
                                   f"(id {holder})", context={"propertyName": [prop]}, sub="OBJECT_ALREADY_EXISTS")

    def create(self, otype: str, props: dict[str, Any], *, at: int | None = None) -> Obj:
        st = self.stores[otype]
        clean = self._validate(otype, props)
        self._check_unique(otype, clean, None)
        now = at if at is not None else self.now_ms()
        oid = st.new_id()
        full = {k: None for k in PROPS[otype]}
        full.update(clean)
        created_key = "createdate" if otype in ("contacts", "companies") else "hs_createdate"
        full.update({created_key: iso(now), ts_prop(otype): iso(now), "hs_object_id": str(oid)})
        if otype == "companies":
            full["hs_createdate"] = iso(now)
        obj = Obj(oid, full, now, now)
        st.put(obj, old=None)
        self._event(otype, "creation", oid, now)
        return obj

    def update(self, otype: str, oid: int, props: dict[str, Any], *, at: int | None = None) -> Obj:
        st = self.stores[otype]
        old = st.get(oid)
        if old is None:
            raise ApiError(404, "OBJECT_NOT_FOUND", f"resource not found: {SINGULAR[otype]} {oid}")
        clean = self._validate(otype, props)
        self._check_unique(otype, clean, oid)
        changed = {k: v for k, v in clean.items() if old.props.get(k) != v}
        if not changed and at is None:
            return old
        now = at if at is not None else self.now_ms()
        new = Obj(oid, {**old.props, **changed, ts_prop(otype): iso(now)}, old.created, now)
        st.put(new, old=old)
        for k in changed:
            self._event(otype, "propertyChange", oid, now, prop=k, value=changed[k])
        return new

    def archive(self, otype: str, oid: int, *, at: int | None = None) -> bool:
        st = self.stores[otype]
        old = st.get(oid)
        if old is None:
            return False
        now = at if at is not None else self.now_ms()
        st.put(Obj(oid, dict(old.props), old.created, old.updated, archived_at=now), old=old)
        self._event(otype, "deletion", oid, now)
        return True

    def merge(self, otype: str, primary: int, merged: int) -> Obj:
        st = self.stores[otype]
        primary, merged = st.resolve(primary), st.resolve(merged)
        a, b = st.get(primary), st.get(merged)
        if a is None or b is None or primary == merged:
            raise ApiError(400, "VALIDATION_ERROR", "Both records must exist and differ to be merged",
                           context={"ids": [str(primary), str(merged)]})
        now = self.now_ms()
        props = dict(a.props)
        for k, v in b.props.items():
            if props.get(k) in (None, "") and v not in (None, "") and PROPS[otype].get(k) != "ro" \
                    and k not in UNIQUE[otype]:
                props[k] = v
        if otype == "contacts" and b.props.get("email") and b.props["email"] != a.props.get("email"):
            extra = [e for e in (props.get("hs_additional_emails") or "").split(";") if e]
            props["hs_additional_emails"] = ";".join(extra + [b.props["email"]])
        ids = [x for x in (a.props.get("hs_merged_object_ids") or "").split(";") if x]
        ids += [x for x in (b.props.get("hs_merged_object_ids") or "").split(";") if x] + [str(merged)]
        props["hs_merged_object_ids"] = ";".join(ids)
        props[ts_prop(otype)] = iso(now)
        st.drop(b, primary)
        new = Obj(primary, props, a.created, now)
        st.put(new, old=a)
        for key in [k for k in self.links if k[0] == otype and k[1] == merged]:
            for tid in list(self.links[key]):
                self.unlink(otype, merged, key[2], tid)
                self.link(otype, primary, key[2], tid)
        self._event(otype, "merge", primary, now, merged=[merged])
        return new

    def gdpr_delete(self, contact_id: int | None = None, email: str | None = None) -> bool:
        """Permanently delete a contact and the engagements that concern only it (HubSpot's GDPR delete).

        Records merged into it go too, its queued webhook events are dropped (they carry its
        property values) and a ``contact.privacyDeletion`` event announces the deletion. Its
        addresses (or an email that matched no contact) are blocklisted, kept only as hashes.
        """
        st = self.stores["contacts"]
        if contact_id is None and email:
            contact_id = st.unique_index("email").get(email.strip().lower())
            if contact_id is None:
                self.blocklist.add(_blocklist_hash(email))
                return False
        oid = st.resolve(int(contact_id)) if contact_id is not None else None
        obj = st.get(oid) if oid is not None else None
        if obj is None and oid is not None:
            obj = st.get(oid, archived=True)
        if obj is None:
            return False
        for etype in ENGAGEMENTS:
            es = self.stores[etype]
            for eid in self.associated("contacts", oid, etype) + self._archived_links(oid, etype):
                others = [c for c in self.associated(etype, eid, "contacts") if c != oid]
                eng = es.get(eid) or es.get(eid, archived=True)
                if eng is not None and not others:
                    es.purge(eng)
        for old in [g for g, to in st.gone.items() if st.resolve(g) == oid]:
            del st.gone[old]
            st.purged.add(old)
        for key in [k for k in self.links if k[0] == "contacts" and k[1] == oid]:
            for tid in list(self.links[key]):
                self.unlink("contacts", oid, key[2], tid)
        for addr in [obj.props.get("email"), *(obj.props.get("hs_additional_emails") or "").split(";")]:
            if addr:  # so a form or an import cannot re-create the person
                self.blocklist.add(_blocklist_hash(addr))
        st.purge(obj)
        sent = [e for e in self.outbox[:self.delivered] if e.get("objectId") != oid]
        self.outbox = sent + [e for e in self.outbox[self.delivered:] if e.get("objectId") != oid]
        self.delivered = len(sent)
        self._event("contacts", "privacyDeletion", oid, self.now_ms())
        return True

    def _archived_links(self, oid: int, etype: str) -> list[int]:
        es = self.stores[etype]
        ids = set(self.links.get(("contacts", oid, etype), ())) | set(self._reverse(etype).get(oid, ()))
        return sorted(i for i in ids if es.get(i, archived=True) is not None)

    def export(self) -> dict[str, Any]:
        """Every record the portal still holds, live or archived, with its associations (admin view)."""
        out: dict[str, Any] = {}
        for otype, st in self.stores.items():
            rows = []
            for archived in (False, True):
                for oid in st.ids(0, archived=archived):
                    obj = st.get(oid, archived=archived)
                    if obj is not None:
                        rows.append({"id": oid, "archived": archived, "properties": obj.props})
            out[otype] = rows
        out["webhook_outbox"] = self.outbox
        out["blocklist_hashes"] = sorted(self.blocklist)
        return out

    def touch(self, otype: str, ids: list[int], props: dict[str, Any] | None = None, *, at: int | None = None
              ) -> int:
        """Modify records as a user would in the UI, all in the same millisecond (bulk edits, imports)."""
        at = at if at is not None else self.now_ms()
        for oid in ids:
            self.update(otype, oid, props or {}, at=at)
        return at

    # --- webhooks ------------------------------------------------------------------------------
    def _event(self, otype: str, kind: str, oid: int, at: int, *, prop: str | None = None, value: Any = None,
               merged: list[int] | None = None) -> None:
        if otype not in ("contacts", "companies"):
            return
        ev: dict[str, Any] = {"eventId": next(self.event_seq), "subscriptionId": SUBSCRIPTIONS[kind],
                              "portalId": PORTAL_ID, "appId": APP_ID, "occurredAt": at,
                              "subscriptionType": f"{SINGULAR[otype]}.{kind}", "attemptNumber": 0,
                              "objectId": oid, "changeSource": "CRM"}
        if prop:
            ev.update({"propertyName": prop, "propertyValue": "" if value is None else str(value)})
        if merged:
            ev.update({"primaryObjectId": oid, "mergedObjectIds": merged, "newObjectId": oid,
                       "numberOfPropertiesMoved": 0})
        self.outbox.append(ev)

    async def deliver(self, url: str, *, max_events: int = 1000, duplicate_every: int = 0, shuffle: bool = False,
                      secret: str = CLIENT_SECRET, batch: int = 100) -> dict[str, Any]:
        """POST pending events to ``url`` in batches, signed like HubSpot; optionally re-send some
        (at-least-once delivery) and shuffle them (no ordering guarantee)."""
        import httpx

        with self.lock:
            pending = self.outbox[self.delivered:self.delivered + max_events]
            self.delivered += len(pending)
        events = list(pending)
        if duplicate_every:
            events += [dict(e, attemptNumber=1) for e in pending[::duplicate_every]]
        if shuffle:
            random.Random(self.seed_value).shuffle(events)
        statuses = []
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(0, len(events), batch):
                body = json.dumps(events[i:i + batch]).encode()
                ts = int(time.time() * 1000)
                headers = {"Content-Type": "application/json", "X-HubSpot-Request-Timestamp": str(ts),
                           "X-HubSpot-Signature-v3": sign_v3(secret, "POST", url, body, ts),
                           "User-Agent": "HubSpot Connect 2.0 (http://dev.hubspot.com/) (sandbox)"}
                resp = await client.post(url, content=body, headers=headers)
                statuses.append(resp.status_code)
        return {"sent": len(events), "requests": len(statuses), "statuses": statuses}

    # --- limits ---------------------------------------------------------------------------------
    def _usage_headers(self, now: float) -> dict[str, str]:
        lim = self.limits
        while self.window and self.window[0] <= now - lim.interval_s:
            self.window.popleft()
        daily = self.faults.daily_quota if self.faults.daily_quota is not None else lim.daily
        return {"X-HubSpot-RateLimit-Daily": str(daily),
                "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, daily - max(self.daily_used, self.calls_used))),
                "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(lim.interval_s * 1000)),
                "X-HubSpot-RateLimit-Max": str(lim.ten_secondly),
                "X-HubSpot-RateLimit-Remaining": str(max(0, lim.ten_secondly - len(self.window))),
                "X-HubSpot-RateLimit-Secondly": str(lim.ten_secondly // 10),
                "X-HubSpot-RateLimit-Secondly-Remaining": str(max(0, lim.ten_secondly // 10 - sum(
                    1 for t in self.window if t > now - 1)))}

    def _limit_response(self, policy: str, retry_after: int | None) -> Response:
        names = {"TEN_SECONDLY_ROLLING": "ten_secondly_rolling", "DAILY": "daily", "SECONDLY": "secondly"}
        body = {"status": "error", "message": f"You have reached your {names[policy]} limit.",
                "errorType": "RATE_LIMIT", "category": "RATE_LIMITS", "correlationId": str(uuid.uuid4()),
                "policyName": policy,
                "groupName": f"publicapi:{'crm-search' if policy == 'SECONDLY' else 'app'}:{APP_ID}"}
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return _json(body, 429, headers)

    def admit(self, path: str) -> tuple[Response | None, dict[str, str]]:
        """Count a request against the limits; a 429 response when one is exceeded."""
        now = time.monotonic()
        with self.lock:
            lim = self.limits
            headers = self._usage_headers(now)
            if not lim.enabled:
                self.daily_used += 1
                return None, headers
            if self.daily_used >= lim.daily:
                return self._limit_response("DAILY", None), headers
            if path.endswith("/search"):
                while self.search_window and self.search_window[0] <= now - 1:
                    self.search_window.popleft()
                if len(self.search_window) >= lim.search_per_second:
                    return self._limit_response("SECONDLY", 1), headers
                self.search_window.append(now)
            if len(self.window) >= lim.ten_secondly:
                wait = max(1, int(self.window[0] + lim.interval_s - now + 0.999))
                return self._limit_response("TEN_SECONDLY_ROLLING", wait), headers
            self.window.append(now)
            self.daily_used += 1
            return None, self._usage_headers(now)

    # --- routes ---------------------------------------------------------------------------------
    def routes(self, app: FastAPI) -> None:
        app.add_middleware(_LimitsMiddleware, sandbox=self)
        sb = self

        def otype_of(name: str) -> str:
            if name not in sb.stores:
                raise ApiError(400, "VALIDATION_ERROR", f"Unable to infer object type from: {name}")
            return name

        def handler(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def wrapped(request: Request) -> Response:
                body: Any = None
                if request.method in ("POST", "PATCH", "PUT"):
                    raw = await request.body()
                    try:
                        body = json.loads(raw) if raw else {}
                    except ValueError:
                        return _json(ApiError(400, "VALIDATION_ERROR", "Invalid input JSON").body(), 400)
                try:
                    with sb.lock:
                        out = fn(request, body, **request.path_params)
                except ApiError as e:
                    return _json(e.body(), e.status)
                if isinstance(out, Response):
                    return out
                status, payload = out
                return Response(status_code=status) if payload is None else _json(payload, status)

            return wrapped

        def props_param(request: Request, otype: str) -> list[str]:
            vals = request.query_params.getlist("properties")
            names = [p for v in vals for p in v.split(",") if p]
            return names or list(DEFAULT_PROPS.get(otype, ("hs_createdate", "hs_lastmodifieddate", "hs_object_id")))

        def render(otype: str, obj: Obj, props: list[str], *, assoc: list[str] = ()) -> dict[str, Any]:
            out: dict[str, Any] = {"id": str(obj.id), "properties": {p: obj.props.get(p) for p in props},
                                   "createdAt": iso(obj.created), "updatedAt": iso(obj.updated),
                                   "archived": obj.archived_at is not None}
            if obj.archived_at is not None:
                out["archivedAt"] = iso(obj.archived_at)
            if assoc:
                got = {}
                for t in assoc:
                    ids = sb.associated(otype, obj.id, t)
                    if ids:
                        got[t] = {"results": [{"id": str(i), "type": f"{SINGULAR[otype]}_to_{SINGULAR[t]}"}
                                              for i in ids]}
                if got:
                    out["associations"] = got
            return out

        def int_id(value: Any, otype: str) -> int:
            try:
                return int(str(value))
            except ValueError:
                raise ApiError(404, "OBJECT_NOT_FOUND", f"resource not found: {SINGULAR[otype]} id is not numeric") \
                    from None

        def stamps() -> dict[str, str]:
            t = iso(sb.now_ms())
            return {"startedAt": t, "completedAt": t, "status": "COMPLETE"}

        def batch_inputs(body: Any) -> list[dict[str, Any]]:
            inputs = (body or {}).get("inputs")
            if not isinstance(inputs, list):
                raise ApiError(400, "VALIDATION_ERROR", "inputs is required")
            if len(inputs) > BATCH_MAX:
                raise ApiError(400, "VALIDATION_ERROR", f"Batch size of {len(inputs)} exceeds the limit of "
                               f"{BATCH_MAX} inputs", context={"inputs": [str(len(inputs))]}, sub="TOO_MANY_INPUTS")
            return inputs

        def batch_reply(results: list[dict], errors: list[dict], ok: int = 200) -> tuple[int, dict]:
            out: dict[str, Any] = {**stamps(), "results": results}
            if errors:
                out.update({"numErrors": len(errors), "errors": errors})
                return 207, out
            return ok, out

        def input_error(e: ApiError, inp: dict[str, Any], ident: str | None = None) -> dict[str, Any]:
            ctx = dict(e.context or {})
            if inp.get("objectWriteTraceId"):
                ctx["objectWriteTraceId"] = [str(inp["objectWriteTraceId"])]
            if ident is not None:
                ctx.setdefault("ids", [ident])
            return {"status": "error", "category": e.category, "message": e.message, "context": ctx,
                    "errors": [{"message": e.message, "code": e.sub or e.category,
                                "context": {k: v for k, v in ctx.items() if k == "propertyName"}}],
                    "links": {}}

        # list, create
        @handler
        def list_objects(request: Request, body: Any, otype: str):
            otype = otype_of(otype)
            limit = int(request.query_params.get("limit", 10))
            if limit > 100:
                raise ApiError(400, "VALIDATION_ERROR", "limit may not exceed 100")
            after = int(request.query_params.get("after") or 0)
            archived = request.query_params.get("archived", "false").lower() == "true"
            props = props_param(request, otype)
            assoc = [a for v in request.query_params.getlist("associations") for a in v.split(",")
                     if a in sb.stores]
            st = sb.stores[otype]
            ids = list(itertools.islice(st.ids(after, archived=archived), limit + 1))
            results = [render(otype, st.get(i, archived=archived), props, assoc=assoc) for i in ids[:limit]]
            out: dict[str, Any] = {"results": results}
            if len(ids) > limit:
                nxt = str(ids[limit - 1])
                out["paging"] = {"next": {"after": nxt, "link": f"?after={nxt}"}}
            return 200, out

        @handler
        def create_one(request: Request, body: Any, otype: str):
            otype = otype_of(otype)
            obj = sb.create(otype, body.get("properties") or {})
            for a in body.get("associations") or []:
                apply_assoc_spec(otype, obj.id, a)
            return 201, render(otype, obj, list(PROPS[otype]))

        def apply_assoc_spec(otype: str, oid: int, spec: dict[str, Any]) -> None:
            tid = int_id((spec.get("to") or {}).get("id"), "contacts")
            for ttype in sb.stores:
                if any(ASSOC_TYPE.get((otype, ttype)) == t.get("associationTypeId") for t in spec.get("types", [])):
                    if sb.stores[ttype].get(tid) is None:
                        raise ApiError(400, "VALIDATION_ERROR", f"{SINGULAR[ttype]} {tid} does not exist")
                    sb.link(otype, oid, ttype, tid)
                    return
            raise ApiError(400, "VALIDATION_ERROR", "unknown association type", sub="INVALID_ASSOCIATION_TYPE")

        # single record
        def lookup(request: Request, otype: str, object_id: str) -> tuple[Store, int]:
            st = sb.stores[otype]
            id_prop = request.query_params.get("idProperty")
            if id_prop:
                if id_prop not in UNIQUE[otype]:
                    raise ApiError(400, "VALIDATION_ERROR", f"{id_prop} is not a unique property")
                oid = st.unique_index(id_prop).get(object_id.strip().lower() if id_prop == "email" else object_id)
                if oid is None:
                    raise ApiError(404, "OBJECT_NOT_FOUND", f"resource not found: {SINGULAR[otype]}")
                return st, oid
            return st, st.resolve(int_id(object_id, otype))

        @handler
        def get_one(request: Request, body: Any, otype: str, object_id: str):
            otype = otype_of(otype)
            st, oid = lookup(request, otype, object_id)
            archived = request.query_params.get("archived", "false").lower() == "true"
            obj = st.get(oid, archived=archived)
            if obj is None:
                raise ApiError(404, "OBJECT_NOT_FOUND", f"resource not found: {SINGULAR[otype]} {object_id}")
            assoc = [a for v in request.query_params.getlist("associations") for a in v.split(",") if a in sb.stores]
            return 200, render(otype, obj, props_param(request, otype), assoc=assoc)

        @handler
        def patch_one(request: Request, body: Any, otype: str, object_id: str):
            otype = otype_of(otype)
            _, oid = lookup(request, otype, object_id)
            obj = sb.update(otype, oid, body.get("properties") or {})
            return 200, render(otype, obj, list(PROPS[otype]))

        @handler
        def delete_one(request: Request, body: Any, otype: str, object_id: str):
            otype = otype_of(otype)
            sb.archive(otype, sb.stores[otype].resolve(int_id(object_id, otype)))
            return 204, None

        # batch
        @handler
        def batch_read(request: Request, body: Any, otype: str):
            otype = otype_of(otype)
            inputs = batch_inputs(body)
            st = sb.stores[otype]
            props = body.get("properties") or list(DEFAULT_PROPS.get(otype, ("hs_object_id",)))
            id_prop = body.get("idProperty")
            archived = request.query_params.get("archived", "false").lower() == "true"
            results, missing = [], []
            for inp in inputs:
                key = str(inp.get("id", ""))
                if id_prop:
                    oid = st.unique_index(id_prop).get(key.strip().lower() if id_prop == "email" else key)
                else:
                    oid = st.resolve(int(key)) if key.isdigit() else None
                obj = st.get(oid, archived=archived) if oid is not None else None
                if obj is None:
                    missing.append(key)
                else:
                    results.append(render(otype, obj, props))
            errors = []
            if missing:
                errors.append({"status": "error", "category": "OBJECT_NOT_FOUND",
                               "message": "Could not get some " + otype + " objects, they may be deleted or not exist.",
                               "context": {"ids": missing}, "errors": [], "links": {}})
            return batch_reply(results, errors)

        @handler
        def batch_create(request: Request, body: Any, otype: str):
            otype = otype_of(otype)
            results, errors = [], []
            for inp in batch_inputs(body):
                try:
                    obj = sb.create(otype, inp.get("properties") or {})
                    for a in inp.get("associations") or []:
                        apply_assoc_spec(otype, obj.id, a)
                    r = render(otype, obj, list(PROPS[otype]))
                    if inp.get("objectWriteTraceId"):
                        r["objectWriteTraceId"] = str(inp["objectWriteTraceId"])
                    results.append(r)
                except ApiError as e:
                    errors.append(input_error(e, inp))
            return batch_reply(results, errors, ok=201)

        @handler
        def batch_update(request: Request, body: Any, otype: str):
            otype = otype_of(otype)
            results, errors = [], []
            for inp in batch_inputs(body):
                ident = str(inp.get("id", ""))
                try:
                    _, oid = lookup_input(otype, inp)
                    obj = sb.update(otype, oid, inp.get("properties") or {})
                    r = render(otype, obj, list(PROPS[otype]))
                    if inp.get("objectWriteTraceId"):
                        r["objectWriteTraceId"] = str(inp["objectWriteTraceId"])
                    results.append(r)
                except ApiError as e:
                    errors.append(input_error(e, inp, ident))
            return batch_reply(results, errors)

        def lookup_input(otype: str, inp: dict[str, Any]) -> tuple[Store, int]:
            st = sb.stores[otype]
            ident = str(inp.get("id", ""))
            if inp.get("idProperty"):
                oid = st.unique_index(inp["idProperty"]).get(ident)
                if oid is None:
                    raise ApiError(404, "OBJECT_NOT_FOUND", f"resource not found: {SINGULAR[otype]}")
                return st, oid
            if not ident.isdigit():
                raise ApiError(404, "OBJECT_NOT_FOUND", f"resource not found: {SINGULAR[otype]}")
            return st, st.resolve(int(ident))

        @handler
        def batch_upsert(request: Request, body: Any, otype: str):
            otype = otype_of(otype)
            st = sb.stores[otype]
            inputs = batch_inputs(body)
            results, errors = [], []
            seen: set[tuple[str, str]] = set()
            for inp in inputs:
                prop, ident = inp.get("idProperty"), str(inp.get("id", ""))
                try:
                    if prop not in UNIQUE[otype]:
                        raise ApiError(400, "VALIDATION_ERROR", f"idProperty {prop} is not a unique property",
                                       context={"propertyName": [str(prop)]}, sub="INVALID_ID_PROPERTY")
                    key = ident.strip().lower() if prop == "email" else ident
                    if not key:
                        raise ApiError(400, "VALIDATION_ERROR", f"{prop} value is required",
                                       context={"propertyName": [prop]})
                    if (prop, key) in seen:
                        raise ApiError(400, "VALIDATION_ERROR", "Duplicate IDs found in batch input",
                                       context={"ids": [key]}, sub="DUPLICATE_ID")
                    seen.add((prop, key))
                    oid = st.unique_index(prop).get(key)
                    props = {**(inp.get("properties") or {}), prop: key}
                    is_new = oid is None
                    obj = sb.create(otype, props) if is_new else sb.update(otype, oid, props)
                    r = {**render(otype, obj, list(PROPS[otype])), "new": is_new}
                    if inp.get("objectWriteTraceId"):
                        r["objectWriteTraceId"] = str(inp["objectWriteTraceId"])
                    results.append(r)
                except ApiError as e:
                    errors.append(input_error(e, inp))
            return batch_reply(results, errors)

        @handler
        def batch_archive(request: Request, body: Any, otype: str):
            otype = otype_of(otype)
            for inp in batch_inputs(body):
                key = str(inp.get("id", ""))
                if key.isdigit():
                    sb.archive(otype, sb.stores[otype].resolve(int(key)))
            return 204, None

        # search
        @handler
        def search(request: Request, body: Any, otype: str):
            otype = otype_of(otype)
            return 200, sb.search(otype, body or {})

        @handler
        def merge(request: Request, body: Any, otype: str):
            otype = otype_of(otype)
            if otype not in ("contacts", "companies"):
                raise ApiError(404, "OBJECT_NOT_FOUND", "merge is not supported for this object type")
            a = int_id(body.get("primaryObjectId"), otype)
            b = int_id(body.get("objectIdToMerge"), otype)
            return 200, render(otype, sb.merge(otype, a, b), list(PROPS[otype]))

        @handler
        def gdpr_delete(request: Request, body: Any, otype: str):
            if otype != "contacts":
                raise ApiError(404, "OBJECT_NOT_FOUND", "GDPR delete exists for contacts only")
            ident = str((body or {}).get("objectId") or "")
            if not ident:
                raise ApiError(400, "VALIDATION_ERROR", "objectId is required", context={"objectId": ["missing"]})
            if (body or {}).get("idProperty") == "email":
                sb.gdpr_delete(email=ident)
            elif not sb.gdpr_delete(int_id(ident, otype)):
                raise ApiError(404, "OBJECT_NOT_FOUND", f"resource not found: contact {ident}")
            return 204, None

        # associations v4
        @handler
        def assoc_list(request: Request, body: Any, otype: str, object_id: str, to_type: str):
            otype, to_type = otype_of(otype), otype_of(to_type)
            oid = sb.stores[otype].resolve(int_id(object_id, otype))
            if sb.stores[otype].get(oid) is None:
                raise ApiError(404, "OBJECT_NOT_FOUND", f"resource not found: {SINGULAR[otype]} {object_id}")
            limit = min(int(request.query_params.get("limit", 500)), 500)
            after = int(request.query_params.get("after") or 0)
            ids = [i for i in sb.associated(otype, oid, to_type) if i > after]
            out: dict[str, Any] = {"results": [assoc_item(otype, to_type, i) for i in ids[:limit]]}
            if len(ids) > limit:
                out["paging"] = {"next": {"after": str(ids[limit - 1])}}
            return 200, out

        def assoc_item(ftype: str, ttype: str, tid: int) -> dict[str, Any]:
            return {"toObjectId": str(tid), "associationTypes": [
                {"category": "HUBSPOT_DEFINED", "typeId": ASSOC_TYPE.get((ftype, ttype), 1)}]}

        @handler
        def assoc_put_default(request: Request, body: Any, from_type: str, from_id: str, to_type: str, to_id: str):
            ftype, ttype = otype_of(from_type), otype_of(to_type)
            fid, tid = int_id(from_id, ftype), int_id(to_id, ttype)
            if sb.stores[ftype].get(fid) is None or sb.stores[ttype].get(tid) is None:
                raise ApiError(404, "OBJECT_NOT_FOUND", "resource not found")
            sb.link(ftype, fid, ttype, tid)
            return 200, {**stamps(), "results": [default_assoc(ftype, fid, ttype, tid)]}

        def default_assoc(ftype: str, fid: int, ttype: str, tid: int) -> dict[str, Any]:
            return {"from": {"id": str(fid)}, "to": {"id": str(tid)},
                    "associationSpec": {"associationCategory": "HUBSPOT_DEFINED",
                                        "associationTypeId": ASSOC_TYPE.get((ftype, ttype), 1)}}

        @handler
        def assoc_batch_read(request: Request, body: Any, from_type: str, to_type: str):
            ftype, ttype = otype_of(from_type), otype_of(to_type)
            inputs = (body or {}).get("inputs") or []
            if len(inputs) > ASSOC_READ_MAX:
                raise ApiError(400, "VALIDATION_ERROR", f"Batch read may not exceed {ASSOC_READ_MAX} inputs",
                               sub="TOO_MANY_INPUTS")
            results, missing = [], []
            for inp in inputs:
                key = str(inp.get("id", ""))
                fid = sb.stores[ftype].resolve(int(key)) if key.isdigit() else -1
                if sb.stores[ftype].get(fid) is None:
                    missing.append(key)
                    continue
                ids = sb.associated(ftype, fid, ttype)
                if ids:
                    results.append({"from": {"id": key}, "to": [assoc_item(ftype, ttype, i) for i in ids]})
            errors = [{"status": "error", "category": "OBJECT_NOT_FOUND", "message": "No such objects",
                       "context": {"fromObjectId": missing}, "errors": [], "links": {}}] if missing else []
            return batch_reply(results, errors)

        @handler
        def assoc_batch_default(request: Request, body: Any, from_type: str, to_type: str):
            ftype, ttype = otype_of(from_type), otype_of(to_type)
            inputs = (body or {}).get("inputs") or []
            if len(inputs) > ASSOC_WRITE_MAX:
                raise ApiError(400, "VALIDATION_ERROR", f"Batch may not exceed {ASSOC_WRITE_MAX} inputs",
                               sub="TOO_MANY_INPUTS")
            results, errors = [], []
            for inp in inputs:
                f, t = str((inp.get("from") or {}).get("id", "")), str((inp.get("to") or {}).get("id", ""))
                fid = int(f) if f.isdigit() else -1
                tid = sb.stores[ttype].resolve(int(t)) if t.isdigit() else -1
                if sb.stores[ftype].get(fid) is None or sb.stores[ttype].get(tid) is None:
                    errors.append({"status": "error", "category": "OBJECT_NOT_FOUND",
                                   "message": "One or more objects do not exist",
                                   "context": {"fromObjectId": [f], "toObjectId": [t]}, "errors": [], "links": {}})
                    continue
                sb.link(ftype, fid, ttype, tid)
                results.append(default_assoc(ftype, fid, ttype, tid))
            out = {**stamps(), "results": results}
            if errors:
                out.update({"numErrors": len(errors), "errors": errors})
            return 200, out

        @handler
        def assoc_batch_archive(request: Request, body: Any, from_type: str, to_type: str):
            ftype, ttype = otype_of(from_type), otype_of(to_type)
            for inp in (body or {}).get("inputs") or []:
                f = str((inp.get("from") or {}).get("id", ""))
                for t in inp.get("to") or []:
                    tid = str(t.get("id", ""))
                    if f.isdigit() and tid.isdigit():
                        sb.unlink(ftype, int(f), ttype, int(tid))
            return 204, None

        obj = "/crm/v3/objects/{otype}"
        app.add_api_route(obj, list_objects, methods=["GET"])
        app.add_api_route(obj, create_one, methods=["POST"])
        for verb, fn in (("read", batch_read), ("create", batch_create), ("update", batch_update),
                         ("upsert", batch_upsert), ("archive", batch_archive)):
            app.add_api_route(f"{obj}/batch/{verb}", fn, methods=["POST"])
        app.add_api_route(f"{obj}/search", search, methods=["POST"])
        app.add_api_route(f"{obj}/merge", merge, methods=["POST"])
        app.add_api_route(f"{obj}/gdpr-delete", gdpr_delete, methods=["POST"])
        app.add_api_route(obj + "/{object_id}", get_one, methods=["GET"])
        app.add_api_route(obj + "/{object_id}", patch_one, methods=["PATCH"])
        app.add_api_route(obj + "/{object_id}", delete_one, methods=["DELETE"])
        app.add_api_route("/crm/v4/objects/{otype}/{object_id}/associations/{to_type}", assoc_list, methods=["GET"])
        app.add_api_route("/crm/v4/objects/{from_type}/{from_id}/associations/default/{to_type}/{to_id}",
                          assoc_put_default, methods=["PUT"])
        a4 = "/crm/v4/associations/{from_type}/{to_type}/batch"
        app.add_api_route(f"{a4}/read", assoc_batch_read, methods=["POST"])
        app.add_api_route(f"{a4}/associate/default", assoc_batch_default, methods=["POST"])
        app.add_api_route(f"{a4}/archive", assoc_batch_archive, methods=["POST"])
        self._admin_routes(app, handler)

    def _admin_routes(self, app: FastAPI, handler: Callable[..., Any]) -> None:
        """Changes "as a user would make them in HubSpot's UI", for tests and the demo."""
        sb = self

        @handler
        def edit(request: Request, body: Any, otype: str, object_id: str):
            obj = sb.update(otype, sb.stores[otype].resolve(int(object_id)), body.get("properties") or {})
            return 200, {"id": str(obj.id), "updatedAt": iso(obj.updated)}

        @handler
        def merge(request: Request, body: Any, otype: str):
            obj = sb.merge(otype, int(body["primaryObjectId"]), int(body["objectIdToMerge"]))
            return 200, {"id": str(obj.id), "hs_merged_object_ids": obj.props.get("hs_merged_object_ids")}

        @handler
        def delete(request: Request, body: Any, otype: str, object_id: str):
            return 200, {"archived": sb.archive(otype, int(object_id))}

        @handler
        def export(request: Request, body: Any):
            return 200, sb.export()

        @handler
        def limits(request: Request, body: Any):
            sb.limits = Limits(**{**asdict(sb.limits), **(body or {})})
            sb.window.clear()
            sb.search_window.clear()
            return 200, asdict(sb.limits)

        @handler
        def subscribe(request: Request, body: Any):
            sb.subscriber = body.get("url")
            return 200, {"url": sb.subscriber, "pending": len(sb.outbox) - sb.delivered}

        async def deliver(request: Request) -> Response:
            raw = await request.body()
            opts = json.loads(raw) if raw else {}
            url = opts.get("url") or sb.subscriber
            if not url:
                return _json({"message": "no subscriber: POST /_sandbox/webhooks/subscribe first"}, 400)
            out = await sb.deliver(url, max_events=int(opts.get("max", 1000)),
                                   duplicate_every=int(opts.get("duplicate_every", 0)),
                                   shuffle=bool(opts.get("shuffle", False)))
            return _json(out, 200)

        app.add_api_route("/_sandbox/objects/{otype}/{object_id}", edit, methods=["PATCH"], include_in_schema=False)
        app.add_api_route("/_sandbox/objects/{otype}/{object_id}", delete, methods=["DELETE"], include_in_schema=False)
        app.add_api_route("/_sandbox/objects/{otype}/merge", merge, methods=["POST"], include_in_schema=False)
        app.add_api_route("/_sandbox/limits", limits, methods=["POST"], include_in_schema=False)
        app.add_api_route("/_sandbox/export", export, methods=["GET"], include_in_schema=False)
        app.add_api_route("/_sandbox/webhooks/subscribe", subscribe, methods=["POST"], include_in_schema=False)
        app.add_api_route("/_sandbox/webhooks/deliver", deliver, methods=["POST"], include_in_schema=False)

    # --- search ---------------------------------------------------------------------------------
    def search(self, otype: str, body: dict[str, Any]) -> dict[str, Any]:
        limit = int(body.get("limit") or 10)
        if limit > 200:
            raise ApiError(400, "VALIDATION_ERROR", "limit may not exceed 200", context={"limit": [str(limit)]})
        after = int(body.get("after") or 0)
        if after >= SEARCH_CAP:
            raise ApiError(400, "VALIDATION_ERROR", f"Paging past {SEARCH_CAP} results is not supported; "
                           "narrow the search with filters", context={"after": [str(after)]})
        groups = body.get("filterGroups") or []
        nfilters = sum(len(g.get("filters") or []) for g in groups)
        if len(groups) > 5 or any(len(g.get("filters") or []) > 6 for g in groups) or nfilters > 18:
            raise ApiError(400, "VALIDATION_ERROR", "Too many filters: at most 5 filterGroups of 6 filters, "
                           "18 filters in all")
        if body.get("query"):
            raise ApiError(400, "VALIDATION_ERROR", "full-text query is not supported by this sandbox")
        sorts = body.get("sorts") or []
        if len(sorts) > 1:
            raise ApiError(400, "VALIDATION_ERROR", "Only one sort is supported")
        sort_prop, desc = ts_prop(otype), False
        if sorts:
            s = sorts[0]
            if isinstance(s, str):
                sort_prop, desc = s.lstrip("-"), s.startswith("-")
            else:
                sort_prop, desc = s.get("propertyName", ""), s.get("direction", "ASCENDING") == "DESCENDING"
        st = self.stores[otype]
        props = body.get("properties") or list(DEFAULT_PROPS.get(otype, ("hs_createdate", "hs_lastmodifieddate",
                                                                         "hs_object_id")))
        tsp = ts_prop(otype)
        preds = [[self._predicate(otype, f) for f in g.get("filters") or []] for g in groups]
        index_only = all(f.get("propertyName") in (tsp, "hs_object_id") for g in groups for f in g.get("filters") or [])
        lo, hi = self._bounds(groups, tsp)
        limit = min(limit, SEARCH_CAP - after)

        def match(ts: int, oid: int) -> Obj | None | bool:
            if index_only:
                return not preds or any(all(p(None, ts, oid) for p in g) for g in preds)
            obj = st.get(oid)
            return obj if obj is not None and (not preds or any(all(p(obj, ts, oid) for p in g) for g in preds)) \
                else None

        if sort_prop not in (tsp, "hs_object_id") or desc:
            hits = [oid for ts, oid in self._window(st, lo, hi) if match(ts, oid)]
            objs = [st.get(o) for o in hits]
            objs.sort(key=lambda o: ((o.props.get(sort_prop) or ""), o.id), reverse=desc)
            total, page = len(objs), objs[after:after + limit]
        else:
            source: Iterator[tuple[int, int]] = self._window(st, lo, hi)
            if sort_prop == "hs_object_id":
                source = iter(sorted(source, key=lambda p: p[1]))
            total = self._fast_total(st, groups, tsp) if index_only else None
            page_ids, count = [], 0
            for ts, oid in source:
                if not match(ts, oid):
                    continue
                if after <= count < after + limit:
                    page_ids.append(oid)
                count += 1
                if total is not None and count >= after + limit:
                    break
            total = count if total is None else total
            page = [st.get(o) for o in page_ids]
        results = []
        for o in page:
            results.append({"id": str(o.id), "properties": {p: o.props.get(p) for p in props},
                            "createdAt": iso(o.created), "updatedAt": iso(o.updated), "archived": False})
        out: dict[str, Any] = {"total": total, "results": results}
        if after + limit < min(total, SEARCH_CAP):
            out["paging"] = {"next": {"after": str(after + limit), "link": f"?after={after + limit}"}}
        return out

    @staticmethod
    def _window(st: Store, lo: int | None, hi: int | None) -> Iterator[tuple[int, int]]:
        for ts, oid in st.by_ts(lo):
            if hi is not None and ts > hi:
                return
            yield ts, oid

    @staticmethod
    def _bounds(groups: list[dict[str, Any]], tsp: str) -> tuple[int | None, int | None]:
        """The widest [lo, hi] timestamp range any filter group can match (None = unbounded)."""
        los, his = [], []
        for g in groups:
            lo = hi = None
            for f in g.get("filters") or []:
                if f.get("propertyName") != tsp:
                    continue
                op, v = f.get("operator"), f.get("value")
                if op in ("GT", "GTE", "EQ", "BETWEEN"):
                    lo = max(lo or 0, parse_ms(v))
                if op in ("LT", "LTE", "EQ"):
                    hi = parse_ms(v) if hi is None else min(hi, parse_ms(v))
                if op == "BETWEEN":
                    hi = parse_ms(f.get("highValue")) if hi is None else min(hi, parse_ms(f.get("highValue")))
            los.append(lo)
            his.append(hi)
        if not groups:
            return None, None
        lo = None if any(x is None for x in los) else min(los)
        hi = None if any(x is None for x in his) else max(his)
        return lo, hi

    def _fast_total(self, st: Store, groups: list[dict[str, Any]], tsp: str) -> int | None:
        """Count by bisecting the index when the query is one group of timestamp bounds."""
        if len(groups) > 1:
            return None
        lo = hi = None
        lo_incl = hi_incl = True
        for f in (groups[0].get("filters") or []) if groups else []:
            if f.get("propertyName") != tsp:
                return None
            op, v = f.get("operator"), f.get("value")
            if op in ("GT", "GTE"):
                lo, lo_incl = parse_ms(v), op == "GTE"
            elif op in ("LT", "LTE"):
                hi, hi_incl = parse_ms(v), op == "LTE"
            elif op == "EQ":
                lo = hi = parse_ms(v)
            elif op == "BETWEEN":
                lo, hi = parse_ms(v), parse_ms(f.get("highValue"))
            else:
                return None
        return st.count_range(lo, lo_incl, hi, hi_incl)

    def _predicate(self, otype: str, f: dict[str, Any]) -> Callable[[Obj | None, int, int], bool]:
        prop, op = f.get("propertyName"), f.get("operator")
        if prop not in PROPS[otype]:
            raise ApiError(400, "VALIDATION_ERROR", f'There was a problem with the request: property "{prop}" '
                           "does not exist", context={"propertyName": [str(prop)]})
        tsp = ts_prop(otype)
        is_time = prop in (tsp, "createdate", "hs_createdate", "hs_timestamp")
        numeric = is_time or prop in ("hs_object_id", "hs_call_duration")

        def conv(v: Any) -> Any:
            if v is None:
                return None
            if is_time:
                return parse_ms(v)
            if numeric:
                return float(v)
            return str(v).lower()

        value, high = conv(f.get("value")), conv(f.get("highValue"))
        values = {conv(v) for v in f.get("values") or []}

        def get(obj: Obj | None, ts: int, oid: int) -> Any:
            if prop == tsp:
                return ts
            if prop == "hs_object_id":
                return float(oid)
            raw = obj.props.get(prop) if obj is not None else None
            if raw in (None, ""):
                return None
            try:
                return conv(raw)
            except ValueError:
                return None

        ops: dict[str, Callable[[Any], bool]] = {
            "EQ": lambda x: x is not None and x == value, "NEQ": lambda x: x != value,
            "GT": lambda x: x is not None and x > value, "GTE": lambda x: x is not None and x >= value,
            "LT": lambda x: x is not None and x < value, "LTE": lambda x: x is not None and x <= value,
            "BETWEEN": lambda x: x is not None and value <= x <= high,
            "IN": lambda x: x in values, "NOT_IN": lambda x: x not in values,
            "HAS_PROPERTY": lambda x: x is not None, "NOT_HAS_PROPERTY": lambda x: x is None,
            "CONTAINS_TOKEN": lambda x: x is not None and str(value).strip("*") in str(x),
            "NOT_CONTAINS_TOKEN": lambda x: x is None or str(value).strip("*") not in str(x),
        }
        if op not in ops:
            raise ApiError(400, "VALIDATION_ERROR", f"operator {op} is not supported")
        test = ops[op]
        return lambda obj, ts, oid: test(get(obj, ts, oid))


class _LimitsMiddleware:
    """Rate limits in front of the vendor routes (after the framework's injected faults)."""

    def __init__(self, app: Any, sandbox: HubSpotSandbox):
        self.app = app
        self.sb = sandbox

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox/"):
            return await self.app(scope, receive, send)
        refusal, headers = self.sb.admit(scope["path"])
        if refusal is not None:
            for k, v in headers.items():
                refusal.headers.setdefault(k, v)
            return await refusal(scope, receive, send)
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + raw}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _json(payload: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), status_code=status, media_type="application/json",
                    headers=headers)


