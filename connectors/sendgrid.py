"""SendGrid: Email Activity ("messages"), global unsubscribes, suppressions push, webhook events.

* ``messages`` (Email Activity API): the API answers newest first with a ``limit`` of at most 1000
  and no offset, so it is read in ascending time windows
  (``last_event_time>=TIMESTAMP lo AND last_event_time<TIMESTAMP hi``): a window that comes back
  full is halved and asked again, a sparse one grows. Every page is a complete window, so its
  cursor is safe to store. A first read starts 30 days back (the activity history SendGrid keeps),
  further back while older messages exist.
* ``unsubscribes`` (global unsubscribes): ``start_time``/``end_time`` plus ``limit``/``offset``,
  oldest first; ``suppressions`` reads the same list and is the writable side (add a global
  unsubscribe for each opted-out address; adding one twice is harmless).
* ``events`` arrive only through the signed Event Webhook; :func:`event_records` turns a verified
  post into records. They cannot be read back from the API.

Rate limits are the ``X-RateLimit-*`` headers and 429: they feed the :class:`RateBudget`, and a
429 whose window resets far in the future is treated as a spent quota (the sync stops cleanly).
"""

from __future__ import annotations

import re
import time
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
    chunks,
)
from connectors.credentials import SendGridCredentials
from connectors.errors import BadRequestError, ConnectorError, PaginationLoopError, QuotaExhaustedError, AuthError
from connectors.http import HttpLayer, Paging, RateBudget, RetryPolicy, paginate, seg
from omnisync.privacy import mask_text

HISTORY = timedelta(days=30)
MAX_HISTORY = timedelta(days=3 * 365)
TARGET_FILL = 0.75
QUOTA_RESET_S = 600.0  # a 429 resetting later than this is a spent quota, not a throttle
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _usage(resp: httpx.Response) -> tuple[int | None, float | None]:
    try:
        remaining = int(resp.headers["X-RateLimit-Remaining"])
        reset = float(resp.headers["X-RateLimit-Reset"]) - time.time()
    except (KeyError, ValueError):
        return None, None
    if reset > QUOTA_RESET_S:
        return None, None  # the error path stops the sync; do not park the budget for hours
    return remaining, max(0.0, reset)


def _error_code(resp: httpx.Response) -> str | None:
    if resp.status_code == 429:
        try:
            if float(resp.headers.get("X-RateLimit-Reset", "0")) - time.time() > QUOTA_RESET_S:
                return "DAILY"
        except ValueError:
            return None
    return None


