"""Identity resolution: batch records/s at 100k and 1M, Splink side by side, single-record latency.

One run, one generated omnichannel data set with known truth (identity/truth.py) per size:

1. **omnisync batch**: rows -> entities (normalization, cached) -> :func:`identity.batch.resolve`
   (blocking, scoring, conflict-refusing union-find). Records/s, seconds per stage, peak memory
   (process high-water RSS and the growth during the run), pairwise precision/recall/F1 against
   the truth, and the growth factor of the time from 10x the data.
2. **Splink 5 on DuckDB**, same rows, same normalized values (names folded, E.164 phones, match-form
   emails, ISO dates: the comparison is of matching, not of parsing), a standard model: name,
   date-of-birth, email/phone array and address comparisons, u by random sampling, m by EM on two
   blocking rules, term-frequency adjusted names, prediction on the same blocking keys, clusters at
   match probability 0.99 (timed); 0.9, 0.5 and 0.1 are clustered too and the best F1 is reported.
   (Record ids are left out: unique per record, they add nothing and EM underflows on them.)
   Time covers registration, training, prediction and clustering.
3. **Single record**: a :class:`~identity.batch.MemoryIndex` over the large set minus 2,000 held-out
   records, then each held-out record read and matched: p50/p99 of the match, and of read+match.
4. **Real-time resolve against a store** of 1,000,000 golden records, on SQLite and on PostgreSQL:
   the store is filled by bulk SQL as the resolver would have left it (generated people, one golden
   record each, every record's identity_key rows -- identifiers, blocking keys, values -- and the
   match_term counts, built by the resolver's own functions), not through the resolver; then, in a
   fresh process, each held-out record (a generated duplicate or newcomer, as a canonical profile)
   goes through :func:`identity.resolve.decide`, the read path a sync or an API call takes: entity, key holders,
   their records, counts, scoring. p50/p99 of the decision (target p99 under 2 ms), and whether it
   chose the record's own person. Two passes over two disjoint sets of held-out records: *as loaded*
   (right after the bulk load, whatever of the store the OS still caches) and *in memory* (after
   the store's files are read once -- ``pg_prewarm`` on PostgreSQL -- as a server that has been
   serving a store its RAM holds would have them; PostgreSQL's own buffers stay at their size).

Run: ``python -m bench.identity_bench`` (``--quick``: 10k and 100k, a store of 50,000). Sizes:
``OMNISYNC_BENCH_SPLINK_MAX`` caps the size Splink runs at (default: the small size; at 1M its
training alone took 6 minutes here); ``OMNISYNC_BENCH_STORE_GOLDENS`` sets the store size (default
1,000,000; 50,000 quick), ``OMNISYNC_BENCH_STORE_BACKENDS`` the backends (``sqlite,postgresql``;
PostgreSQL at ``OMNISYNC_TEST_PG_URL``, a scratch schema dropped afterwards), and
``OMNISYNC_BENCH_STORE_ONLY=1`` skips parts 1-3.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.memory import peak_rss_mb, reset_peak, rss_mb
from bench.stores import scratch_store
from identity import truth
from identity.batch import MemoryIndex, no_gc, resolve
from identity.matching import RowReader, Scorer

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT = 2_000
SPLINK_THRESHOLDS = (0.99, 0.9, 0.5, 0.1)  # match probability at which Splink clusters; the first is timed


def _omnisync(rows: list[dict[str, str]], scorer: Scorer) -> tuple[dict[str, Any], list[Any]]:
    gc.collect()
    reset_peak()  # the peak of this run (its input rows included), not of earlier benchmarks
    before = rss_mb()
    c0 = time.process_time()
    t0 = time.perf_counter()
    reader = RowReader(truth.CSV_CONFIG["columns"], rules=scorer.rules)
    with no_gc():
        entities = [reader.read(r) for r in rows]
    t1 = time.perf_counter()
    res = resolve(entities, scorer)
    t2 = time.perf_counter()
    cpu = time.process_time() - c0
    acc = truth.pairwise_accuracy({r["record_id"]: r["person_id"] for r in rows},
                                  dict(zip((e.id for e in entities), res.cluster_ids(entities))))
    out = {
        "records": len(rows), "seconds": round(t2 - t0, 2), "cpu_s": round(cpu, 2),
        "records_per_s": round(len(rows) / (t2 - t0)),
        "stages_s": {"normalize": round(t1 - t0, 2), **{k: round(v, 2) for k, v in res.seconds.items()}},
        "pairs_scored": res.pairs_scored, "pairs_matched": res.pairs_matched, "unions_refused": res.unions_refused,
        "rss_growth_mb": round(rss_mb() - before), "peak_rss_mb": round(peak_rss_mb()),
        **{k: round(acc[k], 4) for k in ("precision", "recall", "f1")},
    }
    return out, entities


def _splink(rows: list[dict[str, str]], entities: list[Any]) -> dict[str, Any]:
    import pyarrow as pa
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    gc.collect()
    reset_peak()

    def iso(d: int) -> str | None:
        return f"{d // 10000:04d}-{d // 100 % 100:02d}-{d % 100:02d}" if d else None

    table = pa.table({
        "unique_id": [e.id for e in entities],
        "first_name": [e.first or None for e in entities],
        "last_name": [e.last or None for e in entities],
        "dob": [iso(e.dob) for e in entities],
        "emails": [list(e.emails) or None for e in entities],
        "phones": [list(e.phones) or None for e in entities],
        "street": [e.street or None for e in entities],
        "postcode": [e.postcode or None for e in entities],
        "city": [e.city or None for e in entities],
    })
    c0 = time.process_time()
    t0 = time.perf_counter()
    db = DuckDBAPI()
    df = db.register(table)
    settings = SettingsCreator(
        link_type="dedupe_only",
        comparisons=[
            cl.NameComparison("first_name").configure(term_frequency_adjustments=True),
            cl.NameComparison("last_name").configure(term_frequency_adjustments=True),
            cl.DateOfBirthComparison("dob", input_is_string=True),
            cl.ArrayIntersectAtSizes("emails", [1]),
            cl.ArrayIntersectAtSizes("phones", [1]),
            cl.ExactMatch("postcode"),
            cl.ExactMatch("street"),
            cl.ExactMatch("city"),
        ],
        blocking_rules_to_generate_predictions=[
            block_on("emails", arrays_to_explode=["emails"]),
            block_on("phones", arrays_to_explode=["phones"]),
            block_on("last_name", "dob"),
            block_on("first_name", "dob"),
            block_on("first_name", "postcode"),
        ],
        retain_intermediate_calculation_columns=False,
    )
    linker = Linker(df, settings, log_level=None)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("emails", arrays_to_explode=["emails"])], recall=0.7)
    linker.training.estimate_u_using_random_sampling(max_pairs=2e6, seed=1)
    # m by EM on two blocking rules that together leave every comparison estimated at least once.
    em_failures = []
    for rule in (block_on("first_name", "last_name"), block_on("dob")):
        try:
            linker.training.estimate_parameters_using_expectation_maximisation(rule)
        except ValueError as exc:  # Splink refuses an m that underflows (seen on small samples)
            em_failures.append(str(exc)[:120])
    t1 = time.perf_counter()
    pred = linker.inference.predict(threshold_match_probability=min(SPLINK_THRESHOLDS))
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(pred, SPLINK_THRESHOLDS[0])
    got = clusters.as_pyarrow_table()
    t2 = time.perf_counter()
    cpu = time.process_time() - c0
    truth_map = {r["record_id"]: r["person_id"] for r in rows}
    ids, cl_ids = got.column("unique_id").to_pylist(), got.column("cluster_id").to_pylist()
    acc = truth.pairwise_accuracy(truth_map, dict(zip(ids, cl_ids)))
    # Other thresholds, clustered after the timed run: Splink's best F1 is reported with the truth's
    # help, which only flatters it.
    by_threshold = {SPLINK_THRESHOLDS[0]: acc}
    for th in SPLINK_THRESHOLDS[1:]:
        got = linker.clustering.cluster_pairwise_predictions_at_threshold(pred, th).as_pyarrow_table()
        by_threshold[th] = truth.pairwise_accuracy(
            truth_map, dict(zip(got.column("unique_id").to_pylist(), got.column("cluster_id").to_pylist())))
    best_th, best = max(by_threshold.items(), key=lambda kv: kv[1]["f1"])
    return {"records": len(rows), "seconds": round(t2 - t0, 2), "cpu_s": round(cpu, 2), "train_s": round(t1 - t0, 2),
            "predict_cluster_s": round(t2 - t1, 2), "records_per_s": round(len(rows) / (t2 - t0)),
            "peak_rss_mb": round(peak_rss_mb()), "threshold": best_th, "em_failures": em_failures,
            **{k: round(best[k], 4) for k in ("precision", "recall", "f1")},
            "by_threshold": {th: {k: round(a[k], 4) for k in ("precision", "recall", "f1")}
                             for th, a in by_threshold.items()}}


def _realtime(entities: list[Any], rows: list[dict[str, str]], scorer: Scorer) -> dict[str, Any]:
    stored, probes = entities[:-HELD_OUT], rows[-HELD_OUT:]
    t0 = time.perf_counter()
    with no_gc():
        idx = MemoryIndex(stored, scorer)
    build = time.perf_counter() - t0
    reader = RowReader(truth.CSV_CONFIG["columns"], rules=scorer.rules)
    match_us, total_us, hits = [], [], 0
    for r in probes:
        a = time.perf_counter_ns()
        e = reader.read(r)
        b = time.perf_counter_ns()
        found = idx.match(e)
        c = time.perf_counter_ns()
        match_us.append((c - b) / 1000)
        total_us.append((c - a) / 1000)
        hits += bool(found)

    def pct(xs: list[float], q: float) -> float:
        return round(statistics.quantiles(xs, n=100)[int(q) - 1], 1)

    return {"index_records": len(stored), "index_build_s": round(build, 1), "probes": len(probes),
            "probes_matched": hits, "match_p50_us": pct(match_us, 50), "match_p99_us": pct(match_us, 99),
            "read_and_match_p50_us": pct(total_us, 50), "read_and_match_p99_us": pct(total_us, 99)}


# --- real-time resolve against a store ---------------------------------------------------------

STORE_CHUNK = 200_000  # generated records per fill chunk (each chunk its own seed and id prefix)
STORE_PROBES = 5_000  # per pass: the 99th percentile is the 50th slowest, not the 20th
STORE_WARMUP = 200
PASSES = ("as_loaded", "in_memory")


def profile_of(row: dict[str, str]) -> dict[str, Any]:
    """A generated row as a mapping would make it a canonical profile (unreadable values left out)."""
    from datetime import date

    from identity.matching import parse_birth_date
    from omnisync.model import CustomerProfile, normalize_email, normalize_phone

    emails, phones = [], []
    for c in ("email", "email2"):
        try:
            if row[c].strip():
                emails.append(normalize_email(row[c]))
        except ValueError:
            pass
    for c in ("phone", "phone2"):
        try:
            if row[c].strip():
                phones.append(normalize_phone(row[c], "US"))
        except ValueError:
            pass
    dob = parse_birth_date(row["birth_date"]) if row["birth_date"] else None
    addr = {k: row[c] or None for k, c in (("line1", "street"), ("city", "city"), ("state", "state"),
                                           ("postcode", "postcode"))}
    return CustomerProfile(first_name=row["first_name"] or None, last_name=row["last_name"] or None, emails=emails,
                           phones=phones, cdp_user_id=row["cdp_user_id"] or None,
                           birth_date=date(dob // 10000, dob // 100 % 100, dob % 100) if dob else None,
                           addresses=[addr] if any(addr.values()) else []).model_dump(mode="json")


def fill_store(engine: Any, goldens: int, scorer: Scorer, probes: int) -> tuple[list[tuple], dict[str, Any]]:
    """Bulk-load generated people (one golden record each) with everything resolution keeps about
    them; return ``probes`` held-out records (system, external id, profile, golden id of their person
    or None) and what was loaded."""
    from datetime import datetime, timezone

    from identity.matching import value_keys
    from identity.resolve import POPULATION, store_entity, stored_keys, term_hash
    from identity.store import GoldenRecord, IdentityKey, MatchTerm, SourceRow

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rules = scorer.rules
    st, kt, gt = SourceRow.__table__, IdentityKey.__table__, GoldenRecord.__table__
    sid = records = keys = 0
    persons: set[str] = set()
    terms: Counter = Counter()
    held: list[tuple] = []
    chunk = 0
    start = time.perf_counter()
    # Chunks share one registry: without it every chunk hands "john.smith@gmail.com" to its own first
    # John Smith, and a probe would "match the wrong person" on an address no real population shares.
    registry = truth.Registry()
    while len(persons) < goldens:
        rows = truth.generate(STORE_CHUNK, seed=1000 + chunk, registry=registry)
        prefix = f"c{chunk}-"
        if chunk == 0:  # held out: incoming records, most of them someone the store already knows
            held_rows, rows = rows[:probes], rows[probes:]
        src, idk, gold = [], [], []
        for r in rows:
            person = prefix + r["person_id"]
            if person not in persons:
                if len(persons) >= goldens:
                    continue
                persons.add(person)
                gold.append({"golden_id": f"g-{person}", "status": "active", "merged_into": None, "profile": {},
                             "lineage": {}, "version": 1, "created_at": t0, "updated_at": t0})
            sid += 1
            ext = prefix + r["record_id"]
            prof = profile_of(r)
            e = store_entity(r["system"], "contacts", ext, prof, rules)
            src.append({"id": sid, "system": r["system"], "stream": "contacts", "external_id": ext, "modified_at": t0,
                        "deleted": False, "merged_into": None, "fingerprint": "f", "payload": {},
                        "canonical": {"profile": prof}, "kind": "profile", "golden_id": f"g-{person}", "echo": False,
                        "ingested_at": t0, "resolved_at": t0, "pending": False})
            idk += [{"kind": k, "value": v, "source_id": sid, "golden_id": f"g-{person}"}
                    for k, v in stored_keys(r["system"], ext, prof, e, rules)]
            terms.update(value_keys(e))
        with engine.begin() as c:
            c.execute(gt.insert(), gold)
            for i in range(0, len(src), 20_000):
                c.execute(st.insert(), src[i:i + 20_000])
            for i in range(0, len(idk), 100_000):
                c.execute(kt.insert(), idk[i:i + 100_000])
        records += len(src)
        keys += len(idk)
        if chunk == 0:
            held = [(r["system"], prefix + r["record_id"], profile_of(r),
                     f"g-{prefix}{r['person_id']}" if prefix + r["person_id"] in persons else None)
                    for r in held_rows]
        chunk += 1
        print(f"  filled {len(persons):,} golden records, {records:,} records, {keys:,} keys "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    with engine.begin() as c:
        mt = MatchTerm.__table__
        items = [{"key": term_hash(k), "n": n} for k, n in terms.items()] + [{"key": POPULATION, "n": records}]
        for i in range(0, len(items), 50_000):
            c.execute(mt.insert(), items[i:i + 50_000])
        if engine.dialect.name == "postgresql":
            c.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('source_record', 'id'), {sid})")
    # Planner statistics and (PostgreSQL) the visibility map, as autovacuum keeps them on a live store:
    # without the map every index entry read costs a heap visit, and a freshly bulk-loaded table has none.
    # Then a checkpoint: a live store is not writing back gigabytes of bulk load while it answers.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        if engine.dialect.name == "postgresql":
            c.exec_driver_sql("VACUUM ANALYZE")
            c.exec_driver_sql("CHECKPOINT")
        else:  # and the write-ahead log folded into the database, as its automatic checkpoints keep it
            c.exec_driver_sql("ANALYZE")
            c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return held, {"golden_records": len(persons), "records": records, "index_rows": keys,
                  "fill_s": round(time.perf_counter() - start, 1)}


def _store_realtime(backend: str, goldens: int, scorer: Scorer, probes: int = STORE_PROBES) -> dict[str, Any]:
    from identity.migrations import upgrade
    from identity.store import make_engine

    url, cleanup = scratch_store(backend, "idbench")
    engine = make_engine(url)
    try:
        upgrade(engine)
        per_pass = probes + STORE_WARMUP
        held, filled = fill_store(engine, goldens, scorer, per_pass * len(PASSES))
        out: dict[str, Any] = dict(filled)
        for i, name in enumerate(PASSES):
            if name == "in_memory":
                out["prewarm"] = _prewarm(engine)
            engine.dispose()
            # The probes run in a fresh process, as a sync worker or the API would: this one holds
            # the fill's heap and normalization caches, which no resolving process carries.
            with tempfile.NamedTemporaryFile(suffix=".json", mode="w") as f:
                json.dump(held[i * per_pass:(i + 1) * per_pass], f)
                f.flush()
                done = subprocess.run([sys.executable, "-m", "bench.identity_bench", "--probe", url, f.name],
                                      capture_output=True, text=True, check=True, cwd=ROOT)
            out[name] = json.loads(done.stdout.strip().splitlines()[-1])
        return out
    finally:
        engine.dispose()
        cleanup()


def _prewarm(engine: Any) -> str:
    """Read the store's files once into the OS page cache; says how (or why not)."""
    t = time.perf_counter()
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            try:
                c.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_prewarm SCHEMA public")
            except Exception as e:  # contrib not installed, or not a superuser
                return f"not prewarmed: pg_prewarm unavailable ({type(e).__name__})"
            pages = c.exec_driver_sql(
                "SELECT sum(public.pg_prewarm(c.oid, 'read')) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i', 't')").scalar()
        return f"pg_prewarm read {int(pages or 0) * 8 // 1024:,d} MB in {time.perf_counter() - t:.0f} s"
    path = engine.url.database
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            size += len(chunk)
    return f"read {size >> 20:,d} MB in {time.perf_counter() - t:.0f} s"


