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
        raise ValueError(f"Task subtype {str(v)[:20]!r} is not a customer interaction (expected Call or Email)")
    return channel


def _task_direction(task: Any) -> str | None:
    """Calls carry CallType. An Email Task is mail a rep sent from Salesforce (incoming mail arrives
    through Email-to-Case, not as Tasks), so it is outbound."""
    if not isinstance(task, dict):
        return None
    call_type = str(task.get("CallType") or "").strip().lower()
    if call_type in _CALL_TYPES:
        return _CALL_TYPES[call_type]
    if call_type == "internal":
        raise ValueError("internal calls (between employees) are not customer interactions")
    if str(task.get("TaskSubtype") or "").lower() == "email":
        return "outbound"
    raise ValueError("a call Task needs CallType Inbound or Outbound")


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
register("salesforce_task_direction", _task_direction)
register("salesforce_call_disposition", _disposition, _disposition_out)
register("salesforce_country", _country, lambda v: v)
