"""Twilio Programmable Messaging: message history (read) and sending SMS (write).

* ``messages``: ``GET /2010-04-01/Accounts/{AccountSid}/Messages.json`` answers newest first, so
  history is read in ascending ``DateSent>``/``DateSent<`` windows; a window whose first page is
  full is halved and asked again (the answer is newest first, so no cursor could be kept inside
  it), a sparse one grows. Each page is then a complete window and its cursor, the window's end,
  is safe to store; only when more than a page of messages share one minute is a window read over
  several ``next_page_uri`` pages with the cursor held until its last. ``modified_at`` is
  ``date_updated``, so a delivery receipt arriving within the overlap is a new version. Messages
  not yet sent (no ``date_sent``) are not matched by the filters; they are read once sent.
* Inbound messages also arrive by webhook (the receiver converts them to this resource's shape,
  so the same mappings apply); STOP/START keywords become consent events in the mappings.
* Writes send one SMS per call (Twilio has no batch send and no idempotency key). A send is never
  repeated blindly: a 429 or a connection that never reached Twilio is retried; when the answer is
  lost (timeout, 5xx, unreadable body) the connector looks for the message it may have created
  (same To and From, same body, created since just before the attempt, newest first) and adopts
  it, sending again only when Twilio shows no such message. If even the lookup fails, the record
  fails with "outcome unknown" and is not retried automatically: a duplicate text to a customer is
  worse than a delayed one. Keys already sent by this instance are answered from memory; across
  runs the outbound ledger keeps the same guarantee.
"""

from __future__ import annotations

import email.utils
import threading
import time
from dataclasses import dataclass
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from connectors.base import (
    Connector,
    Cursor,
    OutboundRecord,
    Page,
    SourceRecord,
    StreamSpec,
    WriteOutcome,
    WriteStatus,
)
from connectors.credentials import TwilioCredentials
from connectors.errors import (
    AuthError,
    ConnectorError,
    NotFoundError,
    QuotaExhaustedError,
    RateLimitedError,
    TransientError,
)
from connectors.http import HttpLayer, NextUrlPaging, RateBudget, RetryPolicy, paginate, parse_retry_after
from omnisync.privacy import mask_phone, mask_text

HISTORY = timedelta(days=400)  # Twilio keeps message records about 400 days
MIN_WINDOW = timedelta(minutes=1)
MAX_WINDOW = timedelta(days=90)
TARGET_FILL = 0.75
QUOTA_RETRY_S = 600.0  # a 429 asking to wait longer than this is a spent allowance, not a throttle
LOOKUP_SKEW = timedelta(minutes=2)  # clock difference tolerated when matching a lost send
FORM_KEYS = {"to": "To", "from": "From", "body": "Body", "messaging_service_sid": "MessagingServiceSid",
             "media_url": "MediaUrl", "status_callback": "StatusCallback"}
# What Twilio's send error codes mean for the record, in words an operator can act on.
SEND_ERRORS = {
    "21610": "the recipient replied STOP to this sender: no SMS of any kind can be sent from it until they reply START",
    "21211": "the To number is not a valid phone number",
    "21604": "the record has no To number",
    "21603": "no From number or Messaging Service: set one in the payload or the connector's sender",
    "21606": "the From number is not one of this account's SMS numbers",
    "21602": "the message body is empty",
    "21617": "the message body exceeds 1600 characters",
    "21408": "the account may not send to this country",
    "21614": "the To number cannot receive SMS (landline?)",
}


