"""The Segment sandbox: Tracking API limits and dedupe, identity graph rules, Profile API paging."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from sandbox.segment import MAX_MESSAGE, PROFILE_TOKEN, SPACE_ID, WRITE_KEY, SegmentSandbox

BASE = f"/v1/spaces/{SPACE_ID}/collections/users/profiles"


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


@pytest.fixture
def sb() -> SegmentSandbox:
    return SegmentSandbox(size=40, seed=2)


@pytest.fixture
def client(sb) -> TestClient:
    return TestClient(sb.asgi())


def post(client, batch):
    return client.post("/v1/batch", json={"batch": batch}, headers=basic(WRITE_KEY))


def test_the_heroine_is_web_user_7731_with_her_personal_email(sb):
    prof = sb.lookup("email:Amara.Okafor@example.com")
    assert prof is sb.lookup("user_id:web-7731")
    assert (prof["traits"]["firstName"], prof["traits"]["lastName"]) == ("Amara", "Okafor")


def test_a_repeated_message_id_is_ignored_and_a_malformed_message_is_dropped_with_200(sb, client):
    msg = {"type": "track", "userId": "web-7731", "event": "Refund Requested", "messageId": "m-1",
           "timestamp": "2026-11-05T10:00:00Z"}
    events = len(sb.lookup("user_id:web-7731")["events"])
    assert post(client, [msg, msg]).json() == {"success": True}
    assert post(client, [{"type": "track", "event": "No Id", "messageId": "m-2"}]).status_code == 200
    assert len(sb.lookup("user_id:web-7731")["events"]) == events + 1
    assert sb.duplicates == 1 and sb.rejected[-1]["reason"] == "userId or anonymousId is required"


def test_oversized_messages_and_batches_are_rejected_with_400(client):
    big = {"type": "identify", "userId": "u1", "traits": {"bio": "x" * MAX_MESSAGE}}
    r = post(client, [big])
    assert r.status_code == 400 and r.json()["error"]["code"] == "message_too_large"
    many = [{"type": "identify", "userId": f"u{i}", "traits": {"bio": "x" * 30_000}} for i in range(20)]
    assert post(client, many).json()["error"]["code"] == "batch_too_large"


def test_identity_resolution_merges_on_shared_ids_but_never_two_user_ids(sb, client):
    post(client, [{"type": "page", "anonymousId": "anon-new", "messageId": "p1"},
                  {"type": "identify", "userId": "web-7731", "anonymousId": "anon-new", "messageId": "i1"}])
    assert sb.lookup("anonymous_id:anon-new") is sb.lookup("user_id:web-7731")
    post(client, [{"type": "identify", "userId": "golden-1", "traits": {"email": "amara.okafor@example.com"},
                   "messageId": "i2"}])
    golden, web = sb.lookup("user_id:golden-1"), sb.lookup("user_id:web-7731")
    assert golden is not web, "a second user_id must not be merged into the web user's profile"
    assert sb.lookup("email:amara.okafor@example.com") is web
    assert golden["traits"]["email"] == "amara.okafor@example.com"


def test_profile_api_pages_traits_by_cursor_and_answers_errors_in_segment_shape(client):
    auth = basic(PROFILE_TOKEN)
    first = client.get(f"{BASE}/user_id:web-7731/traits", params={"limit": 2}, headers=auth).json()
    assert len(first["traits"]) == 2 and first["cursor"]["has_more"]
    second = client.get(f"{BASE}/user_id:web-7731/traits", params={"limit": 2, "next": first["cursor"]["next"]},
                        headers=auth).json()
    assert set(first["traits"]).isdisjoint(second["traits"])
    missing = client.get(f"{BASE}/user_id:nobody/traits", headers=auth)
    assert missing.status_code == 404 and missing.json() == {"error": {"code": "not_found", "message": "Resource not found"}}
    assert client.get(f"{BASE}/user_id:web-7731/traits", headers=basic(WRITE_KEY)).status_code == 401
    assert client.get(f"{BASE}/user_id:web-7731/traits", params={"limit": 500}, headers=auth).status_code == 400
    events = client.get(f"{BASE}/user_id:web-7731/events", headers=auth).json()["data"]
    assert [e["timestamp"] for e in events] == sorted((e["timestamp"] for e in events), reverse=True)
