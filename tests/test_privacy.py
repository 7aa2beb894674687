"""Personal data is masked in logs and never readable in sealed payloads."""

from __future__ import annotations

import logging

import pytest

from omnisync.privacy import MaskingFilter, keyed_hash, mask_email, mask_name, mask_phone, mask_text
from omnisync.sealing import seal, unseal


def test_masking_helpers_keep_only_a_hint():
    assert mask_email("amara.okafor@example.com") == "a***@example.com"
    assert mask_phone("+14155550142") == "***42"
    assert mask_name("Amara Okafor") == "A. O."


@pytest.mark.parametrize("text", [
    "contact amara.okafor@example.com failed",
    "caller +1 (415) 555-0142 hung up",
    "sms from 4155550142",
])
def test_free_text_is_masked(text):
    masked = mask_text(text)
    assert "okafor@" not in masked and "5550142" not in masked and "555-0142" not in masked


def test_timestamps_and_counts_survive_masking():
    text = "run 2026-11-03T10:00:00Z stored 1500 records in 12.5 s"
    assert mask_text(text) == text


def test_log_records_are_masked_even_with_format_arguments(caplog):
    logger = logging.getLogger("omnisync.test.masking")
    logger.addFilter(MaskingFilter())
    with caplog.at_level(logging.INFO, logger="omnisync.test.masking"):
        logger.info("matched %s by phone %s", "amara.okafor@example.com", "+14155550142")
    assert caplog.records[0].getMessage() == "matched a***@example.com by phone ***42"


def test_sealed_payloads_round_trip_but_hold_no_readable_personal_data():
    sealed = seal({"email": "amara.okafor@example.com"})
    assert "amara" not in str(sealed)
    assert unseal(sealed) == {"email": "amara.okafor@example.com"}
    with pytest.raises(ValueError):
        unseal({"sealed": "garbage"})


def test_keyed_hash_is_stable_and_key_dependent():
    assert keyed_hash("x", "k1") == keyed_hash("x", "k1") != keyed_hash("x", "k2")
