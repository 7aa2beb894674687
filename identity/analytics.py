"""Journey analytics and the workforce-management feed, computed from the unified timeline.

Both read only the shape of contacts (customer, channel, direction, times, queue, whether a bot
handed off), never what was said, so their output carries no personal data and can go into Prefect
artifacts, CSV files and API responses as is.

Journey metrics (:func:`journey_metrics`), over contacts that started in ``[since, until)``:

* **channel-switch rate**: of consecutive contacts by the same customer at most 7 days apart, the
  share on a different channel than the one before (the customer had to try another channel);
* **repeat contact within 7 days** (a first-contact-resolution proxy): of inbound contacts, the share
  followed by another inbound contact from the same customer within 7 days (contacts up to 7 days
  after ``until`` are looked at, so the end of the window is not flattered);
* **bot containment rate**: of bot sessions (bot-channel contacts and contacts carrying a bot
  hand-off), the share the bot finished without handing off to a live agent;
* **contacts per customer per channel**: per channel, contacts divided by the customers who used it.

The WFM feed (:func:`wfm_intervals`) gives contact volume and average handle time per channel and
queue in 15-minute intervals, the input forecasting tools (NICE, Verint, Calabrio...) import.

Contacts still filed under a merged-away golden id count for the survivor (through
``golden_alias``); contacts not yet attached to anyone count in volumes and bot figures only.

Everything streams in one pass through a server-side cursor (the WFM feed in ``started_at`` index
order; journeys sorted by customer and time in the database), so memory stays flat however long
the timeline is.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select

from identity.store import GoldenAlias, InteractionRow
from omnisync.records import utcnow

REPEAT_WINDOW = timedelta(days=7)
SWITCH_WINDOW = timedelta(days=7)
INTERVAL = timedelta(minutes=15)
WFM_COLUMNS = ["interval_start", "interval_end", "channel", "queue", "direction", "contacts", "handled",
               "aht_seconds", "total_handle_seconds"]
_STREAM_BATCH = 2_000
MAX_WFM_ROWS = 200_000  # about 30 days of 15-minute intervals for 70 channel/queue series


def _aware(dt: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes for timezone-aware columns; the store writes UTC.
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt


def _store_time(session: Session, t: datetime) -> datetime:
    # SQLite keeps naive UTC text: an aware bound would be compared as a string with an offset
    if session.get_bind().dialect.name == "sqlite":
        return t.astimezone(timezone.utc).replace(tzinfo=None)
    return t


def window(since: datetime | None = None, until: datetime | None = None,
           days: int | None = None) -> tuple[datetime | None, datetime | None]:
    """Normalize a reporting window: ``days`` means the last N days up to ``until`` (default now)."""
    since, until = _aware(since), _aware(until)
    if days is not None:
        if days <= 0:
            raise ValueError("days must be a positive number of days")
        until = until or utcnow()
        since = since or until - timedelta(days=days)
    if since is not None and until is not None and since >= until:
        raise ValueError("since must be before until")
    return since, until


def _is_bot_session(channel: str, handoff: Any) -> bool:
    return channel == "bot" or bool(handoff)


def journey_metrics(session: Session, since: datetime | None = None, until: datetime | None = None, *,
                    days: int | None = None) -> dict[str, Any]:
    """Journey metrics over contacts started in ``[since, until)`` (or the last ``days`` days).

    Contacts not yet attached to a customer count in the bot figures and volumes but not in the
    per-customer ones. Rates are None when there is nothing to divide by.
    """
    since, until = window(since, until, days)
    look_until = until + max(REPEAT_WINDOW, SWITCH_WINDOW) if until is not None else None
    handoff = InteractionRow.data["handoff"]
    # A contact still filed under a merged-away id belongs to the survivor: one person, one journey.
    customer = func.coalesce(GoldenAlias.golden_id, InteractionRow.golden_id)
    q = (select(customer, InteractionRow.channel, InteractionRow.direction, InteractionRow.started_at, handoff)
         .select_from(InteractionRow)
         .outerjoin(GoldenAlias, GoldenAlias.alias_id == InteractionRow.golden_id))
    if since is not None:
        q = q.where(InteractionRow.started_at >= _store_time(session, since))
    if look_until is not None:
        q = q.where(InteractionRow.started_at < _store_time(session, look_until))
    q = q.order_by(customer, InteractionRow.started_at, InteractionRow.id)

    contacts = 0
    by_channel: Counter[str] = Counter()
    linked_by_channel: Counter[str] = Counter()  # contacts attached to a customer, per channel
    customers_on: dict[str, int] = Counter()
    customers = 0
    bot_sessions = handed_off = 0
    pairs = switches = 0
    switch_matrix: Counter[tuple[str, str]] = Counter()
    inbound = repeats = 0

    def in_window(t: datetime) -> bool:
        return until is None or t < until

    current: str | None = object()  # type: ignore[assignment]  # sentinel: no customer yet
    prev: tuple[str, datetime] | None = None
    pending_inbound: datetime | None = None  # last in-window inbound contact awaiting a repeat
    seen_channels: set[str] = set()

    for gid, channel, direction, started, ho in _stream(session, q):
        started = _aware(started)
        if gid != current:
            for c in seen_channels:
                customers_on[c] += 1
            seen_channels = set()
            current, prev, pending_inbound = gid, None, None
            if gid is not None and in_window(started):
                customers += 1
            counted_customer = gid is not None and in_window(started)
        elif gid is not None and not counted_customer and in_window(started):
            customers += 1
            counted_customer = True
        inside = in_window(started)
        if gid is not None and direction == "inbound":
            if pending_inbound is not None and started - pending_inbound <= REPEAT_WINDOW:
                repeats += 1
            pending_inbound = None
        if gid is not None and prev is not None and prev[1] is not None and in_window(prev[1]) \
                and started - prev[1] <= SWITCH_WINDOW:
            pairs += 1
            if channel != prev[0]:
                switches += 1
                switch_matrix[(prev[0], channel)] += 1
        if not inside:
            prev = (channel, started) if gid is not None else None
            continue
        contacts += 1
        by_channel[channel] += 1
        if gid is not None:
            seen_channels.add(channel)
            linked_by_channel[channel] += 1
            if direction == "inbound":
                inbound += 1
                pending_inbound = started
        if _is_bot_session(channel, ho):
            bot_sessions += 1
            if ho:
                handed_off += 1
        prev = (channel, started) if gid is not None else None
    for c in seen_channels:
        customers_on[c] += 1

    def rate(n: int, d: int) -> float | None:
        return round(n / d, 4) if d else None

    per_channel = {ch: {"contacts": by_channel[ch], "customers": customers_on.get(ch, 0),
                        "per_customer": rate(linked_by_channel[ch], customers_on.get(ch, 0))}
                   for ch in sorted(by_channel)}
    return {
        "window": {"since": since.isoformat() if since else None, "until": until.isoformat() if until else None},
        "contacts": contacts,
        "customers": customers,
        "channel_switch": {"pairs": pairs, "switches": switches, "rate": rate(switches, pairs),
                           "top": [{"from": a, "to": b, "count": n} for (a, b), n in switch_matrix.most_common(10)]},
        "repeat_contact_7d": {"inbound_contacts": inbound, "repeated": repeats, "rate": rate(repeats, inbound),
                              "fcr_proxy": None if not inbound else round(1 - repeats / inbound, 4)},
        "bot": {"sessions": bot_sessions, "handed_off": handed_off, "contained": bot_sessions - handed_off,
                "containment_rate": rate(bot_sessions - handed_off, bot_sessions)},
        "per_channel": per_channel,
    }


def _stream(session: Session, q: Any) -> Iterator[tuple]:
    result = session.exec(q.execution_options(yield_per=_STREAM_BATCH))
    yield from result


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f}%"


def journey_markdown(metrics: dict[str, Any]) -> str:
    """The metrics as a Markdown report (the Prefect artifact of the journey-report flow)."""
    w = metrics["window"]
    sw, rp, bot = metrics["channel_switch"], metrics["repeat_contact_7d"], metrics["bot"]
    span = f"{w['since'] or 'the beginning'} to {w['until'] or 'now'}"
    lines = [
        f"# Customer journeys, {span}", "",
        f"**{metrics['contacts']:,}** contacts from **{metrics['customers']:,}** customers.", "",
        "| metric | value | basis |", "|---|---|---|",
        f"| channel-switch rate | {_pct(sw['rate'])} | {sw['switches']:,} of {sw['pairs']:,} consecutive contacts "
        f"within 7 days changed channel |",
        f"| repeat contact within 7 days | {_pct(rp['rate'])} | {rp['repeated']:,} of {rp['inbound_contacts']:,} "
        f"inbound contacts (FCR proxy {_pct(rp['fcr_proxy'])}) |",
        f"| bot containment rate | {_pct(bot['containment_rate'])} | {bot['contained']:,} of {bot['sessions']:,} "
        f"bot sessions finished without a hand-off |",
        "", "## Contacts per customer, by channel", "",
        "| channel | contacts | customers | per customer |", "|---|---|---|---|",
    ]
    for ch, row in metrics["per_channel"].items():
        per = "n/a" if row["per_customer"] is None else f"{row['per_customer']:.2f}"
        lines.append(f"| {ch} | {row['contacts']:,} | {row['customers']:,} | {per} |")
    if sw["top"]:
        lines += ["", "## Most frequent channel switches", "", "| from | to | count |", "|---|---|---|"]
        lines += [f"| {t['from']} | {t['to']} | {t['count']:,} |" for t in sw["top"]]
    return "\n".join(lines) + "\n"


# --- workforce management ------------------------------------------------------------------------

DIRECTIONS = ("inbound", "outbound", "all")


def _floor(t: datetime) -> datetime:
    t = t.astimezone(timezone.utc)
    return t.replace(minute=t.minute - t.minute % 15, second=0, microsecond=0)


def _ceil(t: datetime) -> datetime:
    down = _floor(t)
    return down if down == t.astimezone(timezone.utc) else down + INTERVAL


def _handle_seconds(started: datetime, ended: datetime | None, wait: Any) -> float | None:
    """Time an agent (or the bot) spent on the contact: start to end, less time waiting in queue."""
    if ended is None:
        return None
    total = (_aware(ended) - started).total_seconds()
    try:
        total -= float(wait) if wait not in (None, "") else 0.0
    except (TypeError, ValueError):
        pass
    return max(total, 0.0)


def wfm_intervals(session: Session, since: datetime | None = None, until: datetime | None = None, *,
                  direction: str = "inbound", channels: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Volume and handle time per 15-minute interval, channel and queue (contacts by start time).

    ``handled`` counts contacts that have ended (open ones have no handle time yet);
    ``aht_seconds`` is their mean handle time (end minus start, less queue wait when the contact
    center reports it). ``direction`` is inbound (the default: arrivals to forecast), outbound or all.

    Forecasting tools read a missing interval as missing data, not as a quiet one, so every
    interval of the range is listed for each channel, queue and direction that had a contact in it,
    with zero contacts where there were none. The range is ``[since, until)`` on 15-minute
    boundaries (an open bound: the first or last interval with a contact); a range that would need
    more than ``MAX_WFM_ROWS`` rows is refused (``ValueError``) rather than built in memory.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
    since, until = window(since, until)
    wait = InteractionRow.data["attributes"]["wait_seconds"]
    q = select(InteractionRow.started_at, InteractionRow.ended_at, InteractionRow.channel,
               InteractionRow.queue, InteractionRow.direction, wait)
    if since is not None:
        q = q.where(InteractionRow.started_at >= _store_time(session, since))
    if until is not None:
        q = q.where(InteractionRow.started_at < _store_time(session, until))
    if direction != "all":
        q = q.where(InteractionRow.direction == direction)
    chans = sorted(set(channels)) if channels else None
    if chans:
        q = q.where(InteractionRow.channel.in_(chans))
    q = q.order_by(InteractionRow.started_at, InteractionRow.id)
    buckets: dict[tuple, list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for started, ended, channel, queue, dirn, w in _stream(session, q):
        started = _aware(started)
        b = buckets[(_floor(started), channel, queue or "", dirn)]
        b[0] += 1
        h = _handle_seconds(started, ended, w)
        if h is not None:
            b[1] += 1
            b[2] += h
    if not buckets:
        return []
    series = sorted({k[1:] for k in buckets})
    first = _floor(since) if since is not None else min(k[0] for k in buckets)
    end = _ceil(until) if until is not None else max(k[0] for k in buckets) + INTERVAL
    intervals = int((end - first) / INTERVAL)
    if intervals * len(series) > MAX_WFM_ROWS:
        raise ValueError(f"the range needs {intervals} intervals for {len(series)} channel/queue series, more than "
                         f"{MAX_WFM_ROWS} rows: narrow since/until or filter channels")
    rows = []
    for i in range(intervals):
        start = first + i * INTERVAL
        for channel, queue, dirn in series:
            n, handled, total = buckets.get((start, channel, queue, dirn), (0, 0, 0.0))
            rows.append({"interval_start": start.isoformat().replace("+00:00", "Z"),
                         "interval_end": (start + INTERVAL).isoformat().replace("+00:00", "Z"),
                         "channel": channel, "queue": queue, "direction": dirn, "contacts": n, "handled": handled,
                         "aht_seconds": round(total / handled, 1) if handled else None,
                         "total_handle_seconds": round(total, 1)})
    return rows


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def csv_cell(value: Any) -> Any:
    """Make a text cell inert in spreadsheets: one starting like a formula gets a leading quote."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def wfm_csv(rows: Iterable[dict[str, Any]]) -> str:
    """The WFM rows as CSV (header first), every text cell formula-safe."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(WFM_COLUMNS)
    for r in rows:
        w.writerow([csv_cell(r[c]) for c in WFM_COLUMNS])
    return buf.getvalue()
