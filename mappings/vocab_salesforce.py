"""Salesforce vocabularies: Task subtypes, call types and dispositions, and free-text countries.

Picklists are case-sensitive in Salesforce: outbound values are written in Salesforce's spelling.
"""

from __future__ import annotations

import re
from typing import Any

from mappings.transforms import register

_SUBTYPES = {"call": "voice", "email": "email"}
# Channels Salesforce has no Task subtype for are logged as plain Tasks (the subject says which).
_SUBTYPE_OUT = {"voice": "Call", "email": "Email"}
_CALL_TYPES = {"inbound": "inbound", "outbound": "outbound"}
_COUNTRIES = {"us": "US", "usa": "US", "u.s.": "US", "u.s.a.": "US", "united states": "US",
              "united states of america": "US", "canada": "CA", "united kingdom": "GB", "uk": "GB",
              "great britain": "GB", "mexico": "MX", "germany": "DE", "france": "FR", "spain": "ES",
              "ireland": "IE", "australia": "AU", "india": "IN"}


def _task_channel(v: Any) -> str | None:
    if v in (None, ""):
        return None
    channel = _SUBTYPES.get(str(v).strip().lower())
    if channel is None:
        raise ValueError("Task subtype is not a customer interaction (expected Call or Email)")
    return channel


def _call_type(v: Any) -> str:
    """Task.CallType. A Task without one is an activity the rep logged themselves (an Email Task is
    mail they sent: incoming mail arrives through Email-to-Case, not as Tasks), so it is outbound."""
    if v in (None, ""):
        return "outbound"
    kind = str(v).strip().lower()
    if kind == "internal":
        raise ValueError("internal calls (between employees) are not customer interactions")
    if kind not in _CALL_TYPES:
        raise ValueError("unknown CallType; expected Inbound or Outbound")
    return _CALL_TYPES[kind]


def _disposition(v: Any) -> str | None:
    """CallDisposition is free text ("Left voicemail"): canonical dispositions are snake_case."""
    if v in (None, ""):
        return None
    return re.sub(r"[^a-z0-9]+", "_", str(v).strip().lower()).strip("_") or None


def _disposition_out(v: Any) -> str | None:
    return None if v is None else str(v).replace("_", " ").capitalize()


def _country(v: Any) -> str | None:
    """Mailing countries are free text: ISO codes pass, common names are translated."""
    if v in (None, ""):
        return None
    s = str(v).strip()
    code = _COUNTRIES.get(s.lower())
    if code is None and len(s) == 2 and s.isalpha():
        code = s.upper()
    if code is None:
        raise ValueError("country name not recognised; add it to mappings/vocab_salesforce.py")
    return code


register("salesforce_task_channel", _task_channel, lambda v: None if v is None else _SUBTYPE_OUT.get(v, "Task"))
register("salesforce_call_type", _call_type, lambda v: None if v is None else str(v).capitalize())
register("salesforce_call_disposition", _disposition, _disposition_out)
register("salesforce_country", _country, lambda v: v)
