"""Identity resolution in the store: each new or changed record joins, founds, merges or splits golden
records -- with the scorer, blocking and clustering of a batch over the whole store.

:func:`resolve_profiles` is called by :func:`identity.ingest.resolve_pending` with a batch of pending
profile rows (:func:`detach_sources` with deleted ones), under :func:`~identity.store.lock_identity_graph`.
A call is a batch resolution of the *neighbourhood* the batch touches, in five steps:

1. **Index.** Every record's keys are rows of ``identity_key``, all derived by
   :func:`identity.matching.index_keys` from the :class:`~identity.matching.Entity` batch matching
   builds: identifiers (``ext:<system>``, ``cdp``, ``email``, ``phone``; protected values too, which
   stay searchable and are never evidence), attribute blocking keys (kind ``blk``: Soundex of a name
   and the birth date, first name and postcode...) and name/postcode values (kind ``tf``).
   ``match_term`` keeps the population counts a score needs -- records per name and postcode
   (keyed hashes), records in all -- so a record is scored without counting anything.
2. **Neighbourhood.** The batch's records; every record holding a key they carry or carried (a
   key crossing its limit, or whose holders' names now conflict, changes other pairs' evidence);
   every golden record one of those belongs to; and, until nothing new comes in, every golden record
   holding a record that matches a member. Closed under matching, it clusters alone exactly as it
   would inside the whole store.
3. **Decide.** Pairs sharing a usable key (an identifier under its kind's ``max_records_per_key``, a
   block under ``max_block_size``) are weighed by :class:`identity.matching.Scorer` with the store's
   key counts, mixed keys and term frequencies, and clustered by :func:`identity.batch.cluster`:
   strongest first, equal weights in record-id order, no union of two clusters whose birth dates or
   first names conflict. Protected values, per-key limits and name vetoes are the scorer's.
4. **Apply, ids stable.** Oldest first, each golden id goes to the cluster holding most of its
   unchanged records. If that cluster already took an older id, the golden record is merged into it
   (status ``merged``, an alias, a :class:`~identity.store.MergeEvent` with masked evidence: shared
   identifiers, match weight and probability, and the comparison levels of the deciding pairs).
   A cluster that kept no id is a new golden record; records leaving one are an unmerge event.
5. **Survivorship.** Golden records whose records changed are recomputed (:func:`identity.golden.refresh`).

:func:`reresolve` clusters the whole store with :func:`identity.batch.resolve` and applies the result
with the same step 4, so the two paths give one partition (tests/test_identity_paths.py checks it
on generated data loaded in shuffled batches). :func:`decide` answers "who is this?" for one record
without writing. One approximation remains: term frequencies move as the store grows, and a pair
keeps the weight of when its neighbourhood was last resolved; ``omnisync reresolve`` re-decides all.

What a record is weighed on is what it says of its own (:func:`identity.golden.canonical_facts`, what
survivorship reads too), never values omnisync wrote into it: otherwise our writes, landing in
one run or another as quotas and crashes allow, would become evidence, and the partition would
depend on when they landed. A record omnisync created (ingest notes ``created_for`` from its
creation's ledger entry) is a copy of a golden record: :func:`_place_copies` puts it in that
golden record (or the one it merged into) and indexes only its own vendor id, so it is never a
candidate, a block, a count, or a link between others. The batch path leaves copies out alike.

Interactions and consent events follow their customer: they are linked by the customer's id in their
own system, then email, then phone, and only when exactly one golden record holds the key. Anything
that cannot be linked yet is retried by :func:`relink_orphans` after later profiles land.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import case, delete, insert, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, select

from identity.batch import cluster, no_gc
from identity.batch import resolve as batch_resolve
from identity.golden import canonical_facts, created_for, refresh
from identity.matching import (
    CACHE,
    Entity,
    KeyStats,
    Scorer,
    attribute_keys,
    default_scorer,
    entity_from_profile,
    entity_key,
    value_keys,
)
from identity.rules import Rules, load_rules
from identity.store import (
    ChangeEvent,
    ConsentEventRow,
    GoldenAlias,
    GoldenRecord,
    IdentityKey,
    InteractionRow,
    MatchTerm,
    MergeEvent,
    SourceRow,
    add_change_events,
    lock_identity_graph,
)
from omnisync.model import CustomerProfile
from omnisync.privacy import keyed_hash, mask_email, mask_phone
from omnisync.records import as_utc, utcnow
from omnisync.settings import get_settings

log = logging.getLogger(__name__)

CHUNK = 500
POPULATION = "*"  # match_term key of the number of live, resolved profile records
INF = 1 << 60
FETCH_CAP = 10_000  # holders read per key at most (a kind without a limit)
EVIDENCE_PAIRS = 5  # deciding pairs recorded per merge


_TERM = "@term"
# Key holders (at most %s per key), their records (each once, the profile as text: only the records
# of keys within their limit are parsed), and counts of values, in one statement of one shape: the
# keys come as two arrays, so PostgreSQL prepares it once per connection (a statement that left out
# an over key's records in SQL planned afresh each time and cost more than it saved).
_PG_FETCH = f"""
WITH h AS (SELECT q.kind, q.value, k.source_id FROM unnest(%s::text[], %s::text[]) AS q(kind, value)
           CROSS JOIN LATERAL (SELECT source_id FROM identity_key
                               WHERE kind = q.kind AND value = q.value LIMIT %s) k)
SELECT kind, value, source_id, NULL, NULL, NULL, NULL, NULL FROM h
UNION ALL
SELECT NULL, NULL, s.id, s.system, s.stream, s.external_id, s.golden_id, s.canonical::text
FROM source_record s WHERE s.id IN (SELECT source_id FROM h) AND s.kind = 'profile' AND NOT s.deleted
UNION ALL
SELECT '{_TERM}', m.key, m.n, NULL, NULL, NULL, NULL, NULL FROM match_term m WHERE m.key = ANY(%s::text[])
"""


def new_golden_id() -> str:
    return f"g-{uuid.uuid4().hex[:20]}"


def profile_keys(system: str, external_id: str, profile: CustomerProfile | dict[str, Any],
                 rules: Rules | None = None) -> list[tuple[str, str]]:
    """Every identifier of one profile, in stored (searchable) form, strongest kinds first."""
    rules = rules or load_rules()
    p = profile if isinstance(profile, dict) else profile.model_dump(mode="json")
    raw: list[tuple[str, Any]] = [(f"ext:{system}", external_id)]
    raw += [(f"ext:{s}", v) for s, v in sorted((p.get("external_ids") or {}).items())]
    if p.get("cdp_user_id"):
        raw.append(("cdp", p["cdp_user_id"]))
    raw += [("email", e) for e in p.get("emails") or []]
    raw += [("phone", ph) for ph in p.get("phones") or []]
    out: list[tuple[str, str]] = []
    for kind, value in raw:
        v = rules.key_value(kind, value)
        if v and (kind, v) not in out:
            out.append((kind, v[:255]))
    return out


def masked_key(kind: str, value: str) -> str:
    base = kind.split(":", 1)[0]
    if base == "email":
        return f"email={mask_email(value)}"
    if base == "phone":
        return f"phone={mask_phone(value)}"
    return f"{kind}={value}"


def record_name(system: str, stream: str, external_id: str) -> str:
    """A source record's name in entities, evidence and explain (vendor ids, no personal data)."""
    return f"{system}/{stream}/{external_id}"


