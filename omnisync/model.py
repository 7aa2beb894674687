"""The canonical model: what every vendor record becomes before identity resolution.

Vendor payloads are translated into these pydantic models by ``mappings``; ``identity`` only ever
sees canonical objects. Validation is strict (``extra="forbid"``, no silent coercion of wrong
types) so a bad record is rejected with an error naming the field, and lands in dead-letter instead
of polluting the golden record.

Normalization (lower-cased emails, E.164 phones) happens here at the edge so that two sources
spelling the same identifier differently produce equal canonical values. NUL characters are
dropped from every canonical string (they carry nothing and PostgreSQL cannot store them).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from enum import Enum
from functools import lru_cache
from typing import Annotated, Any

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from omnisync.settings import get_settings

__all__ = [
    "Address",
    "Channel",
    "ConsentEvent",
    "ConsentState",
    "ConsentStatus",
    "CustomerProfile",
    "Direction",
    "EmailAddress",
    "Handoff",
    "Interaction",
    "PhoneNumber",
    "Purpose",
    "ValidationError",
    "describe_validation_error",
    "normalize_email",
    "normalize_phone",
]


class Channel(str, Enum):
    voice = "voice"
    chat = "chat"
    email = "email"
    sms = "sms"
    video = "video"
    social = "social"
    bot = "bot"


class Direction(str, Enum):
    inbound = "inbound"
    outbound = "outbound"


class Purpose(str, Enum):
    """Why we may contact someone: consent is held per channel and purpose."""

    marketing = "marketing"
    service = "service"
    transactional = "transactional"


class ConsentStatus(str, Enum):
    opted_in = "opted_in"
    opted_out = "opted_out"
    unknown = "unknown"


_EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")


def normalize_email(value: str) -> str:
    """Trim and lower-case an address; raise ``ValueError`` when it is not an address.

    Provider-specific rules (Gmail dots, plus-tags) are deliberately not applied here: they are
    only safe for some domains and belong to identity matching, not to the stored value.
    """
    if not isinstance(value, str):
        raise ValueError("email must be a string")
    cleaned = value.strip().lower()
    if len(cleaned) > 254 or not _EMAIL_RE.match(cleaned):
        raise ValueError("not a valid email address")
    return cleaned


CACHE_ENTRIES = 1 << 16  # per normalization cache, here and in identity.matching


@lru_cache(maxsize=CACHE_ENTRIES)
def _parse_phone(raw: str, region: str) -> str | None:
    # Phone parsing costs ~15 us; the same numbers recur within a batch and a household, so the
    # cache pays. Bounded like identity.matching's caches: at 262,144 entries a first load of a
    # few hundred thousand people held about 50 MB of numbers for the rest of the run.
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalize_phone(value: str, region: str | None = None) -> str:
    """Return the E.164 form of ``value``; raise ``ValueError`` when it cannot be a phone number."""
    if not isinstance(value, str):
        raise ValueError("phone must be a string")
    raw = value.strip()
    if not raw or not re.search(r"\d", raw):
        raise ValueError("not a valid phone number")
    e164 = _parse_phone(raw, region or get_settings().default_region)
    if e164 is None:
        raise ValueError("not a valid phone number")
    return e164


EmailAddress = Annotated[str, AfterValidator(normalize_email)]
PhoneNumber = Annotated[str, AfterValidator(normalize_phone)]


def _drop_nul(v: Any) -> Any:
    if isinstance(v, str):
        return v.replace("\x00", "") if "\x00" in v else v
    if isinstance(v, dict):
        return {_drop_nul(k): _drop_nul(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_drop_nul(x) for x in v]
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        # A NUL character means nothing in text and PostgreSQL text columns refuse it (the whole
        # batch's insert would fail): canonical strings never carry one.
        return _drop_nul(data) if isinstance(data, dict) else data


class Address(_Strict):
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    state: str | None = None
    postcode: str | None = None
    country: str | None = Field(default=None, description="ISO 3166-1 alpha-2")

    @field_validator("country")
    @classmethod
    def _country_code(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.fullmatch(r"[A-Za-z]{2}", v):
            raise ValueError("country must be an ISO 3166-1 alpha-2 code such as 'US'")
        return v.upper()


class ConsentState(_Strict):
    """Consent for one channel and purpose as last established, with when and by whom."""

    channel: Channel
    purpose: Purpose = Purpose.marketing
    status: ConsentStatus
    observed_at: datetime
    source_system: str
    source_record: str | None = None


class CustomerProfile(_Strict):
    """One source system's view of a person, in canonical terms."""

    first_name: str | None = None
    last_name: str | None = None
    full_name: str | None = None
    emails: list[EmailAddress] = Field(default_factory=list)
    phones: list[PhoneNumber] = Field(default_factory=list)
    addresses: list[Address] = Field(default_factory=list)
    company: str | None = None
    title: str | None = None
    birth_date: date | None = None
    locale: str | None = None
    timezone: str | None = None
    value_tier: str | None = None
    consent: list[ConsentState] = Field(default_factory=list)
    external_ids: dict[str, str] = Field(
        default_factory=dict, description="system name -> that system's record id"
    )
    cdp_user_id: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)

    @field_validator("locale")
    @classmethod
    def _locale(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.fullmatch(r"[a-zA-Z]{2,3}([-_][A-Za-z0-9]{2,8})*", v):
            raise ValueError("locale must look like 'en' or 'en-US'")
        return v.replace("_", "-")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file name
            raise ValueError("timezone must be an IANA name such as 'Europe/London'") from None
        return v

    @field_validator("emails", "phones", mode="after")
    @classmethod
    def _dedupe(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @property
    def display_name(self) -> str | None:
        if self.full_name:
            return self.full_name
        parts = [p for p in (self.first_name, self.last_name) if p]
        return " ".join(parts) or None


class Handoff(_Strict):
    """A virtual agent handing the conversation to a live agent, with what the bot learned."""

    from_bot: str
    intent: str | None = None
    summary: str | None = None
    context: dict[str, str] = Field(default_factory=dict)
    bot_interaction_id: str | None = None


class Interaction(_Strict):
    """One contact on one channel: a call, chat, bot session, SMS, email event, video or social."""

    system: str
    external_id: str
    channel: Channel
    direction: Direction
    started_at: datetime
    ended_at: datetime | None = None
    customer_email: EmailAddress | None = None
    customer_phone: PhoneNumber | None = None
    customer_external_id: str | None = Field(
        default=None, description="the customer's id in `system` (e.g. a CRM contact id)"
    )
    queue: str | None = None
    agent: str | None = None
    disposition: str | None = None
    summary: str | None = None
    subject: str | None = None
    transcript_ref: str | None = None
    status: str | None = None
    handoff: Handoff | None = None
    attributes: dict[str, str] = Field(default_factory=dict)

    @field_validator("started_at", "ended_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=timezone.utc)
        return v

    @model_validator(mode="after")
    def _ordered(self) -> "Interaction":
        if self.ended_at is not None and self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        if not (self.customer_email or self.customer_phone or self.customer_external_id):
            raise ValueError(
                "an interaction needs customer_email, customer_phone or customer_external_id "
                "to find its customer"
            )
        return self

    @property
    def handle_seconds(self) -> float | None:
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


class ConsentEvent(_Strict):
    """A change of consent observed in one system (SMS STOP, unsubscribe, CRM checkbox, DNC)."""

    system: str
    external_id: str
    channel: Channel
    purpose: Purpose = Purpose.marketing
    status: ConsentStatus
    occurred_at: datetime
    customer_email: EmailAddress | None = None
    customer_phone: PhoneNumber | None = None
    customer_external_id: str | None = None
    reason: str | None = None

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo else v.replace(tzinfo=timezone.utc)

    @model_validator(mode="after")
    def _has_subject(self) -> "ConsentEvent":
        if not (self.customer_email or self.customer_phone or self.customer_external_id):
            raise ValueError("a consent event needs customer_email, customer_phone or customer_external_id")
        return self


def describe_validation_error(exc: ValidationError, *, record: str) -> str:
    """One line per failing field, naming the record and field but never echoing the value.

    The offending value may be personal data, so it is not repeated (DESIGN invariant 8).
    """
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<record>"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return f"{record}: " + "; ".join(parts)
