"""HubSpot vocabularies: enumeration values as HubSpot spells them, and their canonical terms.

Inbound matching ignores case; outbound writes HubSpot's own spelling (its enumerations are
case-sensitive, so the lower-casing ``value_map`` inverse would be rejected).
"""

from __future__ import annotations

from typing import Any

from mappings.transforms import register


def vocabulary(name: str, table: dict[str, str], *, passthrough: bool = False) -> None:
    """Register ``name``: vendor value -> canonical; the first vendor value listed for a canonical
    term is the one written back. ``passthrough`` keeps unknown values (custom options) as they are."""
    lookup = {k.lower(): v for k, v in table.items()}
    inverse: dict[str, str] = {}
    for vendor, canonical in table.items():
        inverse.setdefault(canonical, vendor)

    def inbound(v: Any) -> Any:
        if v in (None, ""):
            return None
        key = str(v).strip().lower()
        if key in lookup:
            return lookup[key]
        if passthrough:
            return str(v).strip()
        # Not the value itself: in a hostile or mis-mapped payload it may be personal data.
        raise ValueError(f"unknown HubSpot value; expected one of {sorted(table)} "
                         f"(add it to mappings/vocab_hubspot.py)")

    register(name, inbound, lambda v: None if v is None else inverse.get(v, v))


vocabulary("hubspot_call_direction", {"INBOUND": "inbound", "OUTBOUND": "outbound"})
vocabulary("hubspot_email_direction", {"EMAIL": "outbound", "INCOMING_EMAIL": "inbound",
                                       "FORWARDED_EMAIL": "outbound"})
# hs_communication_channel_type: web chat is written back as a custom channel conversation.
vocabulary("hubspot_channel", {"SMS": "sms", "CUSTOM_CHANNEL_CONVERSATION": "chat", "WHATS_APP": "chat",
                               "LINKEDIN_MESSAGE": "social"})
# HubSpot's default call outcomes are GUIDs; portals may add their own, kept verbatim.
vocabulary("hubspot_call_disposition", {
    "f240bbac-87c9-4f6e-bf70-924b57d47db7": "connected",
    "73a0d17f-1163-4015-bdd5-ec830791da20": "no_answer",
    "b2cf5968-551e-4856-9783-52b3da59a7d0": "left_voicemail",
    "9d9162e7-6cf3-4944-bf63-4dff82258764": "busy",
    "a4c4c377-d246-4b32-a13b-75a56a4cd0ff": "left_live_message",
    "17b47fee-58de-441e-a44c-c6300d46f273": "wrong_number",
}, passthrough=True)

_COUNTRIES = {"united states": "US", "united states of america": "US", "usa": "US", "u.s.": "US",
              "u.s.a.": "US", "canada": "CA", "united kingdom": "GB", "uk": "GB", "great britain": "GB",
              "england": "GB", "mexico": "MX", "germany": "DE", "france": "FR", "spain": "ES",
              "ireland": "IE", "australia": "AU", "india": "IN"}


def _country(v: Any) -> str | None:
    """HubSpot's country is free text: ISO codes pass, common names are translated."""
    if v in (None, ""):
        return None
    s = str(v).strip()
    if len(s) == 2 and s.isalpha():
        return s.upper()
    code = _COUNTRIES.get(s.lower())
    if code is None:
        raise ValueError("country name not recognised; add it to mappings/vocab_hubspot.py")
    return code


def _language(v: Any) -> str | None:
    """hs_language options are lower-case ('en', 'en-gb', 'fr-ca'): canonical locales are 'en-GB'."""
    if v in (None, ""):
        return None
    lang, _, region = str(v).strip().replace("_", "-").partition("-")
    return f"{lang.lower()}-{region.upper()}" if region else lang.lower()


def _language_out(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).lower()
    return s.removesuffix("-us")  # HubSpot has no en-us option: American English is plain "en"


register("hubspot_country", _country, lambda v: v)
register("hubspot_language", _language, _language_out)
