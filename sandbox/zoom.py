"""Zoom Contact Center emulator: engagements across channels, virtual-agent hand-offs, address books.

Seeded from :mod:`sandbox.population`: about 40% of people have one to three engagements between
August and November 2026 on voice, web chat, SMS, email or video, answered by a roster of agents in
named queues, with dispositions (about 3% of callers ask not to be called again: "Do not call"),
notes and (for messaging) transcript URLs. Callers show up by phone
number (often formatted by hand-entered caller-ID rules), chat and email consumers by address. Some
chats are handled by the virtual agent alone (contained); others are handed to a live agent, and
the engagement keeps the bot's context: a ``Virtual Agent Ended`` event whose ``event_content``
(a JSON string, as the spec says events carry) holds the bot's name, conversation id, intent,
collected variables and summary, followed by the transfer and the agent's acceptance.

The heroine (person 0) chats with the virtual agent about a refund for order 88412 on 2026-11-02
and is handed to Jordan Lee in the Billing queue; on 2026-11-03 she calls from her mobile and the
call ends with disposition "Refund approved".

Vendor behaviour kept faithful (spec: shared/specs/zoom): ``GET /v2/contact_center/engagements``
takes ``from``/``to`` (at most one month apart; without ``from`` the last 24 hours),
``page_size`` up to 100 and an opaque ``next_page_token`` that expires after 15 minutes; the list
shape carries no events, ``GET /engagements/{id}`` does. Address-book contacts page by
``next_page_token`` (``page_size`` up to 300), filter by up to 10 exact ``emails`` or
``phone_numbers``; custom-field values are only visible through
``/address_books/contacts/{id}/custom_fields``. Writes are one contact per call (201 / 204).
Errors are ``{"code", "message"}``; 429s carry ``X-RateLimit-Type`` (``QPS`` or ``Daily-limit``
with an ISO ``Retry-After``). Requests beyond 60 a second are refused as Zoom does.

Additions the spec lacks, kept minimal: ``consumers[].consumer_email`` for email and chat consumers.

Auth as a Server-to-Server OAuth app: ``POST /oauth/token`` (Zoom serves it from zoom.us; here
``oauth_url`` in the credentials names this server) with HTTP Basic ``client_id:client_secret`` and
``grant_type=account_credentials`` plus ``account_id`` in the form body (or the query string, as
older clients send them) answers ``{"access_token", "token_type": "bearer", "expires_in", "scope",
"api_url"}``. Tokens live ``token_lifetime_s`` (3600, as Zoom's; tests shorten it); an API call with
an expired or unknown token is refused 401 ``{"code": 124, "message": "Access token is expired."}``
(``"Invalid access token."`` for one never issued). A wrong client or secret is 400
``{"reason": "Invalid client_id or client_secret", "error": "invalid_client"}``; a wrong account id
400 ``invalid_request``. Token requests are logged like any other (``POST /oauth/token``) but,
being another Zoom service, never count against the API's limits nor get its injected faults.
``TOKEN`` is a token issued at seeding time, for tools that call the API directly.

Sandbox-only routes: ``POST /_sandbox/oauth`` (``{"token_lifetime_s"}`` for tokens issued from now
on, ``{"expire_tokens": true}`` to expire every token issued so far), ``POST /_sandbox/engagements`` (a customer reaches the contact center: any
channel, a bot-only chat or a bot-to-agent hand-off, optionally still in progress) and
``POST /_sandbox/engagements/{id}/end`` (the agent wraps it up).
"""

from __future__ import annotations

import base64
import bisect
import binascii
import json
import random
import re
import secrets
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from sandbox.framework import Sandbox
from sandbox.population import JUNK_EMAILS, JUNK_PHONES, active_people, email_variant, person, phone_variant, typo

TOKEN = "sandbox-zoom-token"
ACCOUNT_ID = "sNdBx0AccountZoomCC01"
CLIENT_ID = "sandboxZoomS2SClient"
CLIENT_SECRET = "sandbox-zoom-client-secret"
TOKEN_PATH = "/oauth/token"
ACCESS_TOKEN_LIFETIME_S = 3600
SCOPES = ("contact_center:read:list_engagements:admin contact_center:read:engagement:admin "
          "contact_center:delete:recording:admin contact_center:read:list_address_books:admin "
          "contact_center:write:address_book:admin contact_center:read:list_address_book_contacts:admin "
          "contact_center:write:address_book_contact:admin contact_center:update:address_book_contact:admin "
          "contact_center:delete:address_book_contact:admin contact_center:read:address_book_custom_field:admin "
          "contact_center:write:address_book_custom_field:admin")
SEED_FROM = datetime(2026, 8, 1, tzinfo=timezone.utc)
SEED_TO = datetime(2026, 11, 20, tzinfo=timezone.utc)
TOKEN_TTL = 15 * 60
QPS_LIMIT = 60
MAX_RANGE = timedelta(days=31)
ENGAGEMENT_SALT = 701
CONTACT_SALT = 702

AGENTS = ("Jordan Lee", "Priya Nair", "Marcus Bell", "Sofia Marin", "Daniel Cho", "Grace Obi", "Tomas Vidal",
          "Hannah Stone", "Ravi Mehta", "Elena Ruiz", "Sam Carter", "Noor Haddad")
QUEUES = ("Billing", "Support", "Sales", "Tech Support", "Retention")
DO_NOT_CALL = "Do not call"  # the account's disposition for a caller's do-not-call request (a voice opt-out)
DISPOSITIONS = ("Resolved", "Refund approved", "Follow-up required", "Escalated", "Callback scheduled",
                "Order updated", "Information provided", "Sale")
NOTES = ("Customer asked about delivery times; gave tracking link.", "Verified account, updated shipping address.",
         "Explained the billing cycle; no change needed.", "Escalated to tier 2 for a damaged item.",
         "Customer happy with the resolution.", "Promised a callback tomorrow morning.",
         "Applied a goodwill credit as approved by supervisor.", "Walked through the password reset steps.")
FLOWS = {"voice": "Main IVR", "chat": "Web Chat", "sms": "SMS Inbox", "email": "Email Inbox",
         "video": "Video Support", "bot": "Virtual Agent - Customer Care"}