def store_entity(system: str, stream: str, external_id: str, profile: dict[str, Any],
                 rules: Rules | None = None) -> Entity:
    """The entity of a stored profile record, named by :func:`record_name` (its batch id too)."""
    return entity_from_profile(profile, external_id, system=system, rules=rules,
                               entity_id=record_name(system, stream, external_id))


def entity_keys(e: Entity) -> list[tuple[str, str]]:
    """(key, kind) of every key an entity is looked up and blocked by (not its ``tf`` values)."""
    out = [(i, i.partition("=")[0]) for i in e.ids]
    out += [(x, "email") for x in e.emails]
    out += [(x, "phone") for x in e.phones]
    out += [(k, "blk") for k in attribute_keys(e)]
    return out


def stored_keys(system: str, external_id: str, profile: dict[str, Any], e: Entity,
                rules: Rules) -> list[tuple[str, str]]:
    """The ``identity_key`` rows of one record: identifiers (protected ones too), blocks, values."""
    out = profile_keys(system, external_id, profile, rules)
    have = set(out)
    for key, kind in entity_keys(e):  # ids normalized like profile_keys; listed once
        kv = (kind, _value_of(key, kind))
        if kv not in have:
            have.add(kv)
            out.append(kv)
    out += [("tf", k) for k in value_keys(e)]
    return out


def _value_of(key: str, kind: str) -> str:
    return key.partition("=")[2] if kind.startswith("ext:") or kind == "cdp" else key


@lru_cache(maxsize=CACHE)
def _term_hash(key: str, secret: str) -> str:
    return keyed_hash(f"match-term:{key}", secret)[:32]


def term_hash(key: str) -> str:
    """The ``match_term`` key of a name or postcode value: a keyed hash, so the counts left behind
    by an erasure name no one."""
    return _term_hash(key, get_settings().tombstone_key.get_secret_value())


def _chunks(items: list, n: int = CHUNK) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


# --- what one resolution knows of the store -------------------------------------------------------

class _Counts:
    """``KeyStats.counts`` for the keys a neighbourhood fetched: holders in the store plus the batch."""

    __slots__ = ("n",)

    def __init__(self, n: "_Neighbourhood"):
        self.n = n

    def get(self, key: str, default: int = 0) -> int:
        return self.n.count(key) if key in self.n.kind_of else default


class _Mixed:
    """``KeyStats.mixed``: a usable identifier whose holders' first names conflict (computed once)."""

    __slots__ = ("n", "memo")

    def __init__(self, n: "_Neighbourhood"):
        self.n, self.memo = n, {}

    def __contains__(self, key: object) -> bool:
        v = self.memo.get(key)
        if v is None:
            v = self.memo[key] = self.n.mixed(key)  # type: ignore[arg-type]
        return v


class _Terms:
    """``KeyStats.freq``: records per name/postcode value, from ``match_term`` plus the batch."""

    __slots__ = ("n",)

    def __init__(self, n: "_Neighbourhood"):
        self.n = n

    def get(self, key: str, default: int = 0) -> int:
        return self.n.terms.get(key, default)


