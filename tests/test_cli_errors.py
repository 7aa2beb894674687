"""The CLI answers a missing person or golden record with a message and exit code 1, not a traceback."""

from __future__ import annotations

from omnisync.cli import main


def test_explain_of_an_unknown_golden_id_says_so_and_exits_1(capsys):
    assert main(["explain", "g-does-not-exist"]) == 1
    err = capsys.readouterr().err
    assert "g-does-not-exist" in err and "Traceback" not in err


def test_erase_by_email_hands_the_flow_only_the_golden_id(monkeypatch, capsys):
    """Prefect keeps flow parameters in its run history: the address being erased must not be one."""
    from flows import pipeline
    from identity.store import GoldenRecord, IdentityKey, SourceRow, get_engine, session_scope
    from omnisync.records import utcnow

    with session_scope(get_engine()) as s:
        s.add(GoldenRecord(golden_id="g-erase-me"))
        row = SourceRow(system="acme", stream="people", external_id="p1", modified_at=utcnow(), fingerprint="f",
                        payload={}, canonical={}, golden_id="g-erase-me")
        s.add(row)
        s.flush()
        s.add(IdentityKey(kind="email", value="amara.okafor@example.com", source_id=row.id, golden_id="g-erase-me"))
    seen = {}
    monkeypatch.setattr(pipeline, "erase_person", lambda **kw: seen.update(kw) or {"golden_id": kw.get("golden_id")})
    assert main(["erase", "--email", "Amara.Okafor@example.com"]) == 0
    assert seen == {"golden_id": "g-erase-me"}
    assert main(["erase", "--email", "nobody@example.com"]) == 1
    assert "Traceback" not in capsys.readouterr().err
