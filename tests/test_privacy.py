"""Personal data is masked in logs and never readable in sealed payloads."""

from __future__ import annotations

import io
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


def test_dates_in_error_messages_survive_masking():
    text = "GET /2010-04-01/Accounts/AC1/Messages.json failed; birth date 1990-02-30 is not a date"
    assert mask_text(text) == text


def test_addresses_and_numbers_percent_encoded_in_a_logged_url_are_masked():
    url = ("GET http://127.0.0.1:8000/v2/contacts?phone_numbers=%2B14155550142%2C%2B15125550111"
           "&emails=amara.okafor%40example.com%2Cliam.smith1%40example.net \"HTTP/1.1 200 OK\"")
    masked = mask_text(url)
    assert masked == ("GET http://127.0.0.1:8000/v2/contacts?phone_numbers=***42%2C***11"
                      "&emails=a***%40example.com%2C***%40example.net \"HTTP/1.1 200 OK\"")
    assert mask_text("/profiles/email:amara.okafor%40example.com/traits") == "/profiles/email:a***%40example.com/traits"


def test_log_records_are_masked_even_with_format_arguments(caplog):
    logger = logging.getLogger("omnisync.test.masking")
    logger.addFilter(MaskingFilter())
    with caplog.at_level(logging.INFO, logger="omnisync.test.masking"):
        logger.info("matched %s by phone %s", "amara.okafor@example.com", "+14155550142")
    assert caplog.records[0].getMessage() == "matched a***@example.com by phone ***42"


def test_a_logged_traceback_is_masked_like_the_message():
    # Prefect logs a failed task run with exc_info: the traceback repeats the exception's message.
    logger = logging.getLogger("omnisync.test.masking.tb")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskingFilter())
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("no contact for amara.okafor@example.com / +1 (415) 555-0142")
        except ValueError:
            logger.exception("lookup failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "lookup failed" in out and "ValueError: no contact for a***@example.com / ***42" in out
    assert "okafor@" not in out and "555-0142" not in out


def test_sealed_payloads_round_trip_but_hold_no_readable_personal_data():
    sealed = seal({"email": "amara.okafor@example.com"})
    assert "amara" not in str(sealed)
    assert unseal(sealed) == {"email": "amara.okafor@example.com"}
    with pytest.raises(ValueError):
        unseal({"sealed": "garbage"})


def test_keyed_hash_is_stable_and_key_dependent():
    assert keyed_hash("x", "k1") == keyed_hash("x", "k1") != keyed_hash("x", "k2")


def test_a_dead_letter_keeps_no_address_even_when_the_record_id_is_the_address(tmp_path):
    from datetime import datetime, timezone

    from sqlmodel import select

    from identity.ingest import ingest_records
    from identity.store import DeadLetter, get_engine, run_in_transaction, session_scope
    from omnisync.records import SourceRecord

    engine = get_engine(f"sqlite:///{tmp_path / 'store.db'}")
    address = "amara.okafor@example.com."  # a trailing dot: not a valid address, so the record is dead-lettered
    bad = SourceRecord(system="sendgrid", stream="unsubscribes", external_id=address,
                       modified_at=datetime(2026, 11, 1, tzinfo=timezone.utc),
                       payload={"email": address, "created": 1793600000})
    run_in_transaction(lambda s: ingest_records(s, [bad]), engine)
    with session_scope(engine) as s:
        (letter,) = s.exec(select(DeadLetter)).all()
    assert "okafor@" not in letter.reason
    assert "okafor@" not in (letter.external_id or "")
