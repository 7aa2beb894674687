"""``make demo``: local sandboxes, two omnichannel runs through Prefect, and one customer's story.

What it does, in order:

1. starts every vendor sandbox (Salesforce, HubSpot, Zoom Contact Center, Twilio, SendGrid, Segment)
   on 127.0.0.1, seeded with the same synthetic population (``--size`` people, ``--seed``), and
   writes their URLs and credentials to ``.omnisync/sandbox.json``;
2. starts from a fresh golden store (SQLite under ``.omnisync/``);
3. runs the ``omnichannel-sync`` Prefect flow: sync every system, resolve identities, enrich from
   the CDP, push the golden records back; then runs it again to show that a run with nothing new
   writes nothing;
4. prints what happened per system and the story of one customer, Amara Okafor, whose records are
   spread over all six systems.

The runs go to Prefect's local server (an ephemeral one unless ``PREFECT_API_URL`` is set), so
``prefect server start`` shows them afterwards. Everything personal here is synthetic.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

HEROINE_EMAIL = "amara.okafor@example.com"
# Prefect gives its local server 20 s to start; it needs 7-10 s on an idle 2-core machine and more
# on a busy one. A user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def _fresh_store(home: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        p = home / f"omnisync.db{suffix}"
        if p.exists():
            p.unlink()


def _table(summary: dict[str, Any]) -> list[str]:
    rows: dict[str, dict[str, int]] = {}
    for key, counts in (summary.get("counts") or {}).items():
        system = key.split("/", 1)[0]
        agg = rows.setdefault(system, {})
        for k, v in counts.items():
            agg[k] = agg.get(k, 0) + int(v)
    pushed: dict[str, dict[str, int]] = {}
    push_calls = (summary.get("pushed") or {}).get("api_calls") or {}
    for key, counts in ((summary.get("pushed") or {}).get("counts") or {}).items():
        system = key.split("/", 1)[0]
        agg = pushed.setdefault(system, {})
        for k, v in counts.items():
            agg[k] = agg.get(k, 0) + int(v)
    lines = [f"  {'system':11s} {'read':>7s} {'stored':>7s} {'unchanged':>9s} {'echoes':>6s} {'dead':>5s} "
             f"{'api calls':>9s}   {'pushed':>6s} {'push calls':>10s}"]
    for system in sorted(set(rows) | set(pushed) | set(push_calls)):
        r, p = rows.get(system, {}), pushed.get(system, {})
        written = sum(v for k, v in p.items() if k in ("created", "updated"))
        lines.append(f"  {system:11s} {r.get('read', 0):7,d} {r.get('stored', 0):7,d} {r.get('unchanged', 0):9,d} "
                     f"{r.get('echoes', 0):6,d} {r.get('dead_lettered', 0):5,d} {r.get('api_calls', 0):9,d}   "
                     f"{written:6,d} {push_calls.get(system, 0):10,d}")
    return lines


def _print_run(title: str, summary: dict[str, Any], seconds: float) -> None:
    resolved = summary.get("resolved") or {}
    print(f"\n== {title}: {summary['status']} in {seconds:.1f} s (run {summary['run_id']})")
    print("\n".join(_table(summary)))
    from flows.report import RESOLUTION

    said = [f"{label} {resolved[k]:,d}" for k, label in RESOLUTION if resolved.get(k)]
    print("  identity: " + ("; ".join(said) or "nothing new"))
    pushed = summary.get("pushed") or {}
    if pushed.get("alarms"):
        print(f"  loop alarms: {pushed['alarms']} (see dead letters, stage loop)")
    if pushed.get("failed"):
        print(f"  push failed for: {', '.join(pushed['failed'])}")
    for q in summary.get("quota_stops") or []:
        print(f"  {q['system']}/{q['stream']} stopped at its checkpoint (daily quota); resumes after {q['resume_at']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omnisync demo", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=300, help="people in the synthetic population")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-running", action="store_true",
                        help="leave the sandboxes up after the story (Ctrl-C to stop)")
    args = parser.parse_args(argv)

    from omnisync.privacy import install_log_masking
    from omnisync.settings import get_settings, reset_settings

    install_log_masking()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    reset_settings()
    home = get_settings().home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    if get_settings().database_url is None:
        _fresh_store(home)

    from sandbox.framework import SandboxCluster
    from sandbox.registry import SANDBOXES, build

    started = time.perf_counter()
    print(f"Starting {len(SANDBOXES)} vendor sandboxes on 127.0.0.1 ({args.size:,d} synthetic people, seed {args.seed})")
    cluster = SandboxCluster([build(n, size=args.size, seed=args.seed) for n in SANDBOXES], workdir=home / "sandbox")
    cluster.start()
    info_path = home / "sandbox.json"
    cluster.write_info(info_path)
    os.environ["OMNISYNC_SANDBOX_INFO"] = str(info_path)
    try:
        from flows.pipeline import omnichannel_sync

        t0 = time.perf_counter()
        first = omnichannel_sync()
        _print_run("First run (full sync)", first, time.perf_counter() - t0)
        t0 = time.perf_counter()
        second = omnichannel_sync()
        _print_run("Second run (incremental: reads back run 1's writes as echoes, finishes what they made possible)", second, time.perf_counter() - t0)

        from identity.store import get_engine, session_scope
        from omnisync.cli import status_data
        from omnisync.story import find_by_email, story

        data = status_data()
        with session_scope(get_engine()) as s:
            text = story(s, HEROINE_EMAIL)
            gid = find_by_email(s, HEROINE_EMAIL)
        print(f"\nStore: {data['golden_records']:,d} golden records, {data['interactions']:,d} interactions "
              f"({data['interactions_linked']:,d} on a customer's timeline), {data['dead_letters']:,d} dead letters")
        print("\n== One customer, the whole story\n")
        print(text)
        print(f"\nDone in {time.perf_counter() - started:.0f} s. Where to look next:")
        print("(commands below: .venv/bin/omnisync, .venv/bin/prefect)")
        print(f"  omnisync explain {gid}   why each field has its value, which records merged")
        print("  omnisync status --json              the store's counts")
        print("  omnisync api-key create --name agent --scopes lookup,profile:read,pii:read; omnisync api")
        print(f"     then open http://127.0.0.1:8765/360/{gid}   (the agent's Customer 360 page)")
        print("  prefect server start                 then http://127.0.0.1:4200 shows both runs and their artifacts")
        if args.keep_running:
            print(f"\nSandboxes stay up (info: {info_path}); Ctrl-C to stop.")
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
