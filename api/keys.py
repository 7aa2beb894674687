"""API keys: created and revoked by the CLI, stored as SHA-256 hashes, checked on every request.

A key is ``osk_`` followed by 43 URL-safe random characters (256 bits). Only its SHA-256 and a
short prefix (to tell keys apart in listings) are stored, so the database never holds a usable key
and the secret is shown exactly once, by :func:`create_key`. Scopes:

* ``lookup``: the screen-pop lookup by phone, email or external id;
* ``profile:read``: profiles, timelines, the change feed, analytics and the Customer 360 page;
* ``pii:read``: without it, every response is masked (``omnisync.privacy``);
* ``admin``: key management over the API.

Key creation and revocation are recorded in the audit trail (by name, never the secret).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from identity.store import ApiKey, AuditEntry, get_engine, session_scope
from omnisync.records import utcnow

SCOPES = ("lookup", "profile:read", "pii:read", "admin")
KEY_PREFIX = "osk_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
# A valid key is exactly this shape; anything else is rejected before touching the database.
_KEY_RE = re.compile(r"^osk_[A-Za-z0-9_-]{43}$")

# Keys are checked on every request, and the screen pop must answer in milliseconds: a verified key
# is remembered for a few seconds. Revocation in this process clears the cache at once; a revocation
# from another process (the CLI) takes effect within CACHE_SECONDS.
CACHE_SECONDS = 5.0


class KeyManagementError(ValueError):
    """A key management request that cannot be honoured (unknown scope, bad or duplicate name)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name and scopes (never the secret)."""

    name: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes and scope != "pii:read"

    @property
    def pii(self) -> bool:
        return "pii:read" in self.scopes


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_scopes(scopes: list[str]) -> list[str]:
    cleaned = [s.strip() for s in scopes if s and s.strip()]
    unknown = sorted(set(cleaned) - set(SCOPES))
    if unknown:
        raise KeyManagementError(f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(SCOPES)}")
    if not cleaned:
        raise KeyManagementError(f"a key needs at least one scope ({', '.join(SCOPES)})")
    return sorted(set(cleaned), key=SCOPES.index)


def create_key(name: str, scopes: list[str], *, engine: Engine | None = None) -> str:
    """Create a key named ``name`` with ``scopes``; return the secret (shown once, stored hashed)."""
    if not name or not _NAME_RE.match(name):
        raise KeyManagementError("key name must be 1-64 characters: letters, digits, '_', '.', ':' or '-'")
    wanted = _check_scopes(scopes)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    with session_scope(engine or get_engine()) as s:
        if s.exec(select(ApiKey).where(ApiKey.name == name)).first() is not None:
            raise KeyManagementError(f"a key named {name!r} already exists; revoke it or choose another name")
        s.add(ApiKey(name=name, key_hash=hash_key(secret), prefix=secret[:12], scopes=" ".join(wanted)))
        s.add(AuditEntry(action="api_key.create", subject=name, detail={"scopes": wanted}))
    return secret


def list_keys(*, engine: Engine | None = None) -> list[dict[str, Any]]:
    """Every key (revoked ones included) without its hash: name, prefix, scopes, dates."""
    with session_scope(engine or get_engine()) as s:
        rows = s.exec(select(ApiKey).order_by(ApiKey.name)).all()
        return [{"name": k.name, "prefix": k.prefix, "scopes": k.scopes.split(), "created_at": k.created_at,
                 "revoked_at": k.revoked_at, "active": k.revoked_at is None} for k in rows]


def revoke_key(name: str, *, engine: Engine | None = None) -> None:
    """Revoke the key named ``name`` (idempotent); raise :class:`KeyManagementError` when there is none."""
    with session_scope(engine or get_engine()) as s:
        key = s.exec(select(ApiKey).where(ApiKey.name == name)).first()
        if key is None:
            raise KeyManagementError(f"no key named {name!r}")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            s.add(key)
            s.add(AuditEntry(action="api_key.revoke", subject=name, detail={}))
    clear_cache()


_cache: dict[str, tuple[float, Principal]] = {}
_cache_lock = threading.Lock()


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def authenticate(session: Session, secret: str | None) -> Principal | None:
    """The principal for ``secret``, or None when it is missing, malformed, unknown or revoked."""
    if not secret or not _KEY_RE.match(secret):
        return None
    digest = hash_key(secret)
    hit = _cached(digest)
    if hit is not None:
        return hit
    now = time.monotonic()
    row = session.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first()
    # compare_digest keeps the final check constant-time even though the lookup is by hash
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
        with _cache_lock:
            _cache.pop(digest, None)
        return None
    principal = Principal(name=row.name, scopes=frozenset(row.scopes.split()))
    with _cache_lock:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[digest] = (now, principal)
    return principal


def cached_principal(secret: str | None) -> Principal | None:
    """The principal for ``secret`` if it was verified less than CACHE_SECONDS ago, else None (which
    says nothing about the key: :func:`authenticate` decides)."""
    if not secret or not _KEY_RE.match(secret):
        return None
    return _cached(hash_key(secret))


def _cached(digest: str) -> Principal | None:
    with _cache_lock:
        hit = _cache.get(digest)
    return hit[1] if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS else None
