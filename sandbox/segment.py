"""Segment emulator: the Tracking API (``POST /v1/batch``) feeding an identity graph that the
Profile API (``/v1/spaces/{space}/collections/users/profiles/{type}:{id}/traits|external_ids|events``)
reads back.

Seeded from :mod:`sandbox.population`: web-app users for active people (user id ``web-<n>``,
traits with email and names, one or two anonymous ids, a few page/track events; paying users have
a computed ``value_tier`` trait). The heroine is ``web-7731`` with ``amara.okafor@example.com``, a
gold customer.

Faithful behaviour: Basic auth (``writeKey:`` for tracking, ``token:`` for profiles); 32 KB per
message and 500 KB per batch (larger is a 400); malformed messages inside a valid batch are
accepted with 200 and dropped, as Segment does (see ``/_sandbox/state`` ``rejected``); a repeated
``messageId`` is ignored (Segment's dedupe); identity resolution merges on shared external ids but
never merges two different ``user_id`` values (the default limit of one user id per profile);
Profile API lists page with ``limit`` and a ``next`` cursor; errors are
``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from sandbox.framework import Sandbox
from sandbox.population import EPOCH, JUNK_EMAILS, active_people, person

WRITE_KEY = "sandbox-write-key"
PROFILE_TOKEN = "sandbox-profile-token"
SPACE_ID = "spa_sandbox"
PUBLIC_API_TOKEN = "sandbox-public-api-token"  # Segment Public API (regulations): a Bearer token
MAX_SUBJECTS = 5000  # subjectIds per regulation request
SOURCE_ID = "src_webapp"
MAX_MESSAGE = 32 * 1024
MAX_BATCH = 500 * 1024
HEROINE_USER = "web-7731"
PAGES = ("/", "/orders", "/orders/{id}", "/help/refunds", "/account", "/pricing")
EVENTS = ("Signed In", "Product Viewed", "Order Completed", "Help Article Viewed", "Cart Viewed")
LIMITS = {"traits": (10, 200), "external_ids": (25, 100), "events": (10, 100)}


def _err(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _basic_user(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if not auth.lower().startswith("basic "):
        return None
    try:
        user, _, _ = base64.b64decode(auth[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return user


class SegmentSandbox(Sandbox):
    name = "segment"

    # --- state ---------------------------------------------------------------------------------
    def seed(self) -> None:
        self.profiles: dict[str, dict[str, Any]] = {}
        self.index: dict[tuple[str, str], str] = {}
        self.message_ids: set[str] = set()
        self.rejected: list[dict[str, str]] = []
        self.suppressed: set[str] = set()  # user ids under a SUPPRESS regulation: their messages are dropped
        self.regulations: dict[str, dict[str, Any]] = {}
        self.accepted = 0
        self.duplicates = 0
        self._n = 0
        for pid in active_people(self.size, 0.5, self.seed_value, salt=601):
            for msg in self._seed_messages(pid):
                self.apply(msg)

    def _seed_messages(self, pid: int) -> list[dict[str, Any]]:
        r = random.Random(f"segment:{self.seed_value}:{pid}")
        p = person(pid, self.seed_value)
        user_id = HEROINE_USER if pid == 0 else f"web-{10000 + pid}"
        start = (datetime(2026, 11, 3, 9, 12, tzinfo=timezone.utc) if pid == 0
                 else EPOCH + timedelta(days=300, seconds=r.randrange(0, 86400 * 20)))
        anon = [f"anon-{r.randrange(16**12):012x}" for _ in range(1 + (r.random() < 0.3))]
        email = p.personal_email if pid == 0 or r.random() < 0.8 else p.work_email
        if pid and r.random() < 0.005:
            email = r.choice(JUNK_EMAILS)
        traits: dict[str, Any] = {"email": email, "firstName": p.first, "lastName": p.last,
                                  "createdAt": _iso(p.created_at)}
        if pid == 0 or r.random() < 0.4:
            traits["phone"] = p.mobile
        if pid == 0 or r.random() < 0.5:
            traits["plan"] = r.choice(("free", "plus", "premium")) if pid else "plus"
        tier = self._value_tier(pid, traits.get("plan"))
        if tier:
            traits["value_tier"] = tier
        msgs: list[dict[str, Any]] = []
        t = start
        for a in anon:
            msgs.append({"type": "page", "anonymousId": a, "name": "Home", "properties": {"path": "/"},
                         "timestamp": _iso(t), "messageId": f"seed-{pid}-{len(msgs)}"})
            t += timedelta(minutes=r.randrange(1, 90))
        msgs.append({"type": "identify", "userId": user_id, "anonymousId": anon[0], "traits": traits,
                     "timestamp": _iso(t), "messageId": f"seed-{pid}-{len(msgs)}"})
        names = ("Signed In", "Order Viewed", "Help Article Viewed") if pid == 0 else \
            tuple(r.choice(EVENTS) for _ in range(r.randrange(1, 4)))
        for name in names:
            t += timedelta(minutes=r.randrange(1, 240))
            props = {"path": "/help/refunds", "order_id": "A-10442"} if pid == 0 else {"path": r.choice(PAGES)}
            msgs.append({"type": "track", "userId": user_id, "event": name, "properties": props,
                         "timestamp": _iso(t), "messageId": f"seed-{pid}-{len(msgs)}"})
        return msgs

    def _value_tier(self, pid: int, plan: str | None) -> str | None:
        """A computed trait of the space (Engage): paying web customers' value tier from their spend,
        drawn apart from the seed's other values so adding it changed no one else. The heroine is gold."""
        if pid == 0:
            return "gold"
        if plan not in ("plus", "premium"):
            return None
        t = random.Random(f"segment-tier:{self.seed_value}:{pid}")
        return t.choice(("gold", "platinum")) if plan == "premium" else t.choice(("bronze", "silver", "gold"))

    # --- identity graph ------------------------------------------------------------------------
    def _ids(self, msg: dict[str, Any]) -> list[tuple[str, str]]:
        ids: list[tuple[str, str]] = []
        if msg.get("userId") not in (None, ""):
            ids.append(("user_id", str(msg["userId"])))
        traits = msg.get("traits") if msg.get("type") == "identify" else (msg.get("context") or {}).get("traits")
        email = (traits or {}).get("email")
        if isinstance(email, str) and email.strip():
            ids.append(("email", email.strip().lower()))
        if msg.get("anonymousId") not in (None, ""):
            ids.append(("anonymous_id", str(msg["anonymousId"])))
        for ext in (msg.get("context") or {}).get("externalIds") or []:
            if isinstance(ext, dict) and ext.get("id") and ext.get("type"):
                ids.append((str(ext["type"]), str(ext["id"])))
        return list(dict.fromkeys(ids))

    def _user_id(self, key: str) -> str | None:
        return next((e["id"] for e in self.profiles[key]["external_ids"] if e["type"] == "user_id"), None)

    def apply(self, msg: dict[str, Any]) -> str | None:
        """Apply one validated message to the graph; returns the profile key (None if dropped)."""
        mid = str(msg.get("messageId") or "")
        if mid and mid in self.message_ids:
            self.duplicates += 1
            return None
        problem = validate_message(msg)
        if problem:
            self.rejected.append({"messageId": mid, "reason": problem})
            return None
        if str(msg.get("userId") or "") in self.suppressed:
            self.rejected.append({"messageId": mid, "reason": "userId is suppressed by a regulation"})
            return None
        if mid:
            self.message_ids.add(mid)
        ids = self._ids(msg)
        uid = next((v for t, v in ids if t == "user_id"), None)
        target = self.index.get(("user_id", uid)) if uid else None
        if target is None:
            for ident in ids:
                cand = self.index.get(ident)
                if cand is not None and (uid is None or self._user_id(cand) in (None, uid)):
                    target = cand
                    break
        if target is None:
            self._n += 1
            target = f"use_{hashlib.sha1(f'{self.seed_value}:{self._n}'.encode()).hexdigest()[:24]}"
            self.profiles[target] = {"traits": {}, "external_ids": [], "events": []}
        # Merge other profiles the message ties in, unless that would put two user ids together.
        for ident in ids:
            other = self.index.get(ident)
            if other is not None and other != target and self._user_id(other) in (None, self._user_id(target)):
                self._merge(other, target)
        when = str(msg.get("timestamp") or _iso(datetime.now(timezone.utc)))
        prof = self.profiles[target]
        for typ, value in ids:
            if (typ, value) not in self.index:
                if typ == "user_id" and self._user_id(target) not in (None, value):
                    continue
                self.index[(typ, value)] = target
                prof["external_ids"].append({"id": value, "type": typ, "source_id": SOURCE_ID, "collection": "users",
                                             "created_at": when, "encoding": "none", "first_message_id": mid})
        if msg["type"] == "identify":
            for k, v in (msg.get("traits") or {}).items():
                if v is None:
                    prof["traits"].pop(k, None)
                else:
                    prof["traits"][k] = v
        prof["events"].append({"type": msg["type"], "event": msg.get("event") or msg.get("name"),
                               "message_id": mid, "source_id": SOURCE_ID, "timestamp": when,
                               "properties": msg.get("properties") or {}, "traits": msg.get("traits"),
                               "external_ids": [{"id": v, "type": t, "collection": "users", "encoding": "none"}
                                                for t, v in ids],
                               "context": msg.get("context") or {}})
        self.accepted += 1
        return target

    def _merge(self, src: str, dst: str) -> None:
        a, b = self.profiles.pop(src), self.profiles[dst]
        for e in a["external_ids"]:
            self.index[(e["type"], e["id"])] = dst
            b["external_ids"].append(e)
        b["traits"] = {**a["traits"], **b["traits"]}
        b["events"] = sorted(a["events"] + b["events"], key=lambda e: e["timestamp"])

    def regulate(self, kind: str, user_ids: list[str]) -> dict[str, Any]:
        """A user regulation: delete the profiles holding these user ids, suppress further data, or both."""
        rid = f"reg_{hashlib.sha1(f'{self.seed_value}:{len(self.regulations)}'.encode()).hexdigest()[:20]}"
        for uid in user_ids:
            if kind in ("SUPPRESS_WITH_DELETE", "SUPPRESS_ONLY"):
                self.suppressed.add(uid)
            elif kind == "UNSUPPRESS":
                self.suppressed.discard(uid)
            if kind in ("SUPPRESS_WITH_DELETE", "DELETE_ONLY", "DELETE_INTERNAL"):
                key = self.index.get(("user_id", uid))
                if key is not None:
                    prof = self.profiles.pop(key)
                    for e in prof["external_ids"]:
                        if self.index.get((e["type"], e["id"])) == key:
                            del self.index[(e["type"], e["id"])]
        reg = {"id": rid, "workspaceId": "ws_sandbox", "overallStatus": "FINISHED", "regulateType": kind,
               "subjectType": "USER_ID", "createdAt": _iso(datetime.now(timezone.utc))}
        self.regulations[rid] = reg
        return reg

    def lookup(self, ref: str) -> dict[str, Any] | None:
        typ, _, value = ref.partition(":")
        if typ == "email":
            value = value.lower()
        key = self.index.get((typ, value))
        return self.profiles.get(key) if key else None

    # --- framework hooks -------------------------------------------------------------------------
    def credentials(self) -> dict[str, Any]:
        return {"write_key": WRITE_KEY, "space_id": SPACE_ID, "profile_token": PROFILE_TOKEN,
                "public_api_token": PUBLIC_API_TOKEN, "public_api_url": self.base_url}

    def authorized(self, request: Request) -> bool:
        path = request.url.path
        if path.startswith("/regulations"):
            return request.headers.get("authorization") == f"Bearer {PUBLIC_API_TOKEN}"
        if path.startswith("/v1/spaces/"):
            return _basic_user(request) == PROFILE_TOKEN
        return _basic_user(request) == WRITE_KEY

    def unauthorized(self) -> Response:
        return _err(401, "unauthorized", "Invalid or missing credentials")

    def rate_limited(self) -> Response:
        return _err(429, "too_many_requests", "Too many requests", headers={"Retry-After": "1"})

    def server_error(self) -> Response:
        return _err(503, "service_unavailable", "Service temporarily unavailable")

    def quota_exhausted(self) -> Response:
        return _err(429, "too_many_requests", "Request quota exceeded for this space",
                    headers={"Retry-After": str(6 * 3600)})

    def summary(self) -> dict[str, Any]:
        user_ids = sorted(v for (t, v) in self.index if t == "user_id")
        return {"profiles": len(self.profiles), "user_ids": user_ids, "accepted": self.accepted,
                "duplicates": self.duplicates, "rejected": self.rejected[-50:], "rejected_total": len(self.rejected),
                "events": sum(len(p["events"]) for p in self.profiles.values())}

    # --- routes ---------------------------------------------------------------------------------
    def routes(self, app: FastAPI) -> None:
        sb = self

        @app.post("/v1/batch")
        async def batch(request: Request):
            raw = await request.body()
            if len(raw) > MAX_BATCH:
                return _err(400, "batch_too_large", f"batch is {len(raw)} bytes; the limit is {MAX_BATCH}")
            try:
                body = json.loads(raw)
            except ValueError:
                return _err(400, "invalid_json", "request body is not valid JSON")
            items = body.get("batch") if isinstance(body, dict) else None
            if not isinstance(items, list):
                return _err(400, "invalid_request", "body must be an object with a 'batch' array")
            for i, item in enumerate(items):
                size = len(json.dumps(item, separators=(",", ":")).encode())
                if size > MAX_MESSAGE:
                    return _err(400, "message_too_large", f"batch[{i}] is {size} bytes; the limit is {MAX_MESSAGE}")
            shared = body.get("context") if isinstance(body.get("context"), dict) else {}
            with sb.lock:
                for item in items:
                    if isinstance(item, dict):
                        if shared:
                            item = {**item, "context": {**shared, **(item.get("context") or {})}}
                        sb.apply(item)
                    else:
                        sb.rejected.append({"messageId": "", "reason": "batch item is not an object"})
            return {"success": True}

        @app.post("/regulations")
        async def create_regulation(request: Request):
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError:
                return _err(400, "invalid_json", "request body is not valid JSON")
            kind, subject = body.get("regulationType"), body.get("subjectType")
            ids = body.get("subjectIds")
            if kind not in ("SUPPRESS_WITH_DELETE", "SUPPRESS_ONLY", "DELETE_ONLY", "DELETE_INTERNAL", "UNSUPPRESS"):
                return _err(400, "bad_request", "regulationType is not valid")
            if subject != "USER_ID":
                return _err(400, "bad_request", "subjectType must be USER_ID for a workspace regulation")
            if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
                return _err(400, "bad_request", "subjectIds must be a non-empty list of strings")
            if len(ids) > MAX_SUBJECTS:
                return _err(400, "bad_request", f"at most {MAX_SUBJECTS} subjectIds per request")
            with sb.lock:
                reg = sb.regulate(kind, ids)
            return {"data": {"regulateId": reg["id"]}}

        @app.get("/regulations/{regulate_id}")
        def get_regulation(regulate_id: str):
            reg = sb.regulations.get(regulate_id)
            if reg is None:
                return _err(404, "not_found", "Resource not found")
            return {"data": {"regulation": reg}}

        @app.get("/_sandbox/export", include_in_schema=False)
        def export():
            """Everything the space holds: every profile with traits, external ids and events."""
            with sb.lock:
                return {"profiles": sb.profiles, "suppressed_user_ids": sorted(sb.suppressed),
                        "rejected": sb.rejected}

        def _page(kind: str, request: Request, items: list[Any], key) -> tuple[list[Any], dict[str, Any]] | Response:
            default, most = LIMITS[kind]
            try:
                limit = int(request.query_params.get("limit", default))
            except ValueError:
                return _err(400, "bad_request", "limit must be an integer")
            if not 1 <= limit <= most:
                return _err(400, "bad_request", f"limit must be between 1 and {most}")
            nxt = request.query_params.get("next") or ""
            start = 0
            if nxt:
                keys = [key(i) for i in items]
                if nxt not in keys:
                    return _err(400, "bad_request", "invalid cursor")
                start = keys.index(nxt)
            page = items[start:start + limit]
            more = start + limit < len(items)
            return page, {"url": request.url.path, "has_more": more,
                          "next": key(items[start + limit]) if more else ""}

        def _profile(space: str, ref: str) -> dict[str, Any] | Response:
            if space != SPACE_ID:
                return _err(404, "not_found", "space not found")
            with sb.lock:
                prof = sb.lookup(ref)
            if prof is None:
                return _err(404, "not_found", "Resource not found")
            return prof

        base = "/v1/spaces/{space}/collections/users/profiles/{ref}"

        @app.get(base + "/traits")
        def traits(space: str, ref: str, request: Request):
            prof = _profile(space, ref)
            if isinstance(prof, Response):
                return prof
            include = request.query_params.get("include")
            names = sorted(prof["traits"])
            if include:
                wanted = set(include.split(","))
                names = [n for n in names if n in wanted]
            got = _page("traits", request, names, lambda n: n)
            if isinstance(got, Response):
                return got
            page, cursor = got
            return {"traits": {n: prof["traits"][n] for n in page}, "cursor": cursor}

        @app.get(base + "/external_ids")
        def external_ids(space: str, ref: str, request: Request):
            prof = _profile(space, ref)
            if isinstance(prof, Response):
                return prof
            rows = sorted(prof["external_ids"], key=lambda e: (e["created_at"], e["type"], e["id"]))
            got = _page("external_ids", request, rows, lambda e: quote(f"{e['type']}:{e['id']}", safe=""))
            if isinstance(got, Response):
                return got
            page, cursor = got
            return {"data": page, "cursor": cursor}

        @app.get(base + "/events")
        def events(space: str, ref: str, request: Request):
            prof = _profile(space, ref)
            if isinstance(prof, Response):
                return prof
            rows = sorted(prof["events"], key=lambda e: (e["timestamp"], e["message_id"]), reverse=True)
            got = _page("events", request, rows, lambda e: e["message_id"])
            if isinstance(got, Response):
                return got
            page, cursor = got
            return {"data": page, "cursor": cursor}


def validate_message(msg: Any) -> str | None:
    """Why Segment would drop this message (None when it is acceptable)."""
    if not isinstance(msg, dict):
        return "message is not an object"
    kind = msg.get("type")
    if kind not in ("identify", "track", "page", "screen", "group", "alias"):
        return "type must be identify, track, page, screen, group or alias"
    if msg.get("userId") in (None, "") and msg.get("anonymousId") in (None, ""):
        return "userId or anonymousId is required"
    if kind == "track" and not msg.get("event"):
        return "track needs an event name"
    if kind == "identify" and msg.get("traits") is not None and not isinstance(msg.get("traits"), dict):
        return "traits must be an object"
    return None
