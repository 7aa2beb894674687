"""The golden-record API and the agent's Customer 360 page (FastAPI).

Downstream systems read the golden store through this service; it never writes golden data.

* ``GET /health``, ``GET /ready``: liveness with the store's reachability and the last run (no auth).
* ``GET /v1/lookup``: the screen pop, by email, phone or any system's external id; answers with what
  routing and the agent need first (name, language, consent, tier, last contact, open case, the
  last bot hand-off). Scope ``lookup``.
* ``GET /v1/profiles/{id}`` and ``/timeline``: the profile with consent (and field lineage with
  ``lineage=true``), the unified timeline with keyset paging over ``(started_at, id)``. Scope
  ``profile:read``.
* ``GET /v1/changes``: the change feed, keyset by ``seq``. Scope ``profile:read``.
* ``GET /v1/analytics/journeys``, ``/v1/analytics/wfm`` and ``/wfm.csv``. Scope ``profile:read``.
* ``GET /360/...``: the server-rendered Customer 360 page; the key travels in an HttpOnly cookie
  set by ``/360/login``.

Invariants: merged-away ids always resolve to their survivor (and say so); callers without
``pii:read`` get every personal value masked (``omnisync.privacy``); every error is an RFC 9457
problem document naming the parameter at fault, never a 500 for bad input. The API reads the key
from headers only, never from the cookie, so a browser session cannot be replayed against it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader, HTTPBearer
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import and_, func, or_, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import keys
from api.keys import Principal
from api.screenpop import RECENT, ScreenPopReader
from identity import analytics
from identity.store import (ChangeEvent, GoldenAlias, GoldenRecord, IdentityKey, InteractionRow, OutboundLedger,
                            get_engine)
from omnisync.model import Channel, normalize_email, normalize_phone
from omnisync.privacy import mask_email, mask_name, mask_phone, mask_text
from omnisync.records import as_utc

log = logging.getLogger("omnisync.api")
HERE = Path(__file__).parent
COOKIE = "omnisync_key"
MAX_ALIAS_HOPS = 16
EMAIL_MAX, PHONE_MAX = 254, 40  # a lookup's parameters, longer ones are refused (422)
MAX_BIGINT = 2**63 - 1  # larger numbers would reach PostgreSQL and fail there as a 500
OPEN_STATUSES = {"in_progress", "open", "pending", "new", "escalated", "waiting", "abandoned_in_queue"}
CLOSED_STATUSES = {"resolved", "closed", "solved", "contained"}
OPEN_DISPOSITION_WORDS = ("follow-up", "follow up", "callback", "call back", "escalat", "unresolved", "pending")
SYSTEM_NAMES = {"salesforce": "Salesforce", "hubspot": "HubSpot", "zoom": "Zoom CC", "twilio": "Twilio",
                "sendgrid": "SendGrid", "segment": "Segment"}


# Declared for the OpenAPI schema (the "Authorize" button in /docs); the key itself is read in _require.
_BEARER = HTTPBearer(auto_error=False, description="an omnisync API key: `Authorization: Bearer osk_...`")
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="an omnisync API key")


# --- problems ------------------------------------------------------------------------------------

class Problem(Exception):
    """An error answered as ``application/problem+json`` (RFC 9457)."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


def _problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None,
             **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


def _bad(param: str, reason: str) -> Problem:
    return Problem(400, "Bad parameter", f"{param}: {reason}", param=param)


def fast_json(body: dict[str, Any]) -> Response:
    """Answer an already JSON-shaped dict without FastAPI's per-field re-encoding (the hot paths)."""
    if _orjson is not None:
        return Response(_orjson.dumps(body), media_type="application/json")
    return JSONResponse(body)


try:  # a faster encoder when present; the answer is the same JSON either way
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None


# --- masking -------------------------------------------------------------------------------------

def _mask_value(v: Any) -> Any:
    if isinstance(v, str):
        return mask_text(v)
    if isinstance(v, list):
        return [_mask_value(x) for x in v]
    if isinstance(v, dict):
        return {k: _mask_value(x) for k, x in v.items()}
    return v


_NAME_FIELDS = ("first_name", "last_name", "full_name")
_KEEP_FIELDS = {"company", "title", "locale", "timezone", "value_tier", "consent", "external_ids"}


def mask_profile(p: dict[str, Any]) -> dict[str, Any]:
    """A profile as a caller without ``pii:read`` sees it: names to initials, contacts to a hint."""
    out: dict[str, Any] = {}
    for k, v in p.items():
        if k in _NAME_FIELDS:
            out[k] = mask_name(v) if isinstance(v, str) else v
        elif k == "emails":
            out[k] = [mask_email(e) for e in v or []]
        elif k == "phones":
            out[k] = [mask_phone(x) for x in v or []]
        elif k == "addresses":
            out[k] = [{"country": a.get("country"), "state": a.get("state"), "masked": True}
                      for a in v or [] if isinstance(a, dict)]
        elif k == "birth_date":
            out[k] = "***" if v else v
        elif k in _KEEP_FIELDS:
            out[k] = v
        else:
            out[k] = _mask_value(v)
    return out


