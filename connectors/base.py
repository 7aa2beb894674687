"""The connector contract every vendor implements.

A connector speaks one vendor: it owns auth, pagination, cursors, batching, rate limits and retries,
and knows nothing of the canonical model. It yields :class:`~omnisync.records.Page` objects of
:class:`~omnisync.records.SourceRecord` with the cursor to store once the page is durable, and
accepts :class:`~omnisync.records.OutboundRecord` batches in the vendor's terms, answering one
:class:`~omnisync.records.WriteOutcome` per input record.

What to fetch is declared per stream (:class:`StreamSpec`); how is the shared HTTP layer
(:mod:`connectors.http`) or the vendor SDK wrapped in the same retry and budget policy.
Credentials arrive as typed objects (:mod:`connectors.credentials`); connectors never read the
environment.

Every connector must pass the contract suite in ``tests/contract``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar

from connectors.errors import (  # noqa: F401  (re-exported: the contract includes the error classes)
    AuthError,
    BadRequestError,
    ConnectorError,
    NotFoundError,
    QuotaExhaustedError,
    RateLimitedError,
    TransientError,
)
from omnisync.records import (  # noqa: F401  (re-exported)
    Cursor,
    OutboundRecord,
    Page,
    SourceRecord,
    WriteOutcome,
    WriteStatus,
)


@dataclass(frozen=True)
class StreamSpec:
    """What one stream is: its name, vendor object, and how it is read and written.

    ``kind`` is ``"profile"`` (people: contacts, leads, address-book entries), ``"interaction"``
    (calls, chats, messages, email events, activities) or ``"consent"``.
    ``write_batch`` is the vendor's maximum records per write call (0 = not writable).
    ``retention`` is how far back the vendor keeps records (None: for good): a full read that no
    longer returns an older record is not evidence that it was deleted.
    """

    name: str
    kind: str
    vendor_object: str
    page_size: int = 100
    write_batch: int = 0
    overlap: timedelta = timedelta(minutes=5)
    incremental: bool = True
    retention: timedelta | None = None


class Connector(ABC):
    """Base class for vendor connectors.

    Subclasses set ``system`` and ``streams`` and implement :meth:`read` and (for writable
    streams) :meth:`write`. ``api_calls`` counts every request made, for run artifacts and
    the benchmark's calls-vs-minimum ratio.
    """

    system: ClassVar[str]
    streams: ClassVar[dict[str, StreamSpec]]

    def stream(self, name: str) -> StreamSpec:
        try:
            return self.streams[name]
        except KeyError:
            raise ValueError(f"{self.system} has no stream {name!r}; known: {sorted(self.streams)}") from None

    @abstractmethod
    def check(self) -> None:
        """Make one cheap authenticated call; raise :class:`AuthError` when credentials are bad."""

    @abstractmethod
    def read(self, stream: str, cursor: Cursor | None = None, *, until: datetime | None = None) -> Iterator[Page]:
        """Yield pages of records changed since ``cursor`` (all records when ``None``).

        Each page carries the cursor that is safe to store after that page is durable.
        """

    def write(self, stream: str, records: Sequence[OutboundRecord]) -> list[WriteOutcome]:
        """Upsert ``records`` in batches of the vendor's maximum; one outcome per input, in order."""
        raise NotImplementedError(f"{self.system} stream {stream!r} is read-only")

    @property
    @abstractmethod
    def api_calls(self) -> int:
        """Requests sent so far by this connector instance (retries included)."""

    def close(self) -> None:  # pragma: no cover - trivial default
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chunks(seq: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of ``seq`` of at most ``size`` items (write batching)."""
    if size <= 0:
        raise ValueError("batch size must be positive")
    for i in range(0, len(seq), size):
        yield seq[i:i + size]
