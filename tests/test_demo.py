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


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict[str, str], str]:
    """One `make demo` run (a smaller population) shared by the tests below."""
    tmp_path = tmp_path_factory.mktemp("demo")
    env = _env(tmp_path)
    run = subprocess.run([sys.executable, "-m", "omnisync.demo", "--size", "150"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return tmp_path, env, run.stdout


def test_demo_tells_the_heroine_story_and_leaves_a_store_status_can_read(demo):
    tmp_path, env, out = demo
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


def test_every_channel_of_the_heroine_lands_on_her_one_timeline(demo):
    """Issue 5's acceptance on the demo's store: the bot-then-agent chat and the next day's call
    (Zoom), the SMS and its STOP reply (Twilio) and the email events (SendGrid) are all on the
    timeline of the one golden record her Salesforce, HubSpot and Segment records resolved to."""
    import sqlalchemy as sa

    tmp_path = demo[0]
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'home' / 'omnisync.db'}")
    try:
        with engine.connect() as c:
            (gid,) = {r[0] for r in c.execute(sa.text(
                "SELECT DISTINCT golden_id FROM identity_key WHERE kind = 'email' AND value = :v"),
                {"v": "amara.okafor@example.com"})}  # every record with her email: one golden record
            systems = {r[0] for r in c.execute(sa.text(
                "SELECT DISTINCT system FROM source_record WHERE golden_id = :g AND kind = 'profile'"),
                {"g": gid})}
            timeline = c.execute(sa.text("SELECT system, channel, direction, summary, data FROM interaction "
                                         "WHERE golden_id = :g ORDER BY started_at"), {"g": gid}).all()
    finally:
        engine.dispose()
    assert {"salesforce", "hubspot", "segment"} <= systems, systems
    seen = {(system, channel) for system, channel, *_ in timeline}
    assert {("zoom", "chat"), ("zoom", "voice"), ("twilio", "sms"), ("sendgrid", "email")} <= seen, seen
    handoffs = [json.loads(data) if isinstance(data, str) else data for system, channel, _, _, data in timeline
                if system == "zoom" and channel == "chat"]
    assert any((h or {}).get("handoff", {}).get("context") or (h or {}).get("handoff", {}).get("summary")
               for h in handoffs), "the chat carries the bot's hand-off context"
    sms_in = [summary for system, channel, direction, summary, _ in timeline
              if system == "twilio" and direction == "inbound"]
    assert sms_in, "her STOP reply is on the timeline"