class _Neighbourhood:
    """The slice of the store one resolution reads: records (as entities), the holders of their keys,
    golden records' members and population counts -- with the batch's own changes laid over them.

    Batch records are held in memory with their new values; their old keys are gone from
    ``identity_key`` before anything is read, so ``holders`` are the other records only. A key read
    with more holders than its kind allows is *over* (never evidence, never a block).
    """

    def __init__(self, session: Session, rules: Rules | None = None, scorer: Scorer | None = None):
        self.s = session
        self.scorer = scorer or default_scorer()
        self.rules = rules or self.scorer.rules
        self.secret = get_settings().tombstone_key.get_secret_value()
        self.ents: dict[int, Entity] = {}
        self.gid: dict[int, str | None] = {}
        self.dead: set[int] = set()  # ids read that are not live profile records
        self.members: dict[str, set[int]] = {}  # golden id -> live profile records (goldens loaded)
        self.holders: dict[str, set[int]] = {}
        self.kind_of: dict[str, str] = {}
        self.over: set[str] = set()
        self.batch: set[int] = set()
        self.batch_has: dict[str, set[int]] = defaultdict(set)  # key -> batch records carrying it now
        self.batch_had: Counter = Counter()  # key -> batch records that carried it before
        self.terms: dict[str, int] = {}
        self.term_delta: Counter = Counter()
        self.pop_delta = 0
        self.population: int | None = None
        self.pairs_scored = 0
        self._keys: dict[int, list[tuple[str, str]]] = {}
        self.stats = KeyStats(_Counts(self), _Mixed(self), _Terms(self), 0)
        if session.new or session.dirty:
            session.flush()  # what follows reads through the connection, past the session
        conn = session.connection()  # this transaction's connection: reads see its own writes
        self.dbapi = conn.connection.dbapi_connection
        self.ph = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        self.pg = conn.dialect.name == "postgresql"

    # keys ---------------------------------------------------------------------------------------

    def threshold(self, kind: str) -> int:
        if kind == "blk":
            return self.scorer.max_block_size
        limit = self.rules.max_records_per_key.get(kind.split(":", 1)[0])
        return INF if limit is None else limit

    def count(self, key: str) -> int:
        if key in self.over:
            return INF
        return len(self.holders.get(key, ())) + len(self.batch_has.get(key, ()))

    def usable(self, key: str) -> bool:
        return self.count(key) <= self.threshold(self.kind_of[key])

    def holding(self, key: str) -> set[int]:
        """Every record carrying a usable key (store and batch); empty for a key that is over."""
        if key in self.over:
            return set()
        return self.holders.get(key, set()) | self.batch_has.get(key, set())

    def mixed(self, key: str) -> bool:
        if key not in self.kind_of or not self.usable(key):
            return False
        firsts = {self.ents[x].first for x in self.holding(key) if x in self.ents} - {""}
        conflict = self.scorer.firsts_conflict
        return len(firsts) > 1 and any(conflict(a, b) for a in firsts for b in firsts if a < b)

    def fetch(self, keys: Iterable[tuple[str, str]], *, rows: bool = False, terms_of: Iterable[int] = ()) -> None:
        """Read the holders of (key, kind) pairs not read yet: at most one more than the kind allows;
        with ``rows`` their records too, and the counts of ``terms_of``'s values. On PostgreSQL that
        is one statement per chunk of keys, of one shape (arrays), so the server keeps its plan."""
        todo: dict[tuple[str, str], str] = {}
        for key, kind in keys:
            self.kind_of.setdefault(key, kind)
            if key not in self.holders and key not in self.over:
                todo[(kind, _value_of(key, kind))] = key
        terms = self._terms_wanted(terms_of)
        if not todo:
            self._load_terms(terms)
            return
        cap = min(FETCH_CAP, max(self.threshold(kind) for kind, _ in todo) + 1)
        found: dict[str, set[int]] = {k: set() for k in todo.values()}
        if self.pg:
            records: dict[int, tuple] = {}
            for part in _chunks(sorted(todo)):
                got: dict[str, int] = {}
                for kind, value, sid, system, stream, ext, gid, canonical in self._sql(_PG_FETCH, [
                        [k for k, _ in part], [v for _, v in part], cap, sorted(terms)]):
                    if kind is None:  # a holder's record (each once)
                        if rows and sid not in self.ents and sid not in self.batch:
                            records[sid] = (system, stream, ext, gid, canonical)
                    elif kind == _TERM:
                        got[value] = sid
                    else:
                        key = todo.get((kind, value))
                        if key is not None and sid not in self.batch:
                            found[key].add(sid)
                self._set_terms(terms, got)
                terms = {}
            self._settle(todo, found)
            if rows:  # an over key's holders are never candidates: their records stay unparsed
                for sid in {x for k, f in found.items() if k not in self.over for x in f}:
                    if sid in records:
                        self._take(sid, *records[sid])
                    if sid not in self.ents:
                        self.dead.add(sid)  # not a live profile record (deleted since, or not a profile)
            return
        for part in _chunks(sorted(todo)):
            # One statement per chunk: a (kind = ? AND value IN ...) seek per kind, at most `cap`
            # holders per key (a switchboard's thousands are never read).
            by_kind: dict[str, list[str]] = defaultdict(list)
            for kind, value in part:
                by_kind[kind].append(value)
            arms, params = [], []
            for kind, values in by_kind.items():
                arms.append(f"SELECT kind, value, source_id FROM identity_key WHERE kind = {self.ph} "
                            f"AND value IN ({', '.join([self.ph] * len(values))})")
                params += [kind, *values]
            sql = (f"SELECT kind, value, source_id FROM (SELECT kind, value, source_id, row_number() OVER "
                   f"(PARTITION BY kind, value) AS rn FROM ({' UNION ALL '.join(arms)}) u) w WHERE rn <= {self.ph}")
            for kind, value, sid in self._sql(sql, [*params, cap]):
                key = todo.get((kind, value))
                if key is not None and sid not in self.batch:
                    found[key].add(sid)
        self._settle(todo, found)
        if rows:
            self.load_ids(x for k, f in found.items() if k not in self.over for x in f)
        self._load_terms(terms)

    def _settle(self, todo: dict[tuple[str, str], str], found: dict[str, set[int]]) -> None:
        for (kind, _), key in todo.items():
            if len(found[key]) > self.threshold(kind):
                self.over.add(key)
            else:
                self.holders[key] = found[key]

    # records ------------------------------------------------------------------------------------

    def _sql(self, sql: str, params: list[Any]) -> list[tuple]:
        """Run a statement written here, placeholders only (no value is ever spliced into SQL):
        the read path is a few statements per record, and building them through the expression
        language cost more than running them."""
        cur = self.dbapi.cursor()
        try:
            cur.execute(sql, tuple(params))
            return cur.fetchall()
        finally:
            cur.close()

    def _take(self, sid: int, system: str, stream: str, ext: str, gid: str | None, canonical: Any) -> bool:
        if isinstance(canonical, (str, bytes)):  # SQLite hands JSON back as text
            canonical = json.loads(canonical)
        prof = canonical_facts(canonical)
        if prof is None or created_for(canonical):  # a copy we made is never a match (see _place_copies)
            return False
        if sid not in self.ents:
            self.ents[sid] = store_entity(system, stream, ext, prof, self.rules)
            self.gid[sid] = gid
        return True

    def _read(self, column: str, values: list[Any]) -> Iterator[tuple[int, str | None]]:
        sql = (f"SELECT id, system, stream, external_id, golden_id, canonical FROM source_record WHERE {column} IN "
               f"({', '.join([self.ph] * len(values))}) AND kind = {self.ph} AND NOT deleted")
        for sid, system, stream, ext, gid, canonical in self._sql(sql, [*values, "profile"]):
            if sid not in self.batch and self._take(sid, system, stream, ext, gid, canonical):
                yield sid, gid

    def load_ids(self, sids: Iterable[int]) -> None:
        todo = sorted(s for s in set(sids) if s not in self.ents and s not in self.dead and s not in self.batch)
        for part in _chunks(todo):
            seen = {sid for sid, _ in self._read("id", part)}
            self.dead.update(set(part) - seen)

    def load_goldens(self, gids: Iterable[str]) -> None:
        todo = sorted(g for g in set(gids) if g and g not in self.members)
        for g in todo:
            self.members[g] = set()
        for part in _chunks(todo):
            for sid, gid in self._read("golden_id", part):
                self.members[gid].add(sid)
        for sid in self.batch:  # a batch record still belongs to its golden record until it is placed
            g = self.gid.get(sid)
            if g in self.members and sid in self.ents:
                self.members[g].add(sid)

    def load_terms(self, sids: Iterable[int]) -> None:
        """The counts of the values of ``sids`` (and the population), store plus batch."""
        self._load_terms(self._terms_wanted(sids))

    def _terms_wanted(self, sids: Iterable[int]) -> dict[str, str]:
        wanted = {k for s in sids if s in self.ents for k in value_keys(self.ents[s])} - self.terms.keys()
        if self.population is None:
            wanted.add(POPULATION)
        return {(POPULATION if k == POPULATION else _term_hash(k, self.secret)): k for k in wanted}

    def _load_terms(self, hashed: dict[str, str]) -> None:
        if not hashed:
            return
        got: dict[str, int] = {}
        for part in _chunks(sorted(hashed)):
            sql = f"SELECT key, n FROM match_term WHERE key IN ({', '.join([self.ph] * len(part))})"
            got.update(self._sql(sql, part))
        self._set_terms(hashed, got)

    def _set_terms(self, hashed: dict[str, str], got: dict[str, int]) -> None:
        for h, k in hashed.items():
            if k == POPULATION:
                self.population = got.get(h, 0) + self.pop_delta
                self.stats.population = max(self.population, 0)
            else:
                self.terms[k] = got.get(h, 0) + self.term_delta.get(k, 0)

    def keys_of(self, sid: int) -> list[tuple[str, str]]:
        keys = self._keys.get(sid)
        if keys is None:
            keys = self._keys[sid] = entity_keys(self.ents[sid])
        return keys

    def candidates(self, sids: Iterable[int], *, terms_of: Iterable[int] = ()) -> set[int]:
        """Records sharing a usable key with any of ``sids`` (their keys fetched first); the counts
        of ``terms_of``'s values are read on the way."""
        sids = [s for s in sids if s in self.ents]
        self.fetch((kv for s in sids for kv in self.keys_of(s)), rows=True, terms_of=terms_of)
        out: set[int] = set()
        for s in sids:
            for key, _ in self.keys_of(s):
                if self.usable(key):
                    out |= self.holding(key)
        self.load_ids(out)
        return {c for c in out if c in self.ents}

    # the batch ----------------------------------------------------------------------------------

    def add_batch(self, sid: int, e: Entity, golden_id: str | None, had_keys: bool) -> None:
        self.batch.add(sid)
        self.ents[sid] = e
        self.gid[sid] = golden_id
        for key, kind in entity_keys(e):
            self.kind_of.setdefault(key, kind)
            self.batch_has[key].add(sid)
        for t in value_keys(e):
            self.term_delta[t] += 1
        if not had_keys:
            self.pop_delta += 1

    def forget_old_keys(self, rows: dict[int, list[tuple[str, str]]], *, gone: Iterable[int] = ()) -> None:
        """Count what batch records carried before (their keys are being replaced or dropped)."""
        for sid, keys in rows.items():
            if _was_copy(keys):
                continue  # a copy of a golden record held no evidence and was not counted
            for kind, value in keys:
                if kind == "tf":
                    self.term_delta[value] -= 1
                    continue
                if kind != "blk" and self.rules.match_key(kind, value) is None:
                    continue  # protected: never evidence, never a block
                key = entity_key(kind, value)
                self.kind_of.setdefault(key, kind)
                self.batch_had[key] += 1
        for sid in gone:
            if sid in rows and not _was_copy(rows[sid]):
                self.pop_delta -= 1

    # scoring ------------------------------------------------------------------------------------

    def pairs_within(self, order: list[int]) -> list[tuple[float, int]]:
        """Matched ``(weight, i << 32 | j)`` pairs among ``order`` (positions), sharing a usable key."""
        pos = {s: i for i, s in enumerate(order)}
        seen: set[int] = set()
        matched: list[tuple[float, int]] = []
        weigh, stats = self.scorer.weigh, self.stats
        for key in {k for s in order for k, _ in self.keys_of(s)}:
            if not self.usable(key):
                continue
            inside = sorted(pos[x] for x in self.holding(key) if x in pos)
            for a in range(len(inside) - 1):
                for b in range(a + 1, len(inside)):
                    code = inside[a] << 32 | inside[b]
                    if code in seen:
                        continue
                    seen.add(code)
                    ok, w, _ = weigh(self.ents[order[inside[a]]], self.ents[order[inside[b]]], stats)
                    if ok:
                        matched.append((w, code))
        self.pairs_scored = len(seen)
        return matched

    def evidence(self, a: int, b: int, stats: KeyStats | None = None) -> dict[str, Any]:
        """Why two records match, without personal data: levels, weight, probability, masked keys."""
        ea, eb = self.ents[a], self.ents[b]
        return pair_evidence(self.scorer, ea, eb, stats or self.stats)


