"""Erasure across every connected system, then the store (idempotent and resumable).

The job records its targets (vendor record ids, which are not personal data) before touching
anything, then each system's result as it completes. Re-running an interrupted job skips systems
already done; re-running a finished job changes nothing. What a vendor keeps on purpose or
cannot delete through its API (a suppression that must keep blocking email, a contact-center
log with no delete call) is recorded per system as ``retained`` with the vendor's reason, so
the audit entry says exactly what is left where and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from identity import erasure
from identity.store import AuditEntry, run_in_transaction
from omnisync.privacy import mask_text

log = logging.getLogger("omnisync.erase")


def erase(engine: Engine, *, email: str | None = None, phone: str | None = None, golden_id: str | None = None,
          connector_factory: Callable[[str], Any], systems: list[str]) -> dict[str, Any]:
    def start(session):
        gid = erasure.find_golden(session, email=email, phone=phone, golden_id=golden_id)
        entry = erasure.job(session, gid)
        if "targets" not in entry.detail:
            entry.detail = {**entry.detail, "targets": erasure.targets(session, gid)}
            session.add(entry)
        return gid, entry.id, dict(entry.detail)

    gid, entry_id, detail = run_in_transaction(start, engine)
    for system, streams in sorted(detail["targets"].items()):
        if system not in systems or detail["systems"].get(system, {}).get("status") == "done":
            continue
        status, info = _erase_in(system, streams, connector_factory)

        def record(session, system=system, status=status, info=info):
            entry = session.get(AuditEntry, entry_id)
            erasure.record_system(entry, system, status, info)
            session.add(entry)
        run_in_transaction(record, engine)
        detail["systems"][system] = {"status": status}

    def finish(session):
        entry = session.get(AuditEntry, entry_id)
        if entry.detail.get("store") != "done":
            counts = erasure.erase_store(session, gid)
            entry.detail = {**entry.detail, "store": "done", "store_counts": counts}
            session.add(entry)
        return dict(entry.detail)

    final = run_in_transaction(finish, engine)
    return {"golden_id": gid, "systems": final.get("systems", {}), "store": final.get("store"),
            "store_counts": final.get("store_counts", {})}


def _erase_in(system: str, streams: dict[str, list[str]], factory: Callable[[str], Any]) -> tuple[str, Any]:
    conn = None
    try:
        conn = factory(system)
        if not hasattr(conn, "erase"):
            return "unsupported", "connector has no erase operation"
        failed, retained, erased = [], {}, 0
        for stream, ids in streams.items():
            for o in conn.erase(stream, ids):
                if not o.ok:
                    failed.append(f"{stream}/{o.external_id or o.key}: {o.error}")
                elif o.error:  # done, with a note: what the vendor keeps and why
                    retained.setdefault(stream, {"records": 0, "reason": o.error})["records"] += 1
                else:
                    erased += 1
        if failed:
            log.error("erasure in %s incomplete: %d record(s) failed", system, len(failed))
            return "failed", {"failed": failed[:20], "retained": retained}
        return "done", {"erased": erased, **({"retained": retained} if retained else {})}
    except Exception as e:  # recorded, retried on the next run of the job
        return "failed", mask_text(str(e))[:300]
    finally:
        if conn is not None:
            conn.close()
