"""The contract every connector passes, run against each connector's own sandbox."""

from __future__ import annotations

import time

import pytest

from connectors.errors import AuthError, BadRequestError, ConnectorError
from tests.contract import cases as registry
from tests.contract.harness import ContractCase, running

registry.load_all()

CASES = registry.CASES
ids = [c.name for c in CASES]
pytestmark = pytest.mark.xdist_group("contract")


def _api_requests(sb) -> int:
    """Requests the sandbox served, OAuth token requests aside (a connector's first call fetches one)."""
    return sum(n for endpoint, n in sb.log.counts.items() if "oauth" not in endpoint)


def _read_all(conn, stream, cursor=None):
    pages = list(conn.read(stream, cursor))
    return pages, [r for p in pages for r in p.records]


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_bad_credentials_raise_auth_error(case: ContractCase, tmp_path):
    with running(case, tmp_path) as (sb, info):
        conn = case.make_connector(info, False)
        with pytest.raises(AuthError) as exc:
            conn.check()
        assert "credentials" in str(exc.value).lower()


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_paging_terminates_and_reads_every_record_once(case: ContractCase, tmp_path):
    with running(case, tmp_path) as (sb, info):
        conn = case.make_connector(info, True)
        conn.check()
        pages, records = _read_all(conn, case.read_stream)
        ids_read = [r.external_id for r in records]
        assert len(pages) > 1, "the sandbox should hold more than one page so paging is exercised"
        assert len(set(ids_read)) == case.expected_count(sb)
        assert all(r.system == conn.system for r in records)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_rate_limit_is_honored_and_retried(case: ContractCase, tmp_path):
    with running(case, tmp_path) as (sb, info):
        conn = case.make_connector(info, True)
        _, baseline = _read_all(conn, case.read_stream)
        sb.reset()
        sb.set_faults(rate_429=0.3, seed=3, paths=case.fault_paths)
        conn = case.make_connector(info, True)
        t0 = time.monotonic()
        _, records = _read_all(conn, case.read_stream)
        assert sb.log.faults_injected["429"] > 0
        assert sorted(r.external_id for r in records) == sorted(r.external_id for r in baseline)
        assert time.monotonic() - t0 < 60


@pytest.mark.parametrize("case", [c for c in CASES if c.invalid_outbound], ids=lambda c: c.name)
def test_client_error_fails_fast_with_a_useful_message(case: ContractCase, tmp_path):
    with running(case, tmp_path) as (sb, info):
        conn = case.make_connector(info, True)
        before = _api_requests(sb)
        try:
            outcomes = conn.write(case.write_stream, [case.invalid_outbound()])
        except BadRequestError as e:  # whole call rejected: fine, as long as it says why
            assert "mapping" in str(e).lower() or "field" in str(e).lower()
        else:
            assert len(outcomes) == 1 and not outcomes[0].ok
            assert outcomes[0].error and not outcomes[0].retryable
        after = _api_requests(sb)
        assert after - before <= 2, "a 4xx must not be retried"


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_read_resumes_from_cursor_without_loss_or_repeat(case: ContractCase, tmp_path):
    with running(case, tmp_path) as (sb, info):
        conn = case.make_connector(info, True)
        pages, all_records = _read_all(conn, case.read_stream)
        assert len(pages) >= 2
        first_page = pages[0]
        resumed_pages, resumed = _read_all(case.make_connector(info, True), case.read_stream, first_page.cursor)
        seen = {r.external_id for r in first_page.records} | {r.external_id for r in resumed}
        assert seen == {r.external_id for r in all_records}, "resuming from a cursor lost records"
        # Re-reads are limited to the overlap window: far fewer than a full re-read.
        assert len(resumed) < len(all_records)


@pytest.mark.parametrize("case", [c for c in CASES if c.write_stream], ids=lambda c: c.name)
def test_written_records_read_back(case: ContractCase, tmp_path):
    with running(case, tmp_path) as (sb, info):
        conn = case.make_connector(info, True)
        outbound = case.sample_outbound(3)
        outcomes = conn.write(case.write_stream, outbound)
        assert [o.key for o in outcomes] == [r.key for r in outbound]
        assert all(o.ok and o.external_id for o in outcomes), [o.error for o in outcomes]
        again = conn.write(case.write_stream, outbound)
        assert [o.external_id for o in again] == [o.external_id for o in outcomes], "upsert created twice"
        if case.extra.get("read_back", True):
            _, records = _read_all(conn, case.write_stream)
            got = {r.external_id for r in records}
            assert {o.external_id for o in outcomes} <= got


def test_every_connector_has_a_contract_case():
    import importlib
    import pkgutil

    import connectors
    from connectors.base import Connector

    systems = set()
    for mod in pkgutil.iter_modules(connectors.__path__):
        m = importlib.import_module(f"connectors.{mod.name}")
        for obj in vars(m).values():
            if isinstance(obj, type) and issubclass(obj, Connector) and obj is not Connector and getattr(obj, "system", None):
                systems.add(obj.system)
    covered = {c.name.split(":")[0] for c in CASES}
    assert systems <= covered, f"connectors without a contract case: {sorted(systems - covered)}"


def test_contract_errors_tell_the_user_what_to_do():
    err = ConnectorError("boom", system="x", status=400)
    assert "fix" in str(err).lower() or "re-run" in str(err).lower()
