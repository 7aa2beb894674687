"""``omnisync resolve INPUT.csv --config RULES.yaml --out OUT.csv``: batch resolution of any CSV.

The config maps CSV columns to canonical attributes; everything else (weights, protected values,
limits) comes from identity/matching.yaml and identity/rules.yaml, unless the config overrides the
threshold or names other files::

    columns:                      # attribute: column (or a list of columns for email/phone/ids)
      id: record_id
      first_name: given_name
      last_name: family_name
      birth_date: dob
      email: [email, work_email]
      phone: [mobile, phone]
      street: address_line1
      city: city
      state: state
      postcode: zip
      ids: [crm_id]               # any id column: equal values are the same person
    region: US                    # phones without a country code
    dayfirst: false               # 03/04/1990 is 4 March when true
    threshold: 20                 # optional: overrides matching.yaml
    rules: path/to/rules.yaml     # optional: overrides identity/rules.yaml
    weights: path/to/trained.yaml # optional: overrides identity/matching.yaml (omnisync train-matching)

OUT.csv has one line per input row: its id and its cluster id (the id of the cluster's first
row); an id starting like a spreadsheet formula (= + - @, tab, CR) is written with a leading ``'``.
Unreadable values do not stop the run: the row is resolved on its other attributes and the
problem is listed (record and field, never the value) in the summary and in OUT.csv's
``problems`` column.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from identity.analytics import csv_cell
from identity.batch import no_gc, resolve
from identity.matching import FieldError, RowReader, Scorer, load_config
from identity.rules import load_rules

MAX_LISTED_PROBLEMS = 100


def load_csv_config(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh) or {}
    if not isinstance(cfg, dict) or not isinstance(cfg.get("columns"), dict):
        raise ValueError(f"{path}: needs a 'columns' mapping of attributes to CSV columns")
    if "id" not in cfg["columns"]:
        raise ValueError(f"{path}: columns.id must name the column holding each row's id")
    return cfg


def run(input_csv: str | Path, config_yaml: str | Path, out_csv: str | Path) -> dict[str, Any]:
    """Resolve every row of ``input_csv``; write ``id,cluster_id,problems`` to ``out_csv``; return a summary."""
    cfg = load_csv_config(config_yaml)
    columns = cfg["columns"]
    rules = load_rules(cfg["rules"]) if cfg.get("rules") else load_rules()
    scorer = Scorer(load_config(cfg.get("weights")), rules=rules, threshold=cfg.get("threshold"))
    reader = RowReader(columns, rules=rules, region=cfg.get("region"), dayfirst=bool(cfg.get("dayfirst")))
    t0 = time.perf_counter()
    with open(input_csv, newline="", encoding="utf-8-sig") as fh:
        rd = csv.DictReader(fh)
        header = set(rd.fieldnames or [])
        wanted = {c for v in columns.values() for c in ([v] if isinstance(v, str) else v)}
        missing = sorted(wanted - header)
        if missing:
            raise ValueError(f"{input_csv}: columns named in {config_yaml} are not in the CSV: {', '.join(missing)}")
        errors: list[FieldError] = []
        entities = []
        seen: set[str] = set()
        with no_gc():
            for n, row in enumerate(rd, start=2):  # line numbers as a spreadsheet shows them
                rid = (row.get(columns["id"]) or "").strip()
                if not rid:
                    raise ValueError(f"{input_csv}: line {n}: column {columns['id']!r} (id) is empty")
                if rid in seen:
                    raise ValueError(f"{input_csv}: line {n}: id {rid!r} appears twice")
                seen.add(rid)
                entities.append(reader.read(row, errors, rid))
    t1 = time.perf_counter()
    res = resolve(entities, scorer)
    t2 = time.perf_counter()
    problems: dict[str, list[str]] = {}
    for e in errors:
        problems.setdefault(e.record, []).append(f"{e.field}: {e.reason}")
    clusters = res.cluster_ids(entities)
    with open(out_csv, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "cluster_id", "problems"])
        for e, c in zip(entities, clusters):
            # Ids are the input's own text: one starting like a formula (=, +, -, @) gets a leading
            # quote so a spreadsheet opening OUT.csv shows it instead of running it.
            w.writerow([csv_cell(e.id), csv_cell(c), csv_cell("; ".join(problems.get(e.id, ())))])
    sizes = Counter(clusters)
    return {
        "rows": len(entities),
        "clusters": len(sizes),
        "rows_in_multi_record_clusters": sum(n for n in sizes.values() if n > 1),
        "largest_cluster": max(sizes.values(), default=0),
        "pairs_scored": res.pairs_scored,
        "pairs_matched": res.pairs_matched,
        "unions_refused": res.unions_refused,
        "problems": len(errors),
        "problems_by_field": dict(Counter(e.field for e in errors)),
        "problem_list": [str(e) for e in errors[:MAX_LISTED_PROBLEMS]],
        "seconds": {"read": round(t1 - t0, 3), **{k: round(v, 3) for k, v in res.seconds.items()},
                    "total": round(time.perf_counter() - t0, 3)},
        "out": str(out_csv),
    }
