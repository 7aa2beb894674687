"""Vendor rate budgets shared by every worker process on one store.

:class:`~connectors.http.RateBudget` paces the connectors of one process. Flow runs on several
workers (a backfill's windows, a sync beside a push) against one vendor tenant would each pace
themselves and overrun the vendor together. :class:`SharedRateBudget` keeps the token bucket in
the store instead (``rate_bucket``), so all of them draw from one bucket:

* ``acquire`` is one ``UPDATE ... RETURNING``: refill by the time since the last call, capped at
  the burst, minus what this call takes. A result below zero is a debt the caller waits out
  (``-tokens / rate`` seconds) before calling the vendor: callers queue in the order they asked;
  the aggregate rate never exceeds ``rate`` beyond one burst.
* ``observe`` lowers the shared bucket to what the vendor's usage headers say is left, exactly as
  the in-process budget does, so one worker's 429 slows down all of them.

Times are the workers' wall clocks (NTP keeps them within milliseconds of each other; a skew
shows up as a slightly early or late refill, never as a lost limit). On PostgreSQL the UPDATE
takes a row lock, so concurrent callers serialize on the row; on SQLite the database lock does.
The flows use it when the store is PostgreSQL (the multi-worker deployment), see
``flows.connect.budget_for``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import case, literal, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from connectors.http import RateBudget
from identity.store import RateBucket


class SharedRateBudget(RateBudget):
    """A :class:`RateBudget` whose bucket lives in the store, shared by every process using it."""

    def __init__(self, engine: Engine, name: str, rate: float, burst: int, *,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep):
        super().__init__(rate, burst, clock=clock, sleep=sleep)
        self.engine = engine
        self.name = name
        self.calls = 0  # round trips to the store, for the benchmark
        self._ensure = threading.Lock()
        self._created = False

    def _refilled(self, now: float):
        """SQL: the bucket's tokens refilled up to ``now``, capped at the burst."""
        grown = RateBucket.tokens + (literal(now) - RateBucket.updated) * self.rate
        return case((grown > self.burst, literal(float(self.burst))), else_=grown)

    def _create(self) -> None:
        with self._ensure:
            if self._created:
                return
            try:
                with self.engine.begin() as c:
                    if c.execute(RateBucket.__table__.select().where(RateBucket.name == self.name)).first() is None:
                        c.execute(RateBucket.__table__.insert().values(name=self.name, tokens=float(self.burst),
                                                                        updated=self._clock()))
            except IntegrityError:
                pass  # another worker created it first
            self._created = True

    def acquire(self, n: int = 1) -> None:
        self._create()
        now = self._clock()
        with self.engine.begin() as c:
            self.calls += 1
            left = c.execute(update(RateBucket).where(RateBucket.name == self.name)
                             .values(tokens=self._refilled(now) - n, updated=now)
                             .returning(RateBucket.tokens)).scalar_one()
        if left < 0:
            wait = -left / self.rate
            self.waited += wait
            self._sleep(wait)

    def observe(self, remaining: int | None, window_reset_s: float | None = None) -> None:
        if remaining is None:
            return
        self._create()
        now = self._clock()
        refilled = self._refilled(now)
        if remaining <= 0 and window_reset_s is not None:
            cap = float(-window_reset_s * self.rate)  # spent: nobody calls until the window resets
        else:
            cap = float(remaining)
        with self.engine.begin() as c:
            self.calls += 1
            c.execute(update(RateBucket).where(RateBucket.name == self.name)
                      .values(tokens=case((refilled > cap, literal(cap)), else_=refilled), updated=now))