def mask_lineage(lineage: dict[str, Any]) -> dict[str, Any]:
    # lineage names systems, records and rules; any copied value is personal data
    return {f: ({k: ("***" if k in ("value", "values") else v) for k, v in src.items()}
                if isinstance(src, dict) else src) for f, src in lineage.items()}


def interaction_view(it: Any, pii: bool) -> dict[str, Any]:
    data = it.data or {}
    handoff = data.get("handoff") or None
    attrs = dict(data.get("attributes") or {})
    view = {
        "id": it.id, "system": it.system, "external_id": it.external_id, "channel": it.channel,
        "direction": it.direction, "started_at": _iso(it.started_at), "ended_at": _iso(it.ended_at),
        "queue": it.queue, "agent": it.agent, "disposition": it.disposition, "summary": it.summary,
        "subject": data.get("subject"), "status": data.get("status"),
        "customer_email": data.get("customer_email"), "customer_phone": data.get("customer_phone"),
        "handoff": dict(handoff) if handoff else None, "attributes": attrs,
    }
    if not pii:
        view["customer_email"] = mask_email(view["customer_email"])
        view["customer_phone"] = mask_phone(view["customer_phone"])
        for k in ("summary", "subject"):
            view[k] = mask_text(view[k]) if view[k] else view[k]
        if "consumer_name" in attrs:
            attrs["consumer_name"] = mask_name(attrs["consumer_name"])
        view["attributes"] = {k: (v if k == "consumer_name" else _mask_value(v)) for k, v in attrs.items()}
        if view["handoff"]:
            h = view["handoff"]
            h["summary"] = mask_text(h["summary"]) if h.get("summary") else h.get("summary")
            h["context"] = _mask_value(h.get("context") or {})
    return view


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:  # SQLite returns naive datetimes; the store writes UTC
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# --- reading the store ---------------------------------------------------------------------------

def resolve_survivor(s: Session, golden_id: str) -> tuple[str, GoldenRecord | None]:
    """Follow aliases and ``merged_into`` to the surviving golden id (and its record, if any)."""
    gid, seen = golden_id, set()
    for _ in range(MAX_ALIAS_HOPS):
        if gid in seen:
            break
        seen.add(gid)
        alias = s.get(GoldenAlias, gid)
        if alias is not None and alias.golden_id != gid:
            gid = alias.golden_id
            continue
        rec = s.get(GoldenRecord, gid)
        if rec is not None and rec.status == "merged" and rec.merged_into and rec.merged_into != gid:
            gid = rec.merged_into
            continue
        return gid, rec
    raise Problem(500, "Alias loop", f"golden id {golden_id} does not lead to a survivor")


def _ids_of(s: Session, survivor: str) -> list[str]:
    """The survivor and every id merged into it (interactions may still carry an absorbed id)."""
    aliases = s.execute(select(GoldenAlias.alias_id).where(GoldenAlias.golden_id == survivor)).scalars().all()
    return [survivor, *sorted(set(aliases) - {survivor})]


def load_profile(s: Session, golden_id: str) -> tuple[str, GoldenRecord]:
    if not golden_id or len(golden_id) > 40:
        raise _bad("golden_id", "must be 1-40 characters")
    survivor, rec = resolve_survivor(s, golden_id)
    if rec is None:
        raise Problem(404, "Not found", f"no golden record {golden_id}")
    if rec.status == "erased":
        raise Problem(410, "Erased", f"golden record {survivor} was erased on request", golden_id=survivor)
    return survivor, rec


def _interactions(s: Session, survivor: str) -> Any:
    """Rows (not ORM objects: cheaper) of the survivor's interactions, including any still filed
    under an id merged into it. The ids are fetched first: an OR with a sub-select would make
    PostgreSQL walk the whole ``started_at`` index instead of ``(golden_id, started_at)``."""
    ids = _ids_of(s, survivor)
    col = InteractionRow.golden_id
    return select(InteractionRow.__table__).where(col == survivor if len(ids) == 1 else col.in_(ids))


