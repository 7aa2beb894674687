"""The mapping engine: vendor payloads to canonical objects and back, from declarative YAML.

One file per system and stream under ``mappings/<system>/<stream>.yaml``::

    system: hubspot
    stream: contacts
    kind: profile            # profile | interaction | consent
    fields:
      first_name: {source: properties.firstname, transform: text, direction: both}
      emails:     {source: [properties.email, properties.work_email], transform: email, direction: both}
      consent.email.marketing: {source: properties.hs_email_optout, transform: optout_flag}
      channel:    {const: sms}

* ``source`` is a dotted path into the payload, or a list of paths: gathered into a list field
  (``emails``, ``phones``), or for any other field the first path with a value wins (a fallback,
  e.g. a custom start time, else the creation time); outbound writes to the first path.
  ``$`` is the whole payload, for inbound-only transforms that read several vendor fields at once
  (an SMS's customer is ``from`` or ``to`` depending on its direction).
* ``transform`` names a function in :mod:`mappings.transforms` (inverse used outbound).
* Vendor vocabularies (channel names, event types) are value maps registered in
  ``mappings/vocab_<system>.py`` and named like any transform.
* ``direction`` is ``in``, ``out``, ``both`` or ``none`` (default ``in``): which way the field
  flows for this system. Precedence between systems lives in ``mappings/ownership.yaml``.
* ``consent.<channel>.<purpose>`` targets produce consent states; ``address.<part>`` builds the
  first postal address; ``handoff.<field>`` a virtual-agent hand-off.

Errors name the record and the field, never the value (it may be personal data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mappings.transforms import TRANSFORMS
from omnisync.model import (
    ConsentEvent,
    ConsentState,
    CustomerProfile,
    Interaction,
    describe_validation_error,
)
from omnisync.records import SourceRecord

HERE = Path(__file__).parent
DIRECTIONS = {"in", "out", "both", "none"}
KINDS = {"profile", "interaction", "consent"}


class MappingError(ValueError):
    """A record that cannot be mapped. ``record`` and ``field`` say where; the message says why."""

    def __init__(self, record: str, field: str, message: str):
        self.record = record
        self.field = field
        super().__init__(f"{record}: {field}: {message}")


class MappingConfigError(ValueError):
    """A mapping file that is itself wrong (unknown transform, bad direction...)."""


@dataclass(frozen=True)
class FieldMap:
    target: str
    sources: tuple[str, ...] = ()
    transform: str = "identity"
    direction: str = "in"
    const: Any = None

    @property
    def inbound(self) -> bool:
        return self.direction in ("in", "both")

    @property
    def outbound(self) -> bool:
        return self.direction in ("out", "both") and bool(self.sources)


@dataclass
class Mapping:
    system: str
    stream: str
    kind: str
    fields: list[FieldMap] = field(default_factory=list)
    path: str = ""

    # --- inbound -------------------------------------------------------------------------------
    def inbound(self, record: SourceRecord) -> CustomerProfile | Interaction | ConsentEvent | None:
        """Translate one source record; raise :class:`MappingError` naming the field on failure.

        A ``consent`` mapping returns ``None`` when the record carries no consent change (its
        ``status`` maps to nothing), e.g. an SMS whose body is not a STOP/START keyword.
        """
        label = f"{record.system}/{record.stream}/{record.external_id}"
        values: dict[str, Any] = {}
        for fm in self.fields:
            if not fm.inbound:
                continue
            try:
                values[fm.target] = self._read(fm, record.payload)
            except Exception as e:  # noqa: BLE001 - any vendor value a transform chokes on is bad input
                raws = [dig(record.payload, src) for src in fm.sources if src != "$"]
                raise MappingError(label, fm.target, _safe_reason(e, raws)) from None
        try:
            return self._build(values, record)
        except ValidationError as e:
            loc = _first_loc(e)
            raise MappingError(label, loc, describe_validation_error(e, record=label)
                               .removeprefix(label + ": ").removeprefix(loc + ": ")) from None
        except (ValueError, TypeError) as e:  # e.g. an attribute too large to render as text
            raise MappingError(label, "<record>", _safe_reason(e)) from None

    def _read(self, fm: FieldMap, payload: dict[str, Any]) -> Any:
        if fm.const is not None:
            return fm.const
        fn = TRANSFORMS[fm.transform].inbound
        if not _is_list_target(fm.target):
            for src in fm.sources:
                v = fn(dig(payload, src))
                if v is not None:
                    return v
            return None
        out = []
        for src in fm.sources:
            raw = dig(payload, src)
            for item in (raw if isinstance(raw, list) else [raw]):
                v = fn(item)
                if v is not None:
                    out.append(v)
        return out

    def _build(self, values: dict[str, Any], record: SourceRecord):
        if self.kind == "profile":
            return self._profile(values, record)
        nested: dict[str, Any] = {}
        handoff: dict[str, Any] = {}
        for k, v in values.items():
            if k.startswith("handoff."):
                if v is not None:
                    handoff[k.removeprefix("handoff.")] = v
            elif k.startswith("attributes."):
                if v is not None:
                    nested.setdefault("attributes", {})[k.removeprefix("attributes.")] = str(v)
            elif v is not None:
                nested[k] = v
        nested.setdefault("system", record.system)
        nested.setdefault("external_id", record.external_id)
        if self.kind == "consent" and values.get("status") is None:
            return None
        if self.kind == "interaction":
            if handoff.get("from_bot"):
                ctx = handoff.pop("context", None) or {}
                if not isinstance(ctx, dict):
                    raise MappingError(f"{record.system}/{record.stream}/{record.external_id}", "handoff.context",
                                       "must be an object of names to values")
                # A dict, not a Handoff: validated inside the Interaction, errors are located at handoff.<field>.
                nested["handoff"] = {**handoff, "context": {str(a): str(b) for a, b in ctx.items()}}
            return Interaction(**nested)
        return ConsentEvent(**nested)

    def _profile(self, values: dict[str, Any], record: SourceRecord) -> CustomerProfile:
        data: dict[str, Any] = {"external_ids": {record.system: record.external_id}}
        address: dict[str, Any] = {}
        consent: list[ConsentState] = []
        for k, v in values.items():
            if v is None or v == []:
                continue
            if k.startswith("address."):
                address[k.removeprefix("address.")] = v
            elif k.startswith("consent."):
                _, channel, purpose = k.split(".")
                if v == "unknown":
                    continue
                consent.append(ConsentState(channel=channel, purpose=purpose, status=v,
                                            observed_at=record.modified_at, source_system=record.system,
                                            source_record=record.external_id))
            elif k.startswith("attributes."):
                data.setdefault("attributes", {})[k.removeprefix("attributes.")] = str(v)
            elif k.startswith("external_ids."):
                data["external_ids"][k.removeprefix("external_ids.")] = str(v)
            else:
                data[k] = v
        if address:
            data["addresses"] = [address]  # validated inside the profile: errors are at addresses.0.<part>
        data["consent"] = consent
        return CustomerProfile(**data)

    # --- outbound ------------------------------------------------------------------------------
    def outbound_fields(self) -> list[FieldMap]:
        return [fm for fm in self.fields if fm.outbound]

    def outbound(self, golden: dict[str, Any], *, only: set[str] | None = None) -> dict[str, Any]:
        """Vendor payload for the fields this system receives (``direction`` out/both).

        ``golden`` is a flat dict of canonical targets (``first_name``, ``emails``,
        ``consent.email.marketing``...). ``only`` restricts to the named targets (the planner's
        changed fields).
        """
        payload: dict[str, Any] = {}
        for fm in self.outbound_fields():
            if only is not None and fm.target not in only:
                continue
            if fm.target not in golden:
                continue
            value = golden[fm.target]
            if isinstance(value, list):
                value = value[0] if value else None
            out = TRANSFORMS[fm.transform].outbound
            if out is None:
                raise MappingConfigError(f"{self.path}: {fm.target}: transform {fm.transform!r} has no outbound form")
            put(payload, fm.sources[0], out(value))
        return payload


def _is_list_target(target: str) -> bool:
    return target in {"emails", "phones"}


def _safe_reason(e: Exception, raws: list[Any] = ()) -> str:
    """Why a value could not be read, without the value (it may be personal data).

    Transforms word their errors without the value; as a second line of defence any text of the raw
    value that still appears (a parser's message quoting its input) is cut out. Errors other than
    ValueError/TypeError keep only their kind: their messages are not written for readers.
    """
    if not isinstance(e, (ValueError, TypeError)) or isinstance(e, UnicodeError):
        return f"cannot read the value ({type(e).__name__})"
    msg = str(e)
    for text in sorted({t for raw in raws for t in _texts(raw)}, key=len, reverse=True):
        msg = msg.replace(text, "…").replace(repr(text)[1:-1], "…")
    return msg if len(msg) <= 160 else msg[:157] + "..."


def _texts(raw: Any, depth: int = 0) -> list[str]:
    if isinstance(raw, dict) and depth < 8:
        return [t for k, v in raw.items() for t in _texts(k, depth + 1) + _texts(v, depth + 1)]
    if isinstance(raw, list) and depth < 8:
        return [t for v in raw for t in _texts(v, depth + 1)]
    if isinstance(raw, str):
        return [raw] if len(raw) >= 3 else []
    return []


def _first_loc(e: ValidationError) -> str:
    errs = e.errors()
    return (".".join(str(p) for p in errs[0]["loc"]) or "<record>") if errs else "<record>"


def dig(payload: Any, path: str) -> Any:
    if path == "$":
        return payload
    cur = payload
    for part in path.split("."):
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and part.isdigit():
            idx = int(part)
            cur = cur[idx] if idx < len(cur) else None
        else:
            return None
        if cur is None:
            return None
    return cur


def put(payload: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    cur = payload
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


def parse_mapping(doc: dict[str, Any], *, path: str = "<memory>") -> Mapping:
    _vendor_vocabularies()
    for key in ("system", "stream", "kind", "fields"):
        if key not in doc:
            raise MappingConfigError(f"{path}: missing {key!r}")
    if doc["kind"] not in KINDS:
        raise MappingConfigError(f"{path}: kind must be one of {sorted(KINDS)}")
    fields = []
    for target, spec in doc["fields"].items():
        spec = spec or {}
        unknown = set(spec) - {"source", "transform", "direction", "const"}
        if unknown:
            raise MappingConfigError(f"{path}: {target}: unknown keys {sorted(unknown)}")
        transform = spec.get("transform", "identity")
        if transform not in TRANSFORMS:
            raise MappingConfigError(f"{path}: {target}: unknown transform {transform!r}")
        direction = spec.get("direction", "in")
        if direction not in DIRECTIONS:
            raise MappingConfigError(f"{path}: {target}: direction must be one of {sorted(DIRECTIONS)}")
        src = spec.get("source", ())
        sources = (src,) if isinstance(src, str) else tuple(src)
        if not sources and "const" not in spec:
            raise MappingConfigError(f"{path}: {target}: needs 'source' or 'const'")
        if "$" in sources and direction in ("out", "both"):
            raise MappingConfigError(f"{path}: {target}: source '$' (the whole payload) is inbound only")
        fields.append(FieldMap(target=target, sources=sources, transform=transform,
                               direction=direction, const=spec.get("const")))
    return Mapping(system=doc["system"], stream=doc["stream"], kind=doc["kind"], fields=fields, path=path)


def _vendor_vocabularies() -> None:
    # Importing a vocabulary module registers its value maps; Python imports each only once.
    import importlib
    import pkgutil

    import mappings

    importlib.import_module("mappings.vocabularies")
    for mod in pkgutil.iter_modules(mappings.__path__):
        if mod.name.startswith("vocab_"):
            importlib.import_module(f"mappings.{mod.name}")


@lru_cache(maxsize=None)
def load_mapping(system: str, stream: str) -> Mapping:
    """The mapping for ``system``/``stream`` from ``mappings/<system>/<stream>.yaml``."""
    _vendor_vocabularies()
    path = HERE / system / f"{stream}.yaml"
    if not path.exists():
        raise MappingConfigError(f"no mapping file {path.relative_to(HERE.parent)}")
    return parse_mapping(yaml.safe_load(path.read_text()), path=str(path.relative_to(HERE.parent)))


@lru_cache(maxsize=None)
def mappings_for(system: str, stream: str) -> tuple[Mapping, ...]:
    """Every mapping that reads ``system``/``stream`` records (e.g. an SMS stream maps to an
    interaction and, for STOP/START keywords, to a consent event). Files are matched on their
    ``system`` and ``stream`` keys, so ``messages_consent.yaml`` may declare ``stream: messages``."""
    found = tuple(m for m in all_mappings() if m.system == system and m.stream == stream)
    if not found:
        raise MappingConfigError(f"no mapping for {system}/{stream} under mappings/{system}/")
    return found


def all_mappings() -> list[Mapping]:
    _vendor_vocabularies()
    return [load_mapping(p.parent.name, p.stem) for p in sorted(HERE.glob("*/*.yaml"))]


def flatten_profile(profile: dict[str, Any]) -> dict[str, Any]:
    """A golden/canonical profile dict as the flat targets mapping files use."""
    flat: dict[str, Any] = {}
    for k, v in profile.items():
        if k == "addresses":
            if v:
                for part, pv in v[0].items():
                    if pv is not None:
                        flat[f"address.{part}"] = pv
        elif k == "consent":
            for c in v or []:
                flat[f"consent.{c['channel']}.{c['purpose']}"] = c["status"]
        elif k in ("attributes", "external_ids") and isinstance(v, dict):
            for a, av in v.items():
                flat[f"{k}.{a}"] = av
        elif isinstance(v, datetime):
            flat[k] = v
        else:
            flat[k] = v
    return flat
