"""Segment: golden profiles out as ``identify``, timeline out as ``track``, profiles in by lookup.

Writes go through the Tracking API ``POST /v1/batch`` (Basic ``writeKey:``), packed up to 500 KB a
batch; a message over 32 KB, or without ``userId``/``anonymousId`` (or ``event`` for a track),
fails on its own before sending, because Segment answers 200 and silently drops malformed
messages. ``track`` messageIds are the interaction keys, so a re-send is deduplicated by Segment.

Reading: the Profile API has no "list users" call, only lookups by an external id
(``user_id:web-1``, ``email:a@x.com``, ``anonymous_id:...``). So ``profiles`` is the stream of the
profiles behind a set of lookups: :meth:`SegmentConnector.fetch_profiles` for a given list (what
enrichment uses), or :meth:`read` over the ``lookups`` the connector was built with. Each
profile costs one traits and one external_ids call (more when their cursor pages); its record
id is the profile's ``user_id`` (else ``anonymous_id``). ``read`` walks the lookups in a stable
hashed order and its cursor is the hash of the last lookup done, so a resumed read continues
where it stopped without storing any identifier.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import httpx

from connectors.base import (
    Connector,
    Cursor,
    NotFoundError,
    OutboundRecord,
    Page,
    SourceRecord,
    StreamSpec,
    WriteOutcome,
    WriteStatus,
)
from connectors.credentials import SegmentCredentials
from connectors.errors import AuthError, BadRequestError
from connectors.http import HttpLayer, RateBudget, RetryPolicy, TokenPaging, paginate, parse_retry_after
from omnisync.privacy import mask_text

MAX_MESSAGE = 32 * 1024
MAX_BATCH = 500 * 1024
_ENVELOPE = 64  # bytes of '{"batch":[...],"sentAt":"..."}' around the messages
ID_ORDER = ("user_id", "anonymous_id")

Lookup = tuple[str, str]


def _id_key(kind: str, value: str) -> Lookup:
    # Segment stores an address as it was sent; a lookup by any case of it finds the same profile
    return kind, value.casefold() if kind == "email" else value


def _error_code(resp: httpx.Response) -> str | None:
    # Segment has no daily quota code; a 429 asking to wait longer than any retry budget is one.
    wait = parse_retry_after(resp.headers.get("Retry-After"))
    if resp.status_code == 429 and wait is not None and wait > 600:
        return "DAILY"
    return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clean(value: Any) -> Any:
    """Drop None leaves: an absent value is not a fact to send (a null trait would unset it)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None and _clean(v) != {}}
    return value


def _size(msg: dict[str, Any]) -> int:
    return len(json.dumps(msg, separators=(",", ":"), default=str).encode())


def _largest_field(msg: dict[str, Any], prefix: str = "") -> str:
    best, best_len = prefix.rstrip(".") or "<message>", -1
    for k, v in msg.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            cand = _largest_field(v, path + ".")
            size = len(json.dumps(v, default=str))
        else:
            cand, size = path, len(json.dumps(v, default=str))
        if size > best_len:
            best, best_len = cand, size
    return best


def _lookup_hash(lookup: Lookup) -> str:
    return hashlib.sha256(f"{lookup[0]}:{lookup[1]}".encode()).hexdigest()[:24]


