"""Zoom Contact Center: engagements (read) and one address book's contacts (read and upsert).

* ``engagements``: ``GET /v2/contact_center/engagements`` by ``from``/``to`` windows of at most a
  month (the API's limit), each paged with ``next_page_token``. The cursor is a position in start
  time, ``(start_time, engagement_id)``, stored after every page while the vendor answers in start
  order (held at the window's start until the window is complete if it ever does not), and reads
  restart ``overlap`` before it. An engagement still in progress (no ``end_time``) holds the cursor
  at its start so the next read sees how it ended; ``modified_at`` is the latest of start, end and
  note edits, so each new state is a new version. Messaging engagements that a flow handled without
  an agent, or that were transferred, are fetched in full (``GET /engagements/{id}``): only the
  detail carries the events with the virtual agent's context for a hand-off. Notes edited long
  after an engagement ended do not move its start: reconciliation sweeps catch those.
* ``address_book_contacts``: the contacts of one address book (``address_book``, created on first
  write if missing), 300 a page. Contacts have no modification time, so every read is a full
  sweep stamped with its start time; a sweep interrupted mid-way resumes from its page token
  while Zoom keeps it (15 minutes), otherwise starts over.
* Writes upsert one contact per call (the API has no batch): a record with ``external_id`` is
  patched; one without is found by the ``omnisync_golden_id`` custom field (candidates looked up
  by phone and email, ten of each per call, then their custom fields read) or created. Phones
  and e-mails only narrow the search: households and switchboards share numbers. Custom fields
  are named in payloads (``{"custom_fields": {"omnisync_golden_id": ...}}``) and created on first
  use, shown on the agent's inbound notification and usable as a screen-pop URL parameter.
  Patching phone numbers or e-mails keeps the ones agents entered: the new value goes first.

Auth is a Server-to-Server OAuth app: ``POST {oauth_url}`` with ``grant_type=account_credentials``
and the account id, client id and secret as HTTP Basic, answering an hour's bearer token. One token
serves every request, thread and connector of the process until shortly before it expires; a 401 (code 124, the token expired
or was revoked early) gets a new one and the request is sent again, once. A static
``access_token`` still works, until Zoom refuses it.
"""

from __future__ import annotations

import threading
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
)
from connectors.credentials import ZoomCredentials
from connectors.errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    ConnectorError,
    NotFoundError,
    QuotaExhaustedError,
    RateLimitedError,
    TransientError,
)
from connectors.http import (
    BearerAuth,
    HttpLayer,
    IssuedToken,
    RateBudget,
    RetryPolicy,
    TokenPaging,
    TokenSource,
    fetch_token,
    paginate,
    seg,
    shared_tokens,
)
from omnisync.privacy import mask_text

API = "/v2/contact_center"
WINDOW = timedelta(days=30)  # the engagements API answers at most one month per query
HISTORY = timedelta(days=365)
TOKEN_LIFETIME = timedelta(minutes=14)  # Zoom keeps next_page_token 15 minutes
LOOKUP_BATCH = 10  # emails / phone_numbers filters take at most 10 values each
GOLDEN_FIELD = "omnisync_golden_id"
CONTACT_KEYS = {"display_name", "first_name", "last_name", "phone_numbers", "emails", "location", "timezone",
                "account_number", "company", "role", "consumer_ids", "custom_fields"}
MAX_TRANSIENT_IN_A_ROW = 3
WHERE_CREDENTIALS = ("the credentials block omnisync-zoom (or OMNISYNC_ZOOM_ACCOUNT_ID, OMNISYNC_ZOOM_CLIENT_ID and "
                     "OMNISYNC_ZOOM_CLIENT_SECRET)")
CLIENT_REFUSED = (f"Check the Server-to-Server OAuth app's account_id, client_id and client_secret in {WHERE_CREDENTIALS}, "
                  "and that the app is activated in the Zoom App Marketplace.")
TOKEN_REFUSED = ("A token just issued by the Server-to-Server OAuth app was refused: check that the app is activated "
                 f"and has the Contact Center scopes, and its credentials in {WHERE_CREDENTIALS}.")