def _probe(url: str, path: str) -> dict[str, Any]:
    """Each held-out record through :func:`identity.resolve.decide` (warm-up first): p50/p99 and outcomes."""
    from identity.resolve import decide
    from identity.store import make_engine, session_scope

    with open(path) as f:
        held = json.load(f)
    warm, timed = held[:STORE_WARMUP], held[STORE_WARMUP:]
    times: list[float] = []
    outcome: Counter = Counter()
    engine = make_engine(url)
    with session_scope(engine) as s:
        for system, ext, prof, _ in warm:  # caches, prepared statements, the pool
            decide(s, system, ext, prof)
        for system, ext, prof, person in timed:
            a = time.perf_counter_ns()
            placed = decide(s, system, ext, prof)
            times.append((time.perf_counter_ns() - a) / 1e6)
            if placed.golden_id is None:
                outcome["new" if person is None else "new_but_known"] += 1
            else:
                outcome["own_person" if placed.golden_id == person else "other_person"] += 1
    engine.dispose()
    q = statistics.quantiles(times, n=100)
    return {"probes": len(timed), "p50_ms": round(q[49], 3), "p99_ms": round(q[98], 3),
            "max_ms": round(max(times), 3), "outcome": dict(outcome)}


def main(quick: bool = False) -> dict[str, Any]:
    small, large = (10_000, 100_000) if quick else (100_000, 1_000_000)
    splink_max = int(os.environ.get("OMNISYNC_BENCH_SPLINK_MAX", small))
    scorer = Scorer()
    results: dict[str, Any] = {"sizes": [small, large]}
    if os.environ.get("OMNISYNC_BENCH_STORE_ONLY") != "1":
        _batch_parts(results, small, large, splink_max, scorer)
    goldens = int(os.environ.get("OMNISYNC_BENCH_STORE_GOLDENS", 50_000 if quick else 1_000_000))
    for backend in os.environ.get("OMNISYNC_BENCH_STORE_BACKENDS", "sqlite,postgresql").split(","):
        print(f"real-time resolve against a {backend} store of {goldens:,} golden records:", flush=True)
        try:
            rt = _store_realtime(backend, goldens, scorer)
        except Exception as e:  # e.g. PostgreSQL not reachable: say so, keep the other figures
            print(f"  skipped: {type(e).__name__}: {str(e)[:200]}")
            results[f"store_realtime_{backend}"] = {"skipped": str(e)[:200]}
            continue
        results[f"store_realtime_{backend}"] = rt
        print(f"  store filled in {rt['fill_s']} s ({rt['records']:,} records, {rt['index_rows']:,} index rows); "
              f"then {rt['prewarm']}", flush=True)
        for name in PASSES:
            r = rt[name]
            print(f"  {name.replace('_', ' ')}: decide p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms (max {r['max_ms']} ms) "
                  f"over {r['probes']:,} held-out records; {r['outcome']}", flush=True)
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at the end (2 cores; other work on the machine inflates every time): "
          f"{results['load_average']}")
    return results


