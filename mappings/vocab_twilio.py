"""Twilio vocabularies: who the customer is in a message, and STOP/START keywords as consent.

The customer is the remote party: ``from`` on an inbound message, ``to`` on an outbound one.
Keywords follow Twilio's Advanced Opt-Out: the whole body (any case, surrounding spaces and a
trailing "." or "!" ignored) must be the keyword, and only a customer's (inbound) message counts:
an agent typing "Yes" is not the customer opting in.
"""

from __future__ import annotations

import email.utils
import re
from datetime import datetime, timezone
from typing import Any

from mappings.transforms import register

OPT_OUT = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
OPT_IN = {"START", "YES", "UNSTOP"}


def _inbound(m: Any) -> bool:
    return isinstance(m, dict) and str(m.get("direction", "")).lower() == "inbound"


def _strip_channel(address: Any) -> str | None:
    # WhatsApp and other channel addresses are "whatsapp:+1415..."; the number is what identifies.
    if address in (None, ""):
        return None
    return str(address).split(":", 1)[-1]


def _customer(m: Any) -> str | None:
    if not isinstance(m, dict):
        return None
    return _strip_channel(m.get("from") if _inbound(m) else m.get("to"))


def _business(m: Any) -> str | None:
    if not isinstance(m, dict):
        return None
    return _strip_channel(m.get("to") if _inbound(m) else m.get("from"))


def _channel(m: Any) -> str:
    address = str((m or {}).get("from" if _inbound(m) else "to") or "")
    return "social" if address.lower().startswith(("whatsapp:", "messenger:")) else "sms"


def keyword(m: Any) -> str | None:
    """STOP or START when a customer's message is an opt-out or opt-in keyword (canonical word)."""
    if not _inbound(m):
        return None
    word = re.sub(r"[\s.!]+$", "", str(m.get("body") or "").strip()).upper()
    if word in OPT_OUT:
        return "STOP"
    if word in OPT_IN:
        return "START"
    return None


def _consent(m: Any) -> str | None:
    return {"STOP": "opted_out", "START": "opted_in"}.get(keyword(m) or "")


def _reason(m: Any) -> str | None:
    word = keyword(m)
    if word is None:
        return None
    said = re.sub(r"[\s.!]+$", "", str(m.get("body") or "").strip()).upper()
    sender = _business(m)
    if word == "STOP":
        return f"SMS keyword {said} to {sender}: the carrier blocks every message from that sender until START"
    return f"SMS keyword {said} to {sender}: messages from that sender are allowed again"


def _sent_at(m: Any) -> datetime | None:
    """When the message was sent (received, for inbound); not yet sent: when it was created."""
    if not isinstance(m, dict):
        return None
    value = m.get("date_sent") or m.get("date_created")
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(str(value))
    except (ValueError, TypeError, OverflowError):  # the parser's message quotes the value
        raise ValueError("date_sent/date_created is not an RFC 2822 date") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


register("twilio_customer_phone", _customer)
register("twilio_business_number", _business)
register("twilio_channel", _channel)
register("twilio_keyword", keyword)
register("twilio_consent", _consent)
register("twilio_consent_reason", _reason)
register("twilio_sent_at", _sent_at)
