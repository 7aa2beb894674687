"""`make demo` end to end, as a newcomer runs it: a subprocess on a fresh home, then `omnisync status`.

The population is smaller than the demo's default so the test stays under a minute; everything
else (all six sandboxes, two Prefect flow runs on a local ephemeral server, the story) is the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.flow, pytest.mark.xdist_group("prefect")]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMNISYNC_", "PREFECT_"))}
    env.update(OMNISYNC_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING",
               PYTHONPATH=str(ROOT))
    return env


def test_demo_tells_the_heroine_story_and_leaves_a_store_status_can_read(tmp_path):
    env = _env(tmp_path)
    run = subprocess.run([sys.executable, "-m", "omnisync.demo", "--size", "150"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "First run (full sync): completed" in out, out[-3000:]
    for system in ("salesforce", "hubspot", "zoom", "twilio", "sendgrid", "segment"):
        assert f"\n  {system} " in out, f"no counts line for {system}"
    story = out.split("One customer, the whole story", 1)[1]
    assert "Amara" in story and "Okafor" in story
    assert "bot hand-off from" in story  # the agent saw what the bot learned
    consent = story.split("Consent", 1)[1].split("Pushed back", 1)[0]
    assert any(line.split()[:1] == ["sms"] and "opted_out" in line for line in consent.splitlines()), consent

    status = subprocess.run([sys.executable, "-m", "omnisync.cli", "status", "--json"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr[-2000:]
    data = json.loads(status.stdout)
    assert data["golden_records"] > 0
    assert data["interactions_linked"] > 0
    assert data["last_run"]["flow"] == "omnichannel-sync"
    # the second run reads back what the first wrote: recognized as echoes, nothing dead-lettered
    second = out.split("Second run", 1)[1].split("Store:", 1)[0]
    rows = {line.split()[0]: line.split()[1:] for line in second.splitlines()[1:]
            if line.startswith("  ") and line.split()[0] in ("salesforce", "hubspot", "zoom", "segment", "sendgrid",
                                                               "twilio")}
    assert len(rows) == 6, second
    assert all(cols[4] == "0" for cols in rows.values()), second  # dead letters
    assert all(int(rows[s][3].replace(",", "")) > 0 for s in ("salesforce", "hubspot", "zoom")), second  # echoes
