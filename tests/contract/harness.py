"""The connector contract suite's plumbing: one :class:`ContractCase` per connector.

A vendor registers its case in ``tests/contract/cases.py`` (one small function each). The suite
(``test_contract.py``) then proves, for every connector, against its own sandbox:
auth failure is an AuthError; paging terminates and reads every record exactly once; a 429 is
honored and retried; a 4xx fails fast with a useful message; reading resumes from a stored cursor
without losing or repeating records; written records read back (round trip).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.base import Connector
from omnisync.records import OutboundRecord
from sandbox.framework import Sandbox, SandboxCluster


@dataclass
class ContractCase:
    name: str
    make_sandbox: Callable[[], Sandbox]
    # (cluster info for this sandbox, good_credentials?) -> connector
    make_connector: Callable[[dict[str, Any], bool], Connector]
    read_stream: str
    expected_count: Callable[[Sandbox], int]
    write_stream: str | None = None
    sample_outbound: Callable[[int], list[OutboundRecord]] | None = None
    # an outbound record the vendor must reject with a 4xx (bad field value)
    invalid_outbound: Callable[[], OutboundRecord] | None = None
    # paths the 429 fault applies to (regex); None = every path
    fault_paths: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def running(case: ContractCase, tmp_path: Path) -> Iterator[tuple[Sandbox, dict[str, Any]]]:
    sb = case.make_sandbox()
    with SandboxCluster([sb], workdir=tmp_path) as cluster:
        yield sb, cluster.info()[sb.name]
