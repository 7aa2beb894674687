"""The CLI answers a missing person or golden record with a message and exit code 1, not a traceback."""

from __future__ import annotations

from omnisync.cli import main


def test_explain_of_an_unknown_golden_id_says_so_and_exits_1(capsys):
    assert main(["explain", "g-does-not-exist"]) == 1
    err = capsys.readouterr().err
    assert "g-does-not-exist" in err and "Traceback" not in err
