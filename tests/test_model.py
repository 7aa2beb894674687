"""The canonical model rejects bad input with errors that name the field (and never the value)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from omnisync.model import (
    ConsentEvent,
    CustomerProfile,
    Interaction,
    ValidationError,
    describe_validation_error,
    normalize_email,
    normalize_phone,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def _fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in exc.errors()}


def test_emails_and_phones_are_normalized():
    p = CustomerProfile(emails=["  Amara.Okafor@Example.COM "], phones=["(415) 555-0142", "+1 415 555 0142"])
    assert p.emails == ["amara.okafor@example.com"]
    assert p.phones == ["+14155550142"]  # two spellings of one number collapse


@pytest.mark.parametrize(
    "data, field",
    [
        ({"emails": ["not-an-email"]}, "emails.0"),
        ({"phones": ["call me maybe"]}, "phones.0"),
        ({"first_name": 42}, "first_name"),
        ({"birth_date": "yesterday"}, "birth_date"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"nickname": "Ami"}, "nickname"),
        ({"addresses": [{"country": "United States"}]}, "addresses.0.country"),
    ],
)
def test_bad_profile_input_names_the_field(data, field):
    with pytest.raises(ValidationError) as exc:
        CustomerProfile(**data)
    assert field in _fields(exc.value)


def test_unknown_channel_is_rejected_naming_the_field():
    with pytest.raises(ValidationError) as exc:
        Interaction(system="zoom", external_id="e1", channel="pigeon", direction="inbound",
                    started_at=T0, customer_phone="+14155550142")
    assert "channel" in _fields(exc.value)


def test_interaction_needs_a_customer_and_ordered_times():
    with pytest.raises(ValidationError, match="customer"):
        Interaction(system="zoom", external_id="e1", channel="voice", direction="inbound", started_at=T0)
    with pytest.raises(ValidationError, match="before started_at"):
        Interaction(system="zoom", external_id="e1", channel="voice", direction="inbound", started_at=T0,
                    ended_at=T0.replace(hour=11), customer_phone="+14155550142")


def test_consent_event_with_wrong_status_names_the_field():
    with pytest.raises(ValidationError) as exc:
        ConsentEvent(system="twilio", external_id="SM1", channel="sms", status="maybe", occurred_at=T0,
                     customer_phone="+14155550142")
    assert "status" in _fields(exc.value)


def test_error_description_names_record_and_field_but_not_the_value():
    with pytest.raises(ValidationError) as exc:
        CustomerProfile(emails=["amara.okafor@@example.com"])
    text = describe_validation_error(exc.value, record="hubspot/contacts/101")
    assert text.startswith("hubspot/contacts/101: emails.0")
    assert "amara" not in text


def test_normalizers_reject_junk_shapes():
    with pytest.raises(ValueError):
        normalize_email("a@b")
    with pytest.raises(ValueError):
        normalize_phone("12")
    assert normalize_phone("020 7946 0018", "GB") == "+442079460018"
