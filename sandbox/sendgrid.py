"""SendGrid emulator: Email Activity, global/group suppressions, signed Event Webhook posts.

Seeded from :mod:`sandbox.population`: active people receive one to three emails (personal or
work address) with delivered/open/click/bounce events and a few unsubscribes and spam reports.
The heroine's "Your refund is on its way" is delivered and opened on 2026-11-04.

Vendor behaviour kept faithful: ``GET /v3/messages`` takes the Email Activity query language
and a ``limit`` of 1..1000, answers newest first and has no offset; global unsubscribes page by
``limit`` (max 500) and ``offset`` within ``start_time``/``end_time``; rate limits are
``X-RateLimit-*`` headers and a 429 (600 requests a minute, enforced); errors are
``{"errors": [{"field", "message"}]}``. Event Webhook posts are JSON arrays signed with ECDSA
P-256 over ``timestamp + body`` (``X-Twilio-Email-Event-Webhook-Signature``/``-Timestamp``).

Sandbox-only routes: ``POST /_sandbox/event`` (a recipient opens, clicks, unsubscribes...) and
``POST /_sandbox/webhook/deliver`` (post pending events to the subscriber URL).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from sandbox.framework import Sandbox
from sandbox.population import EPOCH, JUNK_EMAILS, active_people, email_variant, person

API_KEY = "SG.sandbox-key"
FROM = "care@omnisync-shop.example"
SUBJECTS = ("Your order has shipped", "Your receipt", "We miss you: 10% off", "Your support ticket was updated",
            "Monthly newsletter", "Reset your password", "Your appointment is confirmed", "Rate your last chat")
ASM_GROUPS = {1001: ("Newsletter", "Monthly news and tips"), 1002: ("Promotions", "Offers and discounts")}
RATE_LIMIT, RATE_WINDOW = 600, 60.0
HEROINE_SUBJECT = "Your refund is on its way"
HEROINE_SENT = datetime(2026, 11, 4, 16, 20, 0, tzinfo=timezone.utc)
HEROINE_OPENED = datetime(2026, 11, 4, 18, 5, 12, tzinfo=timezone.utc)
# Event types the sandbox's webhook subscription posts (processed/deferred are off, as many accounts set it).
WEBHOOK_EVENTS = {"delivered", "open", "click", "bounce", "dropped", "spamreport", "unsubscribe",
                  "group_unsubscribe", "group_resubscribe"}
MESSAGE_FIELDS = {"msg_id", "from_email", "subject", "to_email", "status", "opens_count", "clicks_count",
                  "last_event_time"}


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _errors(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"errors": [{"field": field, "message": message}]}, status_code=status, headers=headers)


class SendGridSandbox(Sandbox):
    name = "sendgrid"

    def __init__(self, *, size: int = 100, seed: int = 1):
        self._window: tuple[float, int] = (0.0, 0)
        super().__init__(size=size, seed=seed)

    # --- state ---------------------------------------------------------------------------------
    def seed(self) -> None:
        self.rand = random.Random(f"sendgrid:{self.seed_value}")
        self.messages: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []  # Event Webhook payloads, in occurrence order
        self.delivered_upto = 0
        self.unsubscribes: dict[str, int] = {}  # email -> created (unix)
        self.group_suppressions: dict[int, dict[str, int]] = {g: {} for g in ASM_GROUPS}
        self.spam_reports: dict[str, int] = {}
        self.bounces: dict[str, int] = {}
        self.webhook = {"id": "77d4a5da-0b5d-4b2f-9d3a-sandbox00001", "url": None, "enabled": True,
                        "friendly_name": "omnisync", **{e: e in WEBHOOK_EVENTS for e in (
                            "processed", "deferred", "delivered", "open", "click", "bounce", "dropped",
                            "spam_report", "unsubscribe", "group_unsubscribe", "group_resubscribe")}}
        self._key = ec.derive_private_key(self._key_scalar(), ec.SECP256R1())
        self._window = (0.0, 0)
        for pid in active_people(self.size, 0.45, self.seed_value, salt=501):
            self._seed_person(pid)
        self.events.sort(key=lambda e: (e["timestamp"], e["sg_event_id"]))

    def _key_scalar(self) -> int:
        # A deterministic, obviously synthetic signing key: same seed, same public key.
        digest = hashlib.sha256(f"sendgrid-sandbox-webhook-key:{self.seed_value}".encode()).digest()
        order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
        return int.from_bytes(digest, "big") % (order - 1) + 1

    def _seed_person(self, pid: int) -> None:
        r = random.Random(f"sendgrid:{self.seed_value}:{pid}")
        p = person(pid, self.seed_value)
        if pid == 0:
            msg = self._new_message(p.personal_email, HEROINE_SUBJECT, HEROINE_SENT, r)
            self._add_event(msg, "delivered", HEROINE_SENT + timedelta(seconds=3), r)
            self._add_event(msg, "open", HEROINE_OPENED, r)
            return
        for _ in range(1 + r.randrange(3)):
            address = p.personal_email if r.random() < 0.6 else p.work_email
            if r.random() < 0.005:
                address = r.choice(JUNK_EMAILS)
            elif r.random() < 0.05:
                address = email_variant(address, r).strip()
            sent = EPOCH + timedelta(days=300, seconds=r.randrange(0, 86400 * 20))
            msg = self._new_message(address, r.choice(SUBJECTS), sent, r)
            fate = r.random()
            if fate < 0.03:
                self._add_event(msg, "bounce", sent + timedelta(seconds=r.randrange(1, 60)), r)
                continue
            if fate < 0.04:
                self._add_event(msg, "dropped", sent + timedelta(seconds=1), r)
                continue
            t = sent + timedelta(seconds=r.randrange(1, 30))
            self._add_event(msg, "delivered", t, r)
            if r.random() < 0.5:
                t += timedelta(seconds=r.randrange(60, 86400))
                self._add_event(msg, "open", t, r)
                if r.random() < 0.3:
                    t += timedelta(seconds=r.randrange(5, 600))
                    self._add_event(msg, "click", t, r)
            roll = r.random()
            if roll < 0.03:
                self._add_event(msg, "unsubscribe", t + timedelta(seconds=r.randrange(5, 900)), r)
            elif roll < 0.035:
                self._add_event(msg, "spamreport", t + timedelta(seconds=r.randrange(5, 900)), r)
            elif roll < 0.065:
                group = r.choice(sorted(ASM_GROUPS))
                t2 = t + timedelta(seconds=r.randrange(5, 900))
                self._add_event(msg, "group_unsubscribe", t2, r, asm_group_id=group)
                if r.random() < 0.2:
                    self._add_event(msg, "group_resubscribe", t2 + timedelta(days=2), r, asm_group_id=group)

    def _new_message(self, to: str, subject: str, sent: datetime, r: random.Random) -> dict[str, Any]:
        xmid = base64.urlsafe_b64encode(r.randbytes(16)).decode().rstrip("=")
        msg_id = f"{xmid}.filterdrecv-sandbox-{r.randrange(16**6):06x}-1-{int(sent.timestamp()):X}-0.0"
        msg = {"from_email": FROM, "msg_id": msg_id, "subject": subject, "to_email": to, "status": "processed",
               "opens_count": 0, "clicks_count": 0, "last_event_time": _iso(sent), "_xmid": xmid,
               "_events": [{"event_name": "processed", "processed": _iso(sent)}]}
        self.messages[msg_id] = msg
        return msg

    def _add_event(self, msg: dict[str, Any], event: str, at: datetime, r: random.Random, **extra: Any) -> dict[str, Any]:
        ts = int(at.timestamp())
        ev: dict[str, Any] = {"email": msg["to_email"], "timestamp": ts, "event": event,
                              "sg_event_id": base64.urlsafe_b64encode(r.randbytes(16)).decode().rstrip("="),
                              "sg_message_id": msg["msg_id"], "smtp-id": f"<{msg['_xmid']}@ismtpd-sandbox>",
                              "category": ["omnisync-demo"]}
        if event == "delivered":
            ev.update(response="250 2.0.0 OK", tls=1, ip="167.89.0.10")
            msg["status"] = "delivered"
        elif event == "open":
            ev.update(useragent="Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)", ip="198.51.100.7",
                      sg_machine_open=False)
            msg["opens_count"] += 1
        elif event == "click":
            ev.update(url="https://shop.example/orders", url_offset={"index": 0, "type": "html"},
                      useragent="Mozilla/5.0", ip="198.51.100.7")
            msg["clicks_count"] += 1
        elif event == "bounce":
            ev.update(reason="550 5.1.1 The email account that you tried to reach does not exist", status="5.1.1",
                      type="bounce", bounce_classification="Invalid Address")
            msg["status"] = "not_delivered"
            self.bounces[msg["to_email"].lower()] = ts
        elif event == "dropped":
            ev.update(reason="Unsubscribed Address")
            msg["status"] = "not_delivered"
        elif event == "unsubscribe":
            self.unsubscribes.setdefault(msg["to_email"].strip().lower(), ts)
        elif event == "spamreport":
            self.spam_reports[msg["to_email"].lower()] = ts
        elif event in ("group_unsubscribe", "group_resubscribe"):
            group = int(extra.pop("asm_group_id"))
            ev.update(asm_group_id=group, useragent="Mozilla/5.0", ip="198.51.100.7",
                      url="https://u.sandbox.example/asm")
            members = self.group_suppressions.setdefault(group, {})
            if event == "group_unsubscribe":
                members[msg["to_email"].lower()] = ts
            else:
                members.pop(msg["to_email"].lower(), None)
        ev.update(extra)
        msg["last_event_time"] = max(msg["last_event_time"], _iso(at))
        msg["_events"].append({"event_name": _ACTIVITY_NAMES.get(event, event), "processed": _iso(at)})
        self.events.append(ev)
        return ev

    # --- webhook signing -------------------------------------------------------------------------
    def public_key(self) -> str:
        """The verification key as SendGrid shows it: base64 DER SubjectPublicKeyInfo."""
        der = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()

    def sign(self, body: bytes, timestamp: str) -> str:
        """Base64 DER ECDSA P-256/SHA-256 signature over ``timestamp + body``."""
        return base64.b64encode(self._key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()

    def signed_post(self, events: list[dict[str, Any]], *, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(events, separators=(",", ":")).encode()
        ts = str(timestamp if timestamp is not None else int(time.time()))
        return body, {"Content-Type": "application/json", "User-Agent": "SendGrid Event API",
                      "X-Twilio-Email-Event-Webhook-Signature": self.sign(body, ts),
                      "X-Twilio-Email-Event-Webhook-Timestamp": ts}

    def deliver(self, url: str | None = None, *, batch_size: int = 100, redeliver: bool = False,
                timeout: float = 10.0) -> dict[str, Any]:
        """POST pending events (those the subscription asks for) to ``url`` in signed batches.

        Events are marked delivered only on a 2xx answer, as SendGrid retries until it gets one.
        """
        target = url or self.webhook["url"]
        if not target:
            raise ValueError("no subscriber URL: pass one or set it with POST /v3/user/webhooks/event/settings")
        with self.lock:
            start = 0 if redeliver else self.delivered_upto
            pending = [e for e in self.events[start:] if self._subscribed(e["event"])]
            end = len(self.events)
        posted, statuses = 0, []
        with httpx.Client(timeout=timeout) as client:
            for i in range(0, len(pending), batch_size):
                body, headers = self.signed_post(pending[i:i + batch_size])
                resp = client.post(target, content=body, headers=headers)
                statuses.append(resp.status_code)
                if resp.status_code >= 300:
                    return {"posted": posted, "requests": len(statuses), "statuses": statuses, "complete": False}
                posted += len(pending[i:i + batch_size])
        with self.lock:
            self.delivered_upto = max(self.delivered_upto, end)
        return {"posted": posted, "requests": len(statuses), "statuses": statuses, "complete": True}

    def _subscribed(self, event: str) -> bool:
        return bool(self.webhook.get({"spamreport": "spam_report"}.get(event, event)))

    # --- framework hooks -------------------------------------------------------------------------
    def credentials(self) -> dict[str, Any]:
        return {"api_key": API_KEY, "webhook_public_key": self.public_key()}

    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {API_KEY}"

    def unauthorized(self) -> Response:
        return _errors(401, "The provided authorization grant is invalid, expired, or revoked")

    def _rate_headers(self, remaining: int, reset: float) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(RATE_LIMIT), "X-RateLimit-Remaining": str(max(0, remaining)),
                "X-RateLimit-Reset": str(int(reset))}

    def rate_limited(self) -> Response:
        return _errors(429, "too many requests", headers=self._rate_headers(0, time.time() + 1))

    def server_error(self) -> Response:
        return _errors(503, "service unavailable")

    def quota_exhausted(self) -> Response:
        # SendGrid has no daily call quota; the closest real condition is a window that resets
        # far in the future (account-level throttle), shown the same way.
        return _errors(429, "too many requests", headers=self._rate_headers(0, time.time() + 6 * 3600))

    def response_headers(self) -> dict[str, str]:
        start, used = self._window
        return self._rate_headers(RATE_LIMIT - used, start + RATE_WINDOW)

    def _spend(self) -> bool:
        with self.lock:
            now = time.time()
            start, used = self._window
            if now - start >= RATE_WINDOW:
                start, used = now, 0
            self._window = (start, used + 1)
            return used + 1 <= RATE_LIMIT

    def summary(self) -> dict[str, Any]:
        heroine = [m["msg_id"] for m in self.messages.values()
                   if m["to_email"] == person(0, self.seed_value).personal_email]
        return {"messages": len(self.messages), "events": len(self.events), "unsubscribes": len(self.unsubscribes),
                "group_suppressions": {g: len(m) for g, m in self.group_suppressions.items()},
                "spam_reports": len(self.spam_reports), "bounces": len(self.bounces),
                "delivered_upto": self.delivered_upto, "heroine_messages": heroine,
                "webhook_url": self.webhook["url"]}

    # --- routes ---------------------------------------------------------------------------------
    def routes(self, app: FastAPI) -> None:
        sb = self

        @app.middleware("http")
        async def rate_limit(request: Request, call_next):
            if not request.url.path.startswith("/_sandbox/") and not sb._spend():
                start, _ = sb._window
                return _errors(429, "too many requests", headers=sb._rate_headers(0, start + RATE_WINDOW))
            return await call_next(request)

        @app.get("/v3/messages")
        def list_messages(request: Request):
            params = request.query_params
            try:
                limit = int(params.get("limit", "10"))
            except ValueError:
                return _errors(400, "limit must be an integer", "limit")
            if not 1 <= limit <= 1000:
                return _errors(400, "limit must be greater than 0 and less than or equal to 1000", "limit")
            query = params.get("query")
            if not query:
                return _errors(400, "query is required", "query")
            try:
                pred = parse_query(query)
            except QuerySyntaxError as e:
                return _errors(400, f"invalid syntax: {e}", "query")
            with sb.lock:
                hits = [m for m in sb.messages.values() if pred(m)]
            hits.sort(key=lambda m: (m["last_event_time"], m["msg_id"]), reverse=True)
            return {"messages": [_public(m) for m in hits[:limit]]}

        @app.get("/v3/messages/{msg_id}")
        def get_message(msg_id: str):
            m = sb.messages.get(msg_id)
            if m is None:
                return _errors(404, "message not found")
            return {**_public(m), "events": m["_events"], "categories": ["omnisync-demo"],
                    "api_key_id": "sandbox-key-id", "outbound_ip": "167.89.0.10", "outbound_ip_type": "shared",
                    "originating_ip": "10.0.0.7", "asm_group_id": 1, "template_id": "", "teammate": "",
                    "unique_args": "Null"}

        @app.get("/v3/suppression/unsubscribes")
        def list_unsubscribes(request: Request):
            p = request.query_params
            try:
                start = int(p["start_time"]) if "start_time" in p else None
                end = int(p["end_time"]) if "end_time" in p else None
                limit = int(p.get("limit", "500"))
                offset = int(p.get("offset", "0"))
            except ValueError:
                return _errors(400, "start_time, end_time, limit and offset must be integers")
            if not 1 <= limit <= 500 or offset < 0:
                return _errors(400, "limit must be between 1 and 500 and offset not negative", "limit")
            prefix = (p.get("email") or "").lower()
            with sb.lock:
                rows = sorted(((c, e) for e, c in sb.unsubscribes.items()
                               if (start is None or c >= start) and (end is None or c <= end)
                               and e.startswith(prefix)))
            return [{"created": c, "email": e} for c, e in rows[offset:offset + limit]]

        @app.post("/v3/asm/suppressions/global", status_code=201)
        async def add_global(request: Request):
            body = await _json(request)
            emails = body.get("recipient_emails") if isinstance(body, dict) else None
            if not isinstance(emails, list) or not emails:
                return _errors(400, "recipient_emails must be a non-empty array", "recipient_emails")
            bad = [i for i, e in enumerate(emails) if not isinstance(e, str) or not _valid_email(e)]
            if bad:
                return _errors(400, f"recipient_emails[{bad[0]}] is not a valid email address", "recipient_emails")
            now = int(time.time())
            with sb.lock:
                for e in emails:
                    sb.unsubscribes.setdefault(e.strip().lower(), now)
            return JSONResponse({"recipient_emails": emails}, status_code=201)

        @app.get("/v3/asm/suppressions/global/{email}")
        def get_global(email: str):
            return {"recipient_email": email} if email.lower() in sb.unsubscribes else {}

        @app.delete("/v3/asm/suppressions/global/{email}", status_code=204)
        def delete_global(email: str):
            with sb.lock:
                sb.unsubscribes.pop(email.lower(), None)
            return Response(status_code=204)

        @app.get("/_sandbox/export", include_in_schema=False)
        def export():
            """Everything the account holds: email activity, events, every suppression list."""
            with sb.lock:
                return {"messages": list(sb.messages.values()), "events": sb.events,
                        "unsubscribes": sorted(sb.unsubscribes), "spam_reports": sorted(sb.spam_reports),
                        "bounces": sorted(sb.bounces),
                        "group_suppressions": {str(g): sorted(m) for g, m in sb.group_suppressions.items()}}

        @app.get("/v3/asm/groups")
        def groups():
            return [{"id": g, "name": n, "description": d, "is_default": False,
                     "unsubscribes": len(sb.group_suppressions.get(g, {}))} for g, (n, d) in ASM_GROUPS.items()]

        @app.get("/v3/asm/groups/{group_id}/suppressions")
        def group_members(group_id: int):
            if group_id not in ASM_GROUPS:
                return _errors(404, "Group not found", "group_id")
            return sorted(sb.group_suppressions.get(group_id, {}))

        @app.get("/v3/user/webhooks/event/settings/all")
        def webhooks_all():
            return {"max_allowed": 5, "webhooks": [sb.webhook] if sb.webhook["url"] else []}

        @app.post("/v3/user/webhooks/event/settings", status_code=201)
        async def webhook_create(request: Request):
            body = await _json(request)
            if not isinstance(body, dict) or not str(body.get("url", "")).startswith(("http://", "https://")):
                return _errors(400, "url must be an http(s) URL", "url")
            with sb.lock:
                sb.webhook.update({k: v for k, v in body.items() if k in sb.webhook and k != "id"})
            return JSONResponse(sb.webhook, status_code=201)

        @app.get("/v3/user/webhooks/event/settings/signed/{webhook_id}")
        def webhook_signed(webhook_id: str):
            if webhook_id != sb.webhook["id"]:
                return _errors(404, "webhook not found", "id")
            return {"id": webhook_id, "public_key": sb.public_key()}

        # --- sandbox-only: what a recipient or an operator does ---------------------------------
        @app.post("/_sandbox/event", include_in_schema=False)
        async def user_event(request: Request):
            body = await _json(request)
            email, event = str(body.get("email", "")).strip().lower(), body.get("event")
            if event not in WEBHOOK_EVENTS | {"processed", "deferred"}:
                return _errors(400, f"event must be one of {sorted(WEBHOOK_EVENTS)}", "event")
            at = datetime.fromisoformat(body["at"]) if body.get("at") else datetime.now(timezone.utc)
            at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
            extra = {"asm_group_id": int(body.get("asm_group_id", 1001))} if event.startswith("group_") else {}
            with sb.lock:
                msgs = [m for m in sb.messages.values() if m["to_email"].strip().lower() == email]
                if not msgs:
                    msgs = [sb._new_message(email, body.get("subject") or "Hello from omnisync", at, sb.rand)]
                msg = max(msgs, key=lambda m: m["last_event_time"])
                ev = sb._add_event(msg, event, at, sb.rand, **extra)
            return {"ok": True, "sg_event_id": ev["sg_event_id"], "sg_message_id": ev["sg_message_id"]}

        @app.post("/_sandbox/webhook/deliver", include_in_schema=False)
        async def deliver(request: Request):
            body = await _json(request) or {}
            import anyio

            try:
                return await anyio.to_thread.run_sync(lambda: sb.deliver(
                    body.get("url"), batch_size=int(body.get("batch_size", 100)),
                    redeliver=bool(body.get("redeliver", False))))
            except (ValueError, httpx.HTTPError) as e:
                return _errors(400, f"delivery failed: {type(e).__name__}: {e}")


_ACTIVITY_NAMES = {"open": "opened", "click": "clicked", "bounce": "bounced", "spamreport": "spam_report"}


def _public(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if not k.startswith("_")}


async def _json(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return None


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _valid_email(value: str) -> bool:
    return bool(_EMAIL.match(value.strip()))


# --- the Email Activity query language (the subset omnisync and the docs use) -------------------

class QuerySyntaxError(ValueError):
    pass


_TOKEN = re.compile(r'\s*(?:(?P<str>"[^"]*"|\'[^\']*\')|(?P<op><=|>=|!=|=|<|>)|(?P<lp>\()|(?P<rp>\))|(?P<comma>,)'
                    r'|(?P<num>-?\d+(?:\.\d+)?)|(?P<word>[A-Za-z_][A-Za-z0-9_]*))')


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise QuerySyntaxError(f"unexpected character at {pos}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def parse_query(text: str):
    """Compile a query (``to_email="a@x" AND last_event_time>=TIMESTAMP "..."``) to a predicate."""
    toks = _tokens(text)
    pos = 0

    def peek(word: str | None = None) -> bool:
        if pos >= len(toks):
            return False
        return word is None or (toks[pos][0] == "word" and toks[pos][1].upper() == word)

    def take(kind: str) -> str:
        nonlocal pos
        if pos >= len(toks) or toks[pos][0] != kind:
            raise QuerySyntaxError(f"expected {kind} at token {pos}")
        pos += 1
        return toks[pos - 1][1]

    def value() -> Any:
        nonlocal pos
        if peek("TIMESTAMP"):
            pos += 1
            raw = take("str")[1:-1]
            try:
                dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                raise QuerySyntaxError(f"bad TIMESTAMP {raw!r}") from None
            return _iso(dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc))
        if pos < len(toks) and toks[pos][0] == "str":
            return take("str")[1:-1]
        if pos < len(toks) and toks[pos][0] == "num":
            return float(take("num"))
        raise QuerySyntaxError(f"expected a value at token {pos}")

    def comparison():
        nonlocal pos
        field = take("word")
        if field not in MESSAGE_FIELDS:
            raise QuerySyntaxError(f"'{field}' is not a known field")
        if peek("BETWEEN"):
            pos += 1
            lo = value()
            if not peek("AND"):
                raise QuerySyntaxError("BETWEEN needs AND")
            pos += 1
            hi = value()
            return lambda m: lo <= _cmpv(m[field], lo) and _cmpv(m[field], hi) <= hi
        if peek("IN") or peek("NOT"):
            negate = peek("NOT")
            pos += 2 if negate else 1
            take("lp")
            values = [value()]
            while pos < len(toks) and toks[pos][0] == "comma":
                pos += 1
                values.append(value())
            take("rp")
            return lambda m: (m[field] in values) != negate
        op = take("op")
        v = value()
        ops = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
               "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
        fn = ops[op]
        return lambda m: fn(_cmpv(m[field], v), v)

    def factor():
        nonlocal pos
        if peek("NOT"):
            pos += 1
            inner = factor()
            return lambda m: not inner(m)
        if pos < len(toks) and toks[pos][0] == "lp":
            pos += 1
            inner = expr()
            take("rp")
            return inner
        return comparison()

    def term():
        nonlocal pos
        parts = [factor()]
        while peek("AND"):
            pos += 1
            parts.append(factor())
        return lambda m: all(p(m) for p in parts)

    def expr():
        nonlocal pos
        parts = [term()]
        while peek("OR"):
            pos += 1
            parts.append(term())
        return lambda m: any(p(m) for p in parts)

    pred = expr()
    if pos != len(toks):
        raise QuerySyntaxError(f"unexpected token {toks[pos][1]!r}")
    return pred


def _cmpv(actual: Any, like: Any) -> Any:
    # Compare numbers as numbers and everything else as text (timestamps are ISO, so text order works).
    if isinstance(like, float):
        return float(actual)
    return str(actual)