def open_case(recent: list[Any]) -> dict[str, Any] | None:
    """The customer's open issue: the latest contact with an outcome decides (newest first).

    An outcome is an agent's disposition or a status that opens or closes an issue; delivery states
    of messages (sent, delivered, completed) say nothing about the issue and are passed over.
    """
    for it in recent:
        status = ((it.data or {}).get("status") or "").lower()
        disp = (it.disposition or "").lower()
        if status in OPEN_STATUSES or any(w in disp for w in OPEN_DISPOSITION_WORDS):
            return {"interaction_id": it.id, "system": it.system, "channel": it.channel, "since": _iso(it.started_at),
                    "status": status or None, "disposition": it.disposition, "queue": it.queue}
        if disp or status in CLOSED_STATUSES:
            return None
    return None


def consent_summary(profile: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"channel": c.get("channel"), "purpose": c.get("purpose"), "status": c.get("status"),
             "since": c.get("observed_at"), "source_system": c.get("source_system")}
            for c in sorted(profile.get("consent") or [], key=lambda c: (c.get("channel", ""), c.get("purpose", "")))]


def display_name(profile: dict[str, Any]) -> str | None:
    if profile.get("full_name"):
        return profile["full_name"]
    return " ".join(p for p in (profile.get("first_name"), profile.get("last_name")) if p) or None


def find_survivors(s: Session, kind: str, value: str) -> dict[str, Any]:
    """The active golden records holding identifier ``(kind, value)``, by survivor id.

    One round trip follows one alias hop (the common case); a longer chain or a record marked merged
    without an alias falls back to :func:`resolve_survivor`.
    """
    target = func.coalesce(GoldenAlias.golden_id, IdentityKey.golden_id)
    q = (select(GoldenRecord.__table__).select_from(IdentityKey)
         .outerjoin(GoldenAlias, GoldenAlias.alias_id == IdentityKey.golden_id)
         .join(GoldenRecord, GoldenRecord.golden_id == target)
         .where(IdentityKey.kind == kind, IdentityKey.value == value).limit(50))
    found: dict[str, Any] = {}
    for rec in s.execute(q):
        if rec.status == "merged" and rec.merged_into:
            _sid, rec = resolve_survivor(s, rec.merged_into)
            if rec is None:
                continue
        if rec.status == "active":
            found.setdefault(rec.golden_id, rec)
    return found


def recent_interactions(s: Session, survivor: str) -> list[Any]:
    """The survivor's latest interactions, newest first: what a screen pop looks at."""
    return list(s.execute(_interactions(s, survivor)
                          .order_by(InteractionRow.started_at.desc(), InteractionRow.id.desc()).limit(RECENT)))


def read_screen_pop(s: Session, kind: str, value: str) -> tuple[Any, set[str], list[Any]]:
    """``(best, other ids, recent)`` for identifier ``(kind, value)``, every case handled; the lookup
    tries :class:`api.screenpop.ScreenPopReader` first, which must answer the same."""
    survivors = find_survivors(s, kind, value)
    if not survivors:
        return None, set(), []
    best = max(survivors.values(), key=lambda r: (as_utc(r.updated_at), r.golden_id))
    return best, set(survivors) - {best.golden_id}, recent_interactions(s, best.golden_id)


def screen_pop(rec: Any, recent: list[Any], pii: bool) -> dict[str, Any]:
    """What routing and the agent need first, from the golden record and its ``recent`` interactions."""
    p = rec.profile or {}
    last = recent[0] if recent else None
    last_agent = next((it for it in recent if it.agent), None)
    last_handoff = next((it for it in recent if (it.data or {}).get("handoff")), None)
    name = display_name(p)
    return {
        "golden_id": rec.golden_id,
        "name": name if pii else mask_name(name),
        "preferred_language": p.get("locale"),
        "timezone": p.get("timezone"),
        "value_tier": p.get("value_tier"),
        "consent": consent_summary(p),
        "last_channel": last.channel if last else None,
        "last_contact_at": _iso(last.started_at) if last else None,
        "last_agent": last_agent.agent if last_agent else None,
        "last_queue": last_agent.queue if last_agent else (last.queue if last else None),
        "open_case": open_case(recent),
        "last_interaction": interaction_view(last, pii) if last else None,
        "last_handoff": interaction_view(last_handoff, pii) if last_handoff else None,
    }