def _batch_parts(results: dict[str, Any], small: int, large: int, splink_max: int, scorer: Scorer) -> None:
    data: dict[int, tuple[list[dict[str, str]], list[Any]]] = {}
    for n in (small, large):
        rows = truth.generate(n, seed=42)
        res, entities = _omnisync(rows, scorer)
        results[f"omnisync_{n}"] = res
        data[n] = (rows, entities)
        print(f"omnisync {n:>9,}: {res['seconds']:7.2f} s (cpu {res['cpu_s']} s)  {res['records_per_s']:>8,} rec/s  "
              f"P {res['precision']:.4f} R {res['recall']:.4f} F1 {res['f1']:.4f}  "
              f"peak {res['peak_rss_mb']} MB (+{res['rss_growth_mb']} MB)  pairs scored {res['pairs_scored']:,}  "
              f"stages {res['stages_s']}", flush=True)
    # CPU time as well as wall time: on a shared 2-core machine other work inflates wall time unevenly.
    results["omnisync_growth_10x"] = round(results[f"omnisync_{large}"]["seconds"] /
                                           results[f"omnisync_{small}"]["seconds"], 2)
    results["omnisync_growth_10x_cpu"] = round(results[f"omnisync_{large}"]["cpu_s"] /
                                               results[f"omnisync_{small}"]["cpu_s"], 2)
    print(f"omnisync growth with 10x data: x{results['omnisync_growth_10x']} wall, "
          f"x{results['omnisync_growth_10x_cpu']} cpu")
    for n in (small, large):
        if n > splink_max:
            print(f"splink   {n:>9,}: skipped (OMNISYNC_BENCH_SPLINK_MAX={splink_max})")
            continue
        rows, entities = data[n]
        s = _splink(rows, entities)
        results[f"splink_{n}"] = s
        o = results[f"omnisync_{n}"]
        print(f"splink   {n:>9,}: {s['seconds']:7.2f} s (cpu {s['cpu_s']} s)  {s['records_per_s']:>8,} rec/s  "
              f"P {s['precision']:.4f} R {s['recall']:.4f} F1 {s['f1']:.4f} at p>={s['threshold']}  "
              f"(train {s['train_s']} s, predict+cluster {s['predict_cluster_s']} s)  "
              f"omnisync is x{s['seconds'] / o['seconds']:.1f} faster", flush=True)
    if f"splink_{large}" in results:
        results["splink_growth_10x"] = round(results[f"splink_{large}"]["seconds"] /
                                             results[f"splink_{small}"]["seconds"], 2)
        print(f"splink growth with 10x data: x{results['splink_growth_10x']}")
    rows, entities = data[large]
    del data[small]
    rt = _realtime(entities, rows, scorer)
    results["realtime"] = rt
    print(f"single record vs in-memory index of {rt['index_records']:,}: match p50 {rt['match_p50_us']} us, "
          f"p99 {rt['match_p99_us']} us; read+match p50 {rt['read_and_match_p50_us']} us, "
          f"p99 {rt['read_and_match_p99_us']} us (index built in {rt['index_build_s']} s)")
    del data, rows, entities
    gc.collect()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        print(json.dumps(_probe(sys.argv[2], sys.argv[3])))
    else:
        main(quick="--quick" in sys.argv)