STATIC_REFUSED = ("The access_token in the credentials was refused (Zoom tokens expire after an hour): give the "
                  f"Server-to-Server OAuth app's account_id, client_id and client_secret in {WHERE_CREDENTIALS} "
                  "so omnisync fetches and renews tokens itself.")
# What Zoom's contact error codes mean for the record, in words an operator can act on.
CONTACT_ERRORS = {
    "300": "a field was rejected (phone numbers must be E.164, e-mails valid addresses)",
    "2102": "the contact needs at least one phone number or e-mail",
    "2104": "display_name is empty: the golden record needs a name",
    "2106": "consumer_ids are unknown to Zoom",
    "2113": "a custom field is invalid or not attached to this address book",
    "2005": "Salesforce-synced contacts cannot be changed through the API",
    "2101": "the contact no longer exists in Zoom (deleted by a user?)",
}


def _ts(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


def _next_midnight() -> datetime:
    # Zoom's daily limits reset at 00:00 GMT.
    return (datetime.now(timezone.utc) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


def modified_at(e: dict[str, Any]) -> datetime:
    """The engagement's latest change: start, end or a note edit."""
    times = [_parse(e.get("start_time")), _parse(e.get("end_time"))]
    times += [_parse(n.get("last_modified_time")) for n in e.get("notes") or []]
    return max(t for t in times if t is not None)


def _wants_detail(e: dict[str, Any]) -> bool:
    """Messaging engagements a flow (virtual agent) handled alone, or that were transferred."""
    channels = [c.get("channel") for c in e.get("channels") or []]
    messaging = "messaging" in channels or any(t in ("chat", "in_app_chat") for t in e.get("channel_types") or [])
    return messaging and bool(e.get("flows")) and (not e.get("agents") or bool(e.get("transfer_count")))


class ZoomConnector(Connector):
    system = "zoom"
    streams = {
        "engagements": StreamSpec("engagements", "interaction", "engagement", page_size=100,
                                  overlap=timedelta(minutes=10)),
        "address_book_contacts": StreamSpec("address_book_contacts", "profile", "address_book_contact",
                                            page_size=300, write_batch=1, overlap=timedelta(0)),
    }

    def __init__(self, credentials: ZoomCredentials, *, budget: RateBudget | None = None,
                 policy: RetryPolicy | None = None, timeout: float = 30.0, page_size: int | None = None,
                 address_book: str = "Customers", history: timedelta = HISTORY):
        self.credentials = credentials
        self.page_size = page_size
        self.address_book = address_book
        self.history = history
        self._errors = threading.local()
        self._book: str | None = None
        self._fields: dict[str, str] = {}
        self._golden: dict[str, str] = {}  # golden id -> contact id, learned by this instance
        budget = budget or RateBudget(20.0, 20)  # Zoom's Medium APIs: 20 requests/s on Pro accounts
        self.policy = policy or RetryPolicy()
        if credentials.oauth:
            self.tokens = shared_tokens(credentials.oauth_url, f"{credentials.account_id}/{credentials.client_id}",
                                        credentials.client_secret.get_secret_value(),
                                        lambda: _fetch_token(credentials, timeout))
        else:
            self.tokens = TokenSource(None, initial=credentials.access_token.get_secret_value())
        self.auth = BearerAuth(self.tokens)
        common = dict(system=self.system, base_url=credentials.base_url.rstrip("/"), timeout=timeout,
                      auth=self.auth, headers={"Accept": "application/json"},
                      budget=budget, error_code=self._error_code, usage=_usage)
        self.http = HttpLayer(policy=self.policy, **common)
        # Creates go through a layer that never retries: a lost answer is resolved by looking the
        # contact up, never by sending the create again.
        self._single = HttpLayer(policy=RetryPolicy(attempts=1), **common)

    @property
    def api_calls(self) -> int:
        return self.http.stats.total + self._single.stats.total + self.auth.resent

    def close(self) -> None:
        self.http.close()
        self._single.close()

    def _error_code(self, resp: httpx.Response) -> str | None:
        if resp.status_code == 429 and resp.headers.get("X-RateLimit-Type", "").lower().startswith("daily"):
            return "DAILY"
        try:
            body = resp.json()
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        # Kept for the write outcome: Zoom's message says which field it refused.
        self._errors.last = (str(body.get("code", "")), str(body.get("message", "")))
        return str(body["code"]) if body.get("code") is not None else None

    def _call(self, method: str, url: str, *, layer: HttpLayer | None = None, **kw: Any) -> httpx.Response:
        try:
            return (layer or self.http).request(method, url, **kw)
        except AuthError as e:
            if e.status != 401 or e.code not in (None, "124"):
                raise  # the token endpoint refused the client (its own message), or a 403 (scopes)
            raise AuthError(f"{method} {kw.get('endpoint') or url.split('?')[0]}: access token refused",
                            system=self.system, status=e.status, code=e.code,
                            action=TOKEN_REFUSED if self.tokens.renewable else STATIC_REFUSED) from e
        except QuotaExhaustedError as e:
            raise QuotaExhaustedError("daily Contact Center API limit reached", system=self.system,
                                      status=e.status, code=e.code, resume_at=e.resume_at or _next_midnight()) from e

    def _json(self, method: str, url: str, **kw: Any) -> Any:
        """A GET (or another idempotent call) decoded; a truncated body is asked for again."""
        for _ in range(self.policy.attempts):
            resp = self._call(method, url, **kw)
            try:
                return resp.json()
            except ValueError:
                continue
        raise TransientError(f"unreadable JSON from {kw.get('endpoint') or url}", system=self.system)

    def check(self) -> None:
        try:
            self._call("GET", API + "/address_books", params={"page_size": 1})
        except NotFoundError:
            pass  # authenticated: the account simply has no Contact Center address books

    def _size(self, stream: str) -> int:
        spec = self.stream(stream)
        return min(self.page_size or spec.page_size, spec.page_size)

    # --- reading -----------------------------------------------------------------------------
    def read(self, stream: str, cursor: Cursor | None = None, *, until: datetime | None = None) -> Iterator[Page]:
        self.stream(stream)
        cursor = cursor or Cursor()
        if stream == "engagements":
            yield from self._engagements(cursor, until)
        else:
            yield from self._contacts(cursor)

    def _engagements(self, cursor: Cursor, until: datetime | None) -> Iterator[Page]:
        size = self._size("engagements")
        hi = (until or datetime.now(timezone.utc)).replace(microsecond=0)
        lo = cursor.read_from(self.stream("engagements").overlap)
        lo = (lo if lo is not None else hi - self.history).replace(microsecond=0)
        safe = cursor
        open_since: datetime | None = None  # start of the earliest engagement still in progress
        while lo <= hi:
            w_hi = min(lo + WINDOW - timedelta(seconds=1), hi)  # from/to are inclusive, to the second
            params = {"from": _ts(lo), "to": _ts(w_hi), "page_size": size}
            last_key: tuple[str, str] | None = None
            in_order = True
            for body in paginate(self._fetch_engagements, TokenPaging(), params):
                rows = list(body.get("engagements") or [])
                records = []
                for e in rows:
                    key = (_ts(_parse(e["start_time"])), str(e["engagement_id"]))
                    in_order = in_order and (last_key is None or key >= last_key)
                    last_key = max(last_key, key) if last_key else key
                    if _wants_detail(e):
                        e = self._json("GET", f"{API}/engagements/{seg(e['engagement_id'])}",
                                       endpoint=API + "/engagements/{engagementId}")
                    if not e.get("end_time"):
                        start = _parse(e["start_time"])
                        open_since = start if open_since is None else min(open_since, start)
                    records.append(SourceRecord(system=self.system, stream="engagements",
                                                external_id=str(e["engagement_id"]), modified_at=modified_at(e),
                                                payload=e))
                window_done = not body.get("next_page_token")
                if in_order and last_key:
                    safe = Cursor(modified_at=_parse(last_key[0]), last_id=last_key[1])
                if window_done:
                    safe = Cursor(modified_at=w_hi, last_id=None) if not in_order or not last_key else safe
                if open_since is not None and safe.modified_at is not None and open_since < safe.modified_at:
                    safe = Cursor(modified_at=open_since, last_id=None)
                if records:
                    yield Page(records, safe)
            lo = w_hi + timedelta(seconds=1)

    def _fetch_engagements(self, url: str | None, params: dict[str, Any]) -> Any:
        return self._json("GET", url or API + "/engagements", params=params, endpoint=API + "/engagements")

    def _contacts(self, cursor: Cursor) -> Iterator[Page]:
        book = self._book_id(create=False)
        if book is None:
            return
        now = datetime.now(timezone.utc).replace(microsecond=0)
        resume = bool(cursor.token and cursor.modified_at and now - cursor.modified_at < TOKEN_LIFETIME)
        sweep = cursor.modified_at if resume else now
        params: dict[str, Any] = {"page_size": self._size("address_book_contacts")}
        if resume:
            params["next_page_token"] = cursor.token
        url = f"{API}/address_books/{seg(book)}/contacts"

        def fetch(u, p):
            return self._json("GET", url, params=p, endpoint=API + "/address_books/{addressBookId}/contacts")

        try:
            pages = paginate(fetch, TokenPaging(), params)
            first = next(pages, None)
        except BadRequestError:
            if not resume:
                raise
            # The page token expired: Zoom offers no way back into the sweep, so start it over.
            yield from self._contacts(Cursor())
            return
        bodies = [first] if first is not None else []
        for body in _chain(bodies, pages):
            records = [SourceRecord(system=self.system, stream="address_book_contacts",
                                    external_id=str(c["contact_id"]), modified_at=sweep, payload=c)
                       for c in body.get("contacts") or []]
            token = body.get("next_page_token") or None
            if records or token is None:
                yield Page(records, Cursor(modified_at=sweep, token=token))

    # --- address book and custom fields ----------------------------------------------------------
    def _book_id(self, *, create: bool) -> str | None:
        if self._book:
            return self._book

        def fetch(url, p):
            return self._json("GET", API + "/address_books", params=p)

        for body in paginate(fetch, TokenPaging(), {"page_size": 300}):
            for b in body.get("address_books") or []:
                if b.get("address_book_name") == self.address_book:
                    self._book = str(b["address_book_id"])
                    return self._book
        if not create:
            return None
        try:
            made = self._call("POST", API + "/address_books", layer=self._single,
                              json={"address_book_name": self.address_book,
                                    "address_book_description": "Golden customer records pushed by omnisync"}).json()
            self._book = str(made["address_book_id"])
        except (ConflictError, TransientError, ValueError, KeyError):
            # Created by someone else meanwhile, or our answer was lost: the name finds it.
            if self._book_id(create=False) is None:
                raise
        return self._book

    def _field_ids(self, names: set[str], book: str) -> dict[str, str]:
        missing = names - set(self._fields)
        if missing:
            def fetch(url, p):
                return self._json("GET", API + "/address_books/custom_fields", params=p)

            for body in paginate(fetch, TokenPaging(), {"page_size": 300}):
                for f in body.get("custom_fields") or []:
                    self._fields[str(f["custom_field_name"])] = str(f["custom_field_id"])
            for name in sorted(names - set(self._fields)):
                try:
                    made = self._call("POST", API + "/address_books/custom_fields", layer=self._single, json={
                        "custom_field_name": name, "data_type": "string", "address_book_ids": [book],
                        "custom_field_description": "Maintained by omnisync",
                        # The agent sees it on the inbound notification and can open the Customer 360 with it.
                        "use_as_external_url_parameter": True, "show_in_inbound_notification": True,
                        "show_in_profile_tab": True}).json()
                    self._fields[name] = str(made["custom_field_id"])
                except (ConflictError, TransientError, ValueError, KeyError):
                    self._fields.pop(name, None)
                    return self._field_ids(names, book)  # it exists now: list again
        return {n: self._fields[n] for n in names}

    def _golden_of(self, contact: dict[str, Any]) -> str | None:
        if not contact.get("custom_fields_url"):
            return None
        body = self._json("GET", f"{API}/address_books/contacts/{seg(contact['contact_id'])}/custom_fields",
                          params={"page_size": 300}, endpoint=API + "/address_books/contacts/{contactId}/custom_fields")
        for f in body.get("custom_fields") or []:
            if f.get("custom_field_name") == GOLDEN_FIELD:
                return f.get("custom_field_value") or None
        return None

    def _find(self, book: str, wanted: dict[str, OutboundRecord]) -> dict[str, str]:
        """Contact ids of the golden ids in ``wanted`` that already exist in the address book."""
        found = {g: self._golden[g] for g in wanted if g in self._golden}
        todo = [(g, r) for g, r in wanted.items() if g not in found]
        for i in range(0, len(todo), LOOKUP_BATCH):
            group = todo[i:i + LOOKUP_BATCH]
            phones = sorted({p for _, r in group for p in _as_list(r.payload.get("phone_numbers"))[:1]})
            emails = sorted({e for _, r in group for e in _as_list(r.payload.get("emails"))[:1]})
            if not phones and not emails:
                continue
            params = {"page_size": 300}
            if phones:
                params["phone_numbers"] = ",".join(phones)
            if emails:
                params["emails"] = ",".join(emails)

            def fetch(url, p):
                return self._json("GET", f"{API}/address_books/{seg(book)}/contacts", params=p,
                                  endpoint=API + "/address_books/{addressBookId}/contacts")

            try:
                bodies = list(paginate(fetch, TokenPaging(), params))
            except BadRequestError:
                continue  # an invalid number in the group: each record's own write reports it
            for body in bodies:
                for c in body.get("contacts") or []:
                    g = self._golden_of(c)
                    if g:
                        self._golden[g] = str(c["contact_id"])
                        if g in wanted:
                            found[g] = str(c["contact_id"])
        return found

    # --- writing -----------------------------------------------------------------------------
    def write(self, stream: str, records: Sequence[OutboundRecord]) -> list[WriteOutcome]:
        if stream != "address_book_contacts":
            return super().write(stream, records)
        outcomes: dict[str, WriteOutcome] = {}
        book = self._book_id(create=True)
        names = {n for r in records for n in (r.payload.get("custom_fields") or {})}
        names |= {GOLDEN_FIELD for r in records if r.match.get(GOLDEN_FIELD)}
        fields = self._field_ids(names, book) if names else {}
        creating = {self._golden_id(r): r for r in records if not r.external_id and self._golden_id(r)}
        existing = self._find(book, creating) if creating else {}
        transient = 0
        for i, rec in enumerate(records):
            if rec.key in outcomes:
                continue  # the same record twice in one batch is written once
            try:
                outcomes[rec.key] = self._write_one(book, fields, rec, existing)
                transient = 0
            except AuthError:
                raise
            except QuotaExhaustedError as e:
                # What was written stays confirmed (the caller records it); the rest waits for the quota.
                for later in records[i:]:
                    outcomes.setdefault(later.key, WriteOutcome(
                        later.key, WriteStatus.failed, external_id=later.external_id, retryable=True, error=str(e)))
                break
            except ConnectorError as e:
                outcomes[rec.key] = self._failed(rec, e)
                transient = transient + 1 if e.retryable else 0
                if transient >= MAX_TRANSIENT_IN_A_ROW:
                    for later in records[i + 1:]:
                        outcomes.setdefault(later.key, WriteOutcome(
                            later.key, WriteStatus.failed, external_id=later.external_id, retryable=True,
                            error="not attempted: Zoom kept failing on the records before it; retried next run"))
                    break
        return [outcomes[r.key] for r in records]

    def _golden_id(self, rec: OutboundRecord) -> str | None:
        return rec.match.get(GOLDEN_FIELD) or (rec.payload.get("custom_fields") or {}).get(GOLDEN_FIELD)

    def _write_one(self, book: str, fields: dict[str, str], rec: OutboundRecord,
                   existing: dict[str, str]) -> WriteOutcome:
        unknown = sorted(set(rec.payload) - CONTACT_KEYS)
        if unknown:
            return WriteOutcome(rec.key, WriteStatus.failed, external_id=rec.external_id, error=(
                f"address_book_contacts record {mask_text(rec.key)}: field {unknown[0]} is not a Zoom contact field; "
                "check mappings/zoom/address_book_contacts.yaml"))
        body = {k: v for k, v in rec.payload.items() if k != "custom_fields"}
        for k in ("phone_numbers", "emails", "consumer_ids"):
            if k in body:
                body[k] = _as_list(body[k])
        custom = dict(rec.payload.get("custom_fields") or {})
        golden = self._golden_id(rec)
        if golden:
            custom[GOLDEN_FIELD] = golden
        if custom:
            body["custom_fields"] = [{"custom_field_id": fields[n], "custom_field_value": "" if v is None else str(v)}
                                     for n, v in sorted(custom.items())]
        contact_id = rec.external_id or (existing.get(golden) if golden else None)
        if contact_id:
            if "phone_numbers" in body or "emails" in body:
                current = self._json("GET", f"{API}/address_books/{seg(book)}/contacts/{seg(contact_id)}",
                                     endpoint=API + "/address_books/{addressBookId}/contacts/{contactId}")
                for k in ("phone_numbers", "emails"):
                    if k in body:
                        body[k] = list(dict.fromkeys(body[k] + list(current.get(k) or [])))
            self._call("PATCH", f"{API}/address_books/{seg(book)}/contacts/{seg(contact_id)}", json=body,
                       endpoint=API + "/address_books/{addressBookId}/contacts/{contactId}")
            if golden:
                self._golden[golden] = contact_id
            return WriteOutcome(rec.key, WriteStatus.updated, external_id=contact_id)
        if not body.get("display_name"):
            name = " ".join(str(body[k]) for k in ("first_name", "last_name") if body.get(k))
            if name:
                body["display_name"] = name
        contact_id = self._create(book, body, golden, rec)
        if golden:
            self._golden[golden] = contact_id
        return WriteOutcome(rec.key, WriteStatus.created, external_id=contact_id)

    def _create(self, book: str, body: dict[str, Any], golden: str | None, rec: OutboundRecord) -> str:
        """POST the contact once per attempt; when the answer is lost, look it up before trying again."""
        url = f"{API}/address_books/{seg(book)}/contacts"
        last: ConnectorError | None = None
        for attempt in range(self.policy.attempts):
            if attempt:
                time.sleep(_pause(self.policy, attempt, last))
            try:
                resp = self._call("POST", url, layer=self._single, json=body,
                                  endpoint=API + "/address_books/{addressBookId}/contacts")
                return str(resp.json()["contact_id"])
            except RateLimitedError as e:
                last = e  # refused before anything was created
                continue
            except TransientError as e:
                last = e
                if isinstance(e.__cause__, httpx.ConnectError):
                    continue  # never reached Zoom
            except (ValueError, KeyError):
                last = TransientError("unreadable answer to a contact create", system=self.system)
            # The create may or may not have happened: only the golden id can tell.
            if not golden:
                raise TransientError("contact create answered nothing and the record has no golden id to look it "
                                     "up by; not re-sent", system=self.system)
            self._golden.pop(golden, None)
            found = self._find(book, {golden: rec})
            if golden in found:
                return found[golden]
        raise last or TransientError("contact create failed", system=self.system)

    # --- erasure -----------------------------------------------------------------------------
    RETAINED = ("engagement log kept by Zoom: the Contact Center API has no engagement delete; its recordings and "
                "transcripts were deleted, the log ages out under the account's data-retention policy")

    def erase(self, stream: str, ids: Sequence[str]) -> list[WriteOutcome]:
        """Erase a person's Zoom records.

        Address-book contacts are deleted from whichever book holds them (the API addresses a
        contact through its book). Engagements cannot be deleted through Zoom's API: their
        recordings and transcripts are, and the outcome says the log itself is retained, so the
        erasure audit names what is left and why. An id Zoom no longer knows counts as erased.
        """
        self.stream(stream)
        if stream == "engagements":
            out = []
            for eid in ids:
                try:
                    self._call("DELETE", f"{API}/engagements/{seg(eid)}/recordings",
                               endpoint=API + "/engagements/{engagementId}/recordings")
                    out.append(WriteOutcome(eid, WriteStatus.unchanged, external_id=eid, error=self.RETAINED))
                except NotFoundError:
                    out.append(WriteOutcome(eid, WriteStatus.unchanged, external_id=eid))
                except (AuthError, QuotaExhaustedError):
                    raise
                except ConnectorError as e:
                    out.append(self._erase_failed(stream, eid, e))
            return out
        books: list[str] = []

        def fetch(url, p):
            return self._json("GET", API + "/address_books", params=p)

        for body in paginate(fetch, TokenPaging(), {"page_size": 300}):
            books += [str(b["address_book_id"]) for b in body.get("address_books") or []]
        mine = self._book_id(create=False)
        books.sort(key=lambda b: b != mine)  # ours first: that is where omnisync's contacts live
        out = []
        for cid in ids:
            outcome = WriteOutcome(cid, WriteStatus.unchanged, external_id=cid)
            for book in books:
                try:
                    self._call("DELETE", f"{API}/address_books/{seg(book)}/contacts/{seg(cid)}",
                               endpoint=API + "/address_books/{addressBookId}/contacts/{contactId}")
                    outcome = WriteOutcome(cid, WriteStatus.deleted, external_id=cid)
                    break
                except NotFoundError:
                    continue
                except (AuthError, QuotaExhaustedError):
                    raise
                except ConnectorError as e:
                    outcome = self._erase_failed(stream, cid, e)
                    break
            self._golden = {g: c for g, c in self._golden.items() if c != cid}
            out.append(outcome)
        return out

    def _erase_failed(self, stream: str, rid: str, e: ConnectorError) -> WriteOutcome:
        return WriteOutcome(rid, WriteStatus.failed, external_id=rid, retryable=e.retryable,
                            error=f"{stream} record {rid}: delete refused (HTTP {e.status}, code {e.code}); "
                                  "the erasure job retries it")

    def _failed(self, rec: OutboundRecord, e: ConnectorError) -> WriteOutcome:
        code, message = getattr(self._errors, "last", ("", ""))
        self._errors.last = ("", "")
        if e.retryable:
            why = f"Zoom kept failing (HTTP {e.status or 'none'}); retried next run"
        else:
            meaning = CONTACT_ERRORS.get(e.code or code, "Zoom rejected the contact")
            why = f"{meaning} (HTTP {e.status}, code {e.code or code}: {mask_text(message)[:160]}); fix the golden " \
                  "record or mappings/zoom/address_book_contacts.yaml and re-run"
        return WriteOutcome(rec.key, WriteStatus.failed, external_id=rec.external_id, retryable=e.retryable,
                            error=f"address_book_contacts record {mask_text(rec.key)}: {why}")


def _fetch_token(c: ZoomCredentials, timeout: float) -> IssuedToken:
    return fetch_token(system="zoom", url=c.oauth_url, timeout=timeout, refused=CLIENT_REFUSED,
                       form={"grant_type": "account_credentials", "account_id": str(c.account_id)},
                       basic=(str(c.client_id), c.client_secret.get_secret_value()))


def _usage(resp: httpx.Response) -> tuple[int | None, float | None]:
    try:
        remaining = int(resp.headers["X-RateLimit-Remaining"])
    except (KeyError, ValueError):
        return None, None
    if resp.headers.get("X-RateLimit-Type", "QPS").upper() == "QPS":
        return remaining, 1.0
    return None, None  # a daily counter: the error path stops the sync, do not park the budget for hours


def _pause(policy: RetryPolicy, attempt: int, error: ConnectorError | None) -> float:
    if isinstance(error, RateLimitedError) and error.retry_after is not None:
        return min(error.retry_after, policy.max_retry_after)
    return min(policy.backoff_max, policy.backoff_initial * 2 ** (attempt - 1))


def _as_list(v: Any) -> list[str]:
    if v is None or v == "":
        return []
    return [str(x) for x in v] if isinstance(v, list) else [str(v)]


def _chain(first: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
    yield from first
    yield from rest