def _ts(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


def event_records(events: Sequence[dict[str, Any]]) -> list[SourceRecord]:
    """Records for a verified Event Webhook post (a JSON array), one per event.

    The id is ``sg_event_id`` (SendGrid's dedupe key: events may be posted more than once).
    """
    out = []
    for ev in events:
        event_id = ev.get("sg_event_id")
        if not event_id or "timestamp" not in ev:
            raise BadRequestError("event webhook item without sg_event_id or timestamp", system="sendgrid")
        out.append(SourceRecord(system="sendgrid", stream="events", external_id=str(event_id),
                                modified_at=datetime.fromtimestamp(int(ev["timestamp"]), tz=timezone.utc),
                                payload=dict(ev)))
    return out


class _OffsetPaging(Paging):
    def __init__(self, limit: int):
        self.limit = limit

    def next(self, body, url, params):
        if not isinstance(body, list) or len(body) < self.limit:
            return None
        return url, {**params, "offset": params.get("offset", 0) + self.limit}


class SendGridConnector(Connector):
    system = "sendgrid"
    streams = {
        "messages": StreamSpec("messages", "interaction", "email_activity", page_size=1000, retention=HISTORY),
        "unsubscribes": StreamSpec("unsubscribes", "consent", "global_unsubscribes", page_size=500,
                                   overlap=timedelta(minutes=10)),
        "suppressions": StreamSpec("suppressions", "consent", "global_unsubscribes", page_size=500,
                                   write_batch=1000, incremental=False),
        "events": StreamSpec("events", "interaction", "event_webhook", incremental=False),
    }

    def __init__(self, credentials: SendGridCredentials, *, budget: RateBudget | None = None,
                 policy: RetryPolicy | None = None, timeout: float = 30.0, page_size: int | None = None):
        self.credentials = credentials
        self.page_size = page_size
        self.http = HttpLayer(
            system=self.system, base_url=credentials.base_url.rstrip("/"), timeout=timeout,
            headers={"Authorization": f"Bearer {credentials.api_key.get_secret_value()}",
                     "Accept": "application/json"},
            # SendGrid's only rate signal is its headers: keep a budget even when none is shared.
            budget=budget or RateBudget(10.0, 50), policy=policy, error_code=_error_code, usage=_usage)

    @property
    def api_calls(self) -> int:
        return self.http.stats.total

    def close(self) -> None:
        self.http.close()

    def check(self) -> None:
        self.http.request("GET", "/v3/asm/groups")

    def _size(self, stream: str) -> int:
        spec = self.stream(stream)
        return min(self.page_size or spec.page_size, spec.page_size)

    # --- reading -----------------------------------------------------------------------------
    def read(self, stream: str, cursor: Cursor | None = None, *, until: datetime | None = None) -> Iterator[Page]:
        self.stream(stream)
        cursor = cursor or Cursor()
        if stream == "messages":
            yield from self._messages(cursor, until)
        elif stream in ("unsubscribes", "suppressions"):
            yield from self._unsubscribes(stream, cursor, until)
        else:
            raise ValueError("sendgrid/events arrive by the signed Event Webhook (see event_records); "
                             "read email history from the 'messages' stream")

    def _query(self, query: str, limit: int) -> list[dict[str, Any]]:
        body = self.http.json("GET", "/v3/messages", params={"query": query, "limit": limit})
        return list(body.get("messages") or [])

    def _history_start(self, hi: datetime) -> datetime:
        span = HISTORY
        while span < MAX_HISTORY:
            if not self._query(f'last_event_time<TIMESTAMP "{_ts(hi - span)}"', 1):
                return hi - span
            span *= 2
        return hi - MAX_HISTORY

    def _messages(self, cursor: Cursor, until: datetime | None) -> Iterator[Page]:
        limit = self._size("messages")
        hi = (until or datetime.now(timezone.utc)).replace(microsecond=0)
        lo = cursor.read_from(self.stream("messages").overlap)
        lo = (lo if lo is not None else self._history_start(hi)).replace(microsecond=0)
        width = timedelta(days=1)
        while lo < hi:
            w_hi = min(lo + width, hi)
            msgs = self._query(f'last_event_time>=TIMESTAMP "{_ts(lo)}" AND last_event_time<TIMESTAMP "{_ts(w_hi)}"',
                               limit)
            if len(msgs) >= limit:
                if w_hi - lo <= timedelta(seconds=1):
                    raise PaginationLoopError(f"more than {limit} messages share one second at {_ts(lo)}; "
                                              "the Email Activity API cannot page past them", system=self.system)
                width = max(timedelta(seconds=1), (w_hi - lo) / 2)
                continue
            records = sorted((self._message_record(m) for m in msgs), key=lambda r: (r.modified_at, r.external_id))
            if records:
                cursor = cursor.advance(records)
                yield Page(records, cursor)
            lo = w_hi
            # Aim windows at TARGET_FILL of a page: larger wastes re-asks when traffic swings, smaller wastes calls.
            fill = len(msgs) / limit
            factor = 4.0 if fill < 0.125 else TARGET_FILL / max(fill, 0.01)
            width = min(timedelta(days=30), max(timedelta(seconds=1), width * min(4.0, factor)))

    def _message_record(self, m: dict[str, Any]) -> SourceRecord:
        return SourceRecord(system=self.system, stream="messages", external_id=str(m["msg_id"]),
                            modified_at=_parse_ts(m["last_event_time"]), payload=m)

    def _unsubscribes(self, stream: str, cursor: Cursor, until: datetime | None) -> Iterator[Page]:
        limit = self._size(stream)
        params: dict[str, Any] = {"limit": limit, "offset": 0}
        start = cursor.read_from(self.stream(stream).overlap)
        if start is not None:
            params["start_time"] = int(start.timestamp())
        # Freeze the end of the range so offsets stay stable while new unsubscribes arrive.
        params["end_time"] = int((until or datetime.now(timezone.utc)).timestamp())

        def fetch(url, p):
            return self.http.json("GET", url or "/v3/suppression/unsubscribes", params=p,
                                  endpoint="/v3/suppression/unsubscribes")

        for body in paginate(fetch, _OffsetPaging(limit), params):
            records = [SourceRecord(system=self.system, stream=stream, external_id=str(row["email"]).strip().lower(),
                                    modified_at=datetime.fromtimestamp(int(row["created"]), tz=timezone.utc),
                                    payload=row) for row in body]
            if records:
                # An unsubscribe's id is the address itself: the checkpoint keeps only the time
                # (reads overlap it and the store deduplicates), so no address sits in a cursor.
                cursor = cursor.advance(records).model_copy(update={"last_id": None})
                yield Page(records, cursor)

    # --- erasure -----------------------------------------------------------------------------
    KEPT_SUPPRESSION = ("global unsubscribe kept on purpose: it is what stops SendGrid mailing the erased address "
                        "again if it is ever re-imported; a hash could not block a send (SendGrid matches the "
                        "address itself), and keeping the minimum needed to honour an objection is allowed")
    ACTIVITY_RETAINED = ("email activity kept by SendGrid: the Email Activity API has no delete; the log ages out "
                         "after SendGrid's retention window")

    def erase(self, stream: str, ids: Sequence[str]) -> list[WriteOutcome]:
        """Erase a person's SendGrid records, as far as SendGrid allows, saying what stays and why.

        Suppressions stay (see ``KEPT_SUPPRESSION``; each is checked to still be in force, so the
        audit never claims a block that is not there). Email activity has no delete call and ages
        out. Event-webhook events live only in omnisync's store, which the erasure job clears.
        """
        self.stream(stream)
        out: list[WriteOutcome] = []
        for rid in ids:
            if stream in ("unsubscribes", "suppressions"):
                try:
                    body = self.http.json("GET", f"/v3/asm/suppressions/global/{seg(rid)}",
                                          endpoint="/v3/asm/suppressions/global/{email}")
                except (AuthError, QuotaExhaustedError):
                    raise
                except ConnectorError as e:
                    out.append(WriteOutcome(mask_text(rid), WriteStatus.failed, retryable=e.retryable,
                                            error=f"{stream} record {mask_text(rid)}: could not confirm the global "
                                                  f"unsubscribe (HTTP {e.status}); retried by the erasure job"))
                    continue
                note = self.KEPT_SUPPRESSION if body else None
                out.append(WriteOutcome(mask_text(rid), WriteStatus.unchanged, error=note))
            elif stream == "messages":
                out.append(WriteOutcome(rid, WriteStatus.unchanged, external_id=rid, error=self.ACTIVITY_RETAINED))
            else:
                out.append(WriteOutcome(rid, WriteStatus.unchanged, external_id=rid))
        return out

    # --- writing -----------------------------------------------------------------------------
    def write(self, stream: str, records: Sequence[OutboundRecord]) -> list[WriteOutcome]:
        if stream != "suppressions":
            return super().write(stream, records)
        outcomes: dict[str, WriteOutcome] = {}
        valid: list[tuple[OutboundRecord, str]] = []
        for rec in records:
            email = rec.payload.get("email") or rec.match.get("email")
            if not isinstance(email, str) or not _EMAIL.match(email.strip()):
                outcomes[rec.key] = WriteOutcome(
                    rec.key, WriteStatus.failed, retryable=False,
                    error=f"suppressions record {mask_text(rec.key)}: field email is missing or not an address; "
                          "fix the golden record's email before pushing the opt-out")
            else:
                valid.append((rec, email.strip().lower()))
        for batch in chunks(valid, self.stream(stream).write_batch):
            emails = list(dict.fromkeys(e for _, e in batch))
            try:
                self.http.request("POST", "/v3/asm/suppressions/global", json={"recipient_emails": emails})
            except ConnectorError as e:
                if e.retryable or not isinstance(e, BadRequestError):
                    raise
                for rec, _ in batch:
                    outcomes[rec.key] = WriteOutcome(rec.key, WriteStatus.failed, retryable=False,
                                                     error=f"suppressions record {mask_text(rec.key)}: SendGrid "
                                                           f"rejected the "
                                                           f"batch (HTTP {e.status}); check the addresses")
                continue
            for rec, email in batch:
                outcomes[rec.key] = WriteOutcome(rec.key, WriteStatus.created, external_id=email)
        return [outcomes[r.key] for r in records]
