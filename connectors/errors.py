"""One error classification table for every vendor, with messages that say what to do.

Connectors never decide ad hoc whether to retry: an HTTP status (plus a vendor error code when
the vendor has one) is looked up in :data:`CLASSIFICATION`, which yields the error class to raise.
The retry layer retries :class:`TransientError` (and its subclass :class:`RateLimitedError`,
after the wait the vendor asked for); everything else fails fast.
"""

from __future__ import annotations

from datetime import datetime


class ConnectorError(Exception):
    """Base class. ``action`` tells the operator what to do about it."""

    retryable = False
    action = "See the message; fix the cause and re-run."

    def __init__(self, message: str, *, system: str = "", status: int | None = None,
                 code: str | None = None, action: str | None = None):
        self.system = system
        self.status = status
        self.code = code
        if action:
            self.action = action
        prefix = f"[{system}] " if system else ""
        suffix = f" (HTTP {status}{', ' + code if code else ''})" if status else ""
        super().__init__(f"{prefix}{message}{suffix}. {self.action}")


class TransientError(ConnectorError):
    retryable = True
    action = "Transient vendor fault: retried automatically; if it persists, check the vendor's status page."


class RateLimitedError(TransientError):
    action = "Rate limited: omnisync waits as the vendor asks and retries; lower concurrency if this recurs."

    def __init__(self, message: str, *, retry_after: float | None = None, **kw):
        self.retry_after = retry_after
        super().__init__(message, **kw)


class QuotaExhaustedError(ConnectorError):
    """A daily/monthly quota is spent: stop at the last checkpoint and resume after ``resume_at``."""

    action = "Daily API quota exhausted: the sync stopped at its last checkpoint; re-run after the quota resets."

    def __init__(self, message: str, *, resume_at: datetime | None = None, **kw):
        self.resume_at = resume_at
        super().__init__(message, **kw)


class AuthError(ConnectorError):
    action = "Check the credentials block for this system (token expired, revoked or missing scopes)."


class BadRequestError(ConnectorError):
    action = "The request was rejected as invalid: check the mapping for the fields named above."


class NotFoundError(ConnectorError):
    action = "The record or endpoint does not exist: check the id, or whether it was deleted or merged."


class ConflictError(ConnectorError):
    action = "The vendor reports a conflict (duplicate or concurrent edit): the record is dead-lettered for review."


class PaginationLoopError(ConnectorError):
    action = "The vendor returned a page cursor already seen: stopped to avoid an endless loop; report this."


# status -> error class. Vendor codes that change the meaning of a status are listed in
# VENDOR_CODES and take precedence.
CLASSIFICATION: dict[int, type[ConnectorError]] = {
    400: BadRequestError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    408: TransientError,
    409: ConflictError,
    422: BadRequestError,
    423: TransientError,  # locked row (Salesforce UNABLE_TO_LOCK_ROW surfaces as this too)
    425: TransientError,
    429: RateLimitedError,
    500: TransientError,
    502: TransientError,
    503: TransientError,
    504: TransientError,
}

VENDOR_CODES: dict[str, type[ConnectorError]] = {
    "REQUEST_LIMIT_EXCEEDED": QuotaExhaustedError,  # Salesforce daily quota (403)
    "DAILY": QuotaExhaustedError,  # HubSpot policyName on a daily 429
    "UNABLE_TO_LOCK_ROW": TransientError,
    "SERVER_UNAVAILABLE": TransientError,
    "20429": RateLimitedError,  # Twilio: too many requests, always safe to retry
    "INVALID_SESSION_ID": AuthError,
}


def classify(status: int, code: str | None = None) -> type[ConnectorError]:
    """The error class for an HTTP status and optional vendor code."""
    if code and code in VENDOR_CODES:
        return VENDOR_CODES[code]
    if status in CLASSIFICATION:
        return CLASSIFICATION[status]
    if status >= 500:
        return TransientError
    if status >= 400:
        return BadRequestError
    raise ValueError(f"HTTP {status} is not an error")


def error_for(status: int, message: str, *, system: str, code: str | None = None,
              retry_after: float | None = None, resume_at: datetime | None = None) -> ConnectorError:
    cls = classify(status, code)
    if issubclass(cls, RateLimitedError):
        return cls(message, system=system, status=status, code=code, retry_after=retry_after)
    if issubclass(cls, QuotaExhaustedError):
        return cls(message, system=system, status=status, code=code, resume_at=resume_at)
    return cls(message, system=system, status=status, code=code)
