"""Twilio Programmable Messaging emulator: message history, sending, opt-out keywords, signed webhooks.

Seeded from :mod:`sandbox.population`: about a third of people have an SMS thread between August
and November 2026 with the care line (order and appointment notifications, replies, agents'
answers) and some with the marketing line (offers; a few reply STOP, fewer come back with START).
Carriers hand Twilio E.164 numbers, so numbers here are never formatted by hand. The heroine
(person 0) gets a refund follow-up from the care line on 2026-11-03 and replies "STOP".

Vendor behaviour kept faithful (spec: shared/specs/twilio, API 2010-04-01): Basic auth
``AccountSid:AuthToken``; ``Messages.json`` lists newest first, ``PageSize`` 1..1000 (default
50), ``next_page_uri`` with ``Page`` and ``PageToken``, filters ``To``, ``From``, ``DateSent``,
``DateSent>`` (on or after) and ``DateSent<`` (before; a bare date means the whole day); dates are
RFC 2822, counts are strings. Sending is a form-encoded POST answered 201 ``queued``; the message
is then sent and, two seconds later, delivered. Advanced Opt-Out is on: STOP, STOPALL, UNSUBSCRIBE,
CANCEL, END, QUIT, REVOKE, OPTOUT block every message from that sender to that number (error
21610) until START, YES or UNSTOP, and each keyword gets Twilio's automatic reply. Errors are
``{"code", "message", "more_info", "status"}``; 429 is code 20429 with ``Retry-After``.

Sandbox-only routes: ``POST /_sandbox/inbound`` (a customer texts in; optionally posted to a
webhook URL, form-encoded and signed with ``X-Twilio-Signature`` as Twilio signs) and
``POST /_sandbox/lose_responses`` (the next sends are made but their answer is lost: a 500 or a
stall past the client's timeout), for proving a send is never duplicated.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import hmac
import random
import re
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from sandbox.framework import Sandbox
from sandbox.population import active_people, person

ACCOUNT_SID = "AC" + hashlib.md5(b"omnisync-twilio-sandbox").hexdigest()
AUTH_TOKEN = "sandbox-twilio-auth-token"
CARE = "+18885550100"
MARKETING = "+18885550150"
API = f"/2010-04-01/Accounts/{ACCOUNT_SID}"
SEED_FROM = datetime(2026, 8, 1, tzinfo=timezone.utc)
SEED_TO = datetime(2026, 11, 20, tzinfo=timezone.utc)
THREAD_SALT = 801
DELIVERY_DELAY = timedelta(seconds=2)

OPT_OUT = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
OPT_IN = {"START", "YES", "UNSTOP"}
HELP = {"HELP", "INFO"}
AUTO_REPLY = {
    "STOP": "You have successfully been unsubscribed. You will not receive any more messages from this number. "
            "Reply START to resubscribe.",
    "START": "You have successfully been re-subscribed to messages from this number. Reply HELP for help. "
             "Reply STOP to unsubscribe. Msg&Data Rates May Apply.",
    "HELP": "Reply STOP to unsubscribe. Msg&Data Rates May Apply.",
}
NOTIFICATIONS = ("Your order #{n} has shipped and arrives Thursday. Track: https://shop.example/t/{n}",
                 "Reminder: your appointment is tomorrow at 10:30. Reply YES to confirm.",
                 "Your support ticket #{n} was updated. Reply here if you have questions.",
                 "Your return for order #{n} was received; the refund is on its way.")
OFFERS = ("Flash sale: 20% off everything this weekend at shop.example. Reply STOP to opt out.",
          "New arrivals are in! Members get early access today. Reply STOP to opt out.")
REPLIES = ("Thanks!", "Ok great", "When will it arrive?", "Can I change the delivery address?", "YES",
           "Thank you so much", "Is the store open Sunday?")
AGENT_ANSWERS = ("Hi! It should arrive by Thursday evening.", "Sure, reply with the new address and we'll update it.",
                 "Yes, we're open 10-6 on Sundays.")
HEROINE_SMS_AT = datetime(2026, 11, 3, 17, 5, 0, tzinfo=timezone.utc)
HEROINE_STOP_AT = datetime(2026, 11, 3, 17, 12, 40, tzinfo=timezone.utc)
HEROINE_SMS = ("Hi Amara, this is Northwind care: your refund for order 88412 was approved and reaches your card "
               "in 3-5 days.")


def rfc2822(dt: datetime | None) -> str | None:
    return None if dt is None else email.utils.format_datetime(dt.astimezone(timezone.utc))


def _parse_rfc(value: str) -> datetime:
    return email.utils.parsedate_to_datetime(value).astimezone(timezone.utc)


def keyword(body: str | None) -> str | None:
    """The opt-out/opt-in/help keyword a message body is, if it is one (the whole body, any case)."""
    word = re.sub(r"[\s.!]+$", "", (body or "").strip()).upper()
    if word in OPT_OUT:
        return "STOP"
    if word in OPT_IN:
        return "START"
    if word in HELP:
        return "HELP"
    return None


def signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """``X-Twilio-Signature``: base64 HMAC-SHA1 of the URL followed by each sorted key and value."""
    data = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def _err(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                         "status": status}, status_code=status, headers=headers)


def _date_filter(value: str, *, upper: bool) -> tuple[datetime, bool]:
    """A DateSent bound: (instant, inclusive). A bare date covers its whole day."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        day = datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
        return (day + timedelta(days=1), False) if upper else (day, True)
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)), not upper