def pair_evidence(scorer: Scorer, ea: Entity, eb: Entity, stats: KeyStats | None) -> dict[str, Any]:
    d = scorer.score(ea, eb, stats)
    levels = {k: v for k, v in d.evidence.items() if k not in ("guarded_identifier", "veto")}
    agreed, disagreed = [], []
    for comp, lvl in levels.items():
        if comp == "ids":
            agreed.append(f"ids={','.join(lvl)}")
        elif lvl == "different":
            disagreed.append(comp)
        else:
            agreed.append(f"{comp}={lvl}")
    keys = [masked_key(*_split_entity_key(k)) for k in sorted((set(ea.ids) & set(eb.ids)))]
    keys += [masked_key("email", x) for x in sorted(set(ea.emails) & set(eb.emails))]
    keys += [masked_key("phone", x) for x in sorted(set(ea.phones) & set(eb.phones))]
    p = scorer.probability(d.weight)
    out: dict[str, Any] = {"records": [ea.id, eb.id], "weight": d.weight, "agreed": agreed,
                           "disagreed": disagreed, "keys": keys}
    if p is not None:
        out["probability"] = round(p, 6)
    if d.evidence.get("veto"):
        out["veto"] = d.evidence["veto"]
    return out


def _split_entity_key(key: str) -> tuple[str, str]:
    kind, _, value = key.partition("=")
    return kind, value


# --- real-time resolution of a batch ------------------------------------------------------------

def resolve_profiles(session: Session, pairs: list[tuple[SourceRow, CustomerProfile]], *,
                     run_id: str | None = None) -> dict[str, int]:
    """Place each (source row, canonical profile) in a golden record; refresh what changed."""
    live = []
    for row, profile in pairs:
        if row.id is None:
            session.add(row)
            session.flush()
        live.append((row, profile.model_dump(mode="json")))
    return _resolve(session, live, [], run_id=run_id)


def detach_sources(session: Session, rows: list[SourceRow]) -> int:
    """Deleted or merged-away vendor records stop contributing: their keys leave the index, and the
    golden records they were in are re-clustered (a deleted record may have been the only link)."""
    gone = [r for r in rows if r.id is not None]
    if gone:
        _resolve(session, [], gone, run_id=None)
    return len(rows)


def unindex(session: Session, source_ids: list[int]) -> int:
    """Drop records' ``identity_key`` rows and take them out of the population counts, without
    re-clustering anything: for records about to be deleted with their golden record (erasure).
    Returns the number of records that were indexed."""
    old = _old_keys(session, source_ids)
    deltas: Counter = Counter()
    for keys in old.values():
        deltas.update(k for kind, k in keys if kind == "tf")
    for part in _chunks(sorted(old)):
        session.exec(delete(IdentityKey).where(IdentityKey.source_id.in_(part)))
    secret = get_settings().tombstone_key.get_secret_value()
    counts = {_term_hash(k, secret): -d for k, d in deltas.items()}
    counted = sum(1 for keys in old.values() if not _was_copy(keys))
    if counted:
        counts[POPULATION] = -counted
    _upsert_terms(session, counts, add=True)
    return len(old)


COPY = "copy"  # identity_key kind marking a record omnisync created (value: the golden id it was made for)


def _was_copy(keys: list[tuple[str, str]]) -> bool:
    return any(kind == COPY for kind, _ in keys)


