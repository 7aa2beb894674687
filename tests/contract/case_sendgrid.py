"""SendGrid in the contract suite: Email Activity reads, and unsubscribes read plus suppressions written."""

from __future__ import annotations

from connectors.credentials import SendGridCredentials
from connectors.sendgrid import SendGridConnector
from omnisync.records import OutboundRecord
from sandbox.sendgrid import SendGridSandbox
from tests.contract.cases import case
from tests.contract.harness import ContractCase


def _connector(page_size: int | None):
    def make(info, good: bool) -> SendGridConnector:
        creds = dict(info["credentials"])
        if not good:
            creds["api_key"] = "SG.wrong-key"
        return SendGridConnector(SendGridCredentials(base_url=info["base_url"], **creds), page_size=page_size)
    return make


@case
def sendgrid_messages() -> ContractCase:
    return ContractCase(
        name="sendgrid:messages",
        make_sandbox=lambda: SendGridSandbox(size=150, seed=3),
        # A page of 20: the ~110 seeded messages span several windows whatever today's date is (at
        # the full 1,000 one 30-day window can hold them all once the seeded month lies far back).
        make_connector=_connector(20),
        read_stream="messages",
        expected_count=lambda sb: len(sb.messages),
        fault_paths=r"^/v3/",
    )


@case
def sendgrid_unsubscribes() -> ContractCase:
    return ContractCase(
        name="sendgrid:unsubscribes",
        make_sandbox=lambda: SendGridSandbox(size=400, seed=3),
        # Small pages so a few hundred seeded people still give several offset pages.
        make_connector=_connector(4),
        read_stream="unsubscribes",
        expected_count=lambda sb: len(sb.unsubscribes),
        write_stream="suppressions",
        sample_outbound=lambda n: [OutboundRecord(key=f"golden-{i}|contract{i}@example.org",
                                                  payload={"email": f"Contract{i}@example.org"},
                                                  match={"email": f"contract{i}@example.org"}) for i in range(n)],
        invalid_outbound=lambda: OutboundRecord(key="golden-x|bad", payload={"email": "not-an-address"}),
        fault_paths=r"^/v3/",
    )
