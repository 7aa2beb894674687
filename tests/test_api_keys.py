"""API keys: stored hashed, scoped, revocable, audited (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from api import keys
from identity.store import ApiKey, AuditEntry, get_engine


@pytest.fixture
def engine(store_url):
    keys.clear_cache()
    return get_engine(store_url)


def test_a_key_is_shown_once_and_only_its_hash_is_stored(engine):
    secret = keys.create_key("ivr", ["lookup", "lookup"], engine=engine)
    assert secret.startswith("osk_") and len(secret) == 47
    with engine.connect() as c:
        dump = " ".join(str(v) for r in c.execute(text("select * from api_key")) for v in r)
    assert secret not in dump and secret[12:] not in dump and keys.hash_key(secret) in dump
    listed = keys.list_keys(engine=engine)
    assert listed[0]["scopes"] == ["lookup"] and listed[0]["active"] and "key_hash" not in listed[0]


@pytest.mark.parametrize("name,scopes,match", [("", ["lookup"], "name"), ("has space", ["lookup"], "name"),
                                               ("ok", ["root"], "unknown scope"), ("ok", [" "], "at least one")])
def test_bad_names_and_scopes_are_refused(engine, name, scopes, match):
    with pytest.raises(keys.KeyManagementError, match=match):
        keys.create_key(name, scopes, engine=engine)


def test_duplicate_names_are_refused_and_revocation_is_idempotent_and_audited(engine):
    secret = keys.create_key("desk", ["profile:read"], engine=engine)
    with pytest.raises(keys.KeyManagementError, match="already exists"):
        keys.create_key("desk", ["lookup"], engine=engine)
    with Session(engine) as s:
        assert keys.authenticate(s, secret).name == "desk"
    keys.revoke_key("desk", engine=engine)
    keys.revoke_key("desk", engine=engine)
    with Session(engine) as s:
        assert keys.authenticate(s, secret) is None
        actions = [a.action for a in s.exec(select(AuditEntry).order_by(AuditEntry.id))]
        assert s.exec(select(ApiKey)).one().revoked_at is not None
    assert actions == ["api_key.create", "api_key.revoke"]
    with pytest.raises(keys.KeyManagementError, match="no key named"):
        keys.revoke_key("nobody", engine=engine)


def test_admin_implies_every_scope_except_personal_data(engine):
    secret = keys.create_key("ops", ["admin"], engine=engine)
    with Session(engine) as s:
        p = keys.authenticate(s, secret)
        assert p.has("lookup") and p.has("profile:read") and not p.has("pii:read") and not p.pii
        for bad in (None, "", "osk_short", secret + "x", "Bearer " + secret):
            assert keys.authenticate(s, bad) is None
