"""Twilio in the contract suite: message history read in windows; SMS sent once per record key."""

from __future__ import annotations

from connectors.credentials import TwilioCredentials
from connectors.twilio import TwilioConnector
from omnisync.records import OutboundRecord
from sandbox.twilio import CARE, TwilioSandbox
from tests.contract.cases import case
from tests.contract.harness import ContractCase


def make_connector(info, good: bool) -> TwilioConnector:
    creds = dict(info["credentials"])
    if not good:
        creds["auth_token"] = "revoked-token"
    # Small pages so a few hundred messages still give many windows.
    return TwilioConnector(TwilioCredentials(base_url=info["base_url"], **creds), page_size=20, sender=CARE)


@case
def twilio_messages() -> ContractCase:
    return ContractCase(
        name="twilio:messages",
        make_sandbox=lambda: TwilioSandbox(size=200, seed=5),
        make_connector=make_connector,
        read_stream="messages",
        expected_count=lambda sb: len(sb.messages),
        write_stream="messages",
        sample_outbound=lambda n: [OutboundRecord(key=f"golden-{i}|followup-{i}",
                                                  payload={"to": f"+1415555{7200 + i}", "body": f"Contract case {i}"})
                                   for i in range(n)],
        invalid_outbound=lambda: OutboundRecord(key="golden-x|followup-x", payload={"to": "+1555", "body": "hi"}),
        fault_paths=r"^/2010-04-01/",
    )
