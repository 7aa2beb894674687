"""OAuth credentials for Salesforce and Zoom: what a valid set is, where it comes from (environment,
Prefect block, sandbox info file), and the token cache every connector shares (renewal before
expiry, one fetch however many threads ask)."""

from __future__ import annotations

import threading
import time

import pytest
from pydantic import SecretStr, ValidationError

from connectors.credentials import SalesforceCredentials, ZoomCredentials
from connectors.http import IssuedToken, TokenSource
from connectors.salesforce import SalesforceConnector
from connectors.zoom import ZoomConnector
from flows.blocks import BLOCKS, _plain
from omnisync.credentials import CredentialsMissing, from_env, from_sandbox_info
from sandbox.framework import SandboxCluster
from sandbox.salesforce import SalesforceSandbox
from sandbox.zoom import ZoomSandbox


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counting_fetch(lifetime: float | None, delay: float = 0.0):
    issued: list[str] = []

    def fetch() -> IssuedToken:
        time.sleep(delay)
        issued.append(f"token-{len(issued) + 1}")
        return IssuedToken(issued[-1], lifetime)
    return fetch, issued


def test_a_token_is_reused_until_shortly_before_it_expires():
    clock = Clock()
    fetch, issued = counting_fetch(3600)
    tokens = TokenSource(fetch, clock=clock)
    assert tokens.current() == "token-1"
    clock.now += 3500
    assert tokens.current() == "token-1"
    clock.now += 45  # within the last minute of its hour: renewed before Zoom would refuse it
    assert tokens.current() == "token-2" and issued == ["token-1", "token-2"]


def test_a_short_lived_token_is_renewed_in_the_last_tenth_of_its_life():
    clock = Clock()
    fetch, issued = counting_fetch(10)
    tokens = TokenSource(fetch, clock=clock)
    tokens.current()
    clock.now += 8.9
    tokens.current()
    clock.now += 0.2
    tokens.current()
    assert issued == ["token-1", "token-2"]


def test_a_token_without_a_lifetime_is_kept_until_refused():
    clock = Clock()
    fetch, issued = counting_fetch(None)
    tokens = TokenSource(fetch, clock=clock)
    tokens.current()
    clock.now += 10 * 86400
    assert tokens.current() == "token-1"
    assert tokens.renew("token-1") == "token-2"


