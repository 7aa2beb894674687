"""Twilio mappings: messages as SMS interactions for the remote party, STOP/START as consent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.twilio import message_record
from mappings.engine import load_mapping, mappings_for
from omnisync.model import Channel, ConsentStatus, Direction, Purpose

FIX = Path(__file__).parent / "fixtures" / "twilio"


def thread() -> list[dict]:
    return json.loads((FIX / "heroine_thread.json").read_text())


def inbound(body: str, **over) -> dict:
    m = next(m for m in thread() if m["direction"] == "inbound")
    return {**m, "body": body, **over}


def consent(m: dict):
    return load_mapping("twilio", "messages_consent").inbound(message_record(m))


def test_the_customer_is_the_sender_inbound_and_the_recipient_outbound():
    mapping = load_mapping("twilio", "messages")
    its = [mapping.inbound(message_record(m)) for m in thread()]
    assert {i.customer_phone for i in its} == {"+14155550142"}
    assert {i.attributes["business_number"] for i in its} == {"+18885550100"}
    assert [i.direction for i in its] == [Direction.outbound, Direction.inbound, Direction.outbound]
    assert all(i.channel is Channel.sms for i in its)
    followup = its[0]
    assert "88412" in followup.summary and followup.status == "delivered"
    assert followup.started_at.isoformat() == "2026-11-03T17:05:01+00:00"


@pytest.mark.parametrize("body", ["STOP", "stop", " Stop. ", "STOPALL", "unsubscribe", "CANCEL", "end", "QUIT",
                                  "revoke", "OptOut", "stop!"])
def test_every_opt_out_keyword_is_an_sms_opt_out(body):
    ev = consent(inbound(body))
    assert ev.status is ConsentStatus.opted_out and ev.channel is Channel.sms
    assert ev.customer_phone == "+14155550142" and "blocks every message" in ev.reason


@pytest.mark.parametrize("body", ["START", "yes", "Unstop"])
def test_start_yes_and_unstop_opt_back_in(body):
    assert consent(inbound(body)).status is ConsentStatus.opted_in


@pytest.mark.parametrize("body", ["Stop sending me promos please", "HELP", "Thanks!", "", "STOP STOP"])
def test_other_messages_carry_no_consent(body):
    assert consent(inbound(body)) is None


def test_only_the_customer_can_opt_in_or_out():
    agent_reply = {**thread()[0], "body": "YES", "direction": "outbound-reply"}
    assert consent(agent_reply) is None
    assert consent({**thread()[0], "body": "STOP"}) is None


def test_a_stop_is_recorded_as_the_marketing_purpose_at_the_time_it_was_received():
    stop = next(m for m in thread() if m["body"] == "STOP")
    ev = consent(stop)
    assert ev.purpose is Purpose.marketing and ev.occurred_at.isoformat() == "2026-11-03T17:12:40+00:00"
    assert ev.external_id == stop["sid"]


def test_one_message_feeds_both_the_timeline_and_consent():
    kinds = sorted(m.kind for m in mappings_for("twilio", "messages"))
    assert kinds == ["consent", "interaction"]


def test_whatsapp_messages_are_social_and_identify_by_number():
    m = inbound("hello", **{"from": "whatsapp:+14155550142", "to": "whatsapp:+18885550100"})
    it = load_mapping("twilio", "messages").inbound(message_record(m))
    assert it.channel is Channel.social and it.customer_phone == "+14155550142"


def test_a_message_not_yet_sent_is_placed_at_its_creation_time():
    m = {**thread()[0], "date_sent": None, "status": "queued"}
    it = load_mapping("twilio", "messages").inbound(message_record(m))
    assert it.started_at.isoformat() == "2026-11-03T17:05:00+00:00" and it.status == "queued"