def _place_copies(session: Session, copies: list[SourceRow], counts: Counter, rules: Rules) -> set[str]:
    """Records omnisync created go to the golden record they were made for (or the one it merged
    into), whatever they hold: their values are that golden record's, so weighing them would let
    our own writes tie people together -- and only once, and when, the write happened to land.

    They are indexed by their own vendor id only (interactions logged on them still find their
    customer) and a ``copy`` marker; no identifier, block or count that matching reads. A copy
    whose golden record is gone (erased) founds a golden record of its own. Returns the golden
    ids touched."""
    made = {row.id: created_for(row.canonical) for row in copies}
    live: dict[str, str] = {}
    wanted = sorted(set(made.values()))
    for part in _chunks(wanted):
        live.update(session.exec(select(GoldenAlias.alias_id, GoldenAlias.golden_id)
                                 .where(GoldenAlias.alias_id.in_(part))).all())
    left = [g for g in wanted if g not in live]
    for part in _chunks(left):
        live.update({g: g for g in session.exec(select(GoldenRecord.golden_id).where(GoldenRecord.golden_id.in_(part)))})
    touched: set[str] = set()
    keys = []
    for row in copies:
        target = live.get(made[row.id])
        if target is None:
            target = live[made[row.id]] = new_golden_id()
            session.add(GoldenRecord(golden_id=target))
            session.flush()
            counts["placed_new"] += 1
        elif row.golden_id is None:
            counts["joined"] += 1
        if row.golden_id and row.golden_id != target:
            touched.add(row.golden_id)
        touched.add(target)
        row.golden_id = target
        session.add(row)
        keys.append((row.id, (COPY, made[row.id][:255]), target))
        own = rules.key_value(f"ext:{row.system}", row.external_id)
        if own:
            keys.append((row.id, (f"ext:{row.system}", own[:255]), target))
    _insert_keys(session, keys)
    return touched


def _old_keys(session: Session, sids: list[int]) -> dict[int, list[tuple[str, str]]]:
    out: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for part in _chunks(sorted(sids)):
        for sid, kind, value in session.exec(select(IdentityKey.source_id, IdentityKey.kind, IdentityKey.value)
                                             .where(IdentityKey.source_id.in_(part))):
            out[sid].append((kind, value))
    return out


def _resolve(session: Session, live: list[tuple[SourceRow, dict[str, Any]]], gone: list[SourceRow], *,
             run_id: str | None) -> dict[str, int]:
    n = _Neighbourhood(session)
    _check_index(session)
    copies = [row for row, _ in live if created_for(row.canonical)]
    rows = {row.id: (row, p) for row, p in live if not created_for(row.canonical)}
    sids = list(rows) + [r.id for r in gone] + [r.id for r in copies]
    old = _old_keys(session, sids)
    for part in _chunks(sids):  # the records' previous keys are replaced by what they carry now
        session.exec(delete(IdentityKey).where(IdentityKey.source_id.in_(part)))
    # A record that becomes a copy leaves the matching graph like a deleted one.
    leaving = gone + [r for r in copies if r.id in old and not _was_copy(old[r.id])]
    n.forget_old_keys(old, gone=[r.id for r in leaving])
    n.batch.update(sids)  # gone records (and copies) are nobody's holders any more
    for row, p in rows.values():
        n.add_batch(row.id, store_entity(row.system, row.stream, row.external_id, p, n.rules),
                    row.golden_id, row.id in old and not _was_copy(old[row.id]))

    order = _close(n, {r.golden_id for r in leaving if r.golden_id})
    matched = n.pairs_within(order)
    unions: list[tuple[float, int]] = []
    labels, refused = cluster([n.ents[s] for s in order], matched, n.scorer, unions)
    counts = _apply(n, order, labels, unions, run_id=run_id, batch_rows={sid: r for sid, (r, _) in rows.items()},
                    extra_touched={r.golden_id for r in leaving if r.golden_id})
    _insert_keys(session, [(sid, k, row.golden_id) for sid, (row, p) in rows.items()
                           for k in stored_keys(row.system, row.external_id, p, n.ents[sid], n.rules)])
    _bump(session, n)
    counts.update({"unions_refused": refused, "neighbourhood": len(order), "pairs_scored": n.pairs_scored})
    session.flush()
    counts.pop("_ids")
    touched = counts.pop("_touched")
    if copies:
        touched |= _place_copies(session, copies, counts, n.rules)
        session.flush()
    counts.update(refresh(session, touched, run_id=run_id))
    return {k: v for k, v in counts.items() if v}


_warned_index = False


def _check_index(session: Session) -> None:
    """A store resolved by an earlier version has identifiers indexed but no blocking keys or counts:
    resolution still works on identifiers, and says once how to complete the index."""
    global _warned_index
    if _warned_index or session.get(MatchTerm, POPULATION) is not None:
        return
    if session.exec(select(IdentityKey.id).limit(1)).first() is not None:
        _warned_index = True
        log.warning("the store's match index has no blocking keys or population counts (resolved by an "
                    "earlier version): run `omnisync reresolve` once to build them")


def _close(n: _Neighbourhood, extra_goldens: set[str]) -> list[int]:
    """The neighbourhood of the batch, closed under matching (see the module docstring, step 2)."""
    keys = set(n.batch_has) | set(n.batch_had)
    n.fetch((k, n.kind_of[k]) for k in keys)
    seeds: set[int] = set()
    for k in keys:
        if k in n.over:
            continue
        thr, db = n.threshold(n.kind_of[k]), len(n.holders.get(k, ()))
        if db + n.batch_had[k] <= thr or db + len(n.batch_has.get(k, ())) <= thr:
            seeds |= n.holders.get(k, set())
    n.load_ids(seeds)
    goldens = {n.gid[s] for s in seeds if s in n.ents} | extra_goldens
    goldens |= {n.gid[s] for s in n.batch if n.gid.get(s)}
    region = {s for s in n.batch if s in n.ents}
    while True:
        n.load_goldens(goldens)
        for g in goldens:
            region |= n.members.get(g, set())
        outside = n.candidates(region) - region
        n.load_terms(region | outside)
        goldens = set()
        if outside:
            weigh, stats = n.scorer.weigh, n.stats
            for key in {k for s in region for k, _ in n.keys_of(s)}:
                if not n.usable(key):
                    continue
                held = n.holding(key)
                out = [c for c in held if c in outside and n.gid.get(c) not in goldens]
                if not out:
                    continue
                ins = [m for m in held if m in region]
                for c in out:
                    if any(weigh(n.ents[m], n.ents[c], stats)[0] for m in ins):
                        goldens.add(n.gid[c])
        goldens.discard(None)  # type: ignore[arg-type]
        if not goldens:
            return sorted(region)


# --- applying a partition: stable ids, merges, unmerges -----------------------------------------