def test_many_threads_share_one_fetch_and_one_renewal():
    fetch, issued = counting_fetch(3600, delay=0.05)
    tokens = TokenSource(fetch)
    seen: list[str] = []

    def ask(fn):
        threads = [threading.Thread(target=lambda: seen.append(fn())) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    ask(tokens.current)
    assert issued == ["token-1"] and set(seen) == {"token-1"}
    seen.clear()
    ask(lambda: tokens.renew("token-1"))  # every thread saw the same refusal
    assert issued == ["token-1", "token-2"] and set(seen) == {"token-2"}


def test_a_static_token_is_used_as_given_and_cannot_be_renewed():
    tokens = TokenSource(None, initial="given-by-hand")
    assert tokens.current() == "given-by-hand" and not tokens.renewable
    assert tokens.renew("given-by-hand") is None
    assert "given-by-hand" not in repr(tokens)


# --- what a valid set of credentials is ------------------------------------------------------------

def test_zoom_takes_the_whole_oauth_app_or_a_token():
    app = ZoomCredentials(account_id="a", client_id="c", client_secret="s")
    assert app.oauth and app.oauth_url == "https://zoom.us/oauth/token" and isinstance(app.client_secret, SecretStr)
    assert not ZoomCredentials(access_token="t").oauth
    with pytest.raises(ValidationError, match="go together"):
        ZoomCredentials(client_id="c", client_secret="s")
    with pytest.raises(ValidationError, match="account_id, client_id and client_secret"):
        ZoomCredentials()


def test_salesforce_takes_the_connected_app_or_a_session():
    app = SalesforceCredentials(instance_url="https://acme.my.salesforce.com", client_id="c",
                                client_secret="consumer-secret-value")
    assert app.oauth and "consumer-secret-value" not in repr(app) + str(app)
    assert not SalesforceCredentials(instance_url="https://acme.my.salesforce.com", session_id="x").oauth
    with pytest.raises(ValidationError, match="go together"):
        SalesforceCredentials(instance_url="https://acme.my.salesforce.com", client_id="c")
    with pytest.raises(ValidationError, match="client_id and client_secret"):
        SalesforceCredentials(instance_url="https://acme.my.salesforce.com")


# --- where they come from --------------------------------------------------------------------------

def test_the_environment_names_the_oauth_clients():
    zoom = from_env("zoom", {"OMNISYNC_ZOOM_ACCOUNT_ID": "acct", "OMNISYNC_ZOOM_CLIENT_ID": "cid",
                             "OMNISYNC_ZOOM_CLIENT_SECRET": "shh", "OMNISYNC_ZOOM_WEBHOOK_SECRET": "wh"})
    assert (zoom.account_id, zoom.client_id, zoom.client_secret.get_secret_value()) == ("acct", "cid", "shh")
    sf = from_env("salesforce", {"OMNISYNC_SALESFORCE_INSTANCE_URL": "https://acme.my.salesforce.com",
                                 "OMNISYNC_SALESFORCE_CLIENT_ID": "3MVG9", "OMNISYNC_SALESFORCE_CLIENT_SECRET": "shh"})
    assert sf.oauth and sf.session_id is None


def test_an_incomplete_oauth_app_in_the_environment_says_what_to_set_without_values():
    with pytest.raises(CredentialsMissing) as exc:
        from_env("zoom", {"OMNISYNC_ZOOM_CLIENT_ID": "cid", "OMNISYNC_ZOOM_CLIENT_SECRET": "do-not-print"})
    message = str(exc.value)
    assert "account_id, client_id and client_secret go together" in message and "OMNISYNC_ZOOM_" in message
    assert "do-not-print" not in message and "cid" not in message.replace("client_id", "")


@pytest.mark.parametrize("system, creds", [
    ("zoom", ZoomCredentials(account_id="a", client_id="c", client_secret="s", webhook_secret="w")),
    ("zoom", ZoomCredentials(access_token="legacy")),
    ("salesforce", SalesforceCredentials(instance_url="https://acme.my.salesforce.com", client_id="c",
                                         client_secret="s")),
    ("salesforce", SalesforceCredentials(instance_url="https://acme.my.salesforce.com", session_id="legacy")),
])
def test_a_prefect_block_holds_the_oauth_client_or_the_legacy_token(system, creds):
    block_cls, model = BLOCKS[system]
    block = block_cls(**_plain(creds))
    assert all(isinstance(getattr(block, f), SecretStr) for f in ("client_secret", "session_id", "access_token")
               if getattr(block, f, None) is not None), "secrets are stored as SecretStr"
    assert model.model_validate(_plain(block)) == creds


def test_the_sandbox_info_file_carries_oauth_clients_that_connectors_use(tmp_path):
    zoom, sf = ZoomSandbox(size=20, seed=1), SalesforceSandbox(size=20, seed=1)
    with SandboxCluster([zoom, sf], workdir=tmp_path) as cluster:
        info = cluster.info()
        zc, sc = from_sandbox_info("zoom", info), from_sandbox_info("salesforce", info)
        assert zc.oauth and zc.oauth_url == info["zoom"]["base_url"] + "/oauth/token" and zc.access_token is None
        assert sc.oauth and sc.session_id is None and sc.ca_bundle == info["salesforce"]["ca_cert"]
        ZoomConnector(zc).check()
        SalesforceConnector(sc).check()
    assert zoom.log.counts["POST /oauth/token"] == 1
    assert sf.log.counts["POST /services/oauth2/token"] == 1