BOT_NAME = "Customer Care Virtual Agent"
INTENTS = {
    "order_status": ("Where is my order", "Customer asked where order {order} is; bot shared tracking.",
                     "Billing", lambda r: {"order_number": str(r.randrange(10000, 99999))}),
    "refund": ("Refund request", "Customer wants a refund for order {order}; needs agent approval.",
               "Billing", lambda r: {"order_number": str(r.randrange(10000, 99999))}),
    "password_reset": ("Password reset", "Customer locked out; reset link sent.", "Tech Support",
                       lambda r: {"account_locked": "true"}),
    "cancel_subscription": ("Cancel subscription", "Customer wants to cancel the subscription.", "Retention",
                            lambda r: {"plan": r.choice(("basic", "plus", "premium"))}),
    "update_address": ("Update address", "Customer is moving and wants to update the address.", "Support",
                       lambda r: {"order_number": str(r.randrange(10000, 99999))}),
}
CHANNEL_MIX = (("voice", 0.38), ("chat", 0.14), ("bot", 0.05), ("handoff", 0.09), ("sms", 0.12),
               ("email", 0.12), ("video", 0.10))

HEROINE_CHAT = datetime(2026, 11, 2, 17, 4, 10, tzinfo=timezone.utc)
HEROINE_CALL = datetime(2026, 11, 3, 16, 30, 5, tzinfo=timezone.utc)
HEROINE_SUMMARY = ("Customer asks for a refund for order 88412 (duplicate charge); bot verified the order "
                   "and handed to billing for approval.")


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str, *, end: bool = False) -> datetime:
    """``yyyy-mm-dd`` (whole day) or ``yyyy-MM-dd'T'HH:mm:ss'Z'``, as the spec allows."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        day = datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
        return day + timedelta(days=1, seconds=-1) if end else day
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})", value):
        raise ValueError(value)
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


def _err(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def _zid(r: random.Random) -> str:
    return base64.urlsafe_b64encode(r.randbytes(16)).decode().rstrip("=")


def _e164(value: str) -> bool:
    return bool(re.fullmatch(r"\+[1-9]\d{6,14}", value))


def _email_ok(value: str) -> bool:
    return bool(re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value))


LIST_FIELDS = ("start_time", "end_time", "duration", "engagement_id", "direction", "channel_types", "channels",
               "consumers", "flows", "queues", "agents", "talk_duration", "flow_duration", "waiting_duration",
               "handling_duration", "wrap_up_duration", "transfer_count", "dispositions", "notes",
               "transcript_url", "survey_id")


class ZoomSandbox(Sandbox):
    name = "zoom"
    unmetered_paths = frozenset({TOKEN_PATH})  # zoom.us, not the Contact Center API

    def __init__(self, *, size: int = 100, seed: int = 1, token_lifetime_s: float = ACCESS_TOKEN_LIFETIME_S,
                 qps_limit: int = QPS_LIMIT):
        self._qps: tuple[int, int] = (0, 0)
        self.qps_limit = qps_limit  # per second, Medium APIs (the plan decides: 20 Pro, 60 Business+)
        self.token_lifetime_s = token_lifetime_s
        # Issued access tokens and when they expire (epoch seconds). Kept across resets: a reset
        # re-seeds the data, the OAuth app's tokens stay valid.
        self.access_tokens: dict[str, float] = {}
        self.tokens_issued = 0
        self._refusal = "Invalid access token."
        super().__init__(size=size, seed=seed)

    # --- OAuth -----------------------------------------------------------------------------------
    def issue_token(self, lifetime: float | None = None) -> tuple[str, float]:
        life = self.token_lifetime_s if lifetime is None else lifetime
        token = "sbx." + secrets.token_urlsafe(32)
        now = time.time()
        with self.lock:
            # Expired tokens are forgotten after ten minutes (then refused as never issued).
            self.access_tokens = {t: exp for t, exp in self.access_tokens.items() if exp > now - 600}
            self.access_tokens[token] = now + life
            self.tokens_issued += 1
        return token, life

    def expire_tokens(self) -> int:
        """Expire every token issued so far (as an app's secret rotation or an early revocation does)."""
        now = time.time()
        with self.lock:
            for t in self.access_tokens:
                self.access_tokens[t] = min(self.access_tokens[t], now - 1)
            return len(self.access_tokens)

    def _token_response(self, request: Request, form: dict[str, str]) -> JSONResponse:
        params = {**dict(request.query_params), **form}
        header = request.headers.get("authorization", "")
        client = ("", "")
        if header[:6].lower() == "basic ":
            try:
                client_id, _, secret = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
                client = (client_id, secret)
            except (binascii.Error, UnicodeDecodeError):
                pass
        if params.get("grant_type") != "account_credentials":
            return JSONResponse({"reason": "unsupported grant type", "error": "unsupported_grant_type"}, status_code=400)
        if not secrets.compare_digest(client[0].encode(), CLIENT_ID.encode()) or \
                not secrets.compare_digest(client[1].encode(), CLIENT_SECRET.encode()):
            return JSONResponse({"reason": "Invalid client_id or client_secret", "error": "invalid_client"},
                                status_code=400)
        if params.get("account_id") != ACCOUNT_ID:
            return JSONResponse({"reason": "Invalid account_id", "error": "invalid_request"}, status_code=400)
        token, life = self.issue_token()
        return JSONResponse({"access_token": token, "token_type": "bearer", "expires_in": int(life) or 1,
                             "scope": SCOPES, "api_url": self.base_url or "https://api.zoom.us"})

    # --- state ---------------------------------------------------------------------------------
    def seed(self) -> None:
        r = random.Random(f"zoom:{self.seed_value}")
        self.rand = random.Random(f"zoom-runtime:{self.seed_value}")
        self.agents = [{"user_id": _zid(r), "display_name": n} for n in AGENTS]
        self.queues = [{"queue_id": _zid(r), "cc_queue_id": _zid(r), "queue_name": n} for n in QUEUES]
        self.flows = {k: {"flow_id": _zid(r), "flow_name": n, "flow_version": str(r.randrange(2, 9))}
                      for k, n in FLOWS.items()}
        self.dispositions = [{"disposition_id": _zid(r), "disposition_name": n} for n in DISPOSITIONS]
        self.engagements: dict[str, dict[str, Any]] = {}
        # (start, id), sorted (a start never changes): a listing's time window is a slice of it, so a
        # page costs the window, not every engagement the sandbox holds
        self._starts: list[tuple[datetime, str]] = []
        self._unsorted = False
        self.tokens: dict[str, tuple[str, tuple, tuple, float]] = {}
        self._qps = (0, 0)
        with self.lock:
            self.access_tokens[TOKEN] = time.time() + ACCESS_TOKEN_LIFETIME_S
        for pid in active_people(self.size, 0.4, self.seed_value, salt=ENGAGEMENT_SALT):
            self._seed_person(pid)
        self._seed_address_books(r)

    def _consumer_id(self, pid: int) -> str:
        return _zid(random.Random(f"zoom-consumer:{self.seed_value}:{pid}"))

    def _consumer(self, pid: int, kind: str, r: random.Random) -> dict[str, Any]:
        p = person(pid, self.seed_value)
        name = p.full_name if r.random() < 0.8 else (typo(p.first, r) + " " + p.last if r.random() < 0.5 else p.first)
        c: dict[str, Any] = {"consumer_id": self._consumer_id(pid), "consumer_display_name": name}
        by_email = kind == "email" or (kind in ("chat", "bot", "handoff") and r.random() < 0.7)
        if by_email:
            address = p.personal_email if r.random() < 0.7 else p.work_email
            c["consumer_email"] = r.choice(JUNK_EMAILS) if r.random() < 0.005 else (
                email_variant(address, r).strip() if r.random() < 0.2 else address)
        else:
            number = p.landline if kind == "voice" and p.landline and r.random() < 0.2 else p.mobile
            c["consumer_number"] = r.choice(JUNK_PHONES) if r.random() < 0.005 else (
                phone_variant(number, r) if r.random() < 0.3 else number)
        return c

    def _seed_person(self, pid: int) -> None:
        r = random.Random(f"zoom:{self.seed_value}:{pid}")
        if pid == 0:
            self._seed_heroine(r)
            return
        span = int((SEED_TO - SEED_FROM).total_seconds())
        for _ in range(1 + r.randrange(3)):
            roll, kind = r.random(), "voice"
            for k, share in CHANNEL_MIX:
                if roll < share:
                    kind = k
                    break
                roll -= share
            start = SEED_FROM + timedelta(seconds=r.randrange(span))
            e = self.add_engagement(kind, self._consumer(pid, kind, r), start, r)
            if kind == "voice" and e.get("agents") and random.Random(f"zoom-dnc:{self.seed_value}:{pid}").random() < 0.03:
                # A caller asked not to be called again: the agent dispositions the call so.
                dnc = random.Random(f"zoom-dnc-id:{self.seed_value}")
                e["dispositions"] = [dict(self._disposition(DO_NOT_CALL, dnc))]

    def _seed_heroine(self, r: random.Random) -> None:
        p = person(0, self.seed_value)
        chat_consumer = {"consumer_id": self._consumer_id(0), "consumer_display_name": p.full_name,
                         "consumer_email": p.personal_email}
        self.add_engagement("handoff", chat_consumer, HEROINE_CHAT, r, intent="refund",
                            variables={"order_number": "88412", "reason": "duplicate charge"},
                            bot_summary=HEROINE_SUMMARY, queue="Billing", agent="Jordan Lee",
                            disposition="Follow-up required",
                            note="Refund for order 88412 sent for approval; customer will be contacted.")
        call_consumer = {"consumer_id": self._consumer_id(0), "consumer_display_name": p.full_name,
                         "consumer_number": p.mobile}
        self.add_engagement("voice", call_consumer, HEROINE_CALL, r, queue="Billing", agent="Jordan Lee",
                            disposition="Refund approved", talk=412, direction="inbound",
                            note="Approved the refund for order 88412; confirmation SMS to follow.")

    def add_engagement(self, kind: str, consumer: dict[str, Any], start: datetime, r: random.Random, *,
                       queue: str | None = None, agent: str | None = None, disposition: str | None = None,
                       note: str | None = None, intent: str | None = None, variables: dict[str, str] | None = None,
                       bot_summary: str | None = None, talk: int | None = None, direction: str | None = None,
                       in_progress: bool = False) -> dict[str, Any]:
        """Build one engagement of ``kind`` (voice, chat, sms, email, video, bot, handoff) and store it."""
        eid = _zid(r)
        channel = {"voice": ("voice", None, "voice"), "video": ("video", "web_video", "video"),
                   "sms": ("messaging", "sms", "sms"), "email": ("email", "email_address", None),
                   }.get(kind, ("messaging", "web_chat", "chat"))
        ch = {"channel": channel[0]}
        if channel[1]:
            ch["channel_source"] = channel[1]
        if direction is None:
            direction = "outbound" if (kind == "voice" and r.random() < 0.15) or (kind == "email" and r.random() < 0.1) \
                else "inbound"
        flow = self.flows["bot" if kind in ("bot", "handoff") else ("chat" if kind == "chat" else kind)]
        e: dict[str, Any] = {"engagement_id": eid, "direction": direction, "start_time": _iso(start),
                             "channel_types": [channel[2]] if channel[2] else [], "channels": [ch],
                             "consumers": [consumer], "flows": [dict(flow)] if direction == "inbound" else [],
                             "queues": [], "agents": [], "dispositions": [], "notes": [], "transfer_count": 0,
                             "voice_mail": 0, "queue_wait_type": "live_waiting"}
        events: list[dict[str, Any]] = []
        t = start

        def event(event_type: str, **extra: Any) -> None:
            events.append({"start_time": _iso(t), "event_type": event_type, "channel": channel[0],
                           **({"channel_source": channel[1]} if channel[1] else {}), "direction": direction,
                           **extra})

        event("Engagement Started", consumer_id=consumer["consumer_id"],
              consumer_display_name=consumer.get("consumer_display_name"))
        flow_s = r.randrange(10, 60)
        if e["flows"]:
            event("Flow Started", flow_id=flow["flow_id"], flow_name=flow["flow_name"])
        if kind in ("bot", "handoff"):
            intent = intent or r.choice(sorted(INTENTS))
            label, summary_t, default_queue, make_vars = INTENTS[intent]
            variables = dict(variables) if variables is not None else make_vars(r)
            queue = queue or default_queue
            flow_s = r.randrange(60, 420)
            event("Virtual Agent Started", flow_id=flow["flow_id"], flow_name=flow["flow_name"])
            t += timedelta(seconds=flow_s)
            outcome = "transferred" if kind == "handoff" else "contained"
            content = {"bot_name": BOT_NAME, "conversation_id": _zid(r), "intent": intent, "intent_label": label,
                       "variables": variables, "outcome": outcome,
                       "summary": bot_summary or summary_t.format(order=variables.get("order_number", "?"))}
            event("Virtual Agent Ended", flow_id=flow["flow_id"], flow_name=flow["flow_name"],
                  event_content=json.dumps(content, separators=(",", ":")))
        e["flow_duration"] = flow_s
        handled = kind != "bot"
        if handled:
            qname, aname = queue or r.choice(QUEUES), agent or r.choice(AGENTS)
            q = next(q for q in self.queues if q["queue_name"] == qname)
            a = next((a for a in self.agents if a["display_name"] == aname), None)
            if a is None:  # an agent named at runtime joins the roster
                a = {"user_id": _zid(r), "display_name": aname}
                self.agents.append(a)
            if kind == "handoff":
                e["transfer_count"] = 1
                event("Transfer Initiated", flow_id=flow["flow_id"], flow_name=flow["flow_name"], transfer_type="cold",
                      transfer_to_queue_id=q["queue_id"], transfer_to_cc_queue_id=q["cc_queue_id"],
                      transfer_to_queue_name=q["queue_name"])
            wait = r.randrange(5, 240)
            event("Queue Entered", queue_id=q["queue_id"], cc_queue_id=q["cc_queue_id"], queue_name=q["queue_name"])
            t += timedelta(seconds=wait)
            event("Agent Accepted", queue_id=q["queue_id"], cc_queue_id=q["cc_queue_id"], queue_name=q["queue_name"],
                  user_id=a["user_id"], user_display_name=a["display_name"], accept_type="manual")
            talk = talk or {"voice": r.randrange(45, 1200), "video": r.randrange(300, 1800),
                            "email": r.randrange(120, 900)}.get(kind, r.randrange(120, 1500))
            t += timedelta(seconds=talk)
            wrap = r.randrange(10, 120)
            e.update(queues=[dict(q)], agents=[dict(a)], waiting_duration=wait, talk_duration=talk,
                     handling_duration=talk + wrap, wrap_up_duration=wrap)
            if disposition or r.random() < 0.75:
                e["dispositions"] = [dict(self._disposition(disposition or r.choice(DISPOSITIONS), r))]
            if note or r.random() < 0.4:
                e["notes"] = [{"user_id": a["user_id"], "note_id": _zid(r), "note": note or r.choice(NOTES),
                               "last_modified_time": _iso(t + timedelta(seconds=wrap))}]
            t += timedelta(seconds=wrap)
        else:
            e.update(waiting_duration=0, talk_duration=0, handling_duration=0, wrap_up_duration=0)
        if channel[0] == "messaging":
            e["transcript_url"] = f"https://zoom.us/cc/transcripts/{eid}.txt"
        e["survey_id"] = _zid(r) if handled and r.random() < 0.2 else None
        if in_progress:
            # Live: the queue and agent are known, the end (and wrap-up) are not.
            e["events"] = [ev for ev in events]
            e.update(end_time=None, duration=int((t - start).total_seconds()), dispositions=[], notes=[])
        else:
            event("Engagement Ended")
            e["events"] = events
            e.update(end_time=_iso(t), duration=int((t - start).total_seconds()))
        with self.lock:
            self.engagements[eid] = e
            self._starts.append((_parse_time(e["start_time"]), eid))
            self._unsorted = True  # sorted once when next listed: seeding appends many
        return e

    def _disposition(self, name: str, r: random.Random) -> dict[str, Any]:
        d = next((d for d in self.dispositions if d["disposition_name"] == name), None)
        if d is None:
            d = {"disposition_id": _zid(r), "disposition_name": name}
            self.dispositions.append(d)
        return d

    def end_engagement(self, eid: str, *, at: datetime | None = None, disposition: str | None = None,
                       note: str | None = None) -> dict[str, Any]:
        with self.lock:
            e = self.engagements[eid]
            end = at or datetime.now(timezone.utc).replace(microsecond=0)
            e["end_time"] = _iso(end)
            e["duration"] = int((end - _parse_time(e["start_time"])).total_seconds())
            if disposition:
                e["dispositions"] = [dict(self._disposition(disposition, self.rand))]
            if note:
                uid = e["agents"][-1]["user_id"] if e["agents"] else None
                e["notes"] = [{"user_id": uid, "note_id": _zid(self.rand), "note": note, "last_modified_time": _iso(end)}]
            e["events"].append({"start_time": _iso(end), "event_type": "Engagement Ended",
                                "channel": e["channels"][0]["channel"], "direction": e["direction"]})
            return e

    def _seed_address_books(self, r: random.Random) -> None:
        self.address_books: dict[str, dict[str, Any]] = {}
        self.contacts: dict[str, dict[str, Any]] = {}  # contact_id -> contact (insertion order = list order)
        self.contact_fields: dict[str, dict[str, str]] = {}  # contact_id -> custom_field_id -> value
        self.custom_fields: dict[str, dict[str, Any]] = {}
        customers = self._new_book("Customers", "Customers known to the contact center", r)
        partners = self._new_book("Partners", "Suppliers and partner escalation lines", r)
        lang = self._new_field({"custom_field_name": "Preferred_Language", "data_type": "string",
                                "address_book_ids": [customers]}, r)
        for pid in active_people(self.size, 0.25, self.seed_value, salt=CONTACT_SALT):
            if pid == 0:
                continue  # the heroine is not in the address book yet: the push-back creates her
            pr = random.Random(f"zoom-contact:{self.seed_value}:{pid}")
            p = person(pid, self.seed_value)
            c = {"display_name": p.full_name, "first_name": p.first, "last_name": p.last,
                 "phone_numbers": [p.mobile], "emails": [p.personal_email] if pr.random() < 0.6 else [],
                 "location": f"{p.city}, {p.state}", "timezone": p.timezone,
                 "company": p.company if pr.random() < 0.5 else None,
                 "consumer_ids": [self._consumer_id(pid)]}
            if pr.random() < 0.005:
                c["phone_numbers"] = ["+10000000000"]
            cid = self._store_contact(customers, c, pr)
            if pr.random() < 0.3:
                self.contact_fields[cid] = {lang: p.locale}
        for i in range(5):
            self._store_contact(partners, {"display_name": f"Partner desk {i + 1}",
                                           "phone_numbers": [f"+1800555{100 + i:04d}"]}, r)

    def _new_book(self, name: str, description: str, r: random.Random) -> str:
        bid = _zid(r)
        self.address_books[bid] = {"address_book_id": bid, "address_book_name": name,
                                   "address_book_description": description}
        return bid

    def _new_field(self, body: dict[str, Any], r: random.Random) -> str:
        fid = str(uuid.UUID(int=r.getrandbits(128), version=4))
        books = [{"address_book_id": b, "address_book_name": self.address_books[b]["address_book_name"]}
                 for b in body.get("address_book_ids") or []]
        self.custom_fields[fid] = {k: v for k, v in {
            "custom_field_id": fid, "custom_field_name": body["custom_field_name"],
            "custom_field_description": body.get("custom_field_description") or "", "data_type": body["data_type"],
            "default_value": body.get("default_value"), "pick_list_values": body.get("pick_list_values") or [],
            "address_books": books,
            **{k: bool(body.get(k, False)) for k in ("use_as_routing_profile_parameter", "use_as_external_url_parameter",
                                                     "show_in_transferred_calls", "show_in_inbound_notification",
                                                     "show_in_profile_tab")}}.items() if v is not None}
        return fid

    def _store_contact(self, book: str, body: dict[str, Any], r: random.Random) -> str:
        cid = _zid(r)
        self.contacts[cid] = {"contact_id": cid, "address_book_id": book, **{k: v for k, v in body.items() if v is not None}}
        return cid

    def _contact_out(self, c: dict[str, Any]) -> dict[str, Any]:
        out = {**c, "address_book_name": self.address_books[c["address_book_id"]]["address_book_name"],
               "phone_numbers": list(c.get("phone_numbers", [])), "emails": list(c.get("emails", [])),
               "variables": []}
        if self.contact_fields.get(c["contact_id"]):
            out["custom_fields_url"] = (f"{self.base_url or 'https://api.zoom.us'}/v2/contact_center/address_books/"
                                        f"contacts/{c['contact_id']}/custom_fields")
        return out

    # --- framework hooks -------------------------------------------------------------------------
    def credentials(self) -> dict[str, Any]:
        return {"account_id": ACCOUNT_ID, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                "oauth_url": f"{self.base_url or 'https://zoom.us'}{TOKEN_PATH}",
                "webhook_secret": "sandbox-zoom-webhook-secret"}

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        token = header[7:] if header[:7].lower() == "bearer " else ""
        with self.lock:
            expires = self.access_tokens.get(token)
        if expires is not None and expires > time.time():
            return True
        # Read by unauthorized(), which the middleware calls next with no await in between.
        self._refusal = "Invalid access token." if expires is None else "Access token is expired."
        return False

    def unauthorized(self) -> Response:
        return _err(401, 124, self._refusal)

    def rate_limited(self) -> Response:
        return _err(429, 429, "You have reached the maximum per-second rate limit for this API. Try again later.",
                    headers={"X-RateLimit-Category": "Medium", "X-RateLimit-Type": "QPS",
                             "X-RateLimit-Limit": str(self.qps_limit), "X-RateLimit-Remaining": "0", "Retry-After": "1"})

    def server_error(self) -> Response:
        return _err(503, 503, "Service temporarily unavailable.")

    def quota_exhausted(self) -> Response:
        midnight = (datetime.now(timezone.utc) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return _err(429, 429, "You have exceeded the daily rate limit of Contact Center API requests permitted for "
                              "this account. You may resume these requests at GMT 00:00:00.",
                    headers={"X-RateLimit-Category": "Medium", "X-RateLimit-Type": "Daily-limit",
                             "X-RateLimit-Limit": "60000", "X-RateLimit-Remaining": "0",
                             "Retry-After": _iso(midnight)})

    def response_headers(self) -> dict[str, str]:
        second, used = self._qps
        return {"X-RateLimit-Category": "Medium", "X-RateLimit-Type": "QPS", "X-RateLimit-Limit": str(self.qps_limit),
                "X-RateLimit-Remaining": str(max(0, self.qps_limit - used))}

    def _spend(self) -> bool:
        with self.lock:
            now = int(time.time())
            second, used = self._qps
            if now != second:
                second, used = now, 0
            self._qps = (second, used + 1)
            return used + 1 <= self.qps_limit

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for e in self.engagements.values():
            k = _kind(e)
            kinds[k] = kinds.get(k, 0) + 1
        heroine = [e["engagement_id"] for e in self.engagements.values()
                   if e["consumers"][0]["consumer_id"] == self._consumer_id(0)]
        books = {b["address_book_name"]: sum(1 for c in self.contacts.values() if c["address_book_id"] == bid)
                 for bid, b in self.address_books.items()}
        return {"engagements": len(self.engagements), "by_kind": kinds, "heroine_engagements": heroine,
                "tokens_issued": self.tokens_issued,
                "address_books": books, "custom_fields": sorted(f["custom_field_name"] for f in self.custom_fields.values())}

    # --- paging ----------------------------------------------------------------------------------
    def _page(self, kind: str, query: tuple, items: list[tuple[tuple, Any]], size: int,
              token: str | None, render=None) -> tuple[list[dict[str, Any]], str] | JSONResponse:
        """Keyset paging over ``items`` (sorted ``(key, item)``); tokens are opaque and expire.
        ``render`` turns the page's items (only theirs: a page costs its size, not the list's) into
        the response's objects."""
        after: tuple | None = None
        if token:
            with self.lock:
                saved = self.tokens.get(token)
            if saved is None or saved[0] != kind or saved[1] != query or time.time() - saved[3] > TOKEN_TTL:
                return _err(400, 300, "The next page token is invalid or expired.")
            after = saved[2]
        start = 0 if after is None else bisect.bisect_right(items, after, key=lambda kv: kv[0])
        page = items[start:start + size]
        nxt = ""
        if len(items) > start + size:
            nxt = base64.urlsafe_b64encode(self.rand.randbytes(24)).decode().rstrip("=")
            with self.lock:
                self.tokens[nxt] = (kind, query, page[-1][0], time.time())
        return [render(it) if render else it for _, it in page], nxt

    # --- routes ---------------------------------------------------------------------------------
    def routes(self, app: FastAPI) -> None:
        sb = self
        api = "/v2/contact_center"

        @app.middleware("http")
        async def qps(request: Request, call_next):
            path = request.url.path
            if not path.startswith("/_sandbox/") and path != TOKEN_PATH and not sb._spend():
                return sb.rate_limited()
            return await call_next(request)

        @app.post(TOKEN_PATH)
        async def token(request: Request):
            raw = (await request.body()).decode("utf-8", "replace")
            form = dict(parse_qsl(raw)) if "x-www-form-urlencoded" in request.headers.get("content-type", "") else {}
            return sb._token_response(request, form)

        @app.post("/_sandbox/oauth", include_in_schema=False)
        async def oauth_switches(request: Request):
            body = await _json(request) or {}
            if "token_lifetime_s" in body:
                sb.token_lifetime_s = float(body["token_lifetime_s"])
            expired = sb.expire_tokens() if body.get("expire_tokens") else 0
            return {"token_lifetime_s": sb.token_lifetime_s, "expired": expired, "tokens_issued": sb.tokens_issued}

        @app.get(api + "/engagements")
        def list_engagements(request: Request):
            p = request.query_params
            try:
                size = min(100, max(1, int(p.get("page_size", "10"))))
            except ValueError:
                return _err(400, 300, "Invalid field: page_size.")
            now = datetime.now(timezone.utc)
            if p.get("from"):
                if not p.get("to"):
                    return _err(400, 300, "The to field is required when from is specified.")
                try:
                    lo, hi = _parse_time(p["from"]), _parse_time(p["to"], end=True)
                except ValueError:
                    return _err(400, 300, "Invalid date format: use yyyy-mm-dd or yyyy-MM-dd'T'HH:mm:ss'Z'.")
                if hi < lo or hi - lo > MAX_RANGE:
                    return _err(400, 300, "The date range must not exceed one month.")
            else:
                lo, hi = now - timedelta(days=1), now
            filters = {k: p.get(k) for k in ("direction", "channel", "consumer_number", "queue_id", "user_id")}
            query = (_iso(lo), _iso(hi), tuple(sorted((k, v) for k, v in filters.items() if v)), size)
            with sb.lock:  # re-entrant: _page takes it too; the index is not re-sorted under a page
                if sb._unsorted:
                    sb._starts.sort()
                    sb._unsorted = False
                i0 = bisect.bisect_left(sb._starts, (lo, ""))
                i1 = bisect.bisect_right(sb._starts, (hi, "\uffff"))
                # The index is in (start, id) order, the listing's: no sort. Unfiltered (what a
                # sync asks), a page is a slice of it, so a page costs its size, not the window's
                # (a month of a large account made every page scan and sort ~50,000 engagements).
                items: Sequence[tuple[tuple[datetime, str], dict[str, Any]]]
                if any(filters.values()):
                    items = [(k, e) for k in sb._starts[i0:i1] if _matches(e := sb.engagements[k[1]], filters)]
                else:
                    items = _Window(sb._starts, i0, i1, sb.engagements)
                res = sb._page("engagements", query, items, size, p.get("next_page_token"))
            if isinstance(res, JSONResponse):
                return res
            page, nxt = res
            return {"from": _iso(lo), "to": _iso(hi), "timezone": "UTC", "page_size": size,
                    "total_records": len(items), "next_page_token": nxt,
                    "engagements": [{k: e[k] for k in LIST_FIELDS if e.get(k) is not None} for e in page]}

        @app.get(api + "/engagements/{engagement_id}")
        def get_engagement(engagement_id: str):
            e = sb.engagements.get(engagement_id)
            if e is None:
                return _err(404, 2901, f"Engagement does not exist: {engagement_id}.")
            return {k: v for k, v in e.items() if v is not None}  # Zoom omits what it does not know

        @app.delete(api + "/engagements/{engagement_id}/recordings", status_code=204)
        def delete_recordings(engagement_id: str):
            """Recordings and transcripts go; the engagement log itself has no delete in Zoom's API."""
            e = sb.engagements.get(engagement_id)
            if e is None:
                return _err(404, 2901, f"Engagement does not exist: {engagement_id}.")
            with sb.lock:
                e["transcript_url"] = None
            return Response(status_code=204)

        @app.get("/_sandbox/export", include_in_schema=False)
        def export():
            """Everything the account holds: engagements (consumers, notes), address books and contacts."""
            with sb.lock:
                return {"engagements": list(sb.engagements.values()), "address_books": list(sb.address_books.values()),
                        "contacts": list(sb.contacts.values()),
                        "contact_fields": {k: v for k, v in sb.contact_fields.items()}}

        @app.get(api + "/engagements/{engagement_id}/events")
        def engagement_events(engagement_id: str):
            e = sb.engagements.get(engagement_id)
            if e is None:
                return _err(404, 2901, f"Engagement does not exist: {engagement_id}.")
            if e["channels"][0]["channel"] not in ("voice", "video"):
                return _err(400, 7001, "Only voice and video channels are currently supported.")
            return {"engagement_id": engagement_id,
                    "events": [{"start_time": ev["start_time"], "event_name": ev["event_type"],
                                "channel": ev.get("channel"), "event_content": json.dumps(ev)} for ev in e["events"]]}

        @app.get(api + "/address_books")
        def list_books(request: Request):
            p = request.query_params
            size = min(300, max(1, int(p.get("page_size", "30"))))
            items = [((i,), dict(b, total_contacts=sum(1 for c in sb.contacts.values() if c["address_book_id"] == bid)))
                     for i, (bid, b) in enumerate(sb.address_books.items())]
            res = sb._page("books", (size,), items, size, p.get("next_page_token"))
            if isinstance(res, JSONResponse):
                return res
            page, nxt = res
            return {"next_page_token": nxt, "page_size": size, "total_records": len(items), "address_books": page}

        @app.post(api + "/address_books", status_code=201)
        async def create_book(request: Request):
            body = await _json(request)
            if body is None:
                return JSONResponse(BAD_BODY, status_code=400)
            name = str(body.get("address_book_name") or "").strip()
            if not name:
                return _err(400, 1903, "The address_book_name field cannot be an empty value.")
            with sb.lock:
                if any(b["address_book_name"] == name for b in sb.address_books.values()):
                    return _err(409, 2003, f"Address book name already exists: {name}.")
                bid = sb._new_book(name, body.get("address_book_description") or "", sb.rand)
            return JSONResponse(sb.address_books[bid], status_code=201)

        @app.get(api + "/address_books/custom_fields")
        def list_fields(request: Request):
            p = request.query_params
            size = min(300, max(1, int(p.get("page_size", "30"))))
            items = [((i,), f) for i, f in enumerate(sb.custom_fields.values())]
            res = sb._page("fields", (size,), items, size, p.get("next_page_token"))
            if isinstance(res, JSONResponse):
                return res
            page, nxt = res
            return {"next_page_token": nxt, "page_size": size, "total_records": len(items), "custom_fields": page}

        @app.post(api + "/address_books/custom_fields", status_code=201)
        async def create_field(request: Request):
            body = await _json(request)
            if body is None:
                return JSONResponse(BAD_BODY, status_code=400)
            name = str(body.get("custom_field_name") or "")
            if not name or len(name) > 30:
                return _err(400, 300, "custom_field_name is required and at most 30 characters.")
            if body.get("data_type") not in ("string", "number", "boolean", "email", "phone", "percent", "currency",
                                             "dateTime", "pick_list"):
                return _err(400, 300, "Invalid field: data_type.")
            if body.get("use_as_external_url_parameter") and " " in name:
                return _err(400, 300, "custom_field_name must not contain spaces when used as an external URL parameter.")
            unknown = [b for b in body.get("address_book_ids") or [] if b not in sb.address_books]
            if unknown:
                return _err(404, 2001, f"Address book does not exist: {unknown[0]}.")
            with sb.lock:
                if any(f["custom_field_name"] == name for f in sb.custom_fields.values()):
                    return _err(409, 2115, f"Custom field name already exists: {name}.")
                fid = sb._new_field(body, sb.rand)
            return JSONResponse(sb.custom_fields[fid], status_code=201)

        @app.get(api + "/address_books/contacts/{contact_id}/custom_fields")
        def contact_fields(contact_id: str):
            if contact_id not in sb.contacts:
                return _err(404, 2101, f"Contact does not exist: {contact_id}.")
            values = sb.contact_fields.get(contact_id, {})
            return {"next_page_token": "", "page_size": 300, "custom_fields": [
                {"custom_field_id": fid, "custom_field_name": sb.custom_fields[fid]["custom_field_name"],
                 "data_type": sb.custom_fields[fid]["data_type"], "custom_field_value": v, "outdated": False}
                for fid, v in values.items() if fid in sb.custom_fields]}

        @app.get(api + "/address_books/{book_id}/contacts")
        def list_contacts(book_id: str, request: Request):
            if book_id not in sb.address_books:
                return _err(404, 2001, f"Address book does not exist: {book_id}.")
            p = request.query_params
            size = min(300, max(1, int(p.get("page_size", "30"))))
            emails = [e for v in p.getlist("emails") for e in v.split(",") if e]
            phones = [n for v in p.getlist("phone_numbers") for n in v.split(",") if n]
            if len(emails) > 10:
                return _err(400, 300, "Number of emails exceeds max limit of 10")
            if len(phones) > 10:
                return _err(400, 300, "Number of phone numbers exceeds max limit of 10")
            if any(not _e164(n) for n in phones):
                return _err(400, 300, "Invalid phone number")
            if any(not _email_ok(e) for e in emails):
                return _err(400, 300, "Invalid email")
            with sb.lock:
                hits = [c for c in sb.contacts.values() if c["address_book_id"] == book_id
                        and (not emails and not phones or set(c.get("emails", [])) & set(emails)
                             or set(c.get("phone_numbers", [])) & set(phones))]
                items = [((i,), c) for i, c in enumerate(hits)]
                res = sb._page("contacts", (book_id, tuple(emails), tuple(phones), size), items, size,
                               p.get("next_page_token"), render=sb._contact_out)
            if isinstance(res, JSONResponse):
                return res
            page, nxt = res
            return {"next_page_token": nxt, "page_size": size, "total_records": len(items), "contacts": page}

        @app.post(api + "/address_books/{book_id}/contacts", status_code=201)
        async def create_contact(book_id: str, request: Request):
            if book_id not in sb.address_books:
                return _err(404, 2001, f"Address book does not exist: {book_id}.")
            body = await _json(request)
            bad = _validate_contact(body, creating=True) or sb._validate_fields(book_id, body)
            if bad:
                return bad
            with sb.lock:
                cid = sb._store_contact(book_id, _contact_body(body), sb.rand)
                sb._apply_fields(cid, body)
                return JSONResponse(sb._contact_out(sb.contacts[cid]), status_code=201)

        @app.get(api + "/address_books/{book_id}/contacts/{contact_id}")
        def get_contact(book_id: str, contact_id: str):
            c = sb.contacts.get(contact_id)
            if c is None or c["address_book_id"] != book_id:
                return _err(404, 2101, f"Contact does not exist: {contact_id}.")
            return sb._contact_out(c)

        @app.patch(api + "/address_books/{book_id}/contacts/{contact_id}", status_code=204)
        async def update_contact(book_id: str, contact_id: str, request: Request):
            if book_id not in sb.address_books:
                return _err(404, 2001, f"Address book does not exist: {book_id}.")
            c = sb.contacts.get(contact_id)
            if c is None or c["address_book_id"] != book_id:
                return _err(404, 2101, f"Contact does not exist: {contact_id}.")
            body = await _json(request)
            bad = _validate_contact(body, creating=False) or sb._validate_fields(book_id, body)
            if bad:
                return bad
            with sb.lock:
                c.update(_contact_body(body))
                sb._apply_fields(contact_id, body)
            return Response(status_code=204)

        @app.delete(api + "/address_books/{book_id}/contacts/{contact_id}", status_code=204)
        def delete_contact(book_id: str, contact_id: str):
            c = sb.contacts.get(contact_id)
            if c is None or c["address_book_id"] != book_id:
                return _err(404, 2101, f"Contact does not exist: {contact_id}.")
            with sb.lock:
                del sb.contacts[contact_id]
                sb.contact_fields.pop(contact_id, None)
            return Response(status_code=204)

        # --- sandbox-only: a customer reaches the contact center --------------------------------
        @app.post("/_sandbox/engagements", include_in_schema=False)
        async def new_engagement(request: Request):
            body = await _json(request)
            if body is None:
                return JSONResponse(BAD_BODY, status_code=400)
            kind = body.get("kind", "voice")
            if kind not in ("voice", "chat", "sms", "email", "video", "bot", "handoff"):
                return _err(400, 300, "kind must be voice, chat, sms, email, video, bot or handoff")
            if "pid" in body:
                consumer = sb._consumer(int(body["pid"]), kind, random.Random(f"zoom-admin:{body['pid']}"))
            else:
                consumer = {"consumer_id": body.get("consumer_id") or _zid(sb.rand),
                            "consumer_display_name": body.get("consumer_display_name") or "Guest"}
            for k in ("consumer_number", "consumer_email"):
                if body.get(k):
                    consumer[k] = body[k]
            if not (consumer.get("consumer_number") or consumer.get("consumer_email")):
                return _err(400, 300, "give consumer_number or consumer_email (or pid)")
            start = _parse_time(body["start_time"]) if body.get("start_time") else \
                datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=int(body.get("ago_seconds", 0)))
            e = sb.add_engagement(kind, consumer, start, sb.rand, queue=body.get("queue"), agent=body.get("agent"),
                                  disposition=body.get("disposition"), note=body.get("note"),
                                  intent=body.get("intent"), variables=body.get("variables"),
                                  bot_summary=body.get("summary"), talk=body.get("talk_seconds"),
                                  direction=body.get("direction"), in_progress=bool(body.get("in_progress")))
            return e

        @app.post("/_sandbox/engagements/{engagement_id}/end", include_in_schema=False)
        async def end(engagement_id: str, request: Request):
            if engagement_id not in sb.engagements:
                return _err(404, 2901, f"Engagement does not exist: {engagement_id}.")
            body = await _json(request) or {}
            at = _parse_time(body["end_time"]) if body.get("end_time") else None
            return sb.end_engagement(engagement_id, at=at, disposition=body.get("disposition"), note=body.get("note"))

    def _validate_fields(self, book_id: str, body: dict[str, Any]) -> JSONResponse | None:
        for f in body.get("custom_fields") or []:
            fid = f.get("custom_field_id") if isinstance(f, dict) else None
            field = self.custom_fields.get(fid or "")
            if field is None or not any(b["address_book_id"] == book_id for b in field["address_books"]):
                return _err(400, 2113, f"Contact custom field is invalid: {fid}.")
            if len(str(f.get("custom_field_value", ""))) > 512:
                return _err(400, 2113, f"Contact custom field value is too long: {fid}.")
        return None

    def _apply_fields(self, cid: str, body: dict[str, Any]) -> None:
        for f in body.get("custom_fields") or []:
            value = f.get("custom_field_value")
            fields = self.contact_fields.setdefault(cid, {})
            if value in (None, ""):
                fields.pop(f["custom_field_id"], None)
            else:
                fields[f["custom_field_id"]] = str(value)


CONTACT_KEYS = ("display_name", "first_name", "last_name", "phone_numbers", "emails", "location", "timezone",
                "account_number", "company", "role", "consumer_ids")


def _contact_body(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in CONTACT_KEYS if k in body}


def _validate_contact(body: Any, *, creating: bool) -> JSONResponse | None:
    if not isinstance(body, dict):
        return _err(400, 300, "Request body must be a JSON object.")
    if (creating or "display_name" in body) and not str(body.get("display_name") or "").strip():
        return _err(400, 2104, "The display_name field cannot be an empty value.")
    phones, emails = body.get("phone_numbers"), body.get("emails")
    for name, value in (("phone_numbers", phones), ("emails", emails)):
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            return _err(400, 300, f"Invalid field: {name} must be an array of strings.")
    if creating and not (phones or emails):
        return _err(400, 2102, "At least one of email or phone number fields should be not empty.")
    if phones and any(not _e164(n) for n in phones):
        return _err(400, 300, "Invalid phone number")
    if emails and any(not _email_ok(e) for e in emails):
        return _err(400, 300, "Invalid email")
    return None


def _kind(e: dict[str, Any]) -> str:
    ch = e["channels"][0]
    if ch.get("channel_source") == "web_chat":
        if not e["agents"] and e["flows"] and any(ev["event_type"] == "Virtual Agent Ended" for ev in e.get("events", [])):
            return "bot"
        return "handoff" if e.get("transfer_count") else "chat"
    return {"voice": "voice", "video": "video", "email": "email"}.get(ch["channel"], ch.get("channel_source") or "chat")


class _Window(Sequence):
    """``(key, engagement)`` pairs of ``starts[lo:hi]`` without copying them (what paging bisects and slices)."""

    def __init__(self, starts: list[tuple[datetime, str]], lo: int, hi: int, engagements: dict[str, Any]):
        self.starts, self.lo, self.n, self.engagements = starts, lo, max(0, hi - lo), engagements

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        key = self.starts[self.lo + (i % self.n)]
        return key, self.engagements[key[1]]


def _matches(e: dict[str, Any], f: dict[str, str | None]) -> bool:
    if f["direction"] and e["direction"] != f["direction"]:
        return False
    if f["channel"] and e["channels"][0]["channel"] != f["channel"]:
        return False
    if f["consumer_number"] and not any(c.get("consumer_number") == f["consumer_number"] for c in e["consumers"]):
        return False
    if f["queue_id"] and not any(q["queue_id"] == f["queue_id"] for q in e["queues"]):
        return False
    if f["user_id"] and not any(a["user_id"] == f["user_id"] for a in e["agents"]):
        return False
    return True


async def _json(request: Request) -> Any:
    """The JSON body, ``{}`` when empty, ``None`` when it is not a JSON object."""
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


BAD_BODY = {"code": 300, "message": "Request body must be a JSON object."}