def _apply(n: _Neighbourhood, order: list[int], labels: list[int], unions: list[tuple[float, int]], *,
           run_id: str | None, batch_rows: dict[int, SourceRow], extra_touched: set[str] = frozenset(),
           write: bool = True, stats: KeyStats | None = None) -> dict[str, Any]:
    """Give every cluster of ``order`` a golden id (keeping old ones; see step 4) and write the result."""
    s = n.s
    clusters: dict[int, list[int]] = defaultdict(list)
    for i, sid in enumerate(order):
        clusters[labels[i]].append(sid)
    olds = sorted({n.gid[sid] for sid in order if n.gid.get(sid)} | set(extra_touched))
    info: dict[str, tuple[Any, str]] = {}
    for part in _chunks(olds):
        for gid, created, status in s.exec(select(GoldenRecord.golden_id, GoldenRecord.created_at,
                                                  GoldenRecord.status).where(GoldenRecord.golden_id.in_(part))):
            info[gid] = (as_utc(created), status)
    held: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))  # old id -> label -> sids
    for label, sids in clusters.items():
        for sid in sids:
            if n.gid.get(sid):
                held[n.gid[sid]][label].append(sid)
    keepable = [g for g in held if g in info and info[g][1] in ("active", "retired")]
    keepable.sort(key=lambda g: (info[g][0], g))
    cid: dict[int, str] = {}
    absorbed: dict[str, str] = {}
    for g in keepable:
        # the cluster holding most of its unchanged records, then most of all, then its oldest record
        best = max(held[g].items(), key=lambda kv: (sum(1 for x in kv[1] if x not in n.batch), len(kv[1]),
                                                     -min(kv[1])))[0]
        if best not in cid:
            cid[best] = g
        else:
            absorbed[g] = best
    new_ids = []
    for label in sorted(clusters):
        if label not in cid:
            cid[label] = new_golden_id()
            new_ids.append(label)
    survivors = {g: cid[label] for g, label in absorbed.items()}
    counts: Counter = Counter(new_golden=len(new_ids), merged=len(absorbed))
    touched: set[str] = set(extra_touched)

    pos = {sid: i for i, sid in enumerate(order)}
    origin = {sid: (survivors.get(n.gid[sid], n.gid[sid]) if n.gid.get(sid) else None) for sid in order}
    if write:
        for label in new_ids:
            s.add(GoldenRecord(golden_id=cid[label]))
        for label in cid:
            g = cid[label]
            if g in info and info[g][1] == "retired":  # a record came back: so does its golden id
                rec = s.get(GoldenRecord, g)
                rec.status, rec.updated_at = "active", utcnow()
                s.add(rec)
        if new_ids:
            s.flush()
    merges = []
    for g, label in sorted(absorbed.items(), key=lambda kv: (info[kv[0]][0], kv[0])):
        survivor = cid[label]
        merges.append((g, survivor, _merge_evidence(n, clusters[label], unions, pos, origin_of=lambda x: (
            n.gid.get(x) or f"new:{x}"), focus=g, stats=stats)))
        touched.update((survivor, g))
    if write and merges:
        _merge(s, merges, run_id)
    moved: dict[tuple[str, str], list[int]] = defaultdict(list)
    place: dict[str, list[int]] = defaultdict(list)
    for label, sids in clusters.items():
        target = cid[label]
        for sid in sids:
            was = origin[sid]
            if was != target:
                place[target].append(sid)
                touched.add(target)
                if was is not None:
                    touched.add(was)
                    moved[(was, target)].append(sid)
                elif sid in batch_rows:
                    counts["placed_new" if label in new_ids else "joined"] += 1
            elif sid in batch_rows:
                touched.add(target)
    counts["moved"] = sum(len(v) for v in moved.values())
    if write:
        stored = {sid: target for target, sids in place.items() for sid in sids if sid not in batch_rows}
        for part in _chunks(sorted(stored)):
            to = case({sid: stored[sid] for sid in part}, value=SourceRow.id)
            s.exec(update(SourceRow).where(SourceRow.id.in_(part)).values(golden_id=to)
                   .execution_options(synchronize_session=False))
            to = case({sid: stored[sid] for sid in part}, value=IdentityKey.source_id)
            s.exec(update(IdentityKey).where(IdentityKey.source_id.in_(part)).values(golden_id=to)
                   .execution_options(synchronize_session=False))
        _follow(s, survivors, stored)
        for label, sids in clusters.items():
            for sid in sids:
                row = batch_rows.get(sid)
                if row is not None:
                    row.golden_id = cid[label]
                    s.add(row)
        for (was, target), sids in sorted(moved.items()):
            names = sorted(n.ents[x].id for x in sids)
            changed = any(x in batch_rows for x in sids)
            s.add(MergeEvent(kind="unmerge", survivor_id=was, absorbed_id=target, run_id=run_id, evidence={
                "records": names[:20], "moved": len(names),
                "reason": "its values no longer match this golden record's other records" if changed else
                          "re-clustered with its neighbourhood after a record there changed"}))
            s.add(ChangeEvent(golden_id=was, kind="unmerged", detail={"moved_to": target, "records": len(names)}))
    for g in list(touched):
        if g in absorbed:
            touched.discard(g)
    counts["_touched"] = touched  # type: ignore[assignment]
    counts["_ids"] = {sid: cid[labels[i]] for i, sid in enumerate(order)}  # type: ignore[assignment]
    return counts


def _merge_evidence(n: _Neighbourhood, members: list[int], unions: list[tuple[float, int]], pos: dict[int, int],
                    *, origin_of: Any, focus: str, stats: KeyStats | None) -> dict[str, Any]:
    """The deciding pairs of a merge: unions inside the cluster between records of different golden
    records (or new ones), those of the absorbed golden record first, strongest first."""
    inside = {pos[m] for m in members}
    order_by_pos = {i: sid for sid, i in pos.items()}
    mask = (1 << 32) - 1
    crossing = []
    for w, code in unions:
        i, j = code >> 32, code & mask
        if i in inside and j in inside:
            a, b = order_by_pos[i], order_by_pos[j]
            oa, ob = origin_of(a), origin_of(b)
            if oa != ob:
                crossing.append((focus not in (oa, ob), -w, a, b))
    crossing.sort()
    pairs = [n.evidence(a, b, stats) for _, _, a, b in crossing[:EVIDENCE_PAIRS]]
    keys = sorted({k for p in pairs for k in p["keys"]})
    strong = any(a.startswith("ids=") for p in pairs for a in p["agreed"])
    changed = sorted(n.ents[m].id for m in members if m in n.batch)
    return {"reason": "a shared vendor or CDP id" if strong else
            f"match weight at or above {n.scorer.threshold:g} (Fellegi-Sunter: identifiers, names, birth date, address)",
            "keys": keys, "pairs": pairs, "threshold": n.scorer.threshold,
            **({"record": changed[0]} if changed else {})}


