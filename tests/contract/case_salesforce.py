"""Salesforce's contract case: simple-salesforce over TLS against the Salesforce sandbox."""

from __future__ import annotations

from connectors.credentials import SalesforceCredentials
from connectors.http import RetryPolicy
from connectors.salesforce import SalesforceConnector
from omnisync.records import OutboundRecord
from sandbox.salesforce import SalesforceSandbox
from tests.contract.cases import case
from tests.contract.harness import ContractCase


def _connector(info: dict, good: bool) -> SalesforceConnector:
    creds = dict(info["credentials"])
    if not good:
        creds["client_secret"] = "a-rotated-consumer-secret"
    return SalesforceConnector(SalesforceCredentials(instance_url=info["base_url"], ca_bundle=info["ca_cert"], **creds),
                               policy=RetryPolicy(attempts=8, backoff_initial=0.05, backoff_max=0.5),
                               query_batch=200)


def _expected(sb: SalesforceSandbox) -> int:
    # queryAll yields live contacts, deleted ones and merge losers, each once.
    c = sb.summary()["Contact"]
    return c["live"] + c["deleted"] + c["merged"]


def _outbound(n: int) -> list[OutboundRecord]:
    return [OutboundRecord(key=f"G-contract-{i}|new", match={"Omnisync_Golden_Id__c": f"G-contract-{i}"},
                           payload={"LastName": f"Case{i}", "Email": f"contract.case{i}@example.org",
                                    "Omnisync_Golden_Id__c": f"G-contract-{i}"})
            for i in range(n)]


@case
def salesforce_contacts() -> ContractCase:
    return ContractCase(
        name="salesforce:contacts",
        make_sandbox=lambda: SalesforceSandbox(size=450, seed=3),
        make_connector=_connector,
        read_stream="contacts",
        expected_count=_expected,
        write_stream="contacts",
        sample_outbound=_outbound,
        invalid_outbound=lambda: OutboundRecord(key="G-bad|new", match={"Omnisync_Golden_Id__c": "G-bad"},
                                                payload={"LastName": "Bad", "Email": "not-an-address"}),
    )