class SegmentConnector(Connector):
    system = "segment"
    streams = {
        "identify": StreamSpec("identify", "profile", "identify", write_batch=10_000, incremental=False),
        "track": StreamSpec("track", "interaction", "track", write_batch=10_000, incremental=False),
        "profiles": StreamSpec("profiles", "profile", "profile_api", page_size=50, incremental=False),
    }

    def __init__(self, credentials: SegmentCredentials, *, budget: RateBudget | None = None,
                 policy: RetryPolicy | None = None, timeout: float = 30.0,
                 lookups: Iterable[Lookup] | Callable[[], Iterable[Lookup]] | None = None,
                 page_size: int | None = None, lookup_concurrency: int = 4):
        self.credentials = credentials
        self.lookup_concurrency = max(1, lookup_concurrency)
        self.lookups = lookups
        self.page_size = page_size or self.streams["profiles"].page_size
        self.tracking = HttpLayer(system=self.system, base_url=credentials.tracking_url.rstrip("/"),
                                  auth=httpx.BasicAuth(credentials.write_key.get_secret_value(), ""),
                                  timeout=timeout, budget=budget, policy=policy, error_code=_error_code)
        self.profiles: HttpLayer | None = None
        if credentials.space_id and credentials.profile_token:
            self.profiles = HttpLayer(
                system=self.system, timeout=timeout, budget=budget, policy=policy, error_code=_error_code,
                base_url=f"{credentials.profile_url.rstrip('/')}/v1/spaces/{credentials.space_id}/collections/users/profiles",
                auth=httpx.BasicAuth(credentials.profile_token.get_secret_value(), ""))

        self.public: HttpLayer | None = None
        if credentials.public_api_token:
            self.public = HttpLayer(
                system=self.system, timeout=timeout, budget=budget, policy=policy,
                base_url=credentials.public_api_url.rstrip("/"),
                headers={"Authorization": f"Bearer {credentials.public_api_token.get_secret_value()}"})

    @property
    def api_calls(self) -> int:
        return sum(layer.stats.total for layer in (self.tracking, self.profiles, self.public) if layer)

    def close(self) -> None:
        for layer in (self.tracking, self.profiles, self.public):
            if layer:
                layer.close()

    def check(self) -> None:
        self.tracking.request("POST", "/v1/batch", json={"batch": [], "sentAt": _now()})
        if self.profiles:
            try:
                self.profiles.request("GET", "/user_id:omnisync-connection-check/traits", params={"limit": 1},
                                      endpoint="/profiles/{id}/traits")
            except NotFoundError:
                pass  # authenticated; that user simply does not exist

    # --- reading -----------------------------------------------------------------------------
    def _profile_api(self) -> HttpLayer:
        if self.profiles is None:
            raise AuthError("the Profile API needs space_id and profile_token in the Segment credentials",
                            system=self.system)
        return self.profiles

    def _list(self, ref: str, kind: str, limit: int) -> Iterator[dict[str, Any]]:
        api = self._profile_api()

        def fetch(_url, params):
            return api.json("GET", f"/{ref}/{kind}", params=params, endpoint=f"/profiles/{{id}}/{kind}")

        yield from paginate(fetch, TokenPaging(token_field="cursor.next", token_param="next"), {"limit": limit})

    def _fetch_one(self, lookup: Lookup) -> SourceRecord | None:
        ref = quote(f"{lookup[0]}:{lookup[1]}", safe=":@")
        try:
            traits: dict[str, Any] = {}
            for body in self._list(ref, "traits", 200):
                traits.update(body.get("traits") or {})
            ids = [row for body in self._list(ref, "external_ids", 100) for row in body.get("data") or []]
        except NotFoundError:
            return None
        by_type = {}
        for row in ids:
            by_type.setdefault(row.get("type"), str(row.get("id")))
        ext = next((by_type[t] for t in ID_ORDER if t in by_type), None)
        if ext is None:  # a profile known only by email or a custom id: name it by its oldest id
            first = min(ids, key=lambda r: str(r.get("created_at"))) if ids else {"type": lookup[0], "id": lookup[1]}
            ext = f"{first['type']}:{first['id']}"
        stamps = [str(r["created_at"]) for r in ids if r.get("created_at")]
        modified = (datetime.fromisoformat(max(stamps).replace("Z", "+00:00")) if stamps
                    else datetime(1970, 1, 1, tzinfo=timezone.utc))
        return SourceRecord(system=self.system, stream="profiles", external_id=ext, modified_at=modified,
                            payload={"traits": traits, "external_ids": ids})

    def fetch_profiles(self, lookups: Iterable[Lookup]) -> list[SourceRecord]:
        """The profiles behind ``lookups`` (``("email", "a@x.com")``, ``("user_id", "web-1")``...).

        Unknown identifiers are skipped; a profile reached by several lookups is returned once, and
        an identifier a profile already fetched lists among its external ids is not looked up again
        (the Profile API answers one identifier per call, two calls a profile, and is rate-limited).
        Lookups go out ``lookup_concurrency`` at a time, in order, within the shared rate budget:
        one at a time, enrichment is bound by the API's latency, not its limit.
        """
        todo = list(dict.fromkeys(lookups))
        out: dict[str, SourceRecord] = {}
        known: set[Lookup] = set()
        width = self.lookup_concurrency
        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="segment-lookup") as pool:
            for i in range(0, len(todo), width):
                wave = [lk for lk in todo[i:i + width] if _id_key(*lk) not in known]
                for rec in pool.map(self._fetch_one, wave):
                    if rec is not None:
                        out.setdefault(rec.external_id, rec)
                        known.update(_id_key(str(r.get("type")), str(r.get("id"))) for r in rec.payload["external_ids"])
        return list(out.values())

    def read(self, stream: str, cursor: Cursor | None = None, *, until: datetime | None = None) -> Iterator[Page]:
        if self.stream(stream).name != "profiles":
            raise ValueError(f"segment/{stream} is write-only (Tracking API); read profiles instead")
        if self.lookups is None:
            raise ValueError("Segment's Profile API cannot list users: build the connector with lookups=[(type, id)...] "
                             "or call fetch_profiles()")
        source = self.lookups() if callable(self.lookups) else self.lookups
        todo = sorted((_lookup_hash(lk), lk) for lk in dict.fromkeys(source))
        after = cursor.token if cursor and cursor.token else ""
        todo = [(h, lk) for h, lk in todo if h > after]
        seen: set[str] = set()
        for i in range(0, len(todo), self.page_size):
            chunk = todo[i:i + self.page_size]
            records = []
            for _, lk in chunk:
                rec = self._fetch_one(lk)
                if rec is not None and rec.external_id not in seen:
                    seen.add(rec.external_id)
                    records.append(rec)
            yield Page(records, Cursor(token=chunk[-1][0]))

    # --- erasure -----------------------------------------------------------------------------
    MAX_SUBJECTS = 5000  # subjectIds per regulation request (Segment Public API)

    def erase(self, stream: str, ids: Sequence[str]) -> list[WriteOutcome]:
        """Delete a person's Segment data and keep it from coming back: a ``SUPPRESS_WITH_DELETE``
        regulation on their user ids (Public API ``POST /regulations``), up to 5,000 ids a call.

        Segment deletes the profiles and their events, then drops any later message carrying a
        suppressed user id, so a client still sending for the person cannot re-create them.
        (Regulations address user ids; a profile known only by an anonymous id is not reachable.)
        """
        self.stream(stream)
        if self.public is None:
            raise AuthError("Segment erasure needs a Public API token (credentials.public_api_token) to create "
                            "regulations", system=self.system)
        users = list(dict.fromkeys(ids))
        out: dict[str, WriteOutcome] = {}
        for i in range(0, len(users), self.MAX_SUBJECTS):
            part = users[i:i + self.MAX_SUBJECTS]
            try:
                body = self.public.json("POST", "/regulations", json={
                    "regulationType": "SUPPRESS_WITH_DELETE", "subjectType": "USER_ID", "subjectIds": part})
                ref = ((body or {}).get("data") or {}).get("regulateId")
                for u in part:
                    out[u] = WriteOutcome(u, WriteStatus.deleted, external_id=ref or u)
            except BadRequestError as e:
                for u in part:
                    out[u] = WriteOutcome(u, WriteStatus.failed, external_id=u, retryable=False,
                                          error=f"{stream} record {u}: regulation refused: {mask_text(str(e))[:200]}")
        return [out[i] for i in ids]

    # --- writing -----------------------------------------------------------------------------
    def write(self, stream: str, records: Sequence[OutboundRecord]) -> list[WriteOutcome]:
        if stream not in ("identify", "track"):
            return super().write(stream, records)
        outcomes: dict[int, WriteOutcome] = {}
        ready: list[tuple[int, OutboundRecord, dict[str, Any], int]] = []
        for i, rec in enumerate(records):
            msg = self._message(stream, rec)
            problem = self._problem(stream, rec, msg)
            if problem:
                outcomes[i] = WriteOutcome(rec.key, WriteStatus.failed, error=problem, retryable=False)
            else:
                ready.append((i, rec, msg, _size(msg)))
        batch: list[tuple[int, OutboundRecord, dict[str, Any], int]] = []
        used = _ENVELOPE
        for item in ready:
            if batch and used + item[3] + 1 > MAX_BATCH:
                outcomes.update(self._send(stream, batch))
                batch, used = [], _ENVELOPE
            batch.append(item)
            used += item[3] + 1
        if batch:
            outcomes.update(self._send(stream, batch))
        return [outcomes[i] for i in range(len(records))]

    def _message(self, stream: str, rec: OutboundRecord) -> dict[str, Any]:
        p = _clean(dict(rec.payload))
        msg: dict[str, Any] = {"type": stream}
        user_id = p.pop("userId", None) or rec.match.get("userId")
        if user_id:
            msg["userId"] = str(user_id)
        if p.get("anonymousId"):
            msg["anonymousId"] = str(p.pop("anonymousId"))
        external = p.pop("externalIds", None) or {}
        context = p.pop("context", None) or {}
        if external:
            context["externalIds"] = [{"id": str(v), "type": k, "collection": "users", "encoding": "none"}
                                      for k, v in sorted(external.items())]
        if context:
            msg["context"] = context
        if stream == "identify":
            msg["traits"] = p.pop("traits", None) or {}
            # A fresh id per write: an identify restating older traits (A, B, then A again) must not
            # be taken for a duplicate. Retries of one call resend the same body, hence the same id.
            msg["messageId"] = f"identify-{uuid.uuid4()}"
        else:
            msg["event"] = p.pop("event", None)
            msg["properties"] = p.pop("properties", None) or {}
            msg["messageId"] = str(p.pop("messageId", None) or rec.key)
        msg["timestamp"] = p.pop("timestamp", None) or _now()
        return msg

    def _problem(self, stream: str, rec: OutboundRecord, msg: dict[str, Any]) -> str | None:
        where = f"segment/{stream} record {mask_text(rec.key)}"
        if "userId" not in msg and "anonymousId" not in msg:
            return (f"{where}: field userId is missing; mappings/segment/{stream}.yaml must map golden_id "
                    "to userId")
        if stream == "track" and not msg.get("event"):
            return f"{where}: field event is missing; map the interaction channel to event in mappings/segment/track.yaml"
        size = _size(msg)
        if size > MAX_MESSAGE:
            return (f"{where}: message is {size} bytes, over Segment's 32 KB limit; shorten its largest field "
                    f"({_largest_field(msg)}) in mappings/segment/{stream}.yaml")
        return None

    def _send(self, stream: str, batch: list[tuple[int, OutboundRecord, dict[str, Any], int]]) -> dict[int, WriteOutcome]:
        body = {"batch": [m for _, _, m, _ in batch], "sentAt": _now()}
        try:
            self.tracking.request("POST", "/v1/batch", json=body)
        except BadRequestError as e:
            return {i: WriteOutcome(rec.key, WriteStatus.failed, retryable=False,
                                    error=f"segment/{stream} record {mask_text(rec.key)}: the batch was rejected "
                                          f"(HTTP {e.status}); check message sizes and JSON")
                    for i, rec, _, _ in batch}
        status = WriteStatus.updated if stream == "identify" else WriteStatus.created
        return {i: WriteOutcome(rec.key, status, external_id=m.get("userId") if stream == "identify" else m["messageId"])
                for i, rec, m, _ in batch}
