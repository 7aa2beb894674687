"""HubSpot's contract case: the real SDK against the HubSpot sandbox."""

from __future__ import annotations

from connectors.credentials import HubSpotCredentials
from connectors.http import RetryPolicy
from connectors.hubspot import HubSpotConnector
from omnisync.records import OutboundRecord
from sandbox.hubspot import HubSpotSandbox
from tests.contract.cases import case
from tests.contract.harness import ContractCase


def _connector(info: dict, good: bool) -> HubSpotConnector:
    creds = dict(info["credentials"])
    if not good:
        creds["access_token"] = "revoked-token"
    return HubSpotConnector(HubSpotCredentials(host=info["base_url"], **creds),
                            policy=RetryPolicy(attempts=8, backoff_initial=0.05, backoff_max=0.5))


def _expected(sb: HubSpotSandbox) -> int:
    # A full read yields live contacts, archived ones as deletions and merged-away ids as merges.
    c = sb.summary()["contacts"]
    return c["live"] + c["archived"] + c["merged"]


def _outbound(n: int) -> list[OutboundRecord]:
    return [OutboundRecord(key=f"G-contract-{i}|new", match={"omnisync_golden_id": f"G-contract-{i}"},
                           payload={"properties": {"email": f"contract.case{i}@example.org", "firstname": f"Case{i}",
                                                   "omnisync_golden_id": f"G-contract-{i}"}})
            for i in range(n)]


@case
def hubspot_contacts() -> ContractCase:
    return ContractCase(
        name="hubspot:contacts",
        make_sandbox=lambda: HubSpotSandbox(size=450, seed=3),
        make_connector=_connector,
        read_stream="contacts",
        expected_count=_expected,
        write_stream="contacts",
        sample_outbound=_outbound,
        invalid_outbound=lambda: OutboundRecord(key="G-bad|new", match={"omnisync_golden_id": "G-bad"},
                                                payload={"properties": {"email": "not-an-address"}}),
    )
