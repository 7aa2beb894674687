"""Named transforms used by mapping files. Each has an inbound form and, where the field is
written back, an outbound inverse. A mapping file can only name a transform listed here: new
behaviour is a reviewed function, never code embedded in YAML.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from omnisync.model import normalize_email, normalize_phone


@dataclass(frozen=True)
class Transform:
    inbound: Callable[[Any], Any]
    outbound: Callable[[Any], Any] | None = None


def _parsed(kind: str):
    """Parsers' own errors quote their input (possibly personal data) or are not ValueErrors at all
    (OverflowError, OSError for out-of-range epochs): re-raise as a ValueError naming only the kind."""
    def wrap(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def parse(v: Any) -> Any:
            if isinstance(v, bool):
                raise ValueError(f"not {kind} (a boolean)")
            try:
                return fn(v)
            except (ValueError, TypeError, ArithmeticError, OSError):
                raise ValueError(f"not {kind}") from None
        parse.__doc__ = fn.__doc__
        return parse
    return wrap


@_parsed("an ISO 8601 date-time")
def _iso(v: Any) -> datetime | None:
    if v in (None, ""):
        return None
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=timezone.utc)
    if isinstance(v, (int, float)):
        return datetime.fromtimestamp(v, tz=timezone.utc)
    s = str(v).strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    # Salesforce writes offsets without a colon: 2026-01-01T00:00:00.000+0000
    if len(s) > 5 and s[-5] in "+-" and s[-3] != ":" and s[-4:].isdigit():
        s = s[:-2] + ":" + s[-2:]
    dt = datetime.fromisoformat(s)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _iso_out(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = _iso(v)
    return v.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


@_parsed("epoch milliseconds")
def _epoch_ms(v: Any) -> datetime | None:
    if v in (None, ""):
        return None
    return datetime.fromtimestamp(int(v) / 1000, tz=timezone.utc)


def _epoch_ms_out(v: Any) -> int | None:
    if v is None:
        return None
    return int(_iso(v).timestamp() * 1000)


@_parsed("an RFC 2822 date")
def _rfc2822(v: Any) -> datetime | None:
    if v in (None, ""):
        return None
    dt = email.utils.parsedate_to_datetime(str(v))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


@_parsed("a date (YYYY-MM-DD or epoch milliseconds)")
def _date(v: Any) -> date | None:
    if v in (None, ""):
        return None
    if isinstance(v, date):
        return v
    s = str(v).strip()
    if s.isdigit():  # HubSpot date properties are midnight-UTC epoch milliseconds
        return datetime.fromtimestamp(int(s) / 1000, tz=timezone.utc).date()
    return date.fromisoformat(s[:10])


def _date_out(v: Any) -> str | None:
    return None if v is None else str(v)[:10]


def _blank_to_none(v: Any) -> Any:
    if isinstance(v, str) and not v.strip():
        return None
    return v


def _email(v: Any) -> str | None:
    v = _blank_to_none(v)
    return None if v is None else normalize_email(v)


def _phone(v: Any) -> str | None:
    v = _blank_to_none(v)
    return None if v is None else normalize_phone(v)


def _truthy(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() in {"true", "1", "yes", "y", "on"}


def _optout_flag(v: Any) -> str | None:
    """A CRM 'opted out' checkbox: true -> opted_out; false -> unknown (absence of a no is not a yes)."""
    if v in (None, ""):
        return None
    return "opted_out" if _truthy(v) else "unknown"


def _optout_flag_out(v: Any) -> bool | None:
    if v is None:
        return None
    return v == "opted_out"


def _optin_flag(v: Any) -> str | None:
    if v in (None, ""):
        return None
    return "opted_in" if _truthy(v) else "opted_out"


def _optin_flag_out(v: Any) -> bool | None:
    if v is None or v == "unknown":
        return None
    return v == "opted_in"


def _lower(v: Any) -> Any:
    return v.strip().lower() if isinstance(v, str) else v


def _text(v: Any) -> str | None:
    v = _blank_to_none(v)
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    return v


TRANSFORMS: dict[str, Transform] = {
    "identity": Transform(lambda v: v, lambda v: v),
    "text": Transform(_text, lambda v: v),
    "blank_to_none": Transform(_blank_to_none, lambda v: v),
    "lower": Transform(_lower, lambda v: v),
    "email": Transform(_email, lambda v: v),
    "phone": Transform(_phone, lambda v: v),
    "iso_datetime": Transform(_iso, _iso_out),
    "epoch_ms": Transform(_epoch_ms, _epoch_ms_out),
    "rfc2822": Transform(_rfc2822, None),
    "date": Transform(_date, _date_out),
    "optout_flag": Transform(_optout_flag, _optout_flag_out),
    "optin_flag": Transform(_optin_flag, _optin_flag_out),
    "bool": Transform(lambda v: None if v in (None, "") else _truthy(v), lambda v: v),
}


def register(name: str, inbound: Callable[[Any], Any], outbound: Callable[[Any], Any] | None = None) -> None:
    """Add a named transform (for vendor value vocabularies: call channels, dispositions...)."""
    if name in TRANSFORMS:
        raise ValueError(f"transform {name!r} already registered")
    TRANSFORMS[name] = Transform(inbound, outbound)


def value_map(name: str, table: dict[str, str], default: str | None = None) -> None:
    """Register a transform translating a vendor vocabulary, with its inverse for outbound."""
    inverse = {v: k for k, v in table.items()}

    def inbound(v: Any) -> Any:
        if v in (None, ""):
            return default
        key = str(v).strip().lower()
        if key in table:
            return table[key]
        if default is not None:
            return default
        raise ValueError(f"unknown value; expected one of {sorted(table)}")  # not the value: it may be personal

    register(name, inbound, lambda v: inverse.get(v, v))
