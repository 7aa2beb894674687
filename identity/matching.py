"""Probabilistic identity matching: normalized entities, blocking keys and a Fellegi-Sunter scorer.

Identifiers and the evidence they cannot give (names with typos, birth dates, addresses) weighed
together: what batch resolution (:mod:`identity.batch`, ``omnisync resolve``) and the store's
real-time resolver (:mod:`identity.resolve`, whose index holds :func:`index_keys`) both run. One
:class:`Scorer` serves a single pair and a whole batch, so the paths can never disagree.

* :class:`Entity` is one record reduced to comparable values: folded names, a birth date as
  ``yyyymmdd``, identifiers in their match form (:meth:`identity.rules.Rules.match_key`: junk such
  as ``test@test.com`` or ``0000000000`` is dropped here and never becomes evidence), address parts.
  Normalization is cached per raw value: the same phone or city recurs across millions of rows
  and parsing a phone costs ~15 us.
* :func:`blocking_keys` gives the keys under which candidate pairs are looked for: identifiers,
  Soundex(last name)+birth date, Soundex(first name)+birth date, first name+postcode,
  Soundex(last)+initial+postcode. A key shared by too many records is skipped (see batch).
* :meth:`Scorer.score` weighs one pair: each comparison (identifiers, names, birth date, address)
  falls into a level whose weight is ``log2(m/u)`` from ``identity/matching.yaml``; the pair
  matches when the sum reaches the threshold and no veto applies:

  - birth dates on both sides that are neither equal nor a plausible typo of each other;
  - first names that conflict (:meth:`identity.rules.Rules.names_conflict` semantics: nicknames,
    initials and close spellings do not) -- a family's phone or a couple's inbox never glues two
    people together, whatever else they share;
  - no personal evidence: a last name, an address or a family landline belong to a household,
    so without an agreeing first name or birth date, or an identifier of its own, a pair is no match.

  A shared strong id (a vendor record id, a CDP user id) is the source system saying it is one
  person, and wins over the vetoes.

  What the population says about values comes in :class:`KeyStats`, from the batch or an index:
  an identifier carried by more records than its kind's limit (``max_records_per_key``) stops
  being evidence; a *mixed* key (held by records whose first names conflict) is no evidence for
  a nameless record; and an exact name or postcode agreement weighs less when the value is common
  (term frequencies: two James Smiths in one large ZIP code are not one person).
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jellyfish import soundex
from rapidfuzz.distance import OSA, JaroWinkler
from rapidfuzz.fuzz import token_set_ratio

from identity.rules import Rules, load_rules
from omnisync.model import CACHE_ENTRIES, normalize_email, normalize_phone
from omnisync.settings import get_settings

CONFIG_PATH = Path(__file__).with_name("matching.yaml")

__all__ = [
    "CANONICAL_ATTRIBUTES",
    "Decision",
    "Entity",
    "FieldError",
    "KeyStats",
    "value_keys",
    "RowReader",
    "Scorer",
    "attribute_keys",
    "blocking_keys",
    "entity_from_profile",
    "entity_from_row",
    "entity_key",
    "index_keys",
    "load_config",
    "score",
]

# The attributes a CSV column (or any mapped field) can be mapped to.
CANONICAL_ATTRIBUTES = ("id", "first_name", "last_name", "full_name", "birth_date", "email", "phone",
                        "street", "city", "state", "postcode", "ids", "cdp_user_id")


class FieldError(ValueError):
    """A value that cannot be read as its attribute; names the record and field, never the value."""

    def __init__(self, record: str, field_name: str, reason: str):
        super().__init__(f"{record}: {field_name}: {reason}")
        self.record, self.field, self.reason = record, field_name, reason


# --- normalization (cached per raw value) ----------------------------------------------------
# Bounded caches: the same values recur within a batch and a block (a person's records, common
# names), not across a whole population; an unbounded or million-entry cache of addresses grew
# with the data a long-running sync has seen (about 250 bytes an entry), for few hits.
CACHE = CACHE_ENTRIES


@lru_cache(maxsize=CACHE)
def fold_name(raw: str) -> str:
    """Lower-case, accents and everything but letters removed (same folding as identity.rules)."""
    if not raw:
        return ""
    if raw.isascii():
        low = raw.lower()
        return low if low.isalpha() else "".join(c for c in low if c.isalpha())
    text = unicodedata.normalize("NFKD", raw)
    return "".join(c for c in text.lower() if c.isalpha())


_NANP_CHARS = frozenset("0123456789 ()-.+")
_NANP_REGIONS = frozenset({"US", "CA"})


@lru_cache(maxsize=CACHE)
def _phone(raw: str, region: str) -> str | None:
    # Fast path for the common North American shapes ("(415) 555-0134", "+1 415 555 0134",
    # "14155550134"): the same E.164 phonenumbers gives, at a tenth of the cost. Anything
    # else (other regions, extensions, letters, odd lengths) goes through phonenumbers.
    if region in _NANP_REGIONS and _NANP_CHARS.issuperset(raw) and raw.count("+") <= 1 \
            and (raw.find("+") <= 0):
        digits = "".join(c for c in raw if c.isdigit())
        plus = raw.lstrip().startswith("+")
        if len(digits) == 11 and digits[0] == "1":
            digits = digits[1:]
        elif plus or len(digits) != 10:
            digits = ""
        if digits and digits[0] in "23456789" and digits[3] in "23456789":
            return "+1" + digits
    try:
        return normalize_phone(raw, region)
    except ValueError:
        return None


@lru_cache(maxsize=CACHE)
def _email(raw: str) -> str | None:
    try:
        return normalize_email(raw)
    except ValueError:
        return None


_DATE_ISO = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ].*)?$")
_DATE_SLASH = re.compile(r"^(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})$")
_DATE_COMPACT = re.compile(r"^(\d{4})(\d{2})(\d{2})$")


@lru_cache(maxsize=CACHE)
def parse_birth_date(raw: str, dayfirst: bool = False) -> int | None:
    """``yyyymmdd`` as an int from ISO, ``MM/DD/YYYY`` (``DD/MM/YYYY`` when dayfirst) or ``YYYYMMDD``."""
    s = raw.strip()
    if m := _DATE_ISO.match(s) or _DATE_COMPACT.match(s):
        y, mo, d = int(m[1]), int(m[2]), int(m[3])
    elif m := _DATE_SLASH.match(s):
        a, b, y = int(m[1]), int(m[2]), int(m[3])
        mo, d = (b, a) if dayfirst else (a, b)
    else:
        return None
    try:
        date(y, mo, d)
    except ValueError:
        return None
    return y * 10000 + mo * 100 + d


_STREET_WORDS = {"street": "st", "avenue": "ave", "av": "ave", "road": "rd", "boulevard": "blvd",
                 "lane": "ln", "drive": "dr", "court": "ct", "place": "pl", "terrace": "ter",
                 "apartment": "apt", "suite": "ste", "north": "n", "south": "s", "east": "e",
                 "west": "w", "highway": "hwy", "parkway": "pkwy", "square": "sq", "unit": "apt"}


@lru_cache(maxsize=CACHE)
def normalize_street(raw: str) -> str:
    words = re.sub(r"[^0-9a-z ]+", " ", raw.lower().replace("#", " apt ")).split()
    return " ".join(_STREET_WORDS.get(w, w) for w in words)


@lru_cache(maxsize=CACHE)
def normalize_postcode(raw: str) -> str:
    s = re.sub(r"\s+", "", raw).upper()
    if re.fullmatch(r"\d{5}-?\d{4}", s):  # US ZIP+4: the ZIP is what both sides reliably carry
        return s[:5]
    return s


@lru_cache(maxsize=CACHE)
def normalize_place(raw: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z ]+", " ", raw.lower()).split())


@lru_cache(maxsize=CACHE)
def _soundex(name: str) -> str:
    return soundex(name) if name else ""


# --- entities ----------------------------------------------------------------------------------

class Entity:
    """One record as matching sees it. Empty string / 0 / () mean "missing"."""

    __slots__ = ("id", "first", "last", "dob", "emails", "phones", "ids", "street", "postcode",
                 "city", "state")

    def __init__(self, id: str, first: str = "", last: str = "", dob: int = 0,
                 emails: tuple[str, ...] = (), phones: tuple[str, ...] = (), ids: tuple[str, ...] = (),
                 street: str = "", postcode: str = "", city: str = "", state: str = ""):
        self.id, self.first, self.last, self.dob = id, first, last, dob
        self.emails, self.phones, self.ids = emails, phones, ids
        self.street, self.postcode, self.city, self.state = street, postcode, city, state

    def __repr__(self) -> str:  # identifiers masked: entities end up in assertion messages
        return (f"Entity({self.id!r}, first={self.first[:1]}., last={self.last[:1]}., "
                f"dob={'yes' if self.dob else 'no'}, emails={len(self.emails)}, phones={len(self.phones)}, "
                f"ids={len(self.ids)})")

    def keys(self) -> list[tuple[str, str]]:
        """Identifier keys as (kind, value): what the per-key limits count."""
        out = [(i.split("=", 1)[0], i) for i in self.ids]
        out += [("email", e) for e in self.emails]
        out += [("phone", p) for p in self.phones]
        return out


def _split_full(full: str) -> tuple[str, str]:
    parts = full.replace(",", " ").split()
    if not parts:
        return "", ""
    if "," in full:  # "Okafor, Amara"
        return (parts[1] if len(parts) > 1 else ""), parts[0]
    return parts[0], (parts[-1] if len(parts) > 1 else "")


def _id_key(kind: str, value: str) -> str:
    return f"{kind}={value}"


def _emails(values: Iterable[str], rules: Rules, record: str, errors: list[FieldError] | None) -> tuple[str, ...]:
    out: list[str] = []
    for raw in values:
        if not raw or not raw.strip():
            continue
        e = _email(raw)
        if e is None:
            if errors is not None:
                errors.append(FieldError(record, "email", "not a valid email address"))
            continue
        k = rules.match_key("email", e)
        if k and k not in out:
            out.append(k)
    return tuple(out)


def _phones(values: Iterable[str], rules: Rules, region: str, record: str,
            errors: list[FieldError] | None) -> tuple[str, ...]:
    out: list[str] = []
    for raw in values:
        if not raw or not raw.strip():
            continue
        p = _phone(raw, region)
        if p is None:
            if errors is not None:
                errors.append(FieldError(record, "phone", "not a valid phone number"))
            continue
        k = rules.match_key("phone", p)
        if k and k not in out:
            out.append(k)
    return tuple(out)


def _get(obj: Any, name: str) -> Any:
    # a plain dict first: an isinstance check against Mapping costs more than the lookup
    return obj.get(name) if type(obj) is dict or isinstance(obj, Mapping) else getattr(obj, name, None)


def _dob_of(value: Any) -> int:
    if not value:
        return 0
    if isinstance(value, str):
        return parse_birth_date(value) or 0
    return value.year * 10000 + value.month * 100 + value.day


def _ident(rules: Rules, kind: str, value: Any) -> str | None:
    # The identity_key index keeps key_value(...)[:255]: ids here take the same form, so a key
    # counted in the store and a key compared here are one string.
    v = rules.key_value(kind, value)
    return _id_key(kind, v[:255]) if v else None


def entity_from_profile(profile: Any, record_id: str, *, system: str | None = None,
                        rules: Rules | None = None, entity_id: str | None = None) -> Entity:
    """An :class:`Entity` from a canonical profile: a ``CustomerProfile`` or its JSON dump (what the
    store keeps), already validated and normalized. ``record_id`` is the record's id in ``system``
    (its ``ext:<system>`` key); ``entity_id`` names the entity (default: ``record_id``)."""
    rules = rules or load_rules()
    first, last = _get(profile, "first_name") or "", _get(profile, "last_name") or ""
    full = _get(profile, "full_name")
    if not (first or last) and full:
        first, last = _split_full(full)
    ids = []
    if system:
        ids.append(_ident(rules, f"ext:{system}", record_id))
    ids += [_ident(rules, f"ext:{s}", v) for s, v in sorted((_get(profile, "external_ids") or {}).items()) if v]
    cdp = _get(profile, "cdp_user_id")
    if cdp:
        ids.append(_ident(rules, "cdp", cdp))
    addrs = _get(profile, "addresses") or []
    addr = addrs[0] if addrs else None
    line1, city, state, postcode = ((_get(addr, "line1"), _get(addr, "city"), _get(addr, "state"),
                                     _get(addr, "postcode")) if addr else (None, None, None, None))
    return Entity(
        record_id if entity_id is None else entity_id, fold_name(first), fold_name(last),
        _dob_of(_get(profile, "birth_date")),
        _emails(_get(profile, "emails") or (), rules, record_id, None),
        _phones(_get(profile, "phones") or (), rules, get_settings().default_region, record_id, None),
        tuple(dict.fromkeys(i for i in ids if i)),
        normalize_street(line1) if line1 else "",
        normalize_postcode(postcode) if postcode else "",
        normalize_place(city) if city else "",
        normalize_place(state) if state else "",
    )


def _cols(columns: Mapping[str, Any], attr: str) -> list[str]:
    v = columns.get(attr)
    if v is None:
        return []
    return [v] if isinstance(v, str) else list(v)


_SINGLE = ("id", "first_name", "last_name", "full_name", "birth_date", "street", "city", "state", "postcode",
           "cdp_user_id")


class RowReader:
    """Reads flat rows (CSV lines) into entities, for one column mapping.

    ``columns`` maps each canonical attribute (:data:`CANONICAL_ATTRIBUTES`) to a column name, or a
    list of names for multi-valued ones (``email``, ``phone``, ``ids``). Unreadable values (a bad
    email, phone or date) are left out and reported in ``errors`` naming the record and field.
    Identifier match keys are cached per raw value: exports repeat them across systems.
    """

    def __init__(self, columns: Mapping[str, Any], *, rules: Rules | None = None, region: str | None = None,
                 dayfirst: bool = False):
        unknown = set(columns) - set(CANONICAL_ATTRIBUTES)
        if unknown:
            raise ValueError(f"unknown attributes in the column mapping: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(CANONICAL_ATTRIBUTES)})")
        self.rules = rules or load_rules()
        self.region = region or get_settings().default_region
        self.dayfirst = dayfirst
        self._single_cols = tuple(columns.get(a) for a in _SINGLE)
        self.emails, self.phones, self.ids = _cols(columns, "email"), _cols(columns, "phone"), _cols(columns, "ids")
        self._email_keys: dict[str, str | None] = {}
        self._phone_keys: dict[str, str | None] = {}

    def _email_key(self, raw: str) -> str | None:
        k = self._email_keys.get(raw, "")
        if k == "":
            e = _email(raw)
            k = None if e is None else self.rules.match_key("email", e)
            # "" marks an invalid address, None a protected one (not an error: just no evidence)
            k = "" if e is None else k
            self._email_keys[raw] = k
        return k

    def _phone_key(self, raw: str) -> str | None:
        k = self._phone_keys.get(raw, "")
        if k == "":
            p = _phone(raw, self.region)
            k = "" if p is None else self.rules.match_key("phone", p)
            self._phone_keys[raw] = k
        return k

    def read(self, row: Mapping[str, Any], errors: list[FieldError] | None = None,
             record_id: str | None = None) -> Entity:
        g = row.get
        # One pass over the single-valued columns, in _SINGLE order (no per-field calls: hot loop).
        vals = [(v.strip() if isinstance(v, str) else ("" if v is None else str(v).strip())) if c else ""
                for c in self._single_cols for v in (g(c) if c else None,)]
        rid_v, first, last, full, raw_dob, street, city, state, postcode, cdp = vals
        rid = record_id if record_id is not None else rid_v
        if not (first or last) and full:
            first, last = _split_full(full)
        dob = 0
        if raw_dob:
            dob = parse_birth_date(raw_dob, self.dayfirst) or 0
            if not dob and errors is not None:
                errors.append(FieldError(rid, "birth_date", "not a date (YYYY-MM-DD, MM/DD/YYYY or YYYYMMDD)"))
        emails: list[str] = []
        for c in self.emails:
            raw = g(c)
            if raw and raw.strip():
                k = self._email_key(raw)
                if k == "":
                    if errors is not None:
                        errors.append(FieldError(rid, c, "not a valid email address"))
                elif k and k not in emails:
                    emails.append(k)
        phones: list[str] = []
        for c in self.phones:
            raw = g(c)
            if raw and raw.strip():
                k = self._phone_key(raw)
                if k == "":
                    if errors is not None:
                        errors.append(FieldError(rid, c, "not a valid phone number"))
                elif k and k not in phones:
                    phones.append(k)
        ids = [f"ext:{c}={str(g(c)).strip()}" for c in self.ids if g(c) not in (None, "")]
        if cdp:
            ids.append(f"cdp={cdp}")
        return Entity(
            rid, fold_name(first), fold_name(last), dob, tuple(emails), tuple(phones), tuple(ids),
            normalize_street(street) if street else "",
            normalize_postcode(postcode) if postcode else "",
            normalize_place(city) if city else "",
            normalize_place(state) if state else "",
        )


def entity_from_row(row: Mapping[str, Any], columns: Mapping[str, Any], *, rules: Rules | None = None,
                    region: str | None = None, dayfirst: bool = False,
                    errors: list[FieldError] | None = None, record_id: str | None = None) -> Entity:
    """An :class:`Entity` from one flat row; for many rows build one :class:`RowReader` instead."""
    return RowReader(columns, rules=rules, region=region, dayfirst=dayfirst).read(row, errors, record_id)


def attribute_keys(e: Entity) -> list[str]:
    """Blocking keys built from names, birth date and postcode (identifiers are keys as themselves)."""
    keys = []
    if e.dob:
        if e.last:
            keys.append(f"ld|{_soundex(e.last)}|{e.dob}")
        if e.first:
            keys.append(f"fd|{_soundex(e.first)}|{e.dob}")
    if e.postcode:
        if e.first:
            keys.append(f"fp|{e.first}|{e.postcode}")
        if e.last:
            keys.append(f"lp|{_soundex(e.last)}|{e.first[:1]}|{e.postcode}")
    return keys


def blocking_keys(e: Entity) -> list[str]:
    """Keys under which candidate pairs are looked for: identifiers as themselves, then attribute keys."""
    return [*e.ids, *e.emails, *e.phones, *attribute_keys(e)]


def index_keys(e: Entity) -> list[tuple[str, str]]:
    """What the store's ``identity_key`` index holds for an entity, as (kind, value): its identifiers
    (``email``, ``phone``, ``ext:<system>``, ``cdp``), its attribute blocking keys (kind ``blk``) and
    its term-frequency values (kind ``tf``). :func:`entity_key` turns a row back into the key string
    batch blocking uses, so the store and a batch count the same keys."""
    out = [_split_id(i) for i in e.ids]
    out += [("email", x) for x in e.emails]
    out += [("phone", x) for x in e.phones]
    out += [("blk", k) for k in attribute_keys(e)]
    out += [("tf", k) for k in value_keys(e)]
    return out


def _split_id(key: str) -> tuple[str, str]:
    kind, _, value = key.partition("=")
    return kind, value


def entity_key(kind: str, value: str) -> str:
    """The blocking/statistics key string of an ``identity_key`` row (inverse of :func:`index_keys`)."""
    if kind.startswith("ext:") or kind == "cdp":
        return f"{kind}={value}"
    return value


def key_kind(key: str) -> str | None:
    """The identifier kind of a blocking key (``email``, ``phone``, ``ext:<system>``, ``cdp``), else None."""
    if "|" in key:
        return None
    if "=" in key:
        return key.split("=", 1)[0]
    if "@" in key:
        return "email"
    return "phone"


# --- scoring -----------------------------------------------------------------------------------

@dataclass
class KeyStats:
    """What a population says about identifier keys: records per key, and *mixed* keys.

    A mixed key is carried by records whose first names conflict (a family landline, a company
    switchboard under its limit): it stays evidence only between two records that both have a
    first name (which then must agree); a nameless record cannot tell whose it is.
    """

    counts: Mapping[str, int] = field(default_factory=dict)
    mixed: Container[str] = field(default_factory=frozenset)
    # Term frequencies: records per first name ("f|ann"), last name ("l|lee") and postcode
    # ("z|94110"), out of `population`. An exact agreement on a common value is weaker evidence
    # than on a rare one (two James Smiths in a city of thousands); see Scorer._tf.
    freq: Mapping[str, int] = field(default_factory=dict)
    population: int = 0


def value_keys(e: "Entity") -> list[str]:
    """The term-frequency keys of an entity (see :attr:`KeyStats.freq`)."""
    out = []
    if e.first:
        out.append("f|" + e.first)
    if e.last:
        out.append("l|" + e.last)
    if e.postcode:
        out.append("z|" + e.postcode)
    return out


@dataclass(frozen=True)
class Decision:
    match: bool
    weight: float
    evidence: dict[str, Any] = field(default_factory=dict)


def config_path() -> Path:
    """The weights file in force: ``OMNISYNC_MATCHING_WEIGHTS`` (e.g. a trained one), else matching.yaml."""
    return Path(os.environ.get("OMNISYNC_MATCHING_WEIGHTS") or CONFIG_PATH)


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    with open(path or config_path(), encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _w(level: Mapping[str, float]) -> float:
    return math.log2(float(level["m"]) / float(level["u"]))


def _dob_close(a: int, b: int) -> bool:
    ya, ma, da = a // 10000, a // 100 % 100, a % 100
    yb, mb, db = b // 10000, b // 100 % 100, b % 100
    same = (ya == yb) + (ma == mb) + (da == db)
    return same == 2 or (ya == yb and ma == db and da == mb)


class Scorer:
    """Weights pairs of entities. Build once (it reads the YAML and the rules); call many times."""

    def __init__(self, config: Mapping[str, Any] | None = None, rules: Rules | None = None,
                 threshold: float | None = None):
        cfg = dict(config or load_config())
        self.rules = rules or load_rules()
        self.threshold = float(threshold if threshold is not None else cfg["threshold"])
        self.typo_similarity = float(cfg.get("typo_similarity", 0.92))
        self.street_similarity = float(cfg.get("street_similarity", 90))
        self.max_block_size = int((cfg.get("blocking") or {}).get("max_block_size", 40))
        c = cfg["comparisons"]
        self.weights = {name: {lvl: _w(v) for lvl, v in levels.items()} for name, levels in c.items()}
        w = self.weights
        self._w_id = w["ids"]["shared"]
        self._w_email, self._w_email_diff = w["email"]["shared"], w["email"]["different"]
        self._w_phone, self._w_phone_diff = w["phone"]["shared"], w["phone"]["different"]
        self._wf, self._wl = w["first_name"], w["last_name"]
        self._wd, self._wa = w["birth_date"], w["address"]
        self._same_name = self.rules.same_name
        self._nick = self.rules.nickname_groups
        self._limits = self.rules.max_records_per_key
        self._name_cache: dict[tuple[str, str], str] = {}
        self._m_first_exact = float(c["first_name"]["exact"]["m"])
        self._m_last_exact = float(c["last_name"]["exact"]["m"])
        self._m_postcode = float(c["address"]["postcode"]["m"])
        # An initial ("O.") agrees with any surname of that letter: no evidence either way, unless
        # the weights file gives last names a nickname level of their own.
        self._last_initial = "nickname" if "nickname" in self._wl else "similar"
        # P(two records drawn at random are one person): turns a weight into a match probability.
        self.prior = float(cfg.get("probability_two_random_records_match") or 0.0)

    @staticmethod
    def _tf(stats: KeyStats, key: str, m: float, default: float) -> float:
        # Term-frequency u: the share of records carrying the value. Only ever lowers the weight:
        # a rare name is no reason to merge on a name alone.
        n = stats.freq.get(key, 0)
        if n <= 1:
            return default
        return min(default, math.log2(m * stats.population / n))

    # A level for two non-empty, folded names: exact, nickname, typo, similar or different.
    def _name_level(self, a: str, b: str) -> str:
        if a == b:
            return "exact"
        k = (a, b) if a < b else (b, a)
        lvl = self._name_cache.get(k)
        if lvl is None:
            if not self._same_name(a, b):
                lvl = "different"
            elif len(a) == 1 or len(b) == 1 or (self._nick.get(a, frozenset()) & self._nick.get(b, frozenset())):
                lvl = "nickname"
            elif JaroWinkler.similarity(a, b) >= self.typo_similarity or OSA.distance(a, b, score_cutoff=1) <= 1:
                lvl = "typo"
            else:
                lvl = "similar"
            if len(self._name_cache) < 1_000_000:
                self._name_cache[k] = lvl
        return lvl

    def _usable(self, kind: str, key: str, stats: KeyStats | None, a: Entity, b: Entity) -> bool:
        if stats is None:
            return True
        limit = self._limits.get(kind.split(":", 1)[0])
        if limit is not None and stats.counts.get(key, 0) > limit:
            return False
        return not (key in stats.mixed and not (a.first and b.first))

    def weigh(self, a: Entity, b: Entity, stats: KeyStats | None = None,
              explain: bool = False) -> tuple[bool, float, dict[str, Any] | None]:
        """(match, weight, evidence-or-None). ``stats``: the population's key counts and mixed keys."""
        ev: dict[str, Any] | None = {} if explain else None
        weight = 0.0
        strong = guarded = False
        if a.ids and b.ids:
            for k in a.ids:
                if k in b.ids and self._usable(k.split("=", 1)[0], k, stats, a, b):
                    strong = True
                    weight += self._w_id
                    if ev is not None:
                        ev.setdefault("ids", []).append(k.split("=", 1)[0])
                    break
        if a.emails and b.emails:
            shared = [e for e in a.emails if e in b.emails and self._usable("email", e, stats, a, b)]
            if shared:
                guarded = True
                weight += self._w_email
                lvl = "shared"
            else:
                weight += self._w_email_diff
                lvl = "different"
            if ev is not None:
                ev["email"] = lvl
        if a.phones and b.phones:
            shared = [p for p in a.phones if p in b.phones and self._usable("phone", p, stats, a, b)]
            if shared:
                guarded = True
                weight += self._w_phone
                lvl = "shared"
            else:
                weight += self._w_phone_diff
                lvl = "different"
            if ev is not None:
                ev["phone"] = lvl
        veto = None
        first_lvl = None
        tf = stats is not None and stats.population > 0
        if a.first and b.first:
            first_lvl = self._name_level(a.first, b.first)
            if first_lvl == "exact" and tf:
                weight += self._tf(stats, "f|" + a.first, self._m_first_exact, self._wf["exact"])
            else:
                weight += self._wf[first_lvl]
            if ev is not None:
                ev["first_name"] = first_lvl
            if first_lvl == "different":
                veto = "first names conflict"
        if a.last and b.last:
            lvl = self._name_level(a.last, b.last)
            if lvl == "nickname":
                lvl = self._last_initial
            if lvl == "exact" and tf:
                weight += self._tf(stats, "l|" + a.last, self._m_last_exact, self._wl["exact"])
            else:
                weight += self._wl[lvl]
            if ev is not None:
                ev["last_name"] = lvl
            if lvl == "different" and first_lvl is None:
                veto = "last names conflict"
        if a.dob and b.dob:
            if a.dob == b.dob:
                weight += self._wd["exact"]
                lvl = "exact"
            elif _dob_close(a.dob, b.dob):
                weight += self._wd["close"]
                lvl = "close"
            else:
                lvl = "different"
                veto = "birth dates conflict"
            if ev is not None:
                ev["birth_date"] = lvl
        if a.postcode and b.postcode:
            if a.postcode == b.postcode:
                if a.street and b.street:
                    same = a.street == b.street or token_set_ratio(a.street, b.street) >= self.street_similarity
                    lvl = "street_postcode" if same else "different"
                else:
                    lvl = "postcode"
            else:
                lvl = "different"
        elif a.city and b.city:
            lvl = "city" if a.city == b.city and (not a.state or not b.state or a.state == b.state) else "different"
        else:
            lvl = None
        if lvl is not None:
            if lvl == "postcode" and tf:
                weight += self._tf(stats, "z|" + a.postcode, self._m_postcode, self._wa["postcode"])
            else:
                weight += self._wa[lvl]
            if ev is not None:
                ev["address"] = lvl
        # Last name, address and a mixed key are a household's, not a person's: without a first
        # name or a birth date that agree, or an identifier of their own, they identify no one.
        if veto is None and not guarded and first_lvl is None and not (a.dob and b.dob):
            veto = "no personal evidence"
        # A shared strong id is the source system's own word; names or dates cannot overrule it.
        if strong:
            match = True
        elif veto is not None:
            match = False
        else:
            match = weight >= self.threshold
        if ev is not None:
            if veto and not strong:
                ev["veto"] = veto
            ev["guarded_identifier"] = guarded
        return match, weight, ev

    def probability(self, weight: float) -> float | None:
        """The match probability of a pair with this weight, from the prior (None without one)."""
        if not 0.0 < self.prior < 1.0:
            return None
        x = weight + math.log2(self.prior / (1.0 - self.prior))
        if x > 60:
            return 1.0
        return 1.0 / (1.0 + 2.0 ** -x)

    def score(self, a: Entity, b: Entity, stats: KeyStats | None = None) -> Decision:
        """The decision for one pair, with the evidence for each comparison (masked: levels only)."""
        match, weight, ev = self.weigh(a, b, stats, explain=True)
        return Decision(match, round(weight, 3), ev or {})

    # Cluster-level conflicts: batch clustering refuses a union these would make.
    def dobs_conflict(self, a: int, b: int) -> bool:
        return a != b and not _dob_close(a, b)

    def firsts_conflict(self, a: str, b: str) -> bool:
        return a != b and self._name_level(a, b) == "different"

    def clusters_conflict(self, dobs_a: set[int], firsts_a: set[str], dobs_b: set[int], firsts_b: set[str]) -> bool:
        """Two clusters are different people when some birth date (first name) of the smaller side
        agrees with none of the other side's: a typo'd date or a nickname still finds its partner."""
        return _sets_conflict(dobs_a, dobs_b, self.dobs_conflict) or \
            _sets_conflict(firsts_a, firsts_b, self.firsts_conflict)


def _sets_conflict(a: set, b: set, conflict: Any) -> bool:
    if not a or not b:
        return False
    small, big = (a, b) if len(a) <= len(b) else (b, a)
    return any(all(conflict(x, y) for y in big) for x in small)


_default: tuple[Any, Scorer] | None = None


def default_scorer() -> Scorer:
    """A scorer for the rules and weights files in force, rebuilt when either changes."""
    global _default
    rules, path = load_rules(), config_path()
    key = (id(rules), str(path), path.stat().st_mtime)
    if _default is None or _default[0] != key or _default[1].rules is not rules:
        _default = (key, Scorer(load_config(path), rules=rules))
    return _default[1]


def score(a: Entity, b: Entity, stats: KeyStats | None = None) -> Decision:
    """Score one pair with the configured weights and rules (see :class:`Scorer`)."""
    return default_scorer().score(a, b, stats)
