"""One failing stage of the omnichannel run is reported and the rest of the run goes on (no Prefect)."""

from __future__ import annotations

from connectors.errors import TransientError
from flows import orchestrate
from flows.orchestrate import Stages, omnichannel


def test_a_failing_cdp_enrichment_is_reported_and_the_run_still_pushes(store_url, monkeypatch):
    monkeypatch.setattr(orchestrate, "streams_of", lambda system: ["profiles"])
    pushed = []

    def enrich(run_id=None):
        raise TransientError("unreadable JSON from /email:ann@example.com/external_ids", system="segment")

    def push(plan, systems, force=False, run_id=None):
        pushed.append(plan)
        return {"counts": {}, "api_calls": {}, "failed": {}, "alarms": 0, "merges": 0}

    stages = Stages(
        sync=lambda system, stream, run_id=None, **kw: {"system": system, "stream": stream, "status": "completed",
                                                        "message": None, "resume_at": None, "counts": {},
                                                        "pages": 0, "api_calls": 0},
        resolve=lambda run_id=None: {}, plan=lambda systems, full=False: "the plan", push=push,
        drain=lambda vendor=None, run_id=None: {"counts": {}}, enrich=enrich)
    out = omnichannel(systems=["segment"], stages=stages)
    assert out["status"] == "partial"
    (failed,) = out["failed"]
    assert (failed["system"], failed["stream"]) == ("segment", "profiles") and "unreadable JSON" in failed["message"]
    assert "ann@example.com" not in failed["message"], "the reason is masked"
    assert pushed == ["the plan"], "the CDP being unreadable does not stop the push"
