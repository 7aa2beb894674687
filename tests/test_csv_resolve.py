"""`omnisync resolve INPUT.csv --config RULES.yaml --out OUT.csv` on generated data with known truth."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from identity import truth
from identity.csv_resolve import run


def _write(tmp_path: Path, rows: list[dict[str, str]]) -> tuple[Path, Path]:
    src = tmp_path / "in.csv"
    with open(src, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=truth.COLUMNS)
        w.writeheader()
        w.writerows(rows)
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(yaml.safe_dump(truth.CSV_CONFIG))
    return src, cfg


def test_every_row_gets_a_cluster_and_the_clusters_are_accurate(tmp_path):
    rows = truth.generate(5000, seed=3)
    src, cfg = _write(tmp_path, rows)
    out = tmp_path / "out.csv"
    summary = run(src, cfg, out)
    with open(out, newline="") as fh:
        got = {r["id"]: r["cluster_id"] for r in csv.DictReader(fh)}
    assert set(got) == {r["record_id"] for r in rows}
    assert summary["rows"] == 5000 and summary["clusters"] < 5000
    acc = truth.pairwise_accuracy({r["record_id"]: r["person_id"] for r in rows}, got)
    assert acc["precision"] >= 0.99 and acc["recall"] >= 0.97, acc


def test_bad_values_are_listed_by_row_and_field_and_the_row_still_resolves(tmp_path):
    rows = truth.generate(200, seed=4)
    rows[0]["email"], rows[0]["phone"], rows[0]["birth_date"] = "nobody-at-all", "call me", "2001-13-45"
    src, cfg = _write(tmp_path, rows)
    out = tmp_path / "out.csv"
    summary = run(src, cfg, out)
    rid = rows[0]["record_id"]
    assert summary["problems_by_field"] == {"email": 1, "phone": 1, "birth_date": 1}
    assert all(p.startswith(f"{rid}: ") for p in summary["problem_list"])
    assert "nobody-at-all" not in json.dumps(summary)
    with open(out, newline="") as fh:
        line = next(r for r in csv.DictReader(fh) if r["id"] == rid)
    assert "email" in line["problems"] and line["cluster_id"]


def test_config_naming_a_missing_column_is_refused(tmp_path):
    src, cfg = _write(tmp_path, truth.generate(10, seed=5))
    bad = dict(truth.CSV_CONFIG, columns={**truth.CSV_CONFIG["columns"], "postcode": "zip_code"})
    cfg.write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="zip_code"):
        run(src, cfg, tmp_path / "out.csv")


def test_duplicate_row_ids_are_refused_with_the_line(tmp_path):
    rows = truth.generate(10, seed=6)
    rows[5]["record_id"] = rows[2]["record_id"]
    src, cfg = _write(tmp_path, rows)
    with pytest.raises(ValueError, match="line 7"):
        run(src, cfg, tmp_path / "out.csv")


def test_cli_resolve_writes_out_csv(tmp_path):
    src, cfg = _write(tmp_path, truth.generate(300, seed=8))
    out = tmp_path / "out.csv"
    p = subprocess.run([sys.executable, "-m", "omnisync.cli", "resolve", str(src), "--config", str(cfg),
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["rows"] == 300
    assert sum(1 for _ in open(out)) == 301