def header_secret(headers: Any) -> str | None:
    """The API key from ``Authorization: Bearer`` or ``X-API-Key`` (``headers``: lower-case names)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return headers.get("x-api-key")


# --- lookup --------------------------------------------------------------------------------------

def parse_identifier(email: str | None, phone: str | None, external_id: str | None,
                     system: str | None) -> tuple[str, str, str]:
    """``(kind, value, shown)`` for a lookup's parameters; ``shown`` is the value masked for messages."""
    given = [n for n, v in (("email", email), ("phone", phone), ("external_id", external_id)) if v]
    if len(given) != 1:
        raise _bad("email|phone|external_id", "give exactly one of email, phone or external_id")
    if email:
        try:
            return "email", normalize_email(email), mask_email(email.strip().lower()) or ""
        except ValueError:
            raise _bad("email", "not a valid email address") from None
    if phone:
        try:
            e164 = normalize_phone(phone)
        except ValueError:
            raise _bad("phone", "not a valid phone number") from None
        return "phone", e164, mask_phone(e164) or ""
    if not system:
        raise _bad("system", "external_id needs the system it belongs to (e.g. system=hubspot)")
    if len(system) > 20 or not system.replace("_", "").isalnum():
        raise _bad("system", "not a system name")
    if len(external_id) > 128:
        raise _bad("external_id", "longer than 128 characters")
    return f"ext:{system.lower()}", external_id, external_id


def lookup_body(best: Any, other_ids: set[str], recent: list[Any], kind: str, pii: bool) -> dict[str, Any]:
    """The screen pop's answer for a match on ``kind``: :func:`screen_pop` plus where to go next."""
    body = screen_pop(best, recent, pii)
    body["matched_on"] = kind
    body["other_matches"] = sorted(other_ids)
    body["profile_url"] = f"/v1/profiles/{best.golden_id}"
    body["customer360_url"] = f"/360/{best.golden_id}"
    return body


# --- cursors -------------------------------------------------------------------------------------

