"""Zoom Contact Center vocabularies: channels, the virtual agent's hand-off, queues, agents, notes.

An engagement keeps one id across flows, queues and agents, so a virtual-agent chat handed to a
live agent is one engagement: its events hold a ``Virtual Agent Ended`` event whose
``event_content`` (a JSON string) carries the bot's name, conversation id, intent, collected
variables, summary and outcome. A hand-off is such a conversation with outcome ``transferred``
(or followed by a transfer or an agent accepting); a messaging engagement no agent touched is the
bot's alone (channel ``bot``).

Consent: an agent records a caller's do-not-call request as the engagement's disposition (Zoom's
dispositions are the account's own names: "Do not call", "DNC", "Do not contact" are recognized,
in any case and punctuation). Address-book custom fields are strings; opt-out flags written there
read "true" or "false".
"""

from __future__ import annotations

import json
import re
from typing import Any

from mappings.transforms import TRANSFORMS, register

# Deprecated ``channel_types`` values, still sent by older accounts.
_CHANNEL_TYPES = {"voice": "voice", "sms": "sms", "chat": "chat", "in_app_chat": "chat", "video": "video",
                  "kiosk": "video", "in_app_video": "video"}
_MESSAGING_SOURCES = {"sms": "sms", "web_chat": "chat", "in_app_chat": "chat", "facebook_messenger": "social",
                      "whatsapp": "social"}


def _first(items: Any) -> dict[str, Any]:
    return items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}


def _last(items: Any) -> dict[str, Any]:
    return items[-1] if isinstance(items, list) and items and isinstance(items[-1], dict) else {}


def bot_conversation(events: Any) -> dict[str, Any] | None:
    """The virtual agent's conversation recorded in the engagement's events, if any."""
    if not isinstance(events, list):
        return None
    found = None
    for i, ev in enumerate(events):
        if not isinstance(ev, dict) or ev.get("event_type") != "Virtual Agent Ended":
            continue
        try:
            content = json.loads(ev.get("event_content") or "{}")
        except ValueError:
            content = {}
        content = content if isinstance(content, dict) else {}
        content.setdefault("bot_name", ev.get("flow_name"))
        later = {e.get("event_type") for e in events[i + 1:] if isinstance(e, dict)}
        content["handed_off"] = content.get("outcome") == "transferred" or bool(
            later & {"Transfer Initiated", "Agent Accepted"})
        found = content
    return found


def _bot_only(e: dict[str, Any]) -> bool:
    if e.get("agents"):
        return False
    return bot_conversation(e.get("events")) is not None or bool(e.get("flows"))


def _channel(e: Any) -> str | None:
    if not isinstance(e, dict):
        return None
    ch = _first(e.get("channels"))
    channel, source = ch.get("channel"), ch.get("channel_source")
    if channel is None:
        types = e.get("channel_types") or []
        if not types:
            raise ValueError("engagement has neither channels nor channel_types")
        channel = _CHANNEL_TYPES.get(str(types[0]).lower())
        if channel is None:
            raise ValueError(f"unknown channel type; expected one of {sorted(_CHANNEL_TYPES)}")
        if channel == "chat" and _bot_only(e):
            return "bot"
        return channel
    if channel in ("voice", "video", "email"):
        return channel
    if channel == "messaging":
        if source not in _MESSAGING_SOURCES:
            raise ValueError(f"unknown messaging channel_source; expected one of {sorted(_MESSAGING_SOURCES)}")
        mapped = _MESSAGING_SOURCES[source]
        return "bot" if mapped == "chat" and _bot_only(e) else mapped
    raise ValueError("unknown channel; expected voice, video, messaging or email")


def _status(e: Any) -> str | None:
    if not isinstance(e, dict):
        return None
    if not e.get("end_time"):
        return "in_progress"
    conv = bot_conversation(e.get("events"))
    if conv is not None and not e.get("agents"):
        return "contained" if not conv["handed_off"] else "abandoned_in_queue"
    if e.get("transfer_count"):
        return "transferred"
    return "completed"


def _summary(e: Any) -> str | None:
    """The agents' notes; for an engagement the bot handled alone, the bot's summary."""
    if not isinstance(e, dict):
        return None
    notes = [str(n["note"]).strip() for n in e.get("notes") or [] if isinstance(n, dict) and n.get("note")]
    if notes:
        return " / ".join(notes)
    conv = bot_conversation(e.get("events"))
    return conv.get("summary") if conv else None


def _handoff(part: str):
    def read(events: Any) -> Any:
        conv = bot_conversation(events)
        if not conv or not conv["handed_off"]:
            return None
        if part == "context":
            ctx = {str(k): str(v) for k, v in (conv.get("variables") or {}).items() if v is not None}
            if conv.get("intent_label"):
                ctx.setdefault("intent_label", str(conv["intent_label"]))
            return ctx
        return conv.get({"from_bot": "bot_name", "bot_interaction_id": "conversation_id"}.get(part, part))
    return read


def _intent(events: Any) -> str | None:
    conv = bot_conversation(events)
    return conv.get("intent") if conv else None


def _name(items_key: str):
    def read(items: Any) -> str | None:
        return _last(items).get(items_key) or None
    return read


register("zoom_channel", _channel)
register("zoom_status", _status)
register("zoom_summary", _summary)
register("zoom_bot_intent", _intent)
register("zoom_last_queue", _name("queue_name"))
register("zoom_last_agent", _name("display_name"))
register("zoom_last_disposition", _name("disposition_name"))
for _part in ("from_bot", "intent", "summary", "context", "bot_interaction_id"):
    register(f"zoom_handoff_{_part}", _handoff(_part))


DO_NOT_CALL = {"do not call", "dnc", "do not contact", "do not call list"}


def _words(name: str) -> str:
    # "Do-Not-Call", "do_not_call " and "D.N.C." read as "do not call" and "dnc"
    return " ".join(re.sub(r"[^a-z ]", "", re.sub(r"[-_/\s]+", " ", name.lower())).split())


def _do_not_call(dispositions: Any) -> str | None:
    """``opted_out`` when an agent dispositioned the engagement as do-not-call; otherwise no consent event."""
    if not isinstance(dispositions, list):
        return None
    for d in dispositions:
        name = d.get("disposition_name") if isinstance(d, dict) else None
        if isinstance(name, str) and _words(name) in DO_NOT_CALL:
            return "opted_out"
    return None


def _optout_text(v: Any) -> str | None:
    flag = TRANSFORMS["optout_flag"].outbound(v)
    return None if flag is None else ("true" if flag else "false")


register("zoom_do_not_call", _do_not_call)
register("zoom_optout_flag", TRANSFORMS["optout_flag"].inbound, _optout_text)
