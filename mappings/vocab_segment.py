"""Segment vocabularies: track event names per channel, and identifiers inside Profile API payloads."""

from __future__ import annotations

from typing import Any

from mappings.transforms import register
from omnisync.model import normalize_email

# Segment names events "Object Action"; one name per canonical channel.
EVENTS = {"voice": "Call Completed", "chat": "Chat Conversation Completed", "bot": "Virtual Agent Conversation Completed",
          "sms": "SMS Conversation", "email": "Email Activity", "video": "Video Meeting Completed",
          "social": "Social Message Exchanged"}
_CHANNELS = {v.lower(): k for k, v in EVENTS.items()}


def _event_in(v: Any) -> str | None:
    if v in (None, ""):
        return None
    try:
        return _CHANNELS[str(v).strip().lower()]
    except KeyError:
        raise ValueError(f"unknown event; expected one of {sorted(EVENTS.values())}") from None


def _event_out(v: Any) -> str | None:
    if v is None:
        return None
    try:
        return EVENTS[str(getattr(v, "value", v))]
    except KeyError:
        raise ValueError(f"channel {v!r} has no Segment event name in mappings/vocab_segment.py") from None


register("segment_event", _event_in, _event_out)


def _email(item: Any) -> str | None:
    """An email from a trait value or from a Profile API external id of type ``email``."""
    if isinstance(item, dict):
        if item.get("type") != "email" or not item.get("id"):
            return None
        item = item["id"]
    if item in (None, "") or (isinstance(item, str) and not item.strip()):
        return None
    return normalize_email(item)


def _user_id(ids: Any) -> str | None:
    """The profile's ``user_id`` among its external ids (one per profile under Segment's defaults)."""
    for row in ids or []:
        if isinstance(row, dict) and row.get("type") == "user_id" and row.get("id"):
            return str(row["id"])
    return None


register("segment_email", _email)
register("segment_user_id", _user_id)