def _merge(s: Session, merges: list[tuple[str, str, dict[str, Any]]], run_id: str | None) -> None:
    """Each (absorbed, survivor, evidence): the absorbed golden record joins the survivor (the older),
    everything follows and its id becomes an alias. A few statements per chunk of merges, whatever
    their number; objects already in the session follow in :func:`_follow`."""
    into = {g: survivor for g, survivor, _ in merges}
    for part in _chunks(sorted(into)):
        for model in (SourceRow, IdentityKey, InteractionRow, ConsentEventRow, GoldenAlias):
            s.exec(update(model).where(model.golden_id.in_(part))
                   .values(golden_id=case({g: into[g] for g in part}, value=model.golden_id))
                   .execution_options(synchronize_session=False))
        s.exec(update(GoldenRecord).where(GoldenRecord.golden_id.in_(part))
               .values(status="merged", updated_at=utcnow(),
                       merged_into=case({g: into[g] for g in part}, value=GoldenRecord.golden_id))
               .execution_options(synchronize_session=False))
    for g, survivor, evidence in merges:
        s.add(GoldenAlias(alias_id=g, golden_id=survivor))
        s.add(MergeEvent(kind="merge", survivor_id=survivor, absorbed_id=g, evidence=evidence, run_id=run_id))
        s.add(ChangeEvent(golden_id=survivor, kind="merged", detail={"absorbed": g}))
        s.add(ChangeEvent(golden_id=g, kind="merged", detail={"into": survivor}))


def _follow(s: Session, survivors: dict[str, str], placed: dict[int, str]) -> None:
    """Bring rows already loaded in the session in line with the bulk updates (one pass over it,
    instead of every UPDATE searching the identity map)."""
    if not survivors and not placed:
        return
    for obj in list(s.identity_map.values()):
        if isinstance(obj, SourceRow):
            new = placed.get(obj.id) or survivors.get(obj.golden_id)
        elif isinstance(obj, (InteractionRow, ConsentEventRow)):
            new = survivors.get(obj.golden_id)
        elif isinstance(obj, GoldenRecord) and obj.golden_id in survivors:
            set_committed_value(obj, "status", "merged")
            set_committed_value(obj, "merged_into", survivors[obj.golden_id])
            continue
        else:
            continue
        if new and new != obj.golden_id:
            set_committed_value(obj, "golden_id", new)


def _insert_keys(session: Session, rows: list[tuple[int, tuple[str, str], str]]) -> None:
    for part in _chunks(rows, 5000):
        session.exec(insert(IdentityKey), params=[{"kind": kind, "value": value, "source_id": sid, "golden_id": gid}
                                                  for sid, (kind, value), gid in part])


def _bump(session: Session, n: _Neighbourhood) -> None:
    """Add the batch's changes to the population counts (one upsert per chunk of values)."""
    deltas = {_term_hash(k, n.secret): d for k, d in n.term_delta.items() if d}
    if n.pop_delta:
        deltas[POPULATION] = n.pop_delta
    elif session.get(MatchTerm, POPULATION) is None:
        deltas[POPULATION] = 0  # a fresh store's counts start here
    _upsert_terms(session, deltas, add=True)


def _upsert_terms(session: Session, deltas: dict[str, int], *, add: bool) -> None:
    if not deltas:
        return
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert
    for part in _chunks(sorted(deltas.items()), 1000):
        stmt = upsert(MatchTerm).values([{"key": k, "n": d} for k, d in part])
        new = (MatchTerm.n + stmt.excluded.n) if add else stmt.excluded.n
        session.exec(stmt.on_conflict_do_update(index_elements=["key"], set_={"n": new}))



# --- interactions and consent follow their customer ----------------------------------------------

def _subject_keys(system: str, data: dict[str, Any], rules: Rules) -> list[tuple[str, str]]:
    raw = [(f"ext:{system}", data.get("customer_external_id")), ("email", data.get("customer_email")),
           ("phone", data.get("customer_phone"))]
    out = []
    for kind, value in raw:
        v = rules.match_key(kind, value)
        if v:
            out.append((kind, v[:255]))
    return out


def _link(session: Session, items: list[tuple[Any, str, dict[str, Any]]]) -> dict[int, str]:
    """For (row, system, canonical data) items, the golden id each belongs to (unambiguous keys only)."""
    rules = load_rules()
    wanted = [(row, _subject_keys(system, data, rules)) for row, system, data in items]
    holders: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    by_kind: dict[str, set[str]] = defaultdict(set)
    for _, keys in wanted:
        for kind, value in keys:
            by_kind[kind].add(value)
    for kind, values in by_kind.items():
        for part in _chunks(sorted(values)):
            for value, sid, gid in session.exec(select(IdentityKey.value, IdentityKey.source_id, IdentityKey.golden_id)
                                                .where(IdentityKey.kind == kind, IdentityKey.value.in_(part))):
                holders[(kind, value)][sid] = gid
    out: dict[int, str] = {}
    for row, keys in wanted:
        for kind, value in keys:
            held = holders.get((kind, value), {})
            if not held or rules.overused(kind, len(held)):
                continue
            goldens = set(held.values())
            if len(goldens) == 1:  # a phone two people share links to neither
                out[id(row)] = goldens.pop()
                break
    return out


def link_interactions(session: Session, rows: list[InteractionRow]) -> int:
    """Attach interactions to their customer's golden record; a timeline change is a change event."""
    found = _link(session, [(r, r.system, r.data or {}) for r in rows])
    per_golden: Counter = Counter()
    for r in rows:
        gid = found.get(id(r))
        if gid and gid != r.golden_id:
            r.golden_id = gid
            session.add(r)
            per_golden[gid] += 1
    # flushes the rows moved above, then writes their events
    add_change_events(session, [(gid, "timeline", {"interactions": n}) for gid, n in sorted(per_golden.items())])
    return sum(per_golden.values())


def apply_consent(session: Session, rows: list[ConsentEventRow]) -> int:
    """Attach consent events to their customer and recompute that customer's consent."""
    found = _link(session, [(r, r.system, r.data or {}) for r in rows])
    touched = set()
    for r in rows:
        gid = found.get(id(r))
        if gid and gid != r.golden_id:
            r.golden_id = gid
            session.add(r)
            touched.add(gid)
    session.flush()
    refresh(session, touched)
    return sum(1 for r in rows if found.get(id(r)))


def relink_orphans(session: Session, *, limit: int = 5000) -> dict[str, int]:
    """Retry interactions and consent events that arrived before their customer's profile."""
    its = list(session.exec(select(InteractionRow).where(InteractionRow.golden_id.is_(None))
                            .order_by(InteractionRow.id).limit(limit)))
    evs = list(session.exec(select(ConsentEventRow).where(ConsentEventRow.golden_id.is_(None))
                            .order_by(ConsentEventRow.id).limit(limit)))
    return {"interactions_linked": link_interactions(session, its) if its else 0,
            "consent_applied": apply_consent(session, evs) if evs else 0}


# --- batch re-resolution of the whole store -----------------------------------------------------

