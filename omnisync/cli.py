"""The ``omnisync`` command line.

Commands that run flows (``sync``, ``push``, ``erase``...) call the Prefect flows directly, so they
appear in the Prefect UI like deployment runs do. Commands that only read (``status``, ``plan``,
``explain``) never start Prefect.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any


def _engine():
    from identity.store import get_engine

    return get_engine()


# --- status --------------------------------------------------------------------------------------

def status_data() -> dict[str, Any]:
    from sqlmodel import func, select

    from identity.runs import last_run
    from identity.store import DeadLetter, GoldenRecord, InteractionRow, SourceRow, session_scope

    with session_scope(_engine()) as s:
        per_system = {f"{sys_}/{stream}": n for sys_, stream, n in s.exec(
            select(SourceRow.system, SourceRow.stream, func.count()).where(SourceRow.deleted.is_(False))
            .group_by(SourceRow.system, SourceRow.stream).order_by(SourceRow.system, SourceRow.stream))}
        golden = dict(s.exec(select(GoldenRecord.status, func.count()).group_by(GoldenRecord.status)).all())
        interactions = s.exec(select(func.count()).select_from(InteractionRow)).one()
        linked = s.exec(select(func.count()).select_from(InteractionRow)
                        .where(InteractionRow.golden_id.is_not(None))).one()
        dead = s.exec(select(func.count()).select_from(DeadLetter).where(DeadLetter.resolved_at.is_(None))).one()
        run = last_run(s)
        last = None
        if run is not None:
            last = {"run_id": run.run_id, "flow": run.flow, "status": run.status, "flagged": run.flagged,
                    "started_at": run.started_at.isoformat() if run.started_at else None,
                    "finished_at": run.finished_at.isoformat() if run.finished_at else None}
    return {"source_records": per_system, "golden_records": golden.get("active", 0),
            "golden_records_by_status": golden, "interactions": interactions,
            "interactions_linked": linked, "dead_letters": dead, "last_run": last}


def cmd_status(args: argparse.Namespace) -> int:
    data = status_data()
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    print("Source records:")
    for k, v in data["source_records"].items():
        print(f"  {k:40s} {v:>10,d}")
    print(f"Golden records: {data['golden_records']:,d}   Interactions: {data['interactions']:,d} "
          f"({data['interactions_linked']:,d} on a customer's timeline)   Dead letters: {data['dead_letters']:,d}")
    if data["last_run"]:
        r = data["last_run"]
        print(f"Last run: {r['flow']} {r['status']} at {r['finished_at'] or r['started_at']}"
              + (f" (flagged: {r['flagged']})" if r["flagged"] else ""))
    return 0


# --- sandboxes -----------------------------------------------------------------------------------

def cmd_sandbox(args: argparse.Namespace) -> int:
    from sandbox.framework import SandboxCluster
    from sandbox.registry import SANDBOXES, build

    names = args.only.split(",") if args.only else list(SANDBOXES)
    workdir = Path(args.workdir or (Path(args.info).parent / "sandbox" if args.info else ".omnisync/sandbox"))
    cluster = SandboxCluster([build(n, size=args.size, seed=args.seed) for n in names], workdir=Path(workdir))
    cluster.start()
    if args.info:
        cluster.write_info(Path(args.info))
    print(json.dumps({k: v["base_url"] for k, v in cluster.info().items()}), flush=True)
    stop = {"now": False}

    def handler(*_):
        stop["now"] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    try:
        while not stop["now"]:
            time.sleep(0.2)
    finally:
        cluster.stop()
    return 0


# --- flows ---------------------------------------------------------------------------------------

def cmd_sync(args: argparse.Namespace) -> int:
    from flows.pipeline import omnichannel_sync

    out = omnichannel_sync(systems=args.systems.split(",") if args.systems else None, push=not args.no_push,
                           force_push=args.force)
    print(json.dumps(out, indent=2, default=str))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from identity.push import check_breaker, CircuitOpen, plan_push
    from identity.store import session_scope
    from flows.pipeline import PUSH_SYSTEMS

    systems = args.systems.split(",") if args.systems else PUSH_SYSTEMS
    with session_scope(_engine()) as s:
        plan = plan_push(s, systems, full=args.full)
    rows = plan.summary()
    if args.json:
        print(json.dumps({"rows": rows, "total": plan.total, "alarms": len(plan.alarms),
                          "merges": len(plan.merges)}, indent=2))
    else:
        if not rows:
            print("Nothing to push: every system already agrees with the golden record.")
        for r in rows:
            print(f"  {r['system']:12s} {r['stream']:24s} {r['field']:40s} {r['records']:>8,d} records")
        print(f"Total: {plan.total:,d} records in {len(plan.streams)} streams; "
              f"{len(plan.merges)} CRM merges; {len(plan.alarms)} loop alarms")
    try:
        check_breaker(plan)
    except CircuitOpen as e:
        print(f"Circuit breaker: {e}", file=sys.stderr)
        return 3
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from flows.pipeline import push_back

    out = push_back(systems=args.systems.split(",") if args.systems else None, force=args.force, full=args.full)
    print(json.dumps(out, indent=2, default=str))
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from flows.pipeline import erase_person

    if not (args.email or args.phone or args.golden_id):
        print("erase needs --email, --phone or --golden-id", file=sys.stderr)
        return 2
    from identity.erasure import find_golden
    from identity.store import get_engine, session_scope

    with session_scope(get_engine()) as s:  # the flow gets the golden id, never the address
        gid = find_golden(s, email=args.email, phone=args.phone, golden_id=args.golden_id)
    out = erase_person(golden_id=gid)
    print(json.dumps(out, indent=2, default=str))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from flows.pipeline import replay_dead_letters

    print(json.dumps(replay_dead_letters(system=args.system, stage=args.stage), indent=2))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from identity.golden import explain
    from identity.store import session_scope

    with session_scope(_engine()) as s:
        print(explain(s, args.golden_id))
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    from identity.csv_resolve import run

    out = run(args.input, args.config, args.out)
    print(json.dumps(out, indent=2, default=str))
    return 0


def cmd_reresolve(args: argparse.Namespace) -> int:
    from identity.resolve import reresolve
    from identity.store import session_scope
    from omnisync.records import utcnow

    run_id = f"reresolve-{utcnow():%Y%m%dT%H%M%S}"
    with session_scope(_engine()) as s:
        out = reresolve(s, reindex=not args.no_reindex, dry_run=args.dry_run, run_id=run_id)
    print(json.dumps({"run_id": None if args.dry_run else run_id, "dry_run": args.dry_run, **out}, indent=2))
    return 0


def cmd_train_matching(args: argparse.Namespace) -> int:
    from identity import training

    if args.csv:
        if not args.config:
            print("train-matching --csv needs --config (the omnisync resolve column mapping)", file=sys.stderr)
            return 2
        entities, labels = training.csv_entities(args.csv, args.config, label_column=args.labels)
        source = f"{len(entities):,} records of {Path(args.csv).name}" + (f" labelled by {args.labels}" if args.labels else "")
    else:
        entities, labels = training.generated_entities(args.sample, args.seed)
        source = f"{len(entities):,} generated records (identity/truth.py, seed {args.seed}) with their truth"
    cfg = training.train(entities, labels=labels, max_pairs=args.max_pairs, match_probability=args.match_probability)
    training.write_config(cfg, args.out, source=source)
    print(json.dumps({"out": args.out, "threshold": cfg["threshold"],
                      "probability_two_random_records_match": cfg["probability_two_random_records_match"],
                      "training": cfg["training"]}, indent=2))
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    from api.server import serve

    serve(host=args.host, port=args.port, database_url=None)
    return 0


def cmd_api_key(args: argparse.Namespace) -> int:
    from api import keys

    if args.action == "create":
        secret = keys.create_key(args.name, args.scopes.split(","))
        print(secret)
        print(f"(shown once; stored hashed) scopes: {args.scopes}", file=sys.stderr)
    elif args.action == "list":
        for k in keys.list_keys():
            print(json.dumps(k, default=str))
    elif args.action == "revoke":
        keys.revoke_key(args.name)
        print(f"revoked {args.name}")
    return 0


def cmd_blocks(args: argparse.Namespace) -> int:
    from flows.blocks import save_block
    from omnisync.credentials import MODELS, from_env, from_sandbox_info, sandbox_info

    info = sandbox_info(args.from_sandbox_info) if args.from_sandbox_info else None
    saved = []
    for system in (args.systems.split(",") if args.systems else list(MODELS)):
        creds = from_sandbox_info(system, info) if info and system in info else from_env(system)
        if creds is None:
            print(f"skip {system}: no OMNISYNC_{system.upper()}_* variables", file=sys.stderr)
            continue
        saved.append(save_block(system, creds))
    print("saved blocks: " + ", ".join(saved) if saved else "no blocks saved")
    return 0 if saved else 1


def cmd_db(args: argparse.Namespace) -> int:
    engine = _engine()  # get_engine migrates to head
    print(f"store at {engine.url.render_as_string(hide_password=True)} is at the latest migration")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from omnisync.demo import main as demo_main

    return demo_main([])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omnisync", description="Omnichannel customer sync: one golden record, one timeline.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("status", help="counts in the golden store")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("sandbox", help="run every vendor sandbox on 127.0.0.1 until interrupted")
    s.add_argument("--info", help="write base URLs, credentials and CA path to this JSON file")
    s.add_argument("--size", type=int, default=1000, help="contacts per CRM (100 to 1,000,000)")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--only", help="comma-separated sandboxes (default: all)")
    s.add_argument("--workdir")
    s.set_defaults(fn=cmd_sandbox)

    s = sub.add_parser("sync", help="run the omnichannel-sync flow once")
    s.add_argument("--systems")
    s.add_argument("--no-push", action="store_true")
    s.add_argument("--force", action="store_true", help="override the push circuit breaker")
    s.set_defaults(fn=cmd_sync)

    s = sub.add_parser("plan", help="dry run: what a push would change, per system and field")
    s.add_argument("--systems")
    s.add_argument("--full", action="store_true", help="plan against every golden record")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("push", help="run the push-back flow")
    s.add_argument("--systems")
    s.add_argument("--force", action="store_true")
    s.add_argument("--full", action="store_true")
    s.set_defaults(fn=cmd_push)

    s = sub.add_parser("erase", help="erase a person everywhere, leaving a tombstone")
    s.add_argument("--email")
    s.add_argument("--phone")
    s.add_argument("--golden-id")
    s.set_defaults(fn=cmd_erase)

    s = sub.add_parser("replay", help="replay dead letters through the current mappings")
    s.add_argument("--system")
    s.add_argument("--stage", default="map")
    s.set_defaults(fn=cmd_replay)

    s = sub.add_parser("explain", help="why a golden record looks the way it does")
    s.add_argument("golden_id")
    s.set_defaults(fn=cmd_explain)

    s = sub.add_parser("resolve", help="batch-resolve a CSV with a rules file")
    s.add_argument("input")
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_resolve)

    s = sub.add_parser("reresolve", help="batch re-resolution of the whole store (merges/unmerges with events)")
    s.add_argument("--dry-run", action="store_true", help="count what would change, write nothing")
    s.add_argument("--no-reindex", action="store_true",
                   help="keep the stored blocking keys and counts (only when they are known to be current)")
    s.set_defaults(fn=cmd_reresolve)

    s = sub.add_parser("train-matching", help="estimate matching weights with Splink and write a matching.yaml")
    s.add_argument("--out", required=True, help="where to write the weights (e.g. identity/matching.yaml)")
    s.add_argument("--sample", type=int, default=10_000, help="generated records to train on (default 10,000)")
    s.add_argument("--seed", type=int, default=101)
    s.add_argument("--csv", help="train on this export instead (unsupervised unless --labels)")
    s.add_argument("--config", help="the omnisync resolve config mapping the CSV's columns")
    s.add_argument("--labels", help="a CSV column saying who each row really is (supervised training)")
    s.add_argument("--match-probability", type=float, default=0.99,
                   help="without labels: the match probability the threshold stands for (default 0.99)")
    s.add_argument("--max-pairs", type=float, default=5e6, help="random pairs sampled for u (default 5,000,000)")
    s.set_defaults(fn=cmd_train_matching)

    s = sub.add_parser("api", help="serve the golden-record API, webhooks and the Customer 360 page")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.set_defaults(fn=cmd_api)

    s = sub.add_parser("api-key", help="manage API keys (stored hashed)")
    s.add_argument("action", choices=["create", "list", "revoke"])
    s.add_argument("--name", default="")
    s.add_argument("--scopes", default="lookup,profile:read")
    s.set_defaults(fn=cmd_api_key)

    s = sub.add_parser("blocks", help="save vendor credentials as Prefect blocks")
    s.add_argument("action", choices=["create"])
    s.add_argument("--from-sandbox-info")
    s.add_argument("--systems")
    s.set_defaults(fn=cmd_blocks)

    s = sub.add_parser("db", help="migrate the store to the latest schema")
    s.add_argument("action", choices=["upgrade"])
    s.set_defaults(fn=cmd_db)

    s = sub.add_parser("demo", help="the end-to-end demo (same as make demo)")
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from omnisync.privacy import install_log_masking

    install_log_masking()
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except LookupError as e:  # no such person / golden record: a message, not a traceback
        print(f"omnisync {args.command}: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
