"""The screen pop after a real sync: the heroine's value tier, consent and name come from vendor fields.

The other API tests write golden records by hand; this one syncs the six sandboxes once (a small
population, the plain pipeline without Prefect) and asks the API what a contact center's screen
pop asks when Amara calls from her mobile: the tier is read from a vendor (Salesforce's
Customer_Tier__c picklist, preferred, or Segment's computed value_tier trait), her SMS STOP shows.
"""

from __future__ import annotations

import importlib.util

import pytest
from fastapi.testclient import TestClient

from api import keys
from api.app import create_app
from identity.store import get_engine

pytestmark = pytest.mark.skipif(importlib.util.find_spec("identity.resolve") is None,
                                reason="needs the identity resolver (identity/resolve.py)")
SYSTEMS = ["salesforce", "hubspot", "zoom", "twilio", "sendgrid", "segment"]
HER_MOBILE = "+14155550142"


@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    from flows.orchestrate import omnichannel
    from sandbox.framework import SandboxCluster
    from sandbox.registry import build

    tmp = tmp_path_factory.mktemp("screen_pop")
    mp = pytest.MonkeyPatch()
    mp.setenv("OMNISYNC_HOME", str(tmp / "home"))
    mp.delenv("OMNISYNC_DATABASE_URL", raising=False)
    try:
        with SandboxCluster([build(name, size=60, seed=1) for name in SYSTEMS], workdir=tmp / "sb") as cluster:
            cluster.write_info(tmp / "sandboxes.json")
            mp.setenv("OMNISYNC_SANDBOX_INFO", str(tmp / "sandboxes.json"))
            assert omnichannel(systems=SYSTEMS, push=False)["status"] == "completed"
        engine = get_engine()
        keys.clear_cache()
        agent = keys.create_key("agent", ["lookup", "profile:read", "pii:read"], engine=engine)
        ivr = keys.create_key("ivr", ["lookup"], engine=engine)
        with TestClient(create_app(engine)) as client:
            client.agent, client.ivr = agent, ivr
            yield client
    finally:
        mp.undo()


def test_the_screen_pop_answers_the_callers_value_tier_from_a_vendor_field(synced):
    r = synced.get("/v1/lookup", params={"phone": "(415) 555-0142"}, headers={"X-API-Key": synced.ivr})
    assert r.status_code == 200, r.text
    pop = r.json()
    assert pop["value_tier"] == "gold", "her tier, for routing and the agent"
    assert {(c["channel"], c["status"]) for c in pop["consent"]} >= {("sms", "opted_out")}, "her STOP"
    prof = synced.get(f"/v1/profiles/{pop['golden_id']}", params={"lineage": "true"},
                      headers={"X-API-Key": synced.agent}).json()
    assert prof["profile"]["first_name"] == "Amara" and HER_MOBILE in prof["profile"]["phones"]
    tier = prof["lineage"]["value_tier"]
    assert tier["system"] in ("salesforce", "segment") and tier["rule"].startswith("prefer salesforce"), tier


def test_the_customer_360_page_shows_the_tier(synced):
    pop = synced.get("/v1/lookup", params={"phone": HER_MOBILE}, headers={"X-API-Key": synced.ivr}).json()
    synced.get("/360/login", params={"key": synced.agent, "next": pop["customer360_url"]})
    page = synced.get(pop["customer360_url"])
    assert page.status_code == 200 and 'id="tier">gold<' in page.text
