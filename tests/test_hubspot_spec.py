"""Sandbox responses validate against HubSpot's published OpenAPI response schemas.

The specs are reference data outside the project (``../shared/specs/hubspot``); the test skips
when that folder is absent. One deliberate relaxation: property maps are declared ``{type: string}``
but HubSpot answers ``null`` for a requested property that has no value, so nulls are allowed there.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import httpx
import pytest

from sandbox.framework import SandboxCluster
from sandbox.hubspot import ID_BASE, TOKEN, HubSpotSandbox, Limits
from tests import spec_check

SPECS = spec_check.SPECS / "hubspot"
pytestmark = pytest.mark.skipif(not SPECS.is_dir(), reason=f"vendor specs not present at {SPECS}")
FILES = {"contacts": "CRM_Contacts_v3_contacts.json", "calls": "CRM_Calls_v3_calls.json",
         "emails": "CRM_Emails_v3_emails.json", "notes": "CRM_Notes_v3_notes.json",
         "communications": "CRM_Communications_v3_communications.json", "companies": "CRM_Companies_v3_companies.json",
         "v4": "CRM_Associations_v4_associations.json"}


@lru_cache(maxsize=None)
def spec(name: str) -> dict[str, Any]:
    return _nullable_property_maps(spec_check.load("hubspot", FILES[name]))


def _nullable_property_maps(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for schema in doc["components"]["schemas"].values():
        props = (schema.get("properties") or {}).get("properties")
        if props and props.get("additionalProperties", {}).get("type") == "string":
            props["additionalProperties"] = {**props["additionalProperties"], "type": ["string", "null"]}
    return doc


def check(client: httpx.Client, name: str, method: str, path: str, *, expect: int, **kw) -> dict[str, Any]:
    return spec_check.check(client, spec(name), method, path, expect=expect, **kw)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    sb = HubSpotSandbox(size=300, seed=4, limits=Limits(enabled=False))
    with SandboxCluster([sb], workdir=tmp_path_factory.mktemp("spec")) as cluster:
        with httpx.Client(base_url=cluster.info()["hubspot"]["base_url"],
                          headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            yield c


def test_object_reads_match_the_spec(client):
    hero = ID_BASE["contacts"] + 1
    for otype in ("contacts", "companies", "calls", "emails", "notes", "communications"):
        page = check(client, otype, "GET", f"/crm/v3/objects/{otype}?limit=5&associations=contacts", expect=200)
        assert page["results"] and "paging" in page
        check(client, otype, "POST", f"/crm/v3/objects/{otype}/search", expect=200, json={"limit": 3})
    check(client, "contacts", "GET", f"/crm/v3/objects/contacts/{hero}?properties=email,hs_merged_object_ids",
          expect=200)
    check(client, "contacts", "GET", "/crm/v3/objects/contacts?archived=true&limit=5", expect=200)
    check(client, "contacts", "POST", "/crm/v3/objects/contacts/batch/read", expect=207,
          json={"inputs": [{"id": str(hero)}, {"id": "42"}], "properties": ["email"]})


def test_writes_merges_and_errors_match_the_spec(client):
    check(client, "contacts", "POST", "/crm/v3/objects/contacts/batch/upsert", expect=200, json={"inputs": [
        {"idProperty": "email", "id": "spec.one@example.org", "properties": {"firstname": "Spec"}}]})
    check(client, "contacts", "POST", "/crm/v3/objects/contacts/batch/upsert", expect=207, json={"inputs": [
        {"idProperty": "email", "id": "spec.two@example.org", "properties": {}, "objectWriteTraceId": "1"},
        {"idProperty": "email", "id": "spec.three@example.org", "properties": {"hs_email_optout": "maybe"},
         "objectWriteTraceId": "2"}]})
    check(client, "calls", "POST", "/crm/v3/objects/calls/batch/create", expect=201, json={"inputs": [
        {"properties": {"hs_timestamp": "2026-11-20T10:00:00Z", "hs_call_body": "Spec"}, "associations": [
            {"to": {"id": str(ID_BASE["contacts"] + 1)},
             "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 194}]}]}]})
    check(client, "contacts", "POST", "/crm/v3/objects/contacts/batch/update", expect=200, json={"inputs": [
        {"id": str(ID_BASE["contacts"] + 5), "properties": {"jobtitle": "Spec tester"}}]})
    check(client, "contacts", "POST", "/crm/v3/objects/contacts/merge", expect=200, json={
        "primaryObjectId": str(ID_BASE["contacts"] + 6), "objectIdToMerge": str(ID_BASE["contacts"] + 7)})
    check(client, "contacts", "POST", "/crm/v3/objects/contacts/search", expect=400, json={"after": "10000"})
    check(client, "contacts", "GET", "/crm/v3/objects/contacts/99", expect=404)
    check(client, "contacts", "POST", "/crm/v3/objects/contacts/batch/update", expect=400,
          json={"inputs": [{"id": "1", "properties": {}}] * 101})


def test_associations_v4_match_the_spec(client):
    call = ID_BASE["calls"] + 2
    check(client, "v4", "POST", "/crm/v4/associations/calls/contacts/batch/read", expect=200,
          json={"inputs": [{"id": str(call)}]})
    check(client, "v4", "GET", f"/crm/v4/objects/calls/{call}/associations/contacts", expect=200)
    check(client, "v4", "PUT", f"/crm/v4/objects/calls/{call}/associations/default/contacts/{ID_BASE['contacts'] + 1}",
          expect=200)
    check(client, "v4", "POST", "/crm/v4/associations/calls/contacts/batch/associate/default", expect=200,
          json={"inputs": [{"from": {"id": str(call)}, "to": {"id": str(ID_BASE["contacts"] + 2)}}]})
