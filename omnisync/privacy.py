"""Masking of personal data for logs, artifacts, error messages and API responses.

Invariant 8 of the design: personal data never leaves the store unmasked unless the caller is
entitled to it. Every log record passes through :class:`MaskingFilter`, which rewrites anything
that looks like an email address or a phone number (plain or percent-encoded in a URL) in its
message and traceback, so a careless f-string or a logged request URL cannot leak one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re

# Addresses also as they appear percent-encoded in a logged URL (``a.b%40example.com``, lists
# joined by ``%2C``): an escape other than ``%40`` is part of the local part, so the masked text
# keeps no letter of it beyond the first character (or escape).
EMAIL_RE = re.compile(r"([A-Za-z0-9._+-]|%[0-9A-Fa-f]{2})(?:[A-Za-z0-9._+-]|%(?!40)[0-9A-Fa-f]{2})*"
                      r"(@|%40)([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
# Seven or more digits, possibly separated: catches E.164 and formatted national numbers while
# leaving timestamps (which have few digits between separators) and short counts alone. In a
# logged URL the plus is ``%2B`` and list separators are escapes such as ``%2C``.
PHONE_RE = re.compile(r"(?:(?<![\w.%])|(?<=%[0-9A-Fa-f]{2}))(?:\+|%2[Bb])?\d[\d ().-]{6,}\d(?![\w])")


def mask_email(value: str | None) -> str | None:
    if not value:
        return value
    local, _, domain = value.partition("@")
    if not domain:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_phone(value: str | None) -> str | None:
    if not value:
        return value
    digits = re.sub(r"\D", "", value)
    return f"***{digits[-2:]}" if len(digits) >= 4 else "***"


def mask_name(value: str | None) -> str | None:
    if not value:
        return value
    return " ".join(f"{part[:1]}." for part in value.split())


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _mask_phone_match(m: re.Match[str]) -> str:
    number = re.sub(r"^%2[Bb]", "+", m.group(0))
    digits = re.sub(r"\D", "", number)
    if len(digits) < 7 or _ISO_DATE.fullmatch(number):  # a date (Twilio's /2010-04-01/ API path), not a phone
        return m.group(0)
    return mask_phone(number) or "***"


def mask_text(text: str) -> str:
    """Mask every email address and phone-like number inside free text (URL-encoded ones too)."""
    text = EMAIL_RE.sub(lambda m: f"{m.group(1)}***{m.group(2)}{m.group(3)}", text)
    return PHONE_RE.sub(_mask_phone_match, text)


def keyed_hash(value: str, key: str) -> str:
    """A stable, non-reversible token for a personal value (tombstones, log correlation)."""
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()


class MaskingFilter(logging.Filter):
    """Logging filter that masks personal data in the rendered message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            rendered = record.getMessage()
        except Exception:  # a bad format string must not lose the log line
            rendered = str(record.msg)
        masked = mask_text(rendered)
        if masked != rendered or record.args:
            record.msg, record.args = masked, None
        # A traceback repeats the exception's message (Prefect logs failed task runs with
        # exc_info): render it now, masked, so formatters print this text instead of their own.
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True


_TRACEBACKS = logging.Formatter()


def install_log_masking(logger_names: tuple[str, ...] = ("", "omnisync", "prefect")) -> None:
    """Attach the masking filter to the named loggers and to every handler they already have."""
    flt = MaskingFilter()
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, MaskingFilter) for f in logger.filters):
            logger.addFilter(flt)
        for handler in logger.handlers:
            if not any(isinstance(f, MaskingFilter) for f in handler.filters):
                handler.addFilter(flt)
