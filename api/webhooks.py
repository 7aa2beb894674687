"""Signed webhook receiver: HubSpot v3, Zoom, Twilio and SendGrid.

``POST /webhooks/{vendor}`` does, in this order, and answers only at the end:

1. reads the raw body, refusing more than ``max_body`` bytes with 413 (before any parsing);
2. verifies the vendor's signature over the raw bytes and its timestamp against a replay window
   (default 300 s, past or future): anything missing, stale or wrong is 401 and nothing is stored;
3. parses the body into events; a verified body that is not what the vendor sends is 400 with a
   masked reason naming the event and field, and is dead-lettered (stage ``webhook``);
4. stores the events in ``webhook_event`` (:mod:`identity.webhook_intake`), deduplicated by the
   vendor's event id, and commits: a redelivery is answered 200 and not stored twice. A store that
   cannot be reached answers 503, so the vendor retries;
5. emits the Prefect event ``omnisync.webhook.received`` (resource ``omnisync.webhook.<vendor>``)
   that triggers the ``drain-webhooks`` deployment. Emitting never fails the request: if it is
   lost, the events wait in the table and the next drain (every ``omnichannel-sync`` run starts
   with one) takes them.

Signatures (shared/specs/README.md):

* HubSpot: ``X-HubSpot-Signature-v3`` = base64 HMAC-SHA256(client secret, method + URI + body +
  ``X-HubSpot-Request-Timestamp``), timestamp in ms.
* Zoom: ``x-zm-signature`` = ``v0=`` + hex HMAC-SHA256(secret token, ``v0:{x-zm-request-timestamp}:{body}``),
  timestamp in s. The ``endpoint.url_validation`` challenge is signed too; it is answered with
  ``{plainToken, encryptedToken}`` (hex HMAC-SHA256 of the token) and not stored.
* SendGrid: ECDSA P-256/SHA-256 over ``timestamp + body`` with the account's verification key,
  headers ``X-Twilio-Email-Event-Webhook-Signature`` / ``-Timestamp`` (s).
* Twilio: ``X-Twilio-Signature`` = base64 HMAC-SHA1(auth token, URL + each sorted form key and
  value). Twilio signs no timestamp, so there is no replay window: a replayed request is the same
  ``MessageSid`` and status, which the event store already holds, so it is acknowledged and
  changes nothing; a new message cannot be forged without the auth token. Serve it over HTTPS so
  a captured request cannot be read in the first place.

HubSpot and Twilio sign the URL they post to. Behind a proxy that URL is not what this process
sees: set ``public_url`` (``OMNISYNC_WEBHOOK_PUBLIC_URL``, e.g. ``https://hooks.example.com``) and
the path and query of the request are appended to it.

Secrets come from the same typed credentials as the flows (``HubSpotCredentials.client_secret``,
``ZoomCredentials.webhook_secret``, ``TwilioCredentials.auth_token``,
``SendGridCredentials.webhook_public_key``), loaded through ``omnisync.credentials`` (Prefect block,
``OMNISYNC_<SYSTEM>_*`` variables or the sandbox info file; blocks only when ``PREFECT_API_URL`` is
set) and re-read every minute. A vendor without one answers 503. Requests without the signature
headers are refused before any secret is looked up.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from connectors.hubspot import verify_webhook
from identity import webhook_intake as intake
from identity.store import run_in_transaction
from identity.webhook_intake import IncomingEvent
from omnisync.privacy import mask_text

log = logging.getLogger("omnisync.webhooks")

MAX_BODY = 1024 * 1024  # HubSpot posts at most 100 events, SendGrid batches stay well under this
REPLAY_WINDOW_S = 300
SECRET_FIELDS = {"hubspot": "client_secret", "zoom": "webhook_secret", "twilio": "auth_token",
                 "sendgrid": "webhook_public_key"}
_MAX_TS_MS = 4_102_444_800_000  # 2100-01-01: anything later is not a real event time
# Twilio reads the answer to an inbound message as TwiML: an empty <Response/> means "no reply"
# (anything else is logged as error 12300 in the account's debugger).
_DIGITS = re.compile(r"[0-9]{1,16}")
TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


class Rejected(Exception):
    """A request answered with ``status`` and a reason (already masked)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = mask_text(reason)


class Malformed(Rejected):
    def __init__(self, reason: str):
        super().__init__(400, reason)


# --- configuration -----------------------------------------------------------------------------

def emit_received(vendor: str, stored: int) -> None:
    """Tell Prefect that events are waiting (the ``drain-webhooks`` trigger)."""
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return  # no Prefect server to react: the scheduled omnichannel-sync drains the table
    emit_event(event="omnisync.webhook.received",
               resource={"prefect.resource.id": f"omnisync.webhook.{vendor}", "prefect.resource.name": vendor},
               payload={"vendor": vendor, "stored": stored})


