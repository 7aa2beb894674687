"""The records that cross the boundary between connectors and the rest of omnisync.

Connectors produce :class:`SourceRecord` pages and accept :class:`OutboundRecord` batches; they know
nothing of the canonical model. ``mappings`` turns payloads into canonical objects and back. These
types live in the core package so that connectors and mappings never import each other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def fingerprint(payload: Any) -> str:
    """A stable hash of a JSON-able payload: key order and whitespace do not matter."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class SourceRecord(BaseModel):
    """One vendor record as read, untouched except for the envelope fields."""

    model_config = ConfigDict(frozen=True)

    system: str
    stream: str
    external_id: str
    modified_at: datetime
    deleted: bool = False
    payload: dict[str, Any]
    merged_into: str | None = None  # survivor id when the vendor merged this record away

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.system, self.stream, self.external_id)


class Cursor(BaseModel):
    """Compound high-water mark ``(modified_at, last_id)`` of one stream.

    ``modified_at`` alone is not unique (Salesforce SystemModstamp, HubSpot lastmodifieddate), so
    the id breaks ties; reads restart ``overlap`` before the mark and the store deduplicates by
    ``(system, external_id, modified_at)``, so records sharing a timestamp are never skipped.
    Vendors with opaque cursors (page tokens) keep them in ``token``.
    """

    modified_at: datetime | None = None
    last_id: str | None = None
    token: str | None = None

    def read_from(self, overlap: timedelta) -> datetime | None:
        if self.modified_at is None:
            return None
        return as_utc(self.modified_at) - overlap

    def advance(self, records: list[SourceRecord]) -> "Cursor":
        """The mark after ``records`` (never moves backwards)."""
        best = (as_utc(self.modified_at), self.last_id or "") if self.modified_at else None
        for r in records:
            cand = (as_utc(r.modified_at), r.external_id)
            if best is None or cand > best:
                best = cand
        if best is None:
            return self
        return Cursor(modified_at=best[0], last_id=best[1], token=self.token)


@dataclass(slots=True)
class Page:
    """A batch of records read from one stream and the cursor to store once they are durable."""

    records: list[SourceRecord]
    cursor: Cursor


@dataclass(slots=True)
class OutboundRecord:
    """A write in the target vendor's terms.

    ``key`` is omnisync's own handle (the golden id or interaction id) so every outcome can be
    tied back to the exact record; ``external_id`` is the vendor id when known; ``match`` names the
    unique property used for upsert (``{"email": "a@x.com"}``) when it is not.
    """

    key: str
    payload: dict[str, Any]
    external_id: str | None = None
    match: dict[str, str] = field(default_factory=dict)
    associations: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.payload)


class WriteStatus(str, Enum):
    created = "created"
    updated = "updated"
    unchanged = "unchanged"
    deleted = "deleted"
    failed = "failed"


@dataclass(slots=True)
class WriteOutcome:
    key: str
    status: WriteStatus
    external_id: str | None = None
    error: str | None = None
    retryable: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not WriteStatus.failed