def encode_cursor(started_at: datetime, row_id: int) -> str:
    raw = json.dumps([_iso(started_at), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, row_id = json.loads(raw)
        at = datetime.fromisoformat(str(when).replace("Z", "+00:00"))
        if not isinstance(row_id, int) or isinstance(row_id, bool) or not 0 <= row_id <= MAX_BIGINT:
            raise ValueError("id")
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise _bad("cursor", "not a cursor returned by this API") from None
    return at, row_id


def _parse_channels(channels: str | None) -> list[str] | None:
    if not channels:
        return None
    wanted = sorted({c.strip().lower() for c in channels.split(",") if c.strip()})
    known = {c.value for c in Channel}
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise _bad("channels", f"unknown channel(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    return wanted or None


def _parse_time(param: str, value: str | None) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(param, "not an ISO 8601 date or time") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _store_time(s: Session, t: datetime) -> datetime:
    # SQLite stores naive UTC text; comparing an aware value there would compare strings with an offset
    if s.get_bind().dialect.name == "sqlite":
        return t.astimezone(timezone.utc).replace(tzinfo=None)
    return t


# --- app -----------------------------------------------------------------------------------------

def create_app(engine_or_url: Engine | str | None = None) -> FastAPI:
    """The API app over the store at ``engine_or_url`` (an Engine, a URL, or None for the settings)."""
    engine = engine_or_url if isinstance(engine_or_url, Engine) else get_engine(engine_or_url)
    app = FastAPI(title="omnisync golden-record API", version="1.0",
                  description="Screen-pop lookup, golden profiles with lineage, the unified timeline, the "
                              "change feed, journey analytics and the agent's Customer 360 page. Authenticate "
                              "with `Authorization: Bearer <key>` or `X-API-Key`.")
    app.state.engine = engine
    templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                            autoescape=select_autoescape(default=True, default_for_string=True))
    templates.globals["system_name"] = lambda s: SYSTEM_NAMES.get(s, s)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    # The API only reads: in autocommit there is no BEGIN and no ROLLBACK round trip per request
    # (a quarter of a lookup's database time). Every answer is built from indexed reads that stay
    # correct if a merge lands between them (aliases are followed, never assumed).
    reader = engine.execution_options(isolation_level="AUTOCOMMIT")
    pop_reader = ScreenPopReader(engine)
    # the last added runs first: a URL with a NUL is refused before the fast path parses it
    app.add_middleware(LookupFastPath, reader=pop_reader)
    app.add_middleware(RefuseNul)

    # The dependencies are async on purpose: a sync one costs a thread-pool hop each way, and they do
    # no I/O except a key lookup every CACHE_SECONDS. The endpoints themselves are sync (one hop).
    async def get_session() -> AsyncIterator[Session]:
        with Session(reader, expire_on_commit=False) as s:
            yield s

    async def get_tx_session() -> AsyncIterator[Session]:
        # analytics stream through a server-side cursor, which PostgreSQL allows only in a transaction
        with Session(engine, expire_on_commit=False) as s:
            yield s

    def _require(scope: str, *, cookie: bool = False):
        async def dep(request: Request, s: Session = Depends(get_session),
                      _bearer: Any = Security(_BEARER), _header: Any = Security(_API_KEY)) -> Principal:
            secret = header_secret(request.headers) or (request.cookies.get(COOKIE) if cookie else None)
            principal = keys.authenticate(s, secret)
            if principal is None:
                raise Problem(401, "Unauthorized", "a valid API key is required (Authorization: Bearer <key> "
                                                   "or X-API-Key)" if not secret else "the API key is unknown "
                                                   "or revoked", page=cookie)
            if not principal.has(scope):
                raise Problem(403, "Forbidden", f"key {principal.name!r} lacks the {scope!r} scope", scope=scope,
                              page=cookie)
            return principal
        return dep

    @app.exception_handler(Problem)
    async def _on_problem(request: Request, exc: Problem) -> Response:
        extra = dict(exc.extra)
        if extra.pop("page", False):
            if exc.status == 401:
                # encoded: a path holding "&key=..." must not become a second query parameter
                return RedirectResponse("/360/login?" + urlencode({"next": _safe_next(request.url.path)}, safe="/"),
                                        status_code=303)
            return _html("login.html", status=exc.status, next=_safe_next(request.url.path),
                         error=f"{exc.detail}. Sign in with a key that has it.")
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status >= 500:
            log.error("api problem %s: %s", exc.title, exc.detail)
        return _problem(exc.status, exc.title, exc.detail, headers=headers, **extra)

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> Response:
        # Pydantic echoes the bad input; it may be an address or a number, so only say where and why.
        errors = [{"param": ".".join(str(x) for x in e.get("loc", ())[1:]) or "body", "reason": e.get("msg")}
                  for e in exc.errors()]
        detail = "; ".join(f"{e['param']}: {e['reason']}" for e in errors)
        return _problem(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> Response:
        return _problem(exc.status_code, "Not found" if exc.status_code == 404 else "HTTP error", str(exc.detail))

    @app.exception_handler(Exception)
    async def _on_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return _problem(500, "Internal error", "the server failed to answer; the error is logged")

    try:
        from api import webhooks  # written separately; the API stands without it
    except ImportError:
        webhooks = None  # type: ignore[assignment]
    if webhooks is not None:
        app.include_router(webhooks.router)
        if not _is_settings_store(engine):
            # Events go to the store this app serves, not the one the settings name. Only then: any
            # dependency override makes FastAPI re-analyse every route's dependencies per request.
            base = webhooks.webhook_config()
            cfg = dataclasses.replace(base, engine=lambda: engine)
            app.dependency_overrides[webhooks.webhook_config] = lambda: cfg

    # --- health ---------------------------------------------------------------------------------

    def _health() -> tuple[int, dict[str, Any]]:
        from identity.runs import last_run

        try:
            with Session(engine) as s:
                s.exec(text("select 1"))
                run = last_run(s)
        except Exception as e:  # unreachable store: say so, never raise
            return 503, {"status": "unavailable", "store": "unreachable", "error": type(e).__name__}
        return 200, {"status": "ok", "store": "ok", "backend": engine.dialect.name,
                     "last_run": None if run is None else {"run_id": run.run_id, "flow": run.flow,
                                                           "status": run.status, "flagged": run.flagged,
                                                           "started_at": _iso(run.started_at),
                                                           "finished_at": _iso(run.finished_at)}}

    @app.get("/health", tags=["health"], summary="Liveness: the store is reachable; the last sync run")
    def health() -> JSONResponse:
        status, body = _health()
        return JSONResponse(body, status_code=status)

    @app.get("/ready", tags=["health"], summary="Readiness: 200 once the store answers, else 503")
    def ready() -> JSONResponse:
        status, body = _health()
        return JSONResponse({"ready": status == 200, "store": body["store"]}, status_code=status)

    # --- v1 -------------------------------------------------------------------------------------

    @app.get("/v1/lookup", tags=["lookup"], summary="Screen pop: find a customer by email, phone or external id")
    def lookup(email: str | None = Query(None, max_length=EMAIL_MAX),
               phone: str | None = Query(None, max_length=PHONE_MAX),
               external_id: str | None = Query(None), system: str | None = Query(None),
               who: Principal = Depends(_require("lookup")), s: Session = Depends(get_session)) -> Response:
        """Answers with the survivor of every merge, and what routing and the agent need first."""
        kind, value, shown = parse_identifier(email, phone, external_id, system)
        # a merge to follow or an absorbed id makes the fast reader decline: the general path answers
        best, other_ids, recent = pop_reader.read(kind, value) or read_screen_pop(s, kind, value)
        if best is None:
            raise Problem(404, "Not found", f"no customer has {kind} {shown if who.pii else '(masked)'}")
        return fast_json(lookup_body(best, other_ids, recent, kind, who.pii))

    @app.get("/v1/profiles/{golden_id}", tags=["profiles"],
             summary="One golden profile with consent; field lineage on request (lineage=true)")
    def profile(golden_id: str,
                lineage: bool = Query(False, description="Add each field's lineage: source system and record, "
                                                         "observed time and the survivorship rule that chose it"),
                who: Principal = Depends(_require("profile:read")), s: Session = Depends(get_session)) -> Response:
        """An absorbed id answers with its survivor: ``golden_id`` is the survivor, ``requested_id`` what was asked.
        Lineage doubles the body and is for audits and "why is this value here": only on request."""
        survivor, rec = load_profile(s, golden_id)
        p = rec.profile or {}
        body: dict[str, Any] = {
            "golden_id": survivor, "requested_id": golden_id, "redirected": survivor != golden_id,
            "status": rec.status, "version": rec.version, "created_at": _iso(rec.created_at),
            "updated_at": _iso(rec.updated_at), "profile": p if who.pii else mask_profile(p),
            "consent": consent_summary(p), "merged_ids": _ids_of(s, survivor)[1:], "masked": not who.pii,
        }
        if lineage:
            body["lineage"] = rec.lineage if who.pii else mask_lineage(rec.lineage or {})
        return fast_json(body)

    @app.get("/v1/profiles/{golden_id}/timeline", tags=["profiles"], summary="The unified timeline, newest first")
    def timeline(golden_id: str, cursor: str | None = None, limit: int = Query(50, ge=1, le=500),
                 channels: str | None = Query(None, description="comma-separated, e.g. voice,chat,bot"),
                 who: Principal = Depends(_require("profile:read")),
                 s: Session = Depends(get_session)) -> Response:
        """Keyset paging over ``(started_at, id)``: pass ``next_cursor`` back as ``cursor``."""
        chans = _parse_channels(channels)
        after = decode_cursor(cursor) if cursor else None
        survivor, _rec = load_profile(s, golden_id)
        return fast_json(timeline_page(s, survivor, after, limit, chans, who.pii))

    @app.get("/v1/changes", tags=["changes"], summary="The change feed: golden changes, merges and erasures")
    def changes(since: int = Query(0, ge=0, le=MAX_BIGINT), limit: int = Query(100, ge=1, le=1000),
                who: Principal = Depends(_require("profile:read")),
                s: Session = Depends(get_session)) -> Response:
        """Events with ``seq > since`` in order; resume from ``next_since``."""
        rows = list(s.exec(select(ChangeEvent).where(ChangeEvent.seq > since).order_by(ChangeEvent.seq)
                           .limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        events = [{"seq": r.seq, "golden_id": r.golden_id, "kind": r.kind, "at": _iso(r.at),
                   "detail": r.detail if who.pii else _mask_value(r.detail)} for r in rows]
        return fast_json({"events": events, "next_since": rows[-1].seq if rows else since, "has_more": more})

    @app.get("/v1/analytics/journeys", tags=["analytics"], summary="Journey metrics from the unified timeline")
    def journeys(since: str | None = None, until: str | None = None, days: int | None = Query(None, ge=1, le=3660),
                 format: str = Query("json", pattern="^(json|markdown)$"),
                 who: Principal = Depends(_require("profile:read")), s: Session = Depends(get_tx_session)) -> Response:
        try:
            m = analytics.journey_metrics(s, _parse_time("since", since), _parse_time("until", until), days=days)
        except ValueError as e:
            raise _bad("since|until|days", str(e)) from None
        if format == "markdown":
            return PlainTextResponse(analytics.journey_markdown(m), media_type="text/markdown")
        return JSONResponse(m)

    def _wfm(s: Session, since: str | None, until: str | None, direction: str, channels: str | None) -> list[dict]:
        chans = _parse_channels(channels)
        try:
            return analytics.wfm_intervals(s, _parse_time("since", since), _parse_time("until", until),
                                           direction=direction, channels=chans)
        except ValueError as e:
            raise _bad("since|until|direction", str(e)) from None

    @app.get("/v1/analytics/wfm", tags=["analytics"], summary="WFM feed: volume and handle time per 15 minutes")
    def wfm(since: str | None = None, until: str | None = None, direction: str = "inbound",
            channels: str | None = None, who: Principal = Depends(_require("profile:read")),
            s: Session = Depends(get_tx_session)) -> dict[str, Any]:
        return {"interval_minutes": 15, "rows": _wfm(s, since, until, direction, channels)}

    @app.get("/v1/analytics/wfm.csv", tags=["analytics"], summary="The WFM feed as CSV for forecasting tools")
    def wfm_csv(since: str | None = None, until: str | None = None, direction: str = "inbound",
                channels: str | None = None, who: Principal = Depends(_require("profile:read")),
                s: Session = Depends(get_tx_session)) -> Response:
        body = analytics.wfm_csv(_wfm(s, since, until, direction, channels))
        return Response(body, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="wfm_intervals.csv"'})

    # --- Customer 360 ---------------------------------------------------------------------------

    def _html(template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return HTMLResponse(templates.get_template(template).render(**ctx), status_code=status,
                            headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                     "Content-Security-Policy": "default-src 'self'; style-src 'self'"})

    @app.get("/360/login", tags=["customer 360"], response_class=HTMLResponse,
             summary="Sign the browser in with an API key (stored in an HttpOnly cookie)")
    def login(key: str | None = None, next: str = "/360", s: Session = Depends(get_session)) -> Response:
        return _login(s, key, next)

    def _login(s: Session, key: str | None, next: str) -> Response:
        target = _safe_next(next)
        if not key:
            return _html("login.html", next=target, error=None)
        principal = keys.authenticate(s, key.strip())
        if principal is None or not principal.has("profile:read"):
            return _html("login.html", status=401, next=target,
                         error="That key is unknown, revoked, or lacks the profile:read scope.")
        resp = RedirectResponse(target, status_code=303)
        resp.set_cookie(COOKIE, key.strip(), httponly=True, samesite="strict", path="/360", max_age=8 * 3600)
        return resp

    @app.post("/360/login", tags=["customer 360"], response_class=HTMLResponse,
              summary="Sign in from the form (the key travels in the body, not the URL)")
    async def login_form(request: Request) -> Response:
        form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0]
        target = (form.get("next") or ["/360"])[0]
        with Session(reader) as s:
            return _login(s, key, target)

    @app.get("/360/logout", tags=["customer 360"], include_in_schema=False)
    def logout() -> Response:
        resp = RedirectResponse("/360/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/360")
        return resp

    @app.get("/360", tags=["customer 360"], response_class=HTMLResponse, summary="Find a customer (search form)")
    def find_page(email: str | None = None, phone: str | None = None, external_id: str | None = None,
                  system: str | None = None, who: Principal = Depends(_require("profile:read", cookie=True)),
                  s: Session = Depends(get_session)) -> Response:
        if not (email or phone or external_id):
            return _html("search.html", who=who, error=None, q={})
        q = {"email": email or "", "phone": phone or "", "external_id": external_id or "", "system": system or ""}
        try:
            kind, value, _ = parse_identifier(email, phone, external_id, system)
        except Problem as e:
            return _html("search.html", status=400, who=who, error=e.detail, q=q)
        for sid in find_survivors(s, kind, value):
            return RedirectResponse(f"/360/{sid}", status_code=303)
        return _html("search.html", status=404, who=who, error="No customer matches that.", q=q)

    @app.get("/360/{golden_id}", tags=["customer 360"], response_class=HTMLResponse,
             summary="The agent's Customer 360 page for one customer")
    def customer360(golden_id: str, cursor: str | None = None, channels: str | None = None,
                    who: Principal = Depends(_require("profile:read", cookie=True)),
                    s: Session = Depends(get_session)) -> Response:
        try:
            survivor, rec = load_profile(s, golden_id)
        except Problem as e:
            if e.status in (400, 404, 410):
                return _html("search.html", status=e.status, who=who, error=e.detail, q={})
            raise
        if survivor != golden_id:
            return RedirectResponse(f"/360/{survivor}?merged_from={golden_id}", status_code=303)
        try:
            chans = _parse_channels(channels)
            after = decode_cursor(cursor) if cursor else None
        except Problem as e:
            return _html("search.html", status=400, who=who, error=e.detail, q={})
        page = timeline_page(s, survivor, after, 100, chans, who.pii)
        p = rec.profile or {}
        shown = p if who.pii else mask_profile(p)
        return _html("customer360.html", who=who, g=rec, profile=shown, name=display_name(shown) or "(no name)",
                     lineage=rec.lineage or {}, consent=consent_summary(p),
                     pop=screen_pop(rec, recent_interactions(s, survivor), who.pii),
                     timeline=page, channels=chans or [], all_channels=[c.value for c in Channel],
                     pushed=pushed_to(s, survivor, page["items"]), merged_ids=_ids_of(s, survivor)[1:],
                     merged_from=None)

    return app


def timeline_page(s: Session, survivor: str, after: tuple[datetime, int] | None, limit: int,
                  chans: list[str] | None, pii: bool) -> dict[str, Any]:
    q = _interactions(s, survivor)
    if chans:
        q = q.where(InteractionRow.channel.in_(chans))
    if after is not None:
        at, row_id = after
        at = _store_time(s, at)
        q = q.where(or_(InteractionRow.started_at < at,
                        and_(InteractionRow.started_at == at, InteractionRow.id < row_id)))
    rows = list(s.execute(q.order_by(InteractionRow.started_at.desc(), InteractionRow.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return {"golden_id": survivor, "items": [interaction_view(r, pii) for r in rows],
            "next_cursor": encode_cursor(rows[-1].started_at, rows[-1].id) if more and rows else None,
            "channels": chans}


def pushed_to(s: Session, golden_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What was pushed back where: the outbound ledger rows for this customer and these interactions."""
    q = select(OutboundLedger).where(OutboundLedger.key.startswith(f"{golden_id}|", autoescape=True))
    rows = list(s.exec(q.limit(200)))
    ikeys = [f"{i['system']}:{i['external_id']}" for i in items]
    if ikeys:
        rows += list(s.exec(select(OutboundLedger).where(OutboundLedger.key.in_(ikeys)).limit(200)))
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        t = out.setdefault((r.target_system, r.target_stream),
                           {"system": r.target_system, "stream": r.target_stream, "records": 0, "fields": set(),
                            "last_written": None})
        t["records"] += 1
        t["fields"].update(((r.payload or {}).get("vendor") or {}).keys())
        w = _iso(r.written_at)
        t["last_written"] = max(filter(None, [t["last_written"], w]), default=None)
    return [{**t, "fields": sorted(t["fields"])} for _, t in sorted(out.items())]


class RefuseNul:
    """Answer 400 to any URL carrying a NUL character: PostgreSQL cannot hold one in text, and the
    query would otherwise fail in the store as a 500. Pure ASGI, so it costs nothing per request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")):
            response = _problem(400, "Bad parameter", "the URL contains a NUL character")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class LookupFastPath:
    """``GET /v1/lookup`` in the common case, answered before the framework sees the request.

    The screen pop is the one endpoint an IVR calls on every call, so its cost sets the API's
    capacity; FastAPI's routing, dependency solving and parameter validation were two thirds of it.
    This middleware answers only what needs none of that: exactly one well-formed identifier, a key
    verified in the last few seconds (:func:`api.keys.cached_principal`) with the ``lookup`` scope,
    and a match the fast reader can answer (:class:`api.screenpop.ScreenPopReader`). Everything else
    (no or unknown key, a missing scope, bad or extra parameters, no match, a merge to follow, a store
    error) goes to the route in :func:`create_app`, which answers every case, errors included, with
    the same body builder (:func:`lookup_body`); a test holds the two to the same answers.
    """

    PARAMS = {"email": EMAIL_MAX, "phone": PHONE_MAX, "external_id": None, "system": None}  # name: max length
    # The reads block on the database, so they leave the event loop; a few threads are enough (one
    # process holds the GIL) and keep the connection pool from overflowing. Started on first use.
    _threads = ThreadPoolExecutor(max_workers=8, thread_name_prefix="lookup")

    def __init__(self, app: Any, reader: ScreenPopReader) -> None:
        self.app, self.reader = app, reader

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/lookup" and scope["method"] == "GET":
            body = await self._answer(scope)
            if body is not None:
                await fast_json(body)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _params(self, query: bytes) -> dict[str, str | None] | None:
        # decoded as Starlette decodes a query string, so both paths see the same values
        params: dict[str, str | None] = dict.fromkeys(self.PARAMS)
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            limit = self.PARAMS.get(name, 0)
            if limit == 0 or params[name] is not None or not value or (limit and len(value) > limit):
                return None
            params[name] = value
        return params

    async def _answer(self, scope: dict) -> dict[str, Any] | None:
        params = self._params(scope.get("query_string", b""))
        if params is None:
            return None
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k in (b"authorization", b"x-api-key")}
        who = keys.cached_principal(header_secret(headers))
        if who is None or not who.has("lookup"):
            return None
        try:
            kind, value, _ = parse_identifier(**params)
        except Problem:
            return None
        loop = asyncio.get_running_loop()
        try:
            got = await loop.run_in_executor(self._threads, self.reader.read, kind, value)
        except Exception:  # the route meets the same fault and answers it (logged, a problem document)
            return None
        if got is None or got[0] is None:
            return None
        best, other_ids, recent = got
        return lookup_body(best, other_ids, recent, kind, who.pii)


def _is_settings_store(engine: Engine) -> bool:
    from sqlalchemy.engine import make_url

    from omnisync.settings import get_settings

    url = get_settings().resolved_database_url
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return engine.url.render_as_string(hide_password=False) == make_url(url).render_as_string(hide_password=False)


def _safe_next(path: str) -> str:
    # only same-site paths under /360: an open redirect would turn the login link into a phishing tool;
    # no control characters: CR/LF in a Location header would be a header injection wherever it is
    # not encoded on the way out
    if (not (path == "/360" or path.startswith(("/360/", "/360?"))) or "//" in path or "\\" in path
            or any(c < " " or c == "\x7f" for c in path)):
        return "/360"
    return path
