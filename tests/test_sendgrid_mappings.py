"""SendGrid mapping files: webhook events as email interactions and consent, activity, unsubscribes."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from connectors.sendgrid import event_records
from mappings.engine import MappingError, load_mapping, mappings_for
from omnisync.model import ConsentEvent, Interaction
from omnisync.records import SourceRecord

FIX = Path(__file__).parent / "fixtures" / "sendgrid"


def events() -> list[SourceRecord]:
    return event_records(json.loads((FIX / "event_webhook_post.json").read_text()))


def by_kind(record: SourceRecord):
    return {m.kind: m.inbound(record) for m in mappings_for("sendgrid", "events")}


def test_every_webhook_event_is_an_email_interaction_with_who_acted():
    mapped = {r.payload["event"]: by_kind(r)["interaction"] for r in events()}
    assert all(isinstance(i, Interaction) and i.channel.value == "email" for i in mapped.values())
    assert mapped["open"].status == "opened" and mapped["open"].direction.value == "inbound"
    assert mapped["delivered"].direction.value == "outbound"
    assert mapped["click"].attributes["url"] == "https://shop.example/orders"
    assert mapped["bounce"].attributes["bounce_classification"] == "Invalid Address"
    assert mapped["open"].attributes["message_id"] == "m4.filterdrecv-1-0.0"
    assert mapped["open"].started_at == datetime(2026, 11, 4, 18, 5, 12, tzinfo=timezone.utc)
    assert mapped["open"].customer_email == "amara.okafor@example.com"


def test_unsubscribes_and_spam_reports_opt_out_a_resubscribe_opts_in_and_the_rest_carry_no_consent():
    consent = {r.payload["event"]: by_kind(r)["consent"] for r in events()}
    assert {e for e, c in consent.items() if c is not None} == {"unsubscribe", "group_unsubscribe", "spamreport",
                                                                "group_resubscribe"}
    for e in ("unsubscribe", "group_unsubscribe", "spamreport"):
        assert isinstance(consent[e], ConsentEvent) and consent[e].status.value == "opted_out"
        assert consent[e].channel.value == "email" and consent[e].reason == e
    assert consent["group_resubscribe"].status.value == "opted_in"
    assert consent["group_resubscribe"].occurred_at > consent["group_unsubscribe"].occurred_at


def test_an_unreadable_recipient_is_rejected_naming_the_field_not_the_value():
    bad = SourceRecord(system="sendgrid", stream="events", external_id="ev1", modified_at=datetime.now(timezone.utc),
                       payload={"email": "mia chen at example", "timestamp": 1793700000, "event": "open",
                                "sg_event_id": "ev1", "sg_message_id": "m"})
    with pytest.raises(MappingError) as exc:
        load_mapping("sendgrid", "events").inbound(bad)
    assert exc.value.field == "customer_email" and "mia" not in str(exc.value)


def test_activity_messages_and_global_unsubscribes_map():
    msg = json.loads((FIX / "messages.json").read_text())["messages"][3]
    rec = SourceRecord(system="sendgrid", stream="messages", external_id=msg["msg_id"],
                       modified_at=datetime.now(timezone.utc), payload=msg)
    it = load_mapping("sendgrid", "messages").inbound(rec)
    assert (it.subject, it.status, it.direction.value) == ("Your refund is on its way", "delivered", "outbound")
    assert it.attributes["opens_count"] == "1"
    row = json.loads((FIX / "unsubscribes_page1.json").read_text())[1]
    rec = SourceRecord(system="sendgrid", stream="unsubscribes", external_id=row["email"].lower(),
                       modified_at=datetime.now(timezone.utc), payload=row)
    ev = load_mapping("sendgrid", "unsubscribes").inbound(rec)
    assert (ev.status.value, ev.customer_email, ev.reason) == ("opted_out", "leo.kim@example.net", "global_unsubscribe")
    assert ev.occurred_at == datetime.fromtimestamp(1793700500, tz=timezone.utc)
