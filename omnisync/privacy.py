"""Masking of personal data for logs, artifacts, error messages and API responses.

Invariant 8 of the design: personal data never leaves the store unmasked unless the caller is
entitled to it. Every log record passes through :class:`MaskingFilter`, which rewrites anything
that looks like an email address or a phone number, so a careless f-string cannot leak one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re

EMAIL_RE = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
# Seven or more digits, possibly separated: catches E.164 and formatted national numbers while
# leaving timestamps (which have few digits between separators) and short counts alone.
PHONE_RE = re.compile(r"(?<![\w.])\+?\d[\d ().-]{6,}\d(?![\w])")


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


def _mask_phone_match(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    if len(digits) < 7:
        return m.group(0)
    return mask_phone(m.group(0)) or "***"


def mask_text(text: str) -> str:
    """Mask every email address and phone-like number inside free text."""
    text = EMAIL_RE.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
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
        return True


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
