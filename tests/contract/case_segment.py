"""Segment in the contract suite: profiles read by lookup (the Profile API cannot list users),
identify written through the Tracking API.

Segment offers no read-back of an identify other than the profile it lands in, so the generic
read-back step is off here; tests/test_segment_e2e.py reads written traits back by lookup.
"""

from __future__ import annotations

import httpx

from connectors.credentials import SegmentCredentials
from connectors.segment import SegmentConnector
from omnisync.records import OutboundRecord
from sandbox.segment import SegmentSandbox
from tests.contract.cases import case
from tests.contract.harness import ContractCase


def _connector(info, good: bool) -> SegmentConnector:
    creds = dict(info["credentials"])
    if not good:
        creds.update(write_key="wrong-write-key", profile_token="wrong-token")
    # The lookups come from the sandbox's ground truth, as enrichment would take them from golden records.
    state = httpx.get(f"{info['base_url']}/_sandbox/state", timeout=10).json()
    lookups = [("user_id", u) for u in state["user_ids"]]
    return SegmentConnector(SegmentCredentials(tracking_url=info["base_url"], profile_url=info["base_url"], **creds),
                            lookups=lookups, page_size=5)


@case
def segment_profiles() -> ContractCase:
    return ContractCase(
        name="segment:profiles",
        make_sandbox=lambda: SegmentSandbox(size=30, seed=3),
        make_connector=_connector,
        read_stream="profiles",
        expected_count=lambda sb: len(sb.summary()["user_ids"]),
        write_stream="identify",
        sample_outbound=lambda n: [OutboundRecord(key=f"golden-{i}|new",
                                                  payload={"userId": f"golden-{i}",
                                                           "traits": {"email": f"contract{i}@example.org",
                                                                      "firstName": "Contract"}},
                                                  match={"userId": f"golden-{i}"}) for i in range(n)],
        invalid_outbound=lambda: OutboundRecord(key="golden-x|new", payload={"traits": {"firstName": "NoId"}}),
        fault_paths=r"/traits$",
        extra={"read_back": False},
    )