def reresolve(session: Session, *, reindex: bool = True, dry_run: bool = False,
              run_id: str | None = None) -> dict[str, Any]:
    """Re-cluster every live, resolved profile record with :func:`identity.batch.resolve` and apply
    the differences as merges, unmerges and new golden records (ids stable, events recorded).

    ``reindex`` rewrites every record's ``identity_key`` rows and recomputes ``match_term`` (needed
    once after an upgrade, and whenever blocking keys changed); otherwise only golden ids move.
    ``dry_run`` computes and counts the changes without writing any. Takes the identity-graph lock.
    """
    lock_identity_graph(session)
    n = _Neighbourhood(session)
    profiles: dict[int, tuple[str, str, dict[str, Any]]] = {}
    cols = (SourceRow.id, SourceRow.system, SourceRow.stream, SourceRow.external_id, SourceRow.golden_id,
            SourceRow.canonical)
    with no_gc():
        for sid, system, stream, ext, gid, canonical in session.exec(
                select(*cols).where(SourceRow.kind == "profile", SourceRow.deleted.is_(False),
                                    SourceRow.golden_id.is_not(None)).order_by(SourceRow.id)
                .execution_options(yield_per=5000)):
            if isinstance(canonical, (str, bytes)):
                canonical = json.loads(canonical)
            prof = canonical_facts(canonical)
            if prof is None or created_for(canonical):  # copies stay where they were made for
                continue
            n.ents[sid] = store_entity(system, stream, ext, prof, n.rules)
            n.gid[sid] = gid
            if reindex:
                profiles[sid] = (system, ext, prof)
        order = list(n.ents)
        entities = [n.ents[s] for s in order]
        res = batch_resolve(entities, n.scorer, keep_unions=True)
    stats = res.stats
    counts = _apply(n, order, res.labels, res.unions or [], run_id=run_id, batch_rows={}, write=not dry_run,
                    stats=stats)
    touched = counts.pop("_touched")
    counts.update({"records": len(order), "clusters": len(set(res.labels)), "pairs_scored": res.pairs_scored,
                   "unions_refused": res.unions_refused})
    if dry_run:
        return {k: v for k, v in counts.items() if v or k in ("records", "clusters")}
    if reindex:
        ids = counts.pop("_ids")
        for part in _chunks(order, 5000):
            session.exec(delete(IdentityKey).where(IdentityKey.source_id.in_(part)))
            _insert_keys(session, [(sid, k, ids[sid]) for sid in part for k in
                                   stored_keys(profiles[sid][0], profiles[sid][1], profiles[sid][2], n.ents[sid],
                                               n.rules)])
        terms: Counter = Counter(k for e in entities for k in value_keys(e))
        session.exec(delete(MatchTerm))
        _upsert_terms(session, {**{_term_hash(k, n.secret): c for k, c in terms.items()},
                                POPULATION: len(entities)}, add=False)
        counts["reindexed"] = len(order)
    counts.pop("_ids", None)
    session.flush()
    counts.update(refresh(session, touched, run_id=run_id))
    return {k: v for k, v in counts.items() if v or k in ("records", "clusters")}


# --- read-only decisions -------------------------------------------------------------------------

@dataclass
class Placement:
    """Where one record would be placed now, and why: the golden id (None: a new golden record)
    and each matching stored record with its masked evidence, strongest first."""

    golden_id: str | None
    matches: list[dict[str, Any]] = field(default_factory=list)
    joins: list[str] = field(default_factory=list)  # every golden record it would tie together


def decide(session: Session, system: str, external_id: str, profile: CustomerProfile | dict[str, Any], *,
           stream: str = "contacts") -> Placement:
    """Which golden record this profile would join now (the real-time path's decision), writing nothing.

    The record is weighed as if stored (its keys and values counted once more, like a batch would)
    against the records sharing a usable key with it; it ties together the golden records of those
    it matches, strongest first, skipping any whose birth dates or first names conflict with what
    it has tied so far; the oldest of them is the answer. Three queries: key holders, their records,
    population counts (a fourth, rarely, when it would tie several golden records together).
    """
    n = _Neighbourhood(session)
    p = profile if isinstance(profile, dict) else profile.model_dump(mode="json")
    probe = -1
    e = store_entity(system, stream, external_id, p, n.rules)
    n.add_batch(probe, e, None, had_keys=False)
    # an exact agreement is on the probe's own values: only theirs are counted
    cands = n.candidates([probe], terms_of=[probe]) - {probe}
    hits = []
    for c in cands:
        ok, w, _ = n.scorer.weigh(e, n.ents[c], n.stats)
        if ok:
            hits.append((-w, n.ents[c].id, c))
    hits.sort()
    if not hits:
        return Placement(None)
    goldens = list(dict.fromkeys(n.gid[c] for _, _, c in hits if n.gid.get(c)))
    joins = goldens[:1]
    if len(goldens) > 1:
        n.load_goldens(goldens)
        dobs, firsts = {e.dob} - {0}, {e.first} - {""}
        for g in goldens:
            ms = [n.ents[m] for m in n.members.get(g, ())]
            gd, gf = {m.dob for m in ms} - {0}, {m.first for m in ms} - {""}
            if g in joins or not n.scorer.clusters_conflict(dobs, firsts, gd, gf):
                joins = list(dict.fromkeys([*joins, g]))
                dobs, firsts = dobs | gd, firsts | gf
        created = dict(session.exec(select(GoldenRecord.golden_id, GoldenRecord.created_at)
                                    .where(GoldenRecord.golden_id.in_(joins))).all())
        joins.sort(key=lambda g: (as_utc(created.get(g)) or utcnow(), g))
    matches = [{"golden_id": n.gid[c], **n.evidence(probe, c)} for _, _, c in hits]
    return Placement(joins[0], matches, joins)


def resolve_one(session: Session, system: str, external_id: str,
                profile: CustomerProfile | dict[str, Any]) -> tuple[str | None, list[str]]:
    """Which golden record this profile would join now, and the evidence (masked keys); writes nothing."""
    placed = decide(session, system, external_id, profile)
    keys = [k for m in placed.matches if m["golden_id"] == placed.golden_id for k in m["keys"]]
    return placed.golden_id, list(dict.fromkeys(keys))


def links(session: Session, golden_id: str) -> list[dict[str, Any]]:
    """Why a golden record's records are together: the pairs that joined them, scored with the
    store's counts now (masked evidence, strongest first)."""
    n = _Neighbourhood(session)
    n.load_goldens([golden_id])
    members = sorted(n.members.get(golden_id, ()))
    if len(members) < 2:
        return []
    n.candidates(members)
    n.load_terms(members)
    matched = n.pairs_within(members)
    unions: list[tuple[float, int]] = []
    cluster([n.ents[s] for s in members], matched, n.scorer, unions)
    mask = (1 << 32) - 1
    return [n.evidence(members[c >> 32], members[c & mask]) for _, c in sorted(unions, key=lambda u: -u[0])]


def lookup(session: Session, kind: str, value: str) -> list[str]:
    """Golden ids holding an identifier (``email``, ``phone``, ``cdp`` or ``ext:<system>``)."""
    rules = load_rules()
    v = rules.key_value(kind, value)
    if v is None:
        return []
    return sorted(set(session.exec(select(IdentityKey.golden_id).where(IdentityKey.kind == kind,
                                                                       IdentityKey.value == v))))
