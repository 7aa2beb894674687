"""Training the matcher's weights with Splink: m/u probabilities for every level of identity/matching.yaml.

The issue's split: a well-kept library for batch matching and model training, our own scorer for the
real-time path, one set of weights for both. Splink (DuckDB, unsupervised) estimates them here:

* every comparison of :class:`identity.matching.Scorer` becomes a Splink comparison whose levels are
  the scorer's own, written in SQL over the same normalized values (folded names and their nickname
  groups, ``yyyymmdd`` dates, match-form emails and E.164 phones, normalized street and postcode), so
  an m or u estimated for ``first_name: typo`` is the probability of exactly what the scorer calls a
  typo (Jaro-Winkler and restricted Damerau-Levenshtein in DuckDB stand in for rapidfuzz's; street
  similarity is "one street's words contain the other's");
* the prior (the probability that two random records match) from pairs sharing an email or phone,
  u by random sampling, m by expectation maximisation over pairs blocked on name, birth date and
  postcode (each session estimates the comparisons its blocking rule leaves free);
* a level that random sampling never met keeps an upper bound, ``1 / pairs sampled``, rather than
  zero; a level EM could not estimate keeps the value it had.

Input is entities, so anything :class:`~identity.matching.RowReader` reads can train: the generated
truth set (``omnisync train-matching --sample N``), or a user's export through an ``omnisync resolve``
config (``--csv INPUT.csv --config RULES.yaml``). The result is written as a complete matching.yaml
(threshold, similarity cut-offs and blocking unchanged unless asked).

Splink is a development dependency (``uv sync`` installs it); the real-time path never imports it.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from identity.matching import Entity, Scorer, load_config
from identity.rules import Rules, load_rules

log = logging.getLogger(__name__)

# Scorer comparison -> ordered (level name, SQL condition); the null level is implied.
_FIRST_SAME = ("substr(first_l, 1, 1) = substr(first_r, 1, 1) AND (jaro_winkler_similarity(first_l, first_r) >= {ns}"
               " OR (least(length(first_l), length(first_r)) >= {minlen}"
               " AND damerau_levenshtein(first_l, first_r) <= 1))")


def _name_levels(col: str, rules: Rules, typo: float, *, nicknames: bool) -> list[tuple[str, str]]:
    same = _FIRST_SAME.replace("first", col).format(ns=rules.name_similarity, minlen=rules.single_edit_min_length)
    typo_sql = f"({same}) AND (jaro_winkler_similarity({col}_l, {col}_r) >= {typo} " \
               f"OR damerau_levenshtein({col}_l, {col}_r) <= 1)"
    initial = f"(length({col}_l) = 1 OR length({col}_r) = 1) AND substr({col}_l, 1, 1) = substr({col}_r, 1, 1)"
    levels = [("exact", f"{col}_l = {col}_r")]
    if nicknames:
        levels.append(("nickname", f"({initial}) OR coalesce(len(list_intersect({col}_nick_l, {col}_nick_r)), 0) > 0"))
    else:  # the scorer reads a surname's initial as "similar"
        levels.append(("similar", initial))
    levels += [("typo", typo_sql), ("similar", same), ("different", "ELSE")]
    return levels


def _comparisons(scorer: Scorer) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """name -> (null condition, levels) mirroring :meth:`Scorer.weigh` level by level."""
    rules, typo = scorer.rules, scorer.typo_similarity
    same_first = _FIRST_SAME.format(ns=rules.name_similarity, minlen=rules.single_edit_min_length)
    # A shared email or phone between two first names that conflict is vetoed by the scorer
    # whatever it weighs: such pairs (a family's phone) get a level of their own, left unused.
    conflict = (f"first_l IS NOT NULL AND first_r IS NOT NULL AND first_l <> first_r AND NOT ("
                f"((length(first_l) = 1 OR length(first_r) = 1) AND substr(first_l, 1, 1) = substr(first_r, 1, 1))"
                f" OR coalesce(len(list_intersect(first_nick_l, first_nick_r)), 0) > 0 OR ({same_first}))")
    dob_close = ("(dob_y_l = dob_y_r)::int + (dob_m_l = dob_m_r)::int + (dob_d_l = dob_d_r)::int = 2 "
                 "OR (dob_y_l = dob_y_r AND dob_m_l = dob_d_r AND dob_d_l = dob_m_r)")
    street_same = ("street_l = street_r OR list_has_all(string_split(street_l, ' '), string_split(street_r, ' ')) "
                   "OR list_has_all(string_split(street_r, ' '), string_split(street_l, ' '))")
    return {
        "ids": ("ids_l IS NULL OR ids_r IS NULL", [("shared", "len(list_intersect(ids_l, ids_r)) > 0"),
                                                     ("none", "ELSE")]),
        "email": ("emails_l IS NULL OR emails_r IS NULL", [
            ("vetoed", f"len(list_intersect(emails_l, emails_r)) > 0 AND ({conflict})"),
            ("shared", "len(list_intersect(emails_l, emails_r)) > 0"), ("different", "ELSE")]),
        "phone": ("phones_l IS NULL OR phones_r IS NULL", [
            ("vetoed", f"len(list_intersect(phones_l, phones_r)) > 0 AND ({conflict})"),
            ("shared", "len(list_intersect(phones_l, phones_r)) > 0"), ("different", "ELSE")]),
        "first_name": ("first_l IS NULL OR first_r IS NULL", _name_levels("first", rules, typo, nicknames=True)),
        "last_name": ("last_l IS NULL OR last_r IS NULL", _name_levels("last", rules, typo, nicknames=False)),
        "birth_date": ("dob_l IS NULL OR dob_r IS NULL", [("exact", "dob_l = dob_r"), ("close", dob_close),
                                                          ("different", "ELSE")]),
        "address": ("(postcode_l IS NULL OR postcode_r IS NULL) AND (city_l IS NULL OR city_r IS NULL)", [
            ("street_postcode", f"postcode_l = postcode_r AND street_l IS NOT NULL AND street_r IS NOT NULL "
                                f"AND ({street_same})"),
            ("postcode", "postcode_l = postcode_r AND (street_l IS NULL OR street_r IS NULL)"),
            ("city", "(postcode_l IS NULL OR postcode_r IS NULL) AND city_l = city_r "
                     "AND (state_l IS NULL OR state_r IS NULL OR state_l = state_r)"),
            ("different", "ELSE")]),
    }


def _table(entities: Sequence[Entity], scorer: Scorer, labels: Sequence[str] | None = None) -> Any:
    import pyarrow as pa

    def nick(name: str) -> list[int] | None:
        groups = rules.nickname_groups.get(name)
        return sorted(groups) if groups else None

    # Identifiers the scorer would not count are left out, so "phone shared" is estimated for the
    # phones that can be evidence: none over its kind's limit (a switchboard), and for a record
    # without a first name none of the *mixed* ones (held by people whose first names conflict).
    rules = scorer.rules
    holders: dict[str, list[Entity]] = defaultdict(list)
    kinds: dict[str, str] = {}
    for e in entities:
        for kind, k in e.keys():
            holders[k].append(e)
            kinds[k] = kind.split(":", 1)[0]
    limits = rules.max_records_per_key
    over = {k for k, hs in holders.items() if len(hs) > limits.get(kinds[k], len(hs))}
    mixed = set()
    for k, hs in holders.items():
        names = {h.first for h in hs} - {""}
        if k not in over and len(names) > 1 and any(scorer.firsts_conflict(a, b) for a in names for b in names if a < b):
            mixed.add(k)

    def usable(e: Entity, keys: tuple[str, ...]) -> list[str] | None:
        out = [k for k in keys if k not in over and (e.first or k not in mixed)]
        return out or None

    return pa.table({
        "unique_id": [e.id for e in entities],
        "first": [e.first or None for e in entities],
        "first_nick": [nick(e.first) for e in entities],
        "last": [e.last or None for e in entities],
        "dob": [e.dob or None for e in entities],
        "dob_y": [e.dob // 10000 or None for e in entities],
        "dob_m": [e.dob // 100 % 100 or None for e in entities],
        "dob_d": [e.dob % 100 or None for e in entities],
        "emails": [usable(e, e.emails) for e in entities],
        "phones": [usable(e, e.phones) for e in entities],
        "ids": [usable(e, e.ids) for e in entities],
        "street": [e.street or None for e in entities],
        "postcode": [e.postcode or None for e in entities],
        "city": [e.city or None for e in entities],
        "state": [e.state or None for e in entities],
        **({"person": list(labels)} if labels is not None else {}),
    }, schema=pa.schema([("unique_id", pa.string()), ("first", pa.string()), ("first_nick", pa.list_(pa.int64())),
                         ("last", pa.string()), ("dob", pa.int64()), ("dob_y", pa.int64()), ("dob_m", pa.int64()),
                         ("dob_d", pa.int64()), ("emails", pa.list_(pa.string())), ("phones", pa.list_(pa.string())),
                         ("ids", pa.list_(pa.string())), ("street", pa.string()), ("postcode", pa.string()),
                         ("city", pa.string()), ("state", pa.string()),
                         *([("person", pa.string())] if labels is not None else [])]))


def train(entities: Sequence[Entity], *, labels: Sequence[str] | None = None, config: dict[str, Any] | None = None,
          rules: Rules | None = None, max_pairs: float = 5e6, seed: int = 1,
          match_probability: float = 0.99) -> dict[str, Any]:
    """Estimate m, u and the prior on ``entities`` with Splink; return a complete matching.yaml config
    (``config``'s cut-offs and blocking kept) plus a ``training`` summary.

    Without ``labels`` (a user's export) training is unsupervised: the prior from pairs sharing an
    email or phone, u by random sampling less the share of sampled pairs that match, m by EM; the
    threshold is the weight at which a pair's match probability reaches ``match_probability``.
    With ``labels`` (who each record really is: the generated truth set) u is sampled among
    distinct people only, m comes from the labelled pairs, the prior is counted and the threshold
    is chosen on them (:func:`choose_threshold`)."""
    base = dict(config or load_config())
    rules = rules or load_rules()
    quiet = logging.getLogger("splink")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "level not observed" for levels the data never shows: reported below
    try:
        return _train(entities, labels, base, rules, max_pairs, seed, match_probability)
    finally:
        quiet.setLevel(level)


def _train(entities: Sequence[Entity], labels: Sequence[str] | None, base: dict[str, Any], rules: Rules,
           max_pairs: float, seed: int, match_probability: float) -> dict[str, Any]:
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    scorer = Scorer(base, rules=rules)
    comps = _comparisons(scorer)
    comparisons = []
    for name, (null, levels) in comps.items():
        lv: list[dict[str, Any]] = [{"sql_condition": null, "label_for_charts": "null", "is_null_level": True}]
        lv += [{"sql_condition": cond, "label_for_charts": lvl} for lvl, cond in levels]
        comparisons.append(cl.CustomComparison(comparison_levels=lv, output_column_name=name))

    def linker_for(table: Any) -> Any:
        settings = SettingsCreator(
            link_type="dedupe_only", comparisons=comparisons,
            blocking_rules_to_generate_predictions=[block_on("first", "last"), block_on("dob")],
            retain_intermediate_calculation_columns=False)
        return Linker(DuckDBAPI().register(table), settings, log_level=logging.ERROR)

    linker = linker_for(_table(entities, scorer, labels))
    em_failures = []
    if labels is None:
        deterministic = [block_on("emails", arrays_to_explode=["emails"]),
                         block_on("phones", arrays_to_explode=["phones"])]
        linker.training.estimate_probability_two_random_records_match(deterministic, recall=0.8)
        prior = None
    else:
        per = Counter(labels)
        n = len(labels)
        prior = sum(k * (k - 1) / 2 for k in per.values()) / (n * (n - 1) / 2)
    if labels is None:
        linker.training.estimate_u_using_random_sampling(max_pairs=max_pairs, seed=seed)
    else:
        # u among different people only: one record per person, so no sampled pair is a match
        first: dict[str, int] = {}
        for i, lab in enumerate(labels):
            first.setdefault(lab, i)
        singles = [entities[i] for i in sorted(first.values())]
        other = linker_for(_table(singles, scorer))
        other.training.estimate_u_using_random_sampling(max_pairs=max_pairs, seed=seed)
        u_model = other.misc.save_model_to_json()
    if labels is None:
        for name, rule in (("first+last", block_on("first", "last")), ("dob", block_on("dob")),
                           ("postcode", block_on("postcode"))):
            try:
                linker.training.estimate_parameters_using_expectation_maximisation(
                    rule, estimate_without_term_frequencies=True)
            except Exception as exc:  # Splink refuses an EM that underflows or never converges
                em_failures.append(f"{name}: {str(exc)[:120]}")
    else:
        linker.training.estimate_m_from_label_column("person")
    model = linker.misc.save_model_to_json()
    if prior is not None:
        model["probability_two_random_records_match"] = prior
        _take_u(model, u_model)
    cfg = _to_config(base, model, comps, max_pairs, len(entities), em_failures,
                     "labelled pairs" if labels is not None else "expectation maximisation")
    if labels is not None:
        chosen = choose_threshold(entities, labels, cfg, rules=rules)
        cfg["threshold"] = chosen["threshold"]
        cfg["training"]["threshold"] = chosen
    else:
        lam = float(cfg["probability_two_random_records_match"] or 0)
        if 0 < lam < 1:
            th = math.log2(match_probability / (1 - match_probability)) - math.log2(lam / (1 - lam))
            cfg["threshold"] = round(th, 1)
            cfg["training"]["threshold"] = {"threshold": cfg["threshold"],
                                            "chosen_on": f"match probability {match_probability} at the estimated prior"}
        else:
            cfg["training"]["threshold"] = {"kept": cfg["threshold"], "why": "no prior estimated"}
    return cfg


def choose_threshold(entities: Sequence[Entity], labels: Sequence[str], cfg: dict[str, Any], *,
                     rules: Rules | None = None, beta: float = 0.5,
                     candidates: Sequence[float] = tuple(x / 2 for x in range(16, 61))) -> dict[str, Any]:
    """The match threshold for trained weights, chosen on labelled records: the highest threshold
    whose F-beta (pairwise, after clustering as batch resolves; beta 0.5 counts precision twice as
    much as recall: a false merge shows one person's data to another) is within 0.0005 of the best.
    Pairs are weighed once; only the clustering is repeated per threshold."""
    from identity import truth
    from identity.batch import block, candidate_pairs, cluster

    scorer = Scorer(cfg, rules=rules or load_rules(), threshold=-1e9)  # every pair no veto stops
    blocks, stats = block(entities, scorer)
    weighed = []
    mask = (1 << 32) - 1
    for code in candidate_pairs(blocks):
        a, b = entities[code >> 32], entities[code & mask]
        ok, w, ev = scorer.weigh(a, b, stats, explain=True)
        if ok:
            weighed.append((w, code, bool(ev and ev.get("ids"))))
    truth_map = {e.id: lab for e, lab in zip(entities, labels)}
    results = []
    for th in sorted(candidates, reverse=True):
        matched = [(w, c) for w, c, strong in weighed if strong or w >= th]
        lab, _ = cluster(entities, matched, scorer)
        acc = truth.pairwise_accuracy(truth_map, {e.id: entities[i].id for e, i in zip(entities, lab)})
        results.append((th, acc["precision"], acc["recall"]))
    b2 = beta * beta

    def fbeta(p: float, r: float) -> float:
        return (1 + b2) * p * r / (b2 * p + r) if p + r else 0.0

    best = max(fbeta(p, r) for _, p, r in results)
    th, p, r = max((t for t in results if fbeta(t[1], t[2]) >= best - 0.0005), key=lambda t: t[0])
    return {"threshold": th, "precision": round(p, 4), "recall": round(r, 4),
            "chosen_on": f"{len(entities)} labelled records, best F{beta:g} (precision weighs more)"}


def _take_u(model: dict[str, Any], u_model: dict[str, Any]) -> None:
    us = {(c["output_column_name"], lv.get("label_for_charts")): lv.get("u_probability")
          for c in u_model["comparisons"] for lv in c["comparison_levels"]}
    for c in model["comparisons"]:
        for lv in c["comparison_levels"]:
            lv["u_probability"] = us.get((c["output_column_name"], lv.get("label_for_charts")))
    model["u_from_distinct_people"] = True


def _to_config(base: dict[str, Any], model: dict[str, Any], comps: dict[str, Any], max_pairs: float,
               records: int, em_failures: list[str], m_from: str) -> dict[str, Any]:
    floor = 1.0 / max_pairs
    old = base["comparisons"]
    prior = model.get("probability_two_random_records_match") or 0.0
    out_comps: dict[str, dict[str, dict[str, float]]] = {}
    kept: list[str] = []
    for comp in model["comparisons"]:
        name = comp["output_column_name"]
        if name not in comps:
            continue
        levels: dict[str, dict[str, float]] = {}
        for lv in comp["comparison_levels"]:
            label = lv.get("label_for_charts")
            if lv.get("is_null_level") or label in (None, "null", "none", "vetoed") or label in levels:
                continue  # ids that differ weigh nothing, vetoed pairs never match; a repeated label: the first wins
            m, u = lv.get("m_probability"), lv.get("u_probability")
            prev = (old.get(name) or {}).get(label) or {}
            if m is None or not m > 0:
                m = prev.get("m")
                if m is None:
                    continue  # a level the scorer does not weigh (a birth date that differs is a veto)
                kept.append(f"{name}.{label}.m")
            if u is not None and m is not None and 0 < prior < 1 and not model.get("u_from_distinct_people"):
                # Random sampling counts every sampled pair as two people; a share `prior` of
                # them are one person and fall in this level with probability m.
                u = (u - prior * m) / (1 - prior)
            if u is None or not u > floor:
                u = floor  # (almost) never met among different people: at most about one in max_pairs
            if m is None:
                continue
            levels[label] = {"m": _round(m), "u": _round(u)}
        # a level the scorer needs but Splink could not weigh keeps its old weights
        for label, mu in (old.get(name) or {}).items():
            if label not in levels:
                levels[label] = dict(mu)
                kept.append(f"{name}.{label}")
        out_comps[name] = levels
    prior = model.get("probability_two_random_records_match")
    cfg = {k: v for k, v in base.items() if k not in ("comparisons", "training")}
    cfg["probability_two_random_records_match"] = _round(prior) if prior else base.get(
        "probability_two_random_records_match")
    cfg["comparisons"] = out_comps
    cfg["training"] = {"records": records, "m_from": m_from, "u_pairs_sampled": int(max_pairs),
                       "kept_previous": sorted(set(kept)), "em_failures": em_failures}
    return cfg


def _round(x: float) -> float:
    if x == 0:
        return 0.0
    digits = 4 - int(math.floor(math.log10(abs(x))))
    return round(float(x), max(digits, 0))


HEADER = """\
# Probabilistic (Fellegi-Sunter) matching: weights and thresholds for identity/matching.py.
#
# Each comparison sorts a pair of records into one level. m = P(level | same person),
# u = P(level | different people); the level adds log2(m/u) to the pair's weight. A comparison
# with a value missing on either side adds nothing. A pair is a match when its weight reaches
# `threshold` and no veto applies (see matching.py: conflicting birth dates, conflicting names
# on a guarded identifier such as a shared family phone).
#
# Which identifier values are evidence at all (junk, switchboards, per-key limits, nicknames,
# when names conflict) is decided by identity/rules.yaml, shared with the real-time resolver.
#
"""

_METHODS = {
    "labelled pairs": "m from labelled pairs, u by random sampling among distinct people, the threshold at the "
                      "best F0.5",
    "expectation maximisation": "m by expectation maximisation, u by random sampling less the matches among the "
                                "sampled pairs, no labels, the threshold at a match probability",
}


def write_config(cfg: dict[str, Any], path: str | Path, *, source: str) -> None:
    import textwrap

    method = _METHODS.get(cfg.get("training", {}).get("m_from"), "")
    about = (f"m, u, the prior and the threshold below were estimated by Splink (`omnisync train-matching`, "
             f"identity/training.py: {method}) on {source}. `training` says how the threshold was chosen and which "
             f"values could not be estimated and kept their previous value. The same weights serve batch "
             f"resolution, `omnisync resolve` and the store's real-time resolver.")
    lines = "".join(f"# {line}\n" for line in textwrap.wrap(about, 96))
    body = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None, width=110)
    Path(path).write_text(HEADER + lines + "\n" + body, encoding="utf-8")


def generated_entities(n: int, seed: int) -> tuple[list[Entity], list[str]]:
    """``n`` generated omnichannel records (identity/truth.py) read like ``omnisync resolve``, and who
    each really is."""
    from identity import truth
    from identity.matching import RowReader

    reader = RowReader(truth.CSV_CONFIG["columns"])
    rows = truth.generate(n, seed=seed)
    return [reader.read(r) for r in rows], [r["person_id"] for r in rows]


def csv_entities(input_csv: str | Path, config_yaml: str | Path, *,
                 label_column: str | None = None) -> tuple[list[Entity], list[str] | None]:
    """A user's CSV read through an ``omnisync resolve`` config (unreadable values left out), and the
    ``label_column`` values when given (rows with an empty label are left out)."""
    import csv

    from identity.csv_resolve import load_csv_config
    from identity.matching import RowReader

    cfg = load_csv_config(config_yaml)
    rules = load_rules(cfg["rules"]) if cfg.get("rules") else load_rules()
    reader = RowReader(cfg["columns"], rules=rules, region=cfg.get("region"), dayfirst=bool(cfg.get("dayfirst")))
    entities, labels = [], []
    with open(input_csv, newline="", encoding="utf-8-sig") as fh:
        rd = csv.DictReader(fh)
        if label_column and label_column not in (rd.fieldnames or []):
            raise ValueError(f"{input_csv}: no column {label_column!r} to take labels from")
        for i, row in enumerate(rd, start=2):
            label = (row.get(label_column) or "").strip() if label_column else ""
            if label_column and not label:
                continue
            entities.append(reader.read(row, [], (row.get(cfg["columns"]["id"]) or "").strip() or f"line{i}"))
            labels.append(label)
    return entities, (labels if label_column else None)
