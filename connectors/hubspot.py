"""HubSpot CRM through hubspot-api-client 12 (the real SDK, pointed at ``credentials.host``).

Reads search each object type by last-modified time with keyset paging: every page is a fresh
query starting at the last timestamp seen, so no query ever pages toward the 10,000-result cap and
a record modified mid-read cannot shift a later one out of view. A page filled by one timestamp is
walked by id. Deleted records come from the archived list, merges from ``hs_merged_object_ids``.
Writes upsert on a unique property in batches of 100 and tie every 207 result back to its input
through ``objectWriteTraceId``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import urllib3
from hubspot import HubSpot
from hubspot.crm.associations.v4 import models as assoc_models
from hubspot.crm.contacts.models import PublicGdprDeleteInput, PublicMergeInput
from hubspot.crm.objects import models as obj_models
from urllib3.util.retry import Retry

from connectors.base import Connector, StreamSpec, chunks
from connectors.credentials import HubSpotCredentials
from connectors.errors import (
    AuthError,
    ConnectorError,
    NotFoundError,
    QuotaExhaustedError,
    TransientError,
    error_for,
)
from connectors.http import RateBudget, RetryPolicy, parse_retry_after, with_retries
from omnisync.privacy import mask_text
from omnisync.records import Cursor, OutboundRecord, Page, SourceRecord, WriteOutcome, WriteStatus

SEARCH_PAGE = 200
BATCH = 100
ASSOC_READ = 1000
ASSOC_WRITE = 2000
ENGAGEMENTS = ("calls", "emails", "notes", "communications")
ENGAGEMENT_TO_CONTACT = {"calls": "call_to_contact", "emails": "email_to_contact", "notes": "note_to_contact",
                         "communications": "communication_to_contact"}
PROPERTIES = {
    "contacts": ["email", "firstname", "lastname", "phone", "mobilephone", "company", "jobtitle", "date_of_birth",
                 "address", "city", "state", "zip", "country", "hs_language", "lifecyclestage", "hs_email_optout",
                 "hs_additional_emails", "createdate", "lastmodifieddate", "hs_object_id", "hs_merged_object_ids",
                 "omnisync_sms_opt_out", "omnisync_do_not_call", "omnisync_golden_id"],
    "companies": ["name", "domain", "phone", "city", "state", "country", "createdate", "hs_lastmodifieddate",
                  "hs_object_id", "hs_merged_object_ids"],
    "calls": ["hs_timestamp", "hs_call_title", "hs_call_body", "hs_call_direction", "hs_call_duration",
              "hs_call_disposition", "hs_call_status", "hs_call_from_number", "hs_call_to_number",
              "hubspot_owner_id", "omnisync_interaction_id", "hs_createdate", "hs_lastmodifieddate", "hs_object_id"],
    "emails": ["hs_timestamp", "hs_email_direction", "hs_email_subject", "hs_email_text", "hs_email_status",
               "hubspot_owner_id", "omnisync_interaction_id", "hs_createdate", "hs_lastmodifieddate", "hs_object_id"],
    "notes": ["hs_timestamp", "hs_note_body", "hubspot_owner_id", "omnisync_interaction_id", "hs_createdate",
              "hs_lastmodifieddate", "hs_object_id"],
    "communications": ["hs_timestamp", "hs_communication_channel_type", "hs_communication_logged_from",
                       "hs_communication_body", "hubspot_owner_id", "omnisync_interaction_id", "hs_createdate",
                       "hs_lastmodifieddate", "hs_object_id"],
}
RETRYABLE_CATEGORIES = {"RATE_LIMITS", "INTERNAL_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT"}
_search_budgets: dict[str, RateBudget] = {}
_search_lock = threading.Lock()


def ts_prop(otype: str) -> str:
    return "lastmodifieddate" if otype == "contacts" else "hs_lastmodifieddate"


def _ms(value: Any) -> int:
    s = str(value)
    if s.isdigit():
        return int(s)
    return int(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def search_budget_for(host: str) -> RateBudget:
    """Search has its own per-account limit (about 5 requests/s); one bucket per host in this process.

    Burst 1 at 4/s keeps any rolling second at or under 5 requests.
    """
    with _search_lock:
        if host not in _search_budgets:
            _search_budgets[host] = RateBudget(4.0, 1)
        return _search_budgets[host]


class HubSpotConnector(Connector):
    system = "hubspot"
    streams = {
        "contacts": StreamSpec("contacts", "profile", "contacts", page_size=SEARCH_PAGE, write_batch=BATCH),
        "companies": StreamSpec("companies", "account", "companies", page_size=SEARCH_PAGE, write_batch=BATCH),
        **{t: StreamSpec(t, "interaction", t, page_size=SEARCH_PAGE, write_batch=BATCH) for t in ENGAGEMENTS},
        # Notes are agents' free text, not customer contacts: omnisync writes them, never syncs them in.
        "notes": StreamSpec("notes", "interaction", "notes", page_size=SEARCH_PAGE, write_batch=BATCH,
                            incremental=False),
    }

    def __init__(self, credentials: HubSpotCredentials, *, budget: RateBudget | None = None,
                 policy: RetryPolicy | None = None, timeout: float = 30.0,
                 search_budget: RateBudget | None = None):
        self.creds = credentials
        self.budget = budget or RateBudget(10.0, 100)
        self.search_budget = search_budget or search_budget_for(credentials.host)
        self.policy = policy or RetryPolicy()
        self.timeout = (min(timeout, 10.0), timeout)
        self.calls: Counter = Counter()
        self.retries = 0
        self.daily_remaining: int | None = None
        # No urllib3-level retries: they would be invisible to the budget and the call count, and
        # an exhausted one surfaces as MaxRetryError instead of ApiException (specs/README.md).
        client = HubSpot(access_token=credentials.access_token.get_secret_value(),
                         host=credentials.host.rstrip("/"), retry=Retry(total=0, redirect=0, raise_on_status=False))
        # Each SDK property builds a new ApiClient (and connection pool): build each one once.
        self.objects = self._instrument(client.crm.objects.basic_api)
        self.batch = self._instrument(client.crm.objects.batch_api)
        self.searcher = self._instrument(client.crm.objects.search_api)
        self.contacts_api = self._instrument(client.crm.contacts.basic_api)
        self.assoc = self._instrument(client.crm.associations.v4.batch_api)

    # --- plumbing ------------------------------------------------------------------------------
    @property
    def api_calls(self) -> int:
        return sum(self.calls.values())

    def close(self) -> None:
        for api in (self.objects, self.batch, self.searcher, self.contacts_api, self.assoc):
            api.api_client.rest_client.pool_manager.clear()

    def _instrument(self, api: Any) -> Any:
        rest = api.api_client.rest_client
        send = rest.request

        def request(method: str, url: str, *args: Any, **kw: Any) -> Any:
            if self.daily_remaining == 0:
                raise QuotaExhaustedError("daily API limit reached (usage headers report 0 remaining)",
                                          system=self.system, status=429, code="DAILY", resume_at=_next_midnight())
            if url.split("?")[0].endswith("/search"):
                self.search_budget.acquire()
            self.budget.acquire()
            self.calls[f"{method} {_endpoint(url)}"] += 1
            try:
                resp = send(method, url, *args, **kw)
            except Exception as e:  # ApiException carries headers too: feed the budget either way
                self._observe(getattr(e, "headers", None))
                raise
            self._observe(resp.headers)
            return resp

        rest.request = request
        return api

    def _observe(self, headers: Any) -> None:
        if not headers:
            return
        remaining = headers.get("X-HubSpot-RateLimit-Remaining")
        interval = headers.get("X-HubSpot-RateLimit-Interval-Milliseconds")
        daily = headers.get("X-HubSpot-RateLimit-Daily-Remaining")
        if daily is not None and daily.isdigit():
            self.daily_remaining = int(daily)
        if remaining is not None and remaining.isdigit():
            self.budget.observe(int(remaining), int(interval) / 1000 if interval and interval.isdigit() else 10.0)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """One SDK call with retries; the decoded JSON body (None for 204)."""
        def once() -> Any:
            try:
                resp = fn()
            except urllib3.exceptions.HTTPError as e:
                raise TransientError(f"{what}: connection failed ({type(e).__name__})", system=self.system) from e
            except ConnectorError:
                raise
            except Exception as e:
                if hasattr(e, "status") and hasattr(e, "body"):
                    raise self._translate(e, what) from None
                raise
            try:
                data = resp.data
            finally:
                resp.release_conn()
            if not data:
                return None
            try:
                return json.loads(data)
            except ValueError as e:
                raise TransientError(f"{what}: unreadable JSON (truncated response)", system=self.system) from e

        def on_retry(_: BaseException) -> None:
            self.retries += 1

        return with_retries(once, policy=self.policy, on_retry=on_retry)

    def _translate(self, e: Any, what: str) -> ConnectorError:
        status = int(e.status or 0)
        if status == 0:
            return TransientError(f"{what}: {type(e).__name__}", system=self.system)
        body = _json_body(e.body)
        headers = e.headers or {}
        code = body.get("policyName") if status == 429 else (body.get("subCategory") or body.get("category"))
        props = ", ".join((body.get("context") or {}).get("propertyName") or [])
        message = f"{what} failed" + (f" on property {props}" if props else "")
        if status >= 400 and status != 429 and body.get("message"):
            message += f": {_scrub(body['message'])[:200]}"
        return error_for(status, message, system=self.system, code=code,
                         retry_after=parse_retry_after(headers.get("Retry-After")),
                         resume_at=_next_midnight() if code == "DAILY" else None)

    def check(self) -> None:
        self._call("list contacts", lambda: self.objects.get_page(
            "contacts", limit=1, properties=["hs_object_id"], _preload_content=False, _request_timeout=self.timeout))

    # --- reading -------------------------------------------------------------------------------
    def read(self, stream: str, cursor: Cursor | None = None, *, until: datetime | None = None) -> Iterator[Page]:
        spec = self.stream(stream)
        cur = cursor or Cursor()
        start = cur.read_from(spec.overlap)
        for results in self._search(stream, start, until):
            records = self._records(stream, results)
            cur = cur.advance([r for r in records if not r.deleted])
            yield Page(records, cur)
        if until is None:
            yield from self._archived(stream, cur, spec.overlap)

    def _records(self, stream: str, results: list[dict[str, Any]]) -> list[SourceRecord]:
        tsp = ts_prop(stream)
        if stream in ENGAGEMENTS and results:
            links = self._contacts_of(stream, [r["id"] for r in results])
            for r in results:
                ids = links.get(r["id"], [])
                r["associations"] = {"contacts": {"results": [{"id": i, "type": ENGAGEMENT_TO_CONTACT[stream]}
                                                              for i in ids]}}
        out = []
        for r in results:
            when = _dt(_ms(r["properties"].get(tsp) or r["updatedAt"]))
            out.append(SourceRecord(system=self.system, stream=stream, external_id=r["id"], modified_at=when,
                                    payload=r))
            merged = r["properties"].get("hs_merged_object_ids")
            for old in (merged or "").split(";"):
                if old.strip():
                    out.append(SourceRecord(system=self.system, stream=stream, external_id=old.strip(),
                                            modified_at=when, deleted=True, merged_into=r["id"],
                                            payload={"id": old.strip(), "mergedInto": r["id"]}))
        return out

    def _search(self, otype: str, start: datetime | None, until: datetime | None) -> Iterator[list[dict]]:
        """Pages of live records in (last-modified, id) order from ``start`` to ``until`` (exclusive)."""
        tsp = ts_prop(otype)
        lo = int(start.timestamp() * 1000) if start else None
        lo_op = "GTE"
        seen_at_lo: set[str] = set()
        upper = [{"propertyName": tsp, "operator": "LT", "value": str(int(until.timestamp() * 1000))}] if until else []
        while True:
            lower = [{"propertyName": tsp, "operator": lo_op, "value": str(lo)}] if lo is not None else []
            results = self._search_call(otype, lower + upper, tsp)
            if not results:
                return
            first, last = _ms(results[0]["properties"][tsp]), _ms(results[-1]["properties"][tsp])
            if len(results) == SEARCH_PAGE and first == last:
                # One timestamp fills the page: walk that millisecond by id, then move past it.
                yield from self._walk_tie(otype, first, seen_at_lo if first == lo else set())
                lo, lo_op, seen_at_lo = first, "GT", set()
                continue
            fresh = [r for r in results if not (r["id"] in seen_at_lo and _ms(r["properties"][tsp]) == lo)]
            if fresh:
                yield fresh
            if len(results) < SEARCH_PAGE:
                return
            # The next query restarts at the last timestamp: records sharing it may straddle pages.
            tail = {r["id"] for r in results if _ms(r["properties"][tsp]) == last}
            seen_at_lo = tail | (seen_at_lo if last == lo else set())
            lo, lo_op = last, "GTE"

    def _walk_tie(self, otype: str, at: int, skip: set[str]) -> Iterator[list[dict]]:
        tsp = ts_prop(otype)
        after_id: str | None = None
        while True:
            filters = [{"propertyName": tsp, "operator": "EQ", "value": str(at)}]
            if after_id:
                filters.append({"propertyName": "hs_object_id", "operator": "GT", "value": after_id})
            results = self._search_call(otype, filters, "hs_object_id")
            fresh = [r for r in results if r["id"] not in skip]
            if fresh:
                yield fresh
            if len(results) < SEARCH_PAGE:
                return
            after_id = results[-1]["id"]

    def _search_call(self, otype: str, filters: list[dict[str, str]], sort: str) -> list[dict[str, Any]]:
        request = obj_models.PublicObjectSearchRequest(
            filter_groups=[obj_models.FilterGroup(filters=[obj_models.Filter(**_snake(f)) for f in filters])]
            if filters else [],
            sorts=[{"propertyName": sort, "direction": "ASCENDING"}], properties=PROPERTIES[otype],
            limit=SEARCH_PAGE, after=None)
        body = self._call(f"search {otype}", lambda: self.searcher.do_search(
            otype, request, _preload_content=False, _request_timeout=self.timeout))
        return body.get("results") or []

    def _contacts_of(self, otype: str, ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for part in chunks(ids, ASSOC_READ):
            request = assoc_models.BatchInputPublicFetchAssociationsBatchRequest(
                inputs=[assoc_models.PublicFetchAssociationsBatchRequest(id=i) for i in part])
            body = self._call(f"read {otype} associations", lambda r=request: self.assoc.get_page(
                otype, "contacts", r, _preload_content=False, _request_timeout=self.timeout))
            for row in body.get("results") or []:
                out[str(row["from"]["id"])] = [str(t["toObjectId"]) for t in row.get("to") or []]
        return out

    def _archived(self, otype: str, cur: Cursor, overlap: timedelta) -> Iterator[Page]:
        """Deleted records from the archived list, newer than the last completed pass (``cursor.token``)."""
        since = _ms(cur.token) - int(overlap.total_seconds() * 1000) if cur.token else None
        mark = _ms(cur.token) if cur.token else None
        after: str | None = None
        pending: list[SourceRecord] = []
        while True:
            body = self._call(f"list archived {otype}", lambda a=after: self.objects.get_page(
                otype, limit=BATCH, after=a, archived=True, properties=[ts_prop(otype)], _preload_content=False,
                _request_timeout=self.timeout))
            for r in body.get("results") or []:
                at = _ms(r.get("archivedAt") or r["updatedAt"])
                mark = at if mark is None else max(mark, at)
                if since is None or at >= since:
                    pending.append(SourceRecord(system=self.system, stream=otype, external_id=r["id"],
                                                modified_at=_dt(at), deleted=True, payload=r))
            after = ((body.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                break
            if len(pending) >= SEARCH_PAGE:
                yield Page(pending, cur)
                pending = []
        token = datetime.fromtimestamp(mark / 1000, tz=timezone.utc).isoformat() if mark is not None else cur.token
        if pending or token != cur.token:
            yield Page(pending, Cursor(modified_at=cur.modified_at, last_id=cur.last_id, token=token))

    # --- writing -------------------------------------------------------------------------------
    def write(self, stream: str, records: Sequence[OutboundRecord]) -> list[WriteOutcome]:
        self.stream(stream)
        outcomes: dict[int, WriteOutcome] = {}
        items = list(enumerate(records))
        try:
            if stream in ENGAGEMENTS:
                self._upsert(stream, [(i, r, "omnisync_interaction_id",
                                       str(r.payload.get("properties", {}).get("omnisync_interaction_id") or r.key))
                                      for i, r in items], outcomes)
                self._associate(stream, [(i, r) for i, r in items if outcomes.get(i) and outcomes[i].ok], outcomes)
            else:
                known = [(i, r) for i, r in items if r.external_id]
                for part in chunks(known, BATCH):
                    self._update(stream, list(part), outcomes)
                groups: dict[str, list[tuple[int, OutboundRecord, str, str]]] = {}
                for i, r in items:
                    if r.external_id:
                        continue
                    if not r.match:
                        outcomes[i] = WriteOutcome(r.key, WriteStatus.failed, error=(
                            f"hubspot/{stream} record {r.key}: no unique property to upsert on; the mapping must "
                            "write omnisync_golden_id or the record needs an email"))
                        continue
                    prop, value = next(iter(r.match.items()))
                    groups.setdefault(prop, []).append((i, r, prop, str(value)))
                for group in groups.values():
                    self._upsert(stream, group, outcomes)
        except (QuotaExhaustedError, TransientError) as e:
            for i, r in items:  # stop writing: what was not confirmed is failed, retryable, next run
                outcomes.setdefault(i, WriteOutcome(r.key, WriteStatus.failed, error=str(e), retryable=True))
        return [outcomes[i] if i in outcomes else
                WriteOutcome(r.key, WriteStatus.failed, error=f"hubspot/{stream} record {r.key}: no result returned",
                             retryable=True) for i, r in items]

    def _upsert(self, stream: str, rows: list[tuple[int, OutboundRecord, str, str]],
                outcomes: dict[int, WriteOutcome]) -> None:
        for part in chunks(rows, BATCH):
            inputs = [obj_models.SimplePublicObjectBatchInputUpsert(
                id_property=prop, id=value, properties=_props(r), object_write_trace_id=str(n))
                for n, (_, r, prop, value) in enumerate(part)]
            request = obj_models.BatchInputSimplePublicObjectBatchInputUpsert(inputs=inputs)
            self._batch(stream, "upsert", list(part), lambda: self.batch.upsert(
                stream, request, _preload_content=False, _request_timeout=self.timeout), outcomes,
                        key=lambda res: str(res.get("properties", {}).get(part[0][2]) or ""),
                        ident=lambda row: row[3])

    def _update(self, stream: str, part: list[tuple[int, OutboundRecord]], outcomes: dict[int, WriteOutcome]) -> None:
        inputs = [obj_models.SimplePublicObjectBatchInput(id=r.external_id, properties=_props(r),
                                                          object_write_trace_id=str(n))
                  for n, (_, r) in enumerate(part)]
        request = obj_models.BatchInputSimplePublicObjectBatchInput(inputs=inputs)
        self._batch(stream, "update", [(i, r, "id", r.external_id) for i, r in part], lambda: self.batch.update(
            stream, request, _preload_content=False, _request_timeout=self.timeout), outcomes,
                    key=lambda res: str(res.get("id")), ident=lambda row: str(row[3]))

    def _batch(self, stream: str, verb: str, part: list[tuple[int, OutboundRecord, str, str]],
               send: Callable[[], Any], outcomes: dict[int, WriteOutcome], *,
               key: Callable[[dict], str], ident: Callable[[tuple], str]) -> None:
        try:
            body = self._call(f"{verb} {stream}", send) or {}
        except (QuotaExhaustedError, TransientError, AuthError):
            raise
        except ConnectorError as e:  # the whole batch was refused (4xx): every record says why
            for i, r, _, _ in part:
                outcomes[i] = WriteOutcome(r.key, WriteStatus.failed, error=f"hubspot/{stream} record {r.key}: {e}")
            return
        by_trace = {str(n): row for n, row in enumerate(part)}
        by_ident = {ident(row): row for row in part}
        for res in body.get("results") or []:
            row = by_trace.get(str(res.get("objectWriteTraceId"))) or by_ident.get(key(res))
            if row is None:
                continue
            status = WriteStatus.created if res.get("new") else WriteStatus.updated
            outcomes[row[0]] = WriteOutcome(row[1].key, status, external_id=str(res["id"]))
        for err in body.get("errors") or []:
            ctx = err.get("context") or {}
            rows = [by_trace[t] for t in ctx.get("objectWriteTraceId") or [] if t in by_trace]
            rows += [by_ident[x] for x in ctx.get("ids") or [] if x in by_ident and by_ident[x] not in rows]
            for i, r, _, _ in rows:
                outcomes[i] = WriteOutcome(r.key, WriteStatus.failed, error=_record_error(stream, r.key, err),
                                           retryable=err.get("category") in RETRYABLE_CATEGORIES)

    def _associate(self, stream: str, rows: list[tuple[int, OutboundRecord]],
                   outcomes: dict[int, WriteOutcome]) -> None:
        links = [(i, r) for i, r in rows if r.associations.get("contact")]
        for part in chunks(links, ASSOC_WRITE):
            request = assoc_models.BatchInputPublicDefaultAssociationMultiPost(inputs=[
                assoc_models.PublicDefaultAssociationMultiPost(
                    _from=assoc_models.PublicObjectId(id=outcomes[i].external_id),
                    to=assoc_models.PublicObjectId(id=str(r.associations["contact"]))) for i, r in part])
            body = self._call(f"associate {stream}", lambda q=request: self.assoc.create_default(
                stream, "contacts", q, _preload_content=False, _request_timeout=self.timeout)) or {}
            failed = {str(x) for err in body.get("errors") or []
                      for x in (err.get("context") or {}).get("fromObjectId", [])}
            for i, r in part:
                if outcomes[i].external_id in failed:
                    outcomes[i] = WriteOutcome(r.key, WriteStatus.failed, external_id=outcomes[i].external_id,
                                               error=f"hubspot/{stream} record {r.key}: written but not associated: "
                                                     f"contact {r.associations['contact']} does not exist (deleted or "
                                                     "merged); re-sync contacts, then re-run the push")

    def merge(self, primary_id: str, merged_id: str) -> str:
        """Merge contact ``merged_id`` into ``primary_id`` (HubSpot keeps the primary's id)."""
        body = self._call("merge contacts", lambda: self.contacts_api.merge(
            PublicMergeInput(primary_object_id=str(primary_id), object_id_to_merge=str(merged_id)),
            _preload_content=False, _request_timeout=self.timeout))
        return str(body["id"])


    # --- erasure -------------------------------------------------------------------------------
    def erase(self, stream: str, ids: Sequence[str]) -> list[WriteOutcome]:
        """Erase a person's records: contacts by GDPR delete, anything else by batch archive.

        HubSpot's GDPR delete removes the contact for good together with the engagements that
        concern only it, and blocklists its email so a form or import cannot bring it back. An id
        HubSpot no longer knows was erased (or merged away and erased) before: that is success, so
        a resumed erasure job passes over it. Engagements written under other ids are archived
        (HubSpot keeps no API for their permanent deletion; the contact's purge already took
        every engagement associated with it).
        """
        self.stream(stream)
        outcomes: list[WriteOutcome] = []
        if stream == "contacts":
            for oid in ids:
                try:
                    self._call("gdpr delete contact", lambda oid=oid: self.contacts_api.purge(
                        PublicGdprDeleteInput(object_id=str(oid)), _preload_content=False,
                        _request_timeout=self.timeout))
                    outcomes.append(WriteOutcome(str(oid), WriteStatus.deleted, external_id=str(oid)))
                except NotFoundError:
                    outcomes.append(WriteOutcome(str(oid), WriteStatus.unchanged, external_id=str(oid)))
                except (QuotaExhaustedError, AuthError):
                    raise
                except ConnectorError as e:
                    outcomes.append(WriteOutcome(str(oid), WriteStatus.failed, external_id=str(oid),
                                                 error=f"hubspot/contacts record {oid}: {e}", retryable=e.retryable))
            return outcomes
        for part in chunks(list(ids), BATCH):
            request = obj_models.BatchInputSimplePublicObjectId(
                inputs=[obj_models.SimplePublicObjectId(id=str(i)) for i in part])
            try:
                self._call(f"archive {stream}", lambda q=request: self.batch.archive(
                    stream, q, _preload_content=False, _request_timeout=self.timeout))
                outcomes += [WriteOutcome(str(i), WriteStatus.deleted, external_id=str(i)) for i in part]
            except (QuotaExhaustedError, AuthError):
                raise
            except ConnectorError as e:
                outcomes += [WriteOutcome(str(i), WriteStatus.failed, external_id=str(i), retryable=e.retryable,
                                          error=f"hubspot/{stream} record {i}: {e}") for i in part]
        return outcomes


# --- webhooks v3 ----------------------------------------------------------------------------------

def verify_webhook(secret: str, method: str, uri: str, body: bytes, signature: str | None, timestamp: str | None,
                   *, now_ms: int | None = None, max_age_s: int = 300) -> bool:
    """Check ``X-HubSpot-Signature-v3`` and reject requests older than five minutes (replays)."""
    if not signature or not timestamp or not timestamp.isdigit():
        return False
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if abs(now_ms - int(timestamp)) > max_age_s * 1000:
        return False
    msg = method.upper().encode() + uri.encode() + body + timestamp.encode()
    expected = base64.b64encode(hmac.new(secret.encode(), msg, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(expected, signature)


def webhook_records(events: list[dict[str, Any]]) -> list[SourceRecord]:
    """Webhook events as ``webhook_events`` records: duplicates (same eventId) dropped, in order of
    occurrence. HubSpot events carry ids only, so they trigger an incremental read of the object."""
    unique = {str(e["eventId"]): e for e in events}
    ordered = sorted(unique.values(), key=lambda e: (int(e.get("occurredAt", 0)), int(e["eventId"])))
    return [SourceRecord(system="hubspot", stream="webhook_events", external_id=str(e["eventId"]),
                         modified_at=_dt(int(e.get("occurredAt", 0))), payload=e) for e in ordered]


# --- helpers --------------------------------------------------------------------------------------

def _props(r: OutboundRecord) -> dict[str, str]:
    props = r.payload.get("properties", r.payload)
    return {k: (v if isinstance(v, str) else "" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in props.items()}


def _snake(f: dict[str, str]) -> dict[str, str]:
    return {"property_name": f["propertyName"], "operator": f["operator"], "value": f["value"]}


def _endpoint(url: str) -> str:
    path = url.split("://", 1)[-1].split("/", 1)[-1].split("?")[0]
    return "/" + "/".join("{id}" if part.isdigit() else part for part in path.split("/"))


def _json_body(raw: Any) -> dict[str, Any]:
    try:
        body = json.loads(raw) if raw else {}
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _record_error(stream: str, key: str, err: dict[str, Any]) -> str:
    ctx = err.get("context") or {}
    props = ", ".join(ctx.get("propertyName") or [])
    details = [d.get("code") for d in err.get("errors") or [] if isinstance(d, dict) and d.get("code")]
    sub = err.get("subCategory") if isinstance(err.get("subCategory"), str) else None
    what = sub or (details[0] if details else None) or err.get("category") or "error"
    hint = {"CONFLICT": "another HubSpot record already holds this unique value; sync contacts so the two are "
                        "linked, or merge them",
            "OBJECT_NOT_FOUND": "the record was deleted or merged in HubSpot; sync it again, then re-run the push"
            }.get(err.get("category"), "fix the mapping or the golden value for the field named")
    field = f" property {props}" if props else ""
    return f"hubspot/{stream} record {key}:{field} rejected ({what}): {_scrub(err.get('message', ''))[:160]}; {hint}"


def _scrub(text: Any) -> str:
    """Vendor messages often echo the rejected value: mask it, malformed addresses included."""
    return re.sub(r"\S*@\S*", "***", mask_text(str(text)))


def _next_midnight() -> datetime:
    """HubSpot's daily limit resets at midnight (account time zone; UTC assumed)."""
    now = datetime.now(timezone.utc)
    return (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
