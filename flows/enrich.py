"""Enrichment from the CDP: look up in Segment's Profile API the people whose golden record changed.

Segment's Profile API cannot list users, only answer lookups ("email:a@x.com" -> traits and
external ids), so it is not a cursor stream like the others. After a resolution pass, the golden
records that changed since the last enrichment (the change feed's ``seq``) and carry no CDP user id
yet are looked up by email; the profiles found are ingested like any page and resolved again, which
attaches the web app's user id (and traits) to the right customer.

The change-feed position is a checkpoint (``segment``/``profiles-lookup``) saved in the same
transaction as the profiles it produced, so a crash repeats at most one batch of lookups.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from identity.ingest import Counts, ingest_records, load_cursor, save_cursor
from identity.store import ChangeEvent, GoldenRecord, run_in_transaction, session_scope
from omnisync.records import Cursor

STREAM = "profiles-lookup"
ASKED_MAX = 200_000  # addresses remembered per pass (about 15 MB)


def _targets(session: Session, after: int, limit: int, asked: set[int]) -> tuple[list[tuple[str, str]], int]:
    rows = list(session.exec(select(ChangeEvent.seq, ChangeEvent.golden_id).where(ChangeEvent.seq > after)
                             .order_by(ChangeEvent.seq).limit(limit)))
    if not rows:
        return [], after
    ids = list(dict.fromkeys(g for _, g in rows))
    # every address (the CDP may know the person by a personal one the CRM never had), each
    # person's first ones first: a profile found by a first address lists the others it knows,
    # and the connector then skips them
    by_rank: list[list[tuple[str, str]]] = [[], [], []]
    for i in range(0, len(ids), 500):
        for profile in session.exec(select(GoldenRecord.profile).where(GoldenRecord.golden_id.in_(ids[i:i + 500]),
                                                                       GoldenRecord.status == "active")):
            profile = profile or {}
            if profile.get("cdp_user_id") or not profile.get("emails"):
                continue
            for rank, e in enumerate(profile["emails"][:3]):
                if hash(e) not in asked:
                    by_rank[rank].append(("email", e))
    return [lk for rank in by_rank for lk in rank], rows[-1][0]


def enrich_from_cdp(engine: Engine, connector: Any, *, run_id: str | None = None, batch: int = 200) -> dict[str, Any]:
    """Look up changed golden records in the CDP and ingest what it knows about them.

    ``connector`` is a :class:`connectors.segment.SegmentConnector` (anything with
    ``fetch_profiles(lookups)`` and ``system``). Returns counts and the number of lookups made.
    """
    total = Counts()
    lookups_made = 0
    # A first load writes several change events per person (created, then updated by later
    # batches, merged...), and the profiles found only reach the golden record at the next
    # resolution: without this, one pass asked the CDP about the same address three times over.
    # Hashes, not addresses: no personal data held, and a person's new address is still asked.
    # Bounded, so a first load of millions keeps flat memory: past the bound an address may be
    # asked twice, which costs a call, not correctness.
    asked: set[int] = set()
    while True:
        with session_scope(engine) as s:
            cursor = load_cursor(s, connector.system, STREAM)
            after = int(cursor.token) if cursor and cursor.token else 0
            lookups, top = _targets(s, after, batch, asked)
        if top == after:
            break
        records = connector.fetch_profiles(lookups) if lookups else []
        lookups_made += len(lookups)
        if len(asked) > ASKED_MAX:
            asked.clear()
        asked.update(hash(e) for _, e in lookups)

        def store(session: Session, records=records, top=top) -> Counts:
            counts = ingest_records(session, records, run_id=run_id) if records else Counts()
            save_cursor(session, connector.system, STREAM, Cursor(token=str(top)), records=len(records),
                        run_id=run_id)
            return counts

        total.merge(run_in_transaction(store, engine))
    return {"lookups": lookups_made, "counts": total.as_dict()}