class CredentialSecrets:
    """Webhook secrets from the flows' typed credentials, re-read every ``ttl`` seconds (rotation)."""

    def __init__(self, ttl: float = 60.0):
        self.ttl = ttl
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, vendor: str) -> str | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(vendor)
            if hit and now - hit[0] < self.ttl:
                return hit[1]
        # The receiver runs in the API process, which has no credentials of its own: it loads
        # them exactly as the flows do, so one block or one set of variables configures both.
        # Blocks only with a Prefect API: without one, reading a block boots a local Prefect
        # server in this process (~20 s), far past the vendors' answer deadlines (Zoom: 3 s).
        from prefect.settings import PREFECT_API_URL

        from omnisync.credentials import CredentialsMissing, load_credentials

        try:
            creds = load_credentials(vendor, use_blocks=bool(PREFECT_API_URL.value()))
            value = getattr(creds, SECRET_FIELDS[vendor], None)
        except CredentialsMissing:
            value = None
        secret = value.get_secret_value() if isinstance(value, SecretStr) else value
        with self._lock:
            self._cache[vendor] = (now, secret or None)
        return secret or None


@dataclass
class WebhookConfig:
    """What the receiver needs; override the ``webhook_config`` dependency to change it."""

    secrets: Callable[[str], str | None] = field(default_factory=CredentialSecrets)
    engine: Callable[[], Engine] | None = None  # default: the store from settings
    public_url: str | None = None
    max_body: int = MAX_BODY
    replay_window_s: int = REPLAY_WINDOW_S
    clock: Callable[[], float] = time.time
    emit: Callable[[str, int], None] = emit_received

    def get_engine(self) -> Engine:
        if self.engine is not None:
            return self.engine()
        from identity.store import get_engine

        return get_engine()


_default: WebhookConfig | None = None


def webhook_config() -> WebhookConfig:
    global _default
    if _default is None:
        _default = WebhookConfig(public_url=os.environ.get("OMNISYNC_WEBHOOK_PUBLIC_URL") or None)
    return _default


# --- helpers -----------------------------------------------------------------------------------