def _ts(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rfc(value: str | None) -> datetime | None:
    if not value:
        return None
    return email.utils.parsedate_to_datetime(value).astimezone(timezone.utc)


def message_record(m: dict[str, Any]) -> SourceRecord:
    """A Message resource (from the API, or a webhook converted to its shape) as a source record."""
    changed = _rfc(m.get("date_updated")) or _rfc(m.get("date_sent")) or _rfc(m.get("date_created"))
    if changed is None:
        raise ValueError("twilio message without date_updated, date_sent or date_created")
    return SourceRecord(system="twilio", stream="messages", external_id=str(m["sid"]), modified_at=changed,
                        payload=m)


class TwilioConnector(Connector):
    system = "twilio"
    streams = {
        "messages": StreamSpec("messages", "interaction", "message", page_size=1000, write_batch=1,
                               overlap=timedelta(minutes=10)),
    }

    def __init__(self, credentials: TwilioCredentials, *, budget: RateBudget | None = None,
                 policy: RetryPolicy | None = None, timeout: float = 30.0, page_size: int | None = None,
                 sender: str | None = None, history: timedelta = HISTORY):
        self.credentials = credentials
        self.page_size = page_size
        self.sender = sender
        self.history = history
        self.policy = policy or RetryPolicy()
        self._sent: dict[str, str] = {}  # OutboundRecord.key -> message sid, for this instance
        self._errors = threading.local()
        self._base = f"/2010-04-01/Accounts/{credentials.account_sid}"
        common = dict(system=self.system, base_url=credentials.base_url.rstrip("/"), timeout=timeout,
                      auth=httpx.BasicAuth(credentials.account_sid, credentials.auth_token.get_secret_value()),
                      headers={"Accept": "application/json"}, budget=budget, error_code=self._error_code)
        self.http = HttpLayer(policy=self.policy, **common)
        self._single = HttpLayer(policy=RetryPolicy(attempts=1), **common)  # sends: never re-sent blindly

    @property
    def api_calls(self) -> int:
        return self.http.stats.total + self._single.stats.total

    def close(self) -> None:
        self.http.close()
        self._single.close()

    def _error_code(self, resp: httpx.Response) -> str | None:
        if resp.status_code == 429:
            wait = parse_retry_after(resp.headers.get("Retry-After"))
            if wait is not None and wait > QUOTA_RETRY_S:
                return "DAILY"
        try:
            body = resp.json()
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        self._errors.last = (str(body.get("code", "")), str(body.get("message", "")))
        return str(body["code"]) if body.get("code") is not None else None

    def _json(self, url: str, *, params: dict[str, Any] | None = None) -> Any:
        for _ in range(self.policy.attempts):  # a truncated body is asked for again
            try:
                resp = self.http.request("GET", url, params=params, endpoint=self._base + "/Messages.json")
            except QuotaExhaustedError as e:
                raise QuotaExhaustedError("Twilio throttles this account for hours", system=self.system,
                                          status=e.status, code=e.code, resume_at=e.resume_at) from e
            try:
                return resp.json()
            except ValueError:
                continue
        raise TransientError("unreadable JSON from Messages.json", system=self.system)

    def check(self) -> None:
        self._json(self._base + "/Messages.json", params={"PageSize": 1})

    # --- reading -----------------------------------------------------------------------------
    def read(self, stream: str, cursor: Cursor | None = None, *, until: datetime | None = None) -> Iterator[Page]:
        spec = self.stream(stream)
        cursor = cursor or Cursor()
        size = min(self.page_size or spec.page_size, spec.page_size)
        now = datetime.now(timezone.utc).replace(microsecond=0)
        end = until.replace(microsecond=0) if until else None  # None: up to whatever exists when asked
        lo = cursor.read_from(spec.overlap)
        lo = (lo if lo is not None else (end or now) - self.history).replace(microsecond=0)
        width = timedelta(days=1)
        while end is None or lo < end:
            w_hi: datetime | None = lo + width
            if (end is None and w_hi >= now) or (end is not None and w_hi >= end):
                w_hi = end
            params = {"DateSent>": _ts(lo), "PageSize": size}
            if w_hi is not None:
                params["DateSent<"] = _ts(w_hi)
            first = self._json(self._base + "/Messages.json", params=params)
            span = (w_hi or now) - lo
            if first.get("next_page_uri") and span > MIN_WINDOW:
                width = max(MIN_WINDOW, span / 2)  # too wide to keep a cursor inside: ask for less
                continue
            count, newest = 0, None
            rest = paginate(self._next_page, _ResumePaging(start=first["next_page_uri"]), {}) \
                if first.get("next_page_uri") else iter(())
            for body in _chain([first], rest):
                records = [message_record(m) for m in body.get("messages") or []]
                count += len(records)
                sent = [t for t in (_rfc(r.payload.get("date_sent")) for r in records) if t is not None]
                if sent:
                    newest = max(sent + ([newest] if newest else []))
                if not body.get("next_page_uri"):
                    # The window is complete: everything sent before its end has been read.
                    top = w_hi if w_hi is not None else max(newest or lo, lo)
                    cursor = Cursor(modified_at=max(top, cursor.modified_at or top))
                if records:
                    yield Page(records, cursor)
            if w_hi is None:
                return
            lo = w_hi
            fill = count / size
            factor = 4.0 if fill < 0.125 else TARGET_FILL / max(fill, 0.01)
            width = min(MAX_WINDOW, max(MIN_WINDOW, width * min(4.0, factor)))

    def _next_page(self, url: str | None, params: dict[str, Any]) -> Any:
        # next_page_uri carries its whole query string: send it as is.
        return self._json(url or self._base + "/Messages.json")

    # --- writing -----------------------------------------------------------------------------
    def write(self, stream: str, records: Sequence[OutboundRecord]) -> list[WriteOutcome]:
        self.stream(stream)
        outcomes: dict[str, WriteOutcome] = {}
        for rec in records:
            if rec.key in outcomes:
                continue
            if rec.key in self._sent:
                outcomes[rec.key] = WriteOutcome(rec.key, WriteStatus.unchanged, external_id=self._sent[rec.key])
                continue
            form, problem = self._form(rec)
            if problem:
                outcomes[rec.key] = self._outcome_failed(rec, problem, retryable=False)
                continue
            try:
                sid, status = self._send(form)
            except (AuthError, QuotaExhaustedError):
                raise
            except _Unknown as e:
                outcomes[rec.key] = self._outcome_failed(rec, str(e), retryable=False)
                continue
            except ConnectorError as e:
                code, message = getattr(self._errors, "last", ("", ""))
                meaning = SEND_ERRORS.get(e.code or code, "Twilio refused the message")
                outcomes[rec.key] = self._outcome_failed(
                    rec, f"{meaning} (HTTP {e.status}, code {e.code or code}: {mask_text(message)[:120]})",
                    retryable=e.retryable)
                continue
            self._sent[rec.key] = sid
            outcomes[rec.key] = WriteOutcome(rec.key, status, external_id=sid)
        return [outcomes[r.key] for r in records]

    # --- erasure -----------------------------------------------------------------------------
    def erase(self, stream: str, ids: Sequence[str]) -> list[WriteOutcome]:
        """Delete messages (``DELETE Messages/{sid}``): body, numbers and media go with them.

        A sid Twilio no longer knows was deleted before (a resumed erasure job). A message still
        being sent cannot be deleted yet: it fails as retryable and the job deletes it next run.
        Twilio's own opt-out list is not touched: it is what keeps an erased person's STOP in force.
        """
        self.stream(stream)
        outcomes: list[WriteOutcome] = []
        for sid in ids:
            try:
                self.http.request("DELETE", f"{self._base}/Messages/{sid}.json",
                                  endpoint=self._base + "/Messages/{Sid}.json")
                outcomes.append(WriteOutcome(sid, WriteStatus.deleted, external_id=sid))
            except NotFoundError:
                outcomes.append(WriteOutcome(sid, WriteStatus.unchanged, external_id=sid))
            except (AuthError, QuotaExhaustedError):
                raise
            except ConnectorError as e:
                in_progress = (e.code or "") == "20009"
                outcomes.append(WriteOutcome(sid, WriteStatus.failed, external_id=sid, retryable=in_progress or e.retryable,
                                             error=f"messages record {sid}: " + (
                                                 "still being sent; deleted on the next run of the erasure job"
                                                 if in_progress else f"delete refused (HTTP {e.status}, code {e.code})")))
        return outcomes

    def _outcome_failed(self, rec: OutboundRecord, why: str, *, retryable: bool) -> WriteOutcome:
        return WriteOutcome(rec.key, WriteStatus.failed, external_id=rec.external_id, retryable=retryable,
                            error=f"messages record {mask_text(rec.key)}: {why}")

    def _form(self, rec: OutboundRecord) -> tuple[dict[str, str], str | None]:
        form: dict[str, str] = {}
        for k, v in rec.payload.items():
            name = FORM_KEYS.get(k) or (k if k in FORM_KEYS.values() else None)
            if name is None:
                return {}, f"field {k} is not a Twilio message parameter; check the payload or mapping"
            if v not in (None, ""):
                form[name] = str(v)
        if "From" not in form and "MessagingServiceSid" not in form and self.sender:
            form["From"] = self.sender
        if not form.get("To"):
            return {}, SEND_ERRORS["21604"]
        return form, None

    def _send(self, form: dict[str, str]) -> tuple[str, WriteStatus]:
        """Send once per attempt; a lost answer is settled by looking the message up, not by resending."""
        url = self._base + "/Messages.json"
        last: ConnectorError | None = None
        for attempt in range(self.policy.attempts):
            if attempt:
                time.sleep(_pause(self.policy, attempt, last))
            started = datetime.now(timezone.utc)
            try:
                resp = self._single.request("POST", url, data=form, endpoint=url)
                return str(resp.json()["sid"]), WriteStatus.created
            except RateLimitedError as e:
                last = e  # refused before anything was created
                continue
            except TransientError as e:
                last = e
                if isinstance(e.__cause__, (httpx.ConnectError, httpx.ConnectTimeout)):
                    continue  # never reached Twilio
            except (ValueError, KeyError):
                last = TransientError("unreadable answer to a send", system=self.system)
            try:
                sid = self._find_sent(form, since=started - LOOKUP_SKEW)
            except ConnectorError as e:
                raise _Unknown(f"outcome unknown: the send's answer was lost and the lookup failed ({type(e).__name__}); "
                               f"not re-sent. Check Twilio's message log for To {mask_phone(form['To'])} before "
                               "replaying") from e
            if sid:
                return sid, WriteStatus.created
        raise last or TransientError("send failed", system=self.system)

    def _find_sent(self, form: dict[str, str], *, since: datetime) -> str | None:
        """The newest message matching a send whose answer was lost, created at or after ``since``."""
        params: dict[str, Any] = {"To": form["To"], "PageSize": 50}
        if form.get("From"):
            params["From"] = form["From"]
        body = self._json(self._base + "/Messages.json", params=params)
        for m in body.get("messages") or []:
            created = _rfc(m.get("date_created"))
            if created is None or created < since:
                break  # newest first: everything after is older still
            if m.get("body") == form.get("Body", "") and m.get("direction", "").startswith("outbound") and (
                    not form.get("MessagingServiceSid") or m.get("messaging_service_sid") == form["MessagingServiceSid"]):
                return str(m["sid"])
        return None


class _Unknown(ConnectorError):
    action = "Check the vendor's log before sending again: omnisync will not risk a duplicate."


def _pause(policy: RetryPolicy, attempt: int, error: ConnectorError | None) -> float:
    if isinstance(error, RateLimitedError) and error.retry_after is not None:
        return min(error.retry_after, policy.max_retry_after)
    return min(policy.backoff_max, policy.backoff_initial * 2 ** (attempt - 1))


def _chain(first: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
    yield from first
    yield from rest


@dataclass
class _ResumePaging(NextUrlPaging):
    """Next-URL paging that starts from a page already fetched (its ``next_page_uri``)."""

    start: str = ""

    def first(self, params):
        return self.start, {}
