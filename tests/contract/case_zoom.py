"""Zoom Contact Center in the contract suite: engagements read; address-book contacts read and upserted."""

from __future__ import annotations

from datetime import timedelta

from connectors.credentials import ZoomCredentials
from connectors.http import RateBudget
from connectors.zoom import ZoomConnector
from omnisync.records import OutboundRecord
from sandbox.zoom import ZoomSandbox
from tests.contract.cases import case
from tests.contract.harness import ContractCase

SIZE, SEED = 120, 5


def _connector(page_size: int):
    def make(info, good: bool) -> ZoomConnector:
        creds = dict(info["credentials"])
        if not good:
            creds["client_secret"] = "a-rotated-secret"
        # Under the sandbox's 60 requests/s so that only injected 429s are seen.
        # The seeded history spans four months: a shorter backfill keeps the 429 test's sleeps few.
        return ZoomConnector(ZoomCredentials(base_url=info["base_url"], **creds), page_size=page_size,
                             budget=RateBudget(40.0, 40), history=timedelta(days=150))
    return make


def _customers(sb: ZoomSandbox) -> list[str]:
    book = next(b for b, v in sb.address_books.items() if v["address_book_name"] == "Customers")
    return [cid for cid, c in sb.contacts.items() if c["address_book_id"] == book]


@case
def zoom_engagements() -> ContractCase:
    return ContractCase(
        name="zoom:engagements",
        make_sandbox=lambda: ZoomSandbox(size=SIZE, seed=SEED),
        make_connector=_connector(20),
        read_stream="engagements",
        expected_count=lambda sb: len(sb.engagements),
        fault_paths=r"^/v2/",
    )


@case
def zoom_address_book_contacts() -> ContractCase:
    existing = _customers(ZoomSandbox(size=SIZE, seed=SEED))[0]
    return ContractCase(
        name="zoom:address_book_contacts",
        make_sandbox=lambda: ZoomSandbox(size=SIZE, seed=SEED),
        make_connector=_connector(20),
        read_stream="address_book_contacts",
        expected_count=lambda sb: len(_customers(sb)),
        write_stream="address_book_contacts",
        sample_outbound=lambda n: [OutboundRecord(
            key=f"golden-{i}|new", match={"omnisync_golden_id": f"golden-{i}"},
            payload={"first_name": "Contract", "last_name": f"Case{i}", "phone_numbers": f"+1415555{7100 + i}",
                     "custom_fields": {"omnisync_golden_id": f"golden-{i}"}}) for i in range(n)],
        # An agent-visible name cannot be blanked: Zoom answers 400 (code 2104).
        invalid_outbound=lambda: OutboundRecord(key=f"golden-x|{existing}", external_id=existing,
                                                payload={"display_name": ""}),
        fault_paths=r"^/v2/",
    )