async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Rejected(413, f"body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejected(413, f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _signed_url(request: Request, cfg: WebhookConfig) -> str:
    if not cfg.public_url:
        return str(request.url)
    query = request.url.query
    return cfg.public_url.rstrip("/") + request.url.path + (f"?{query}" if query else "")


def _fresh(seconds: float, cfg: WebhookConfig) -> None:
    if abs(cfg.clock() - seconds) > cfg.replay_window_s:
        raise Rejected(401, f"timestamp outside the {cfg.replay_window_s} s replay window")


def _header_int(request: Request, name: str) -> int:
    value = request.headers.get(name)
    if not value:
        raise Rejected(401, f"missing {name} header")
    if not _DIGITS.fullmatch(value):  # str.isdigit() would let "²" through to int()
        raise Rejected(401, f"{name} is not a number")
    return int(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:120]
        raise Malformed(f"body is not valid JSON ({reason})") from None


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in obj or obj[name] is None:
        raise Malformed(f"{where}: field {name} is missing")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise Malformed(f"{where}: field {name} has the wrong type ({type(value).__name__})")
    if isinstance(value, str) and not value.strip():
        raise Malformed(f"{where}: field {name} is empty")
    return value


def _epoch(value: Any, where: str, name: str, *, ms: bool) -> datetime:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise Malformed(f"{where}: field {name} is not a timestamp") from None
    scaled = n if ms else n * 1000
    if not 0 < scaled < _MAX_TS_MS:
        raise Malformed(f"{where}: field {name} is out of range")
    return datetime.fromtimestamp(scaled / 1000, tz=timezone.utc)


def _event_id(value: Any, where: str, name: str) -> str:
    text = str(value)
    if len(text) > 160:
        raise Malformed(f"{where}: field {name} is longer than 160 characters")
    return text


def _list_of_objects(data: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(data, list):
        raise Malformed(f"body must be a JSON array of {what}, got {type(data).__name__}")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise Malformed(f"event {i}: must be an object, got {type(item).__name__}")
    return data


# --- vendors -----------------------------------------------------------------------------------

def _hmac_ok(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())


def hubspot(request: Request, body: bytes, secret: str, cfg: WebhookConfig) -> list[IncomingEvent]:
    signature = request.headers.get("x-hubspot-signature-v3")
    if not signature:
        raise Rejected(401, "missing X-HubSpot-Signature-v3 header")
    ts = _header_int(request, "x-hubspot-request-timestamp")
    _fresh(ts / 1000, cfg)
    if not verify_webhook(secret, "POST", _signed_url(request, cfg), body, signature, str(ts),
                          now_ms=int(cfg.clock() * 1000), max_age_s=cfg.replay_window_s):
        raise Rejected(401, "X-HubSpot-Signature-v3 does not match")
    events = []
    for i, e in enumerate(_list_of_objects(_json(body), "events")):
        where = f"event {i}"
        raw_id = _field(e, "eventId", (int, str), where)
        if isinstance(raw_id, str) and not _DIGITS.fullmatch(raw_id):
            raise Malformed(f"{where}: field eventId is not a number")
        where = f"event {raw_id}"
        kind = _field(e, "subscriptionType", str, where)
        _field(e, "objectId", (int, str), where)
        at = _epoch(_field(e, "occurredAt", (int, str), where), where, "occurredAt", ms=True)
        events.append(IncomingEvent(_event_id(raw_id, where, "eventId"), kind, at, e))
    return events


def zoom(request: Request, body: bytes, secret: str, cfg: WebhookConfig) -> list[IncomingEvent] | dict[str, str]:
    signature = request.headers.get("x-zm-signature")
    if not signature:
        raise Rejected(401, "missing x-zm-signature header")
    ts = _header_int(request, "x-zm-request-timestamp")
    _fresh(ts, cfg)
    digest = hmac.new(secret.encode(), b"v0:" + str(ts).encode() + b":" + body, hashlib.sha256).hexdigest()
    if not _hmac_ok("v0=" + digest, signature):
        raise Rejected(401, "x-zm-signature does not match")
    data = _json(body)
    if not isinstance(data, dict):
        raise Malformed(f"body must be a JSON object, got {type(data).__name__}")
    kind = _field(data, "event", str, "event")
    payload = _field(data, "payload", dict, f"event {kind}")
    if kind == "endpoint.url_validation":
        token = _field(payload, "plainToken", str, "event endpoint.url_validation payload")
        return {"plainToken": token,
                "encryptedToken": hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()}
    at = _epoch(_field(data, "event_ts", (int, str), f"event {kind}"), f"event {kind}", "event_ts", ms=True)
    from omnisync.records import fingerprint

    # Zoom sends no event id; a redelivery repeats the same signed event, so its fingerprint is one.
    return [IncomingEvent(f"{kind}:{fingerprint(data)}"[:160], kind, at, data)]


def twilio(request: Request, body: bytes, secret: str, cfg: WebhookConfig) -> list[IncomingEvent]:
    signature = request.headers.get("x-twilio-signature")
    if not signature:
        raise Rejected(401, "missing X-Twilio-Signature header")
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise Rejected(400, "body is not form-encoded") from None
    signed = _signed_url(request, cfg) + "".join(k + v for k, v in sorted(pairs))
    expected = base64.b64encode(hmac.new(secret.encode(), signed.encode(), hashlib.sha1).digest()).decode()
    if not _hmac_ok(expected, signature):
        raise Rejected(401, "X-Twilio-Signature does not match")
    form = dict(pairs)
    sid = _field(form, "MessageSid", str, "message")
    where = f"message {_event_id(sid, 'message', 'MessageSid')}"
    status = str(form.get("MessageStatus") or form.get("SmsStatus") or "received").lower()
    if status == "received":
        _field(form, "From", str, where)
        _field(form, "To", str, where)
        if "Body" not in form:
            raise Malformed(f"{where}: field Body is missing")
    # Twilio's form has no time of its own: the event happened when Twilio posted it.
    at = datetime.fromtimestamp(cfg.clock(), tz=timezone.utc)
    return [IncomingEvent(f"{sid}:{status}"[:160], f"message.{status}"[:64], at, form)]


_keys: dict[str, Any] = {}


def _public_key(material: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    key = _keys.get(material)
    if key is None:
        try:
            text = material.strip()
            key = (serialization.load_pem_public_key(text.encode()) if text.startswith("-----")
                   else serialization.load_der_public_key(base64.b64decode(text)))
        except (ValueError, binascii.Error, TypeError):
            raise Rejected(503, "the SendGrid webhook verification key is not a valid public key") from None
        _keys[material] = key
    return key


def sendgrid(request: Request, body: bytes, secret: str, cfg: WebhookConfig) -> list[IncomingEvent]:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    signature = request.headers.get("x-twilio-email-event-webhook-signature")
    if not signature:
        raise Rejected(401, "missing X-Twilio-Email-Event-Webhook-Signature header")
    ts = request.headers.get("x-twilio-email-event-webhook-timestamp", "")
    _fresh(_header_int(request, "x-twilio-email-event-webhook-timestamp"), cfg)
    try:
        _public_key(secret).verify(base64.b64decode(signature, validate=True), ts.encode() + body,
                                   ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        raise Rejected(401, "X-Twilio-Email-Event-Webhook-Signature does not match") from None
    events = []
    for i, e in enumerate(_list_of_objects(_json(body), "events")):
        where = f"event {i}"
        sg_id = _event_id(_field(e, "sg_event_id", str, where), where, "sg_event_id")
        where = f"event {sg_id}"
        kind = _field(e, "event", str, where)
        at = _epoch(_field(e, "timestamp", (int, str), where), where, "timestamp", ms=False)
        events.append(IncomingEvent(sg_id, kind, at, e))
    return events


SIGNATURE_HEADERS = {"hubspot": ("X-HubSpot-Signature-v3", "X-HubSpot-Request-Timestamp"),
                     "zoom": ("x-zm-signature", "x-zm-request-timestamp"),
                     "twilio": ("X-Twilio-Signature",),
                     "sendgrid": ("X-Twilio-Email-Event-Webhook-Signature", "X-Twilio-Email-Event-Webhook-Timestamp")}
VERIFIERS: dict[str, Callable[..., Any]] = {"hubspot": hubspot, "zoom": zoom, "twilio": twilio, "sendgrid": sendgrid}


# --- the route ---------------------------------------------------------------------------------

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


def _store(cfg: WebhookConfig, vendor: str, events: list[IncomingEvent]) -> intake.StoreResult:
    return run_in_transaction(lambda s: intake.store_events(s, vendor, events), cfg.get_engine())


def _dead_letter(cfg: WebhookConfig, vendor: str, reason: str, body: bytes) -> None:
    try:
        run_in_transaction(lambda s: intake.reject(s, vendor, reason, body), cfg.get_engine())
    except SQLAlchemyError:
        log.exception("webhook %s: could not dead-letter a rejected body", vendor)


async def _receive(vendor: str, request: Request, cfg: WebhookConfig) -> JSONResponse:
    verified = False
    body = b""
    try:
        body = await _read_body(request, cfg.max_body)
        for name in SIGNATURE_HEADERS[vendor]:  # refused before any secret is looked up
            if not request.headers.get(name):
                raise Rejected(401, f"missing {name} header")
        secret = await run_in_threadpool(cfg.secrets, vendor)
        if not secret:
            raise Rejected(503, f"no {vendor} webhook secret is configured ({SECRET_FIELDS[vendor]})")
        verifier = VERIFIERS[vendor]
        try:
            parsed = verifier(request, body, secret, cfg)
        except Malformed:
            verified = True  # Malformed is raised only after the signature held
            raise
        if isinstance(parsed, dict):  # Zoom's URL validation challenge
            return JSONResponse(parsed)
        try:
            result = await run_in_threadpool(_store, cfg, vendor, parsed)
        except SQLAlchemyError:
            log.exception("webhook %s: store unavailable", vendor)
            raise Rejected(503, "the event store is unavailable; retry later") from None
    except Rejected as e:
        log.info("webhook %s rejected (%s): %s", vendor, e.status, e.reason)
        if verified and e.status == 400:
            await run_in_threadpool(_dead_letter, cfg, vendor, e.reason, body)
        return JSONResponse({"error": e.reason, "vendor": vendor}, status_code=e.status)
    if result.stored:
        try:
            cfg.emit(vendor, result.stored)
        except Exception:  # the events are stored: the next drain takes them without the trigger
            log.warning("webhook %s: could not emit omnisync.webhook.received", vendor, exc_info=True)
    outcome = {"vendor": vendor, "received": len(parsed), "stored": result.stored, "duplicates": result.duplicates}
    if vendor == "twilio":
        return Response(TWIML_EMPTY, media_type="text/xml",
                        headers={f"X-Omnisync-{k.title()}": str(v) for k, v in outcome.items()})
    return JSONResponse(outcome)


@router.post("/hubspot", summary="HubSpot webhooks v3 (signed)")
async def receive_hubspot(request: Request, cfg: WebhookConfig = Depends(webhook_config)) -> JSONResponse:
    return await _receive("hubspot", request, cfg)


@router.post("/zoom", summary="Zoom webhooks (x-zm-signature v0, URL validation)")
async def receive_zoom(request: Request, cfg: WebhookConfig = Depends(webhook_config)) -> JSONResponse:
    return await _receive("zoom", request, cfg)


@router.post("/twilio", summary="Twilio inbound SMS and status callbacks (X-Twilio-Signature)")
async def receive_twilio(request: Request, cfg: WebhookConfig = Depends(webhook_config)) -> JSONResponse:
    return await _receive("twilio", request, cfg)


@router.post("/sendgrid", summary="SendGrid Event Webhook (ECDSA signed)")
async def receive_sendgrid(request: Request, cfg: WebhookConfig = Depends(webhook_config)) -> JSONResponse:
    return await _receive("sendgrid", request, cfg)
