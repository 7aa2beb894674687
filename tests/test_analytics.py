"""Journey metrics and the WFM feed computed from the unified timeline (no Prefect; SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import Session

from identity import analytics
from identity.store import GoldenAlias, InteractionRow, get_engine, session_scope

T = datetime(2026, 5, 4, 10, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
_n = iter(range(1, 10_000))


def row(gid, channel, at, direction="inbound", *, minutes=10, queue=None, handoff=None, wait=None, open_=False):
    n = next(_n)
    attrs = {"wait_seconds": str(wait)} if wait is not None else {}
    return InteractionRow(system="zoom", external_id=f"x{n}", golden_id=gid, channel=channel, direction=direction,
                          started_at=at, ended_at=None if open_ else at + timedelta(minutes=minutes), queue=queue,
                          fingerprint=str(n), data={"handoff": handoff, "attributes": attrs})


@pytest.fixture
def engine(store_url):
    return get_engine(store_url)


def add(engine, *rows):
    with session_scope(engine) as s:
        for r in rows:
            s.add(r)


def metrics(engine, **kw):
    with Session(engine) as s:
        return analytics.journey_metrics(s, **kw)


def test_channel_switches_count_only_consecutive_contacts_within_7_days(engine):
    add(engine, row("a", "chat", T), row("a", "voice", T + DAY), row("a", "voice", T + 2 * DAY),
        row("a", "sms", T + 10 * DAY), row("b", "email", T), row("b", "chat", T + 8 * DAY))
    m = metrics(engine, since=T - DAY, until=T + 20 * DAY)
    assert m["channel_switch"]["pairs"] == 2 and m["channel_switch"]["switches"] == 1
    assert m["channel_switch"]["rate"] == 0.5
    assert m["channel_switch"]["top"] == [{"from": "chat", "to": "voice", "count": 1}]


def test_repeat_contact_looks_past_the_window_end_but_counts_only_contacts_inside(engine):
    add(engine, row("a", "chat", T), row("a", "voice", T + DAY), row("a", "sms", T + 12 * DAY),
        row("b", "voice", T + 2 * DAY), row("b", "voice", T + 4 * DAY),  # repeat lands after until
        row("c", "email", T + DAY, direction="outbound"), row("c", "voice", T + 2 * DAY))
    m = metrics(engine, since=T, until=T + 3 * DAY)
    rp = m["repeat_contact_7d"]
    # inbound inside: a@T, a@T+1d, b@T+2d, c@T+2d; repeated: a@T (by a@T+1d), b@T+2d (by b@T+4d)
    assert (rp["inbound_contacts"], rp["repeated"]) == (4, 2)
    assert rp["fcr_proxy"] == 0.5
    assert m["contacts"] == 5 and m["customers"] == 3


def test_bot_containment_counts_bot_sessions_and_handoffs(engine):
    ho = {"from_bot": "Ava", "intent": "refund"}
    add(engine, row("a", "bot", T), row("a", "chat", T + timedelta(hours=1), handoff=ho),
        row("b", "bot", T), row(None, "bot", T), row("b", "chat", T + DAY))
    bot = metrics(engine, since=T - DAY, until=T + 5 * DAY)["bot"]
    assert bot == {"sessions": 4, "handed_off": 1, "contained": 3, "containment_rate": 0.75}


def test_contacts_per_customer_ignore_unlinked_contacts_and_count_absorbed_ids_as_the_survivor(engine):
    add(engine, row("a", "voice", T), row("a", "voice", T + DAY), row("a-old", "voice", T + 2 * DAY),
        row("b", "voice", T), row(None, "voice", T), row(None, "voice", T + DAY))
    with session_scope(engine) as s:
        s.add(GoldenAlias(alias_id="a-old", golden_id="a"))
    m = metrics(engine, since=T - DAY, until=T + 5 * DAY)
    voice = m["per_channel"]["voice"]
    assert voice == {"contacts": 6, "customers": 2, "per_customer": 2.0}
    assert m["customers"] == 2


def test_empty_window_gives_none_rates_and_a_readable_report(engine):
    m = metrics(engine, days=7)
    assert m["contacts"] == 0 and m["bot"]["containment_rate"] is None
    md = analytics.journey_markdown(m)
    assert "| bot containment rate | n/a |" in md


def test_window_rejects_bad_bounds():
    with pytest.raises(ValueError, match="positive"):
        analytics.window(days=0)
    with pytest.raises(ValueError, match="before"):
        analytics.window(T, T - DAY)


def test_wfm_buckets_by_15_minutes_channel_and_queue_with_handle_time_less_wait(engine):
    add(engine, row("a", "voice", T + timedelta(minutes=1), queue="Support", minutes=10, wait=60),
        row("b", "voice", T + timedelta(minutes=14), queue="Support", minutes=6),
        row("c", "voice", T + timedelta(minutes=15), queue="Support", minutes=4),
        row("d", "voice", T + timedelta(minutes=2), queue="Support", open_=True),
        row("e", "chat", T + timedelta(minutes=3), queue="=HYPERLINK(\"x\")", minutes=5),
        row("f", "sms", T + timedelta(minutes=4), direction="outbound"))
    with Session(engine) as s:
        rows = analytics.wfm_intervals(s, T, T + DAY)
        every = analytics.wfm_intervals(s, T, T + DAY, direction="all", channels=["sms"])
        with pytest.raises(ValueError, match="direction"):
            analytics.wfm_intervals(s, direction="up")
    first = [r for r in rows if r["channel"] == "voice" and r["interval_start"] == "2026-05-04T10:00:00Z"][0]
    # 540 s (600 less 60 s wait) and 360 s; the open contact counts as volume but has no handle time
    assert (first["contacts"], first["handled"], first["aht_seconds"]) == (3, 2, 450.0)
    second = [r for r in rows if r["channel"] == "voice" and r["interval_start"] == "2026-05-04T10:15:00Z"][0]
    assert (second["contacts"], second["aht_seconds"], second["interval_end"]) == (1, 240.0, "2026-05-04T10:30:00Z")
    assert all(r["direction"] == "inbound" for r in rows)
    assert {(r["channel"], r["direction"]) for r in every} == {("sms", "outbound")}
    assert sum(r["contacts"] for r in every) == 1 and len(every) == 96  # a day of intervals
    table = list(csv.reader(io.StringIO(analytics.wfm_csv(rows))))
    assert table[0] == analytics.WFM_COLUMNS
    assert any(r[3] == "'=HYPERLINK(\"x\")" for r in table[1:])  # formula made inert


def test_wfm_lists_every_interval_of_the_range_per_channel_and_queue_with_zeros(engine):
    add(engine, row("a", "voice", T + timedelta(minutes=1), queue="Support", minutes=10),
        row("b", "voice", T + timedelta(minutes=50), queue="Support", minutes=10),
        row("c", "chat", T + timedelta(minutes=20), queue="Sales", minutes=5))
    with Session(engine) as s:
        # since/until off the 15-minute grid: the intervals that hold them are included
        rows = analytics.wfm_intervals(s, T - timedelta(minutes=10), T + timedelta(hours=1, minutes=5))
        spanned = analytics.wfm_intervals(s)  # no bounds: first to last interval with a contact
        with pytest.raises(ValueError, match="narrow since/until"):
            analytics.wfm_intervals(s, T - timedelta(days=3650), T + DAY)
    starts = sorted({r["interval_start"] for r in rows})
    assert starts == ["2026-05-04T09:45:00Z", "2026-05-04T10:00:00Z", "2026-05-04T10:15:00Z",
                      "2026-05-04T10:30:00Z", "2026-05-04T10:45:00Z", "2026-05-04T11:00:00Z"]
    series = {(r["channel"], r["queue"]) for r in rows}
    assert series == {("voice", "Support"), ("chat", "Sales")}
    assert len(rows) == len(starts) * len(series), "every interval for every channel and queue"
    by = {(r["interval_start"], r["channel"]): r for r in rows}
    quiet = by[("2026-05-04T10:15:00Z", "voice")]
    assert (quiet["contacts"], quiet["handled"], quiet["aht_seconds"], quiet["total_handle_seconds"]) == (0, 0, None, 0)
    assert by[("2026-05-04T10:45:00Z", "voice")]["contacts"] == 1 and by[("2026-05-04T10:15:00Z", "chat")]["contacts"] == 1
    assert sum(r["contacts"] for r in rows) == 3
    assert [r["interval_start"] for r in spanned if r["channel"] == "voice"] == starts[1:5]
    table = list(csv.reader(io.StringIO(analytics.wfm_csv(rows))))
    assert len(table) == 1 + len(rows)
    assert table[1 + rows.index(quiet)][5:] == ["0", "0", "", "0.0"]  # zeros, and no handle time to average