class TwilioSandbox(Sandbox):
    name = "twilio"

    # --- state ---------------------------------------------------------------------------------
    def seed(self) -> None:
        self.rand = random.Random(f"twilio-runtime:{self.seed_value}")
        self.messages: dict[str, dict[str, Any]] = {}
        self.opt_outs: set[tuple[str, str]] = set()  # (sender, recipient)
        self.numbers = {CARE: "Customer care", MARKETING: "Offers"}
        self.lose_next = 0
        self.lose_stall = 0.0
        self.sends_lost: list[str] = []
        self.webhook_posts: list[dict[str, Any]] = []
        for pid in active_people(self.size, 0.35, self.seed_value, salt=THREAD_SALT):
            self._seed_person(pid)

    def _seed_person(self, pid: int) -> None:
        r = random.Random(f"twilio:{self.seed_value}:{pid}")
        p = person(pid, self.seed_value)
        if pid == 0:
            self.outbound(CARE, p.mobile, HEROINE_SMS, HEROINE_SMS_AT, r, status="delivered")
            self.inbound(p.mobile, CARE, "STOP", HEROINE_STOP_AT, r)
            return
        span = int((SEED_TO - SEED_FROM).total_seconds())
        t = SEED_FROM + timedelta(seconds=r.randrange(span))
        if r.random() < 0.7:
            fate = r.random()
            status, code = ("undelivered", 30003) if fate < 0.02 else (("failed", 30006) if fate < 0.03 else ("delivered", None))
            self.outbound(CARE, p.mobile, r.choice(NOTIFICATIONS).format(n=r.randrange(10000, 99999)), t, r,
                          status=status, error_code=code)
            if status == "delivered" and r.random() < 0.5:
                t += timedelta(seconds=r.randrange(30, 7200))
                reply = r.choice(REPLIES) if r.random() > 0.03 else r.choice(("STOP", "stop", "Unsubscribe", "cancel "))
                self.inbound(p.mobile, CARE, reply, t, r)
                if reply.endswith("?") and r.random() < 0.8:
                    t += timedelta(seconds=r.randrange(60, 1800))
                    self.outbound(CARE, p.mobile, r.choice(AGENT_ANSWERS), t, r, status="delivered",
                                  direction="outbound-reply")
        if r.random() < 0.3:
            # Offers go out on their own schedule, early enough that replies stay in the past.
            t = SEED_FROM + timedelta(seconds=r.randrange(span - 10 * 86400))
            self.outbound(MARKETING, p.mobile, r.choice(OFFERS), t, r, status="delivered")
            if r.random() < 0.06:
                t += timedelta(seconds=r.randrange(60, 3600))
                self.inbound(p.mobile, MARKETING, r.choice(("STOP", "Stop", "STOPALL", "quit")), t, r)
                if r.random() < 0.2:
                    self.inbound(p.mobile, MARKETING, "START", t + timedelta(days=r.randrange(2, 9)), r)

    def _sid(self, r: random.Random) -> str:
        while True:
            sid = "SM" + r.randbytes(16).hex()
            if sid not in self.messages:
                return sid

    def _message(self, sid: str, frm: str, to: str, body: str, direction: str, at: datetime, status: str,
                 *, sent: datetime | None, error_code: int | None = None, service: str | None = None) -> dict[str, Any]:
        segments = max(1, -(-len(body) // 153)) if len(body) > 160 else 1
        m = {"account_sid": ACCOUNT_SID, "api_version": "2010-04-01", "body": body,
             "date_created": rfc2822(at), "date_sent": rfc2822(sent), "date_updated": rfc2822(sent or at),
             "direction": direction, "error_code": error_code,
             "error_message": {30003: "Unreachable destination handset", 30006: "Landline or unreachable carrier"}
             .get(error_code) if error_code else None,
             "from": frm, "messaging_service_sid": service, "num_media": "0", "num_segments": str(segments),
             "price": None if status in ("queued", "accepted") else f"-{0.0079 * segments:.5f}", "price_unit": "USD",
             "sid": sid, "status": status, "to": to,
             "subresource_uris": {"media": f"{API}/Messages/{sid}/Media.json",
                                  "feedback": f"{API}/Messages/{sid}/Feedback.json"},
             "uri": f"{API}/Messages/{sid}.json", "_created": at}
        with self.lock:
            self.messages[sid] = m
        return m

    def outbound(self, frm: str, to: str, body: str, at: datetime, r: random.Random, *, status: str = "delivered",
                 error_code: int | None = None, direction: str = "outbound-api") -> dict[str, Any]:
        sent = at + timedelta(seconds=1)
        m = self._message(self._sid(r), frm, to, body, direction, at, status, sent=sent, error_code=error_code)
        if status in ("delivered", "undelivered", "failed"):
            m["date_updated"] = rfc2822(sent + DELIVERY_DELAY)
        return m

    def inbound(self, frm: str, to: str, body: str, at: datetime, r: random.Random) -> dict[str, Any]:
        """A customer's text arrives: stored as received, with Twilio's opt-out handling and auto-reply."""
        m = self._message(self._sid(r), frm, to, body, "inbound", at, "received", sent=at)
        word = keyword(body)
        with self.lock:
            if word == "STOP":
                self.opt_outs.add((to, frm))
            elif word == "START":
                self.opt_outs.discard((to, frm))
        if word:
            self.outbound(to, frm, AUTO_REPLY[word], at + timedelta(seconds=1), r, direction="outbound-reply")
        return m

    def _progress(self, now: datetime) -> None:
        """Queued messages are sent at once and delivered ``DELIVERY_DELAY`` later, as a carrier would."""
        for m in self.messages.values():
            if m["status"] == "queued":
                m.update(status="sent", date_sent=m["date_created"], date_updated=m["date_created"], price="-0.00790")
            if m["status"] == "sent" and now - m["_created"] >= DELIVERY_DELAY:
                m.update(status="delivered", date_updated=rfc2822(m["_created"] + DELIVERY_DELAY))

    def webhook_params(self, m: dict[str, Any]) -> dict[str, str]:
        """The form Twilio posts to an inbound-message webhook for message ``m``."""
        params = {"ToCountry": "US", "ToState": "", "SmsMessageSid": m["sid"], "NumMedia": m["num_media"],
                  "ToCity": "", "FromZip": "", "SmsSid": m["sid"], "FromState": "", "SmsStatus": "received",
                  "FromCity": "", "Body": m["body"], "FromCountry": "US", "To": m["to"], "ToZip": "",
                  "NumSegments": m["num_segments"], "MessageSid": m["sid"], "AccountSid": ACCOUNT_SID,
                  "From": m["from"], "ApiVersion": "2010-04-01"}
        word = keyword(m["body"])
        if word:
            params["OptOutType"] = word
        return params

    def signed_webhook(self, url: str, m: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
        params = self.webhook_params(m)
        return params, {"X-Twilio-Signature": signature(AUTH_TOKEN, url, params),
                        "Content-Type": "application/x-www-form-urlencoded",
                        "I-Twilio-Idempotency-Token": hashlib.sha1(m["sid"].encode()).hexdigest()}

    # --- framework hooks -------------------------------------------------------------------------
    def credentials(self) -> dict[str, Any]:
        return {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN}

    def authorized(self, request: Request) -> bool:
        expected = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        return request.headers.get("authorization") == expected

    def unauthorized(self) -> Response:
        return _err(401, 20003, "Authenticate")

    def rate_limited(self) -> Response:
        return _err(429, 20429, "Too Many Requests", headers={"Retry-After": "1"})

    def server_error(self) -> Response:
        return _err(503, 20503, "Service Unavailable")

    def quota_exhausted(self) -> Response:
        # Twilio has no daily call quota; the nearest real condition is a throttle lifted only hours
        # later (an account over its limits), shown as a 429 with a long Retry-After.
        now = datetime.now(timezone.utc)
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return _err(429, 20429, "Too Many Requests", headers={"Retry-After": str(int((midnight - now).total_seconds()))})

    def summary(self) -> dict[str, Any]:
        heroine = person(0, self.seed_value).mobile
        by_direction: dict[str, int] = {}
        for m in self.messages.values():
            by_direction[m["direction"]] = by_direction.get(m["direction"], 0) + 1
        return {"messages": len(self.messages), "by_direction": by_direction, "opt_outs": len(self.opt_outs),
                "numbers": dict(self.numbers), "sends_lost": list(self.sends_lost),
                "heroine_messages": [m["sid"] for m in self.messages.values() if heroine in (m["from"], m["to"])],
                "webhook_posts": len(self.webhook_posts)}

    # --- routes ---------------------------------------------------------------------------------
    def routes(self, app: FastAPI) -> None:
        sb = self

        @app.get("/2010-04-01/Accounts/{account}/Messages.json")
        def list_messages(account: str, request: Request):
            if account != ACCOUNT_SID:
                return _err(404, 20404, f"The requested resource /2010-04-01/Accounts/{account}/Messages.json was not found")
            p = request.query_params
            try:
                size = int(p.get("PageSize", "50"))
                page_no = int(p.get("Page", "0"))
            except ValueError:
                return _err(400, 20001, "PageSize and Page must be integers")
            if not 1 <= size <= 1000:
                return _err(400, 20001, "PageSize must be between 1 and 1000")
            try:
                bounds = [(_date_filter(p[k], upper=k == "DateSent<"), k) for k in ("DateSent>", "DateSent<") if k in p]
                exact = _date_filter(p["DateSent"], upper=False)[0].date() if "DateSent" in p else None
            except ValueError:
                return _err(400, 20001, "Invalid DateSent: use YYYY-MM-DD or an ISO 8601 date-time in GMT")
            now = datetime.now(timezone.utc)
            with sb.lock:
                sb._progress(now)
                hits = []
                for m in sb.messages.values():
                    if p.get("To") and m["to"] != p["To"] or p.get("From") and m["from"] != p["From"]:
                        continue
                    if bounds or exact:
                        if not m["date_sent"]:
                            continue
                        sent = _parse_rfc(m["date_sent"])
                        ok = exact is None or sent.date() == exact
                        for (bound, inclusive), k in bounds:
                            if k == "DateSent>":
                                ok = ok and (sent >= bound if inclusive else sent > bound)
                            else:
                                ok = ok and (sent <= bound if inclusive else sent < bound)
                        if not ok:
                            continue
                    hits.append(m)
                hits.sort(key=lambda m: (m["_created"], m["sid"]), reverse=True)
                token = p.get("PageToken")
                if token:
                    anchor = sb.messages.get(token[2:]) if token.startswith("PA") else None
                    if anchor is None:
                        return _err(400, 20001, "Invalid PageToken")
                    key = (anchor["_created"], anchor["sid"])
                    hits = [m for m in hits if (m["_created"], m["sid"]) < key]
                page = hits[:size]
                out = [{k: v for k, v in m.items() if not k.startswith("_")} for m in page]
            query = [(k, v) for k, v in parse_qsl(str(request.url.query), keep_blank_values=True)
                     if k not in ("Page", "PageToken")]
            base = f"/2010-04-01/Accounts/{account}/Messages.json"
            nxt = None
            if len(hits) > size:
                nxt = f"{base}?{urlencode(query + [('Page', str(page_no + 1)), ('PageToken', 'PA' + page[-1]['sid'])])}"
            first = f"{base}?{urlencode(query + [('Page', '0')])}"
            return {"first_page_uri": first, "end": page_no * size + max(0, len(page) - 1), "previous_page_uri": None,
                    "messages": out, "uri": f"{base}?{request.url.query}", "page_size": size,
                    "start": page_no * size, "next_page_uri": nxt, "page": page_no}

        @app.get("/2010-04-01/Accounts/{account}/Messages/{sid}.json")
        def fetch_message(account: str, sid: str):
            with sb.lock:
                sb._progress(datetime.now(timezone.utc))
                m = sb.messages.get(sid) if account == ACCOUNT_SID else None
                if m is None:
                    return _err(404, 20404, f"The requested resource /2010-04-01/Accounts/{account}/Messages/{sid}.json "
                                            "was not found")
                return {k: v for k, v in m.items() if not k.startswith("_")}

        @app.delete("/2010-04-01/Accounts/{account}/Messages/{sid}.json", status_code=204)
        def delete_message(account: str, sid: str):
            with sb.lock:
                sb._progress(datetime.now(timezone.utc))
                m = sb.messages.get(sid) if account == ACCOUNT_SID else None
                if m is None:
                    return _err(404, 20404, f"The requested resource /2010-04-01/Accounts/{account}/Messages/{sid}.json "
                                            "was not found")
                if m["status"] in ("queued", "sending", "accepted", "scheduled"):
                    return _err(409, 20009, "Cannot delete message because it is in progress")
                del sb.messages[sid]
                sb.webhook_posts = [w for w in sb.webhook_posts if w["sid"] != sid]
            return Response(status_code=204)

        @app.get("/_sandbox/export", include_in_schema=False)
        def export():
            """Everything the account holds: messages (with bodies), the carrier opt-out list."""
            with sb.lock:
                return {"messages": [{k: v for k, v in m.items() if not k.startswith("_")}
                                     for m in sb.messages.values()],
                        "opt_outs": sorted(list(o) for o in sb.opt_outs), "webhook_posts": sb.webhook_posts}

        @app.post("/2010-04-01/Accounts/{account}/Messages.json", status_code=201)
        async def create_message(account: str, request: Request):
            if account != ACCOUNT_SID:
                return _err(404, 20404, f"The requested resource /2010-04-01/Accounts/{account}/Messages.json was not found")
            if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                return _err(400, 20001, "Request body must be application/x-www-form-urlencoded")
            form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
            to, frm, body = form.get("To", "").strip(), form.get("From", "").strip(), form.get("Body", "")
            service = form.get("MessagingServiceSid")
            if not to:
                return _err(400, 21604, "A 'To' phone number is required.")
            if not re.fullmatch(r"\+[1-9]\d{6,14}", to.removeprefix("whatsapp:")):
                return _err(400, 21211, f"Invalid 'To' Phone Number: {to[:3]}***")
            if not frm and not service:
                return _err(400, 21603, "A 'From' phone number is required.")
            if service and not frm:
                frm = CARE  # the sandbox's one Messaging Service sends from the care line
            if frm not in sb.numbers:
                return _err(400, 21606, "The From phone number is not a valid, SMS-capable inbound phone number or "
                                        "short code for your account.")
            if not body and not form.get("MediaUrl"):
                return _err(400, 21602, "Message body is required.")
            if len(body) > 1600:
                return _err(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
            if (frm, to) in sb.opt_outs:
                return _err(400, 21610, "Attempt to send to unsubscribed recipient")
            now = datetime.now(timezone.utc)
            with sb.lock:
                m = sb._message(sb._sid(sb.rand), frm, to, body, "outbound-api", now, "queued", sent=None,
                                service=service)
                out = {k: v for k, v in m.items() if not k.startswith("_")}
                lose = sb.lose_next > 0
                if lose:
                    sb.lose_next -= 1
                    sb.sends_lost.append(m["sid"])
            if lose:
                # The message exists and will be delivered; only its answer is lost.
                if sb.lose_stall:
                    await asyncio.sleep(sb.lose_stall)
                return _err(500, 20500, "An internal server error has occurred")
            return JSONResponse(out, status_code=201)

        # --- sandbox-only ---------------------------------------------------------------------
        @app.post("/_sandbox/inbound", include_in_schema=False)
        async def inbound(request: Request):
            body = await request.json()
            frm, text = str(body.get("from", "")), str(body.get("body", ""))
            to = str(body.get("to") or CARE)
            if not re.fullmatch(r"\+[1-9]\d{6,14}", frm) or to not in sb.numbers:
                return _err(400, 21211, "from must be E.164 and to one of the sandbox's numbers")
            at = datetime.fromisoformat(body["at"]) if body.get("at") else datetime.now(timezone.utc)
            at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
            m = sb.inbound(frm, to, text, at, sb.rand)
            result: dict[str, Any] = {"sid": m["sid"], "message": {k: v for k, v in m.items() if not k.startswith("_")}}
            url = body.get("webhook_url")
            if url:
                params, headers = sb.signed_webhook(url, m)
                async with httpx.AsyncClient(timeout=10) as client:
                    resp = await client.post(url, content=urlencode(params), headers=headers)
                sb.webhook_posts.append({"url": url, "sid": m["sid"], "status": resp.status_code})
                result["webhook_status"] = resp.status_code
            return result

        @app.post("/_sandbox/lose_responses", include_in_schema=False)
        async def lose(request: Request):
            body = await request.json()
            with sb.lock:
                sb.lose_next = int(body.get("count", 1))
                sb.lose_stall = float(body.get("stall_seconds", 0))
            return {"ok": True, "count": sb.lose_next, "stall_seconds": sb.lose_stall}
