"""An in-memory connector for tests of the pipeline around connectors (not of vendors).

It honours the connector contract: ordered compound cursors, overlap re-reads, pages, per-record
write outcomes, and a daily quota that raises QuotaExhaustedError.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from connectors.base import Connector, StreamSpec, chunks
from connectors.errors import QuotaExhaustedError
from omnisync.records import Cursor, OutboundRecord, Page, SourceRecord, WriteOutcome, WriteStatus

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


class FakeConnector(Connector):
    system = "acme"
    streams = {"people": StreamSpec("people", "profile", "Person", page_size=10, write_batch=5,
                                    overlap=timedelta(seconds=0))}

    def __init__(self, people: dict[str, dict] | None = None, *, quota: int | None = None):
        self.people = people if people is not None else {}
        self.stamps: dict[str, datetime] = {k: T0 for k in self.people}
        self.quota = quota
        self.calls = 0
        self.writes: list[list[OutboundRecord]] = []

    def _call(self) -> None:
        self.calls += 1
        if self.quota is not None and self.calls > self.quota:
            raise QuotaExhaustedError("daily API quota spent", system=self.system, status=403,
                                      resume_at=T0 + timedelta(days=1))

    def check(self) -> None:
        self._call()

    def read(self, stream, cursor=None, *, until=None):
        self.stream(stream)
        since = cursor.read_from(self.streams[stream].overlap) if cursor else None
        rows = sorted((self.stamps[k], k) for k in self.people)
        if since is not None:
            rows = [r for r in rows if (r[0], r[1]) > (cursor.modified_at, cursor.last_id or "")]
        cur = cursor or Cursor()
        for part in chunks(rows, self.streams[stream].page_size):
            self._call()
            recs = [SourceRecord(system=self.system, stream=stream, external_id=k, modified_at=ts,
                                 payload=dict(self.people[k])) for ts, k in part]
            cur = cur.advance(recs)
            yield Page(recs, cur)

    def write(self, stream, records):
        out = []
        for batch in chunks(list(records), 5):
            self._call()
            self.writes.append(list(batch))
            for r in batch:
                ext = r.external_id or f"new-{len(self.people) + 1}"
                created = ext not in self.people
                self.people.setdefault(ext, {}).update(r.payload)
                self.stamps[ext] = self.stamps.get(ext, T0) + timedelta(seconds=1)
                out.append(WriteOutcome(r.key, WriteStatus.created if created else WriteStatus.updated, ext))
        return out

    @property
    def api_calls(self) -> int:
        return self.calls
