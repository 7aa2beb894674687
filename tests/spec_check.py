"""Validate sandbox responses against the vendors' published OpenAPI documents (../shared/specs).

The specs are reference data outside the project: tests using this module skip when the folder is
absent. OpenAPI 3.0's ``nullable: true`` is not JSON Schema, so 3.0 documents are rewritten to
``anyOf [schema, null]`` before validation; 3.1 documents are JSON Schema 2020-12 already.
"""

from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema

SPECS = Path(__file__).resolve().parents[1].parent / "shared" / "specs"


def _nullable(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _nullable(v) for k, v in node.items()}
        if out.pop("nullable", False):
            return {"anyOf": [out, {"type": "null"}]}
        return out
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


@lru_cache(maxsize=None)
def load(vendor: str, file: str) -> dict[str, Any]:
    doc = json.loads((SPECS / vendor / file).read_text())
    return _nullable(copy.deepcopy(doc)) if str(doc.get("openapi", "")).startswith("3.0") else doc


def schema_for(doc: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    """The response schema the spec declares for ``method path`` answering ``status``."""
    for template, ops in doc["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in ops:
            responses = ops[method.lower()]["responses"]
            resp = responses.get(str(status)) or responses.get("default")
            assert resp is not None, f"{method} {template} declares no {status} response"
            if "$ref" in resp:
                resp = doc["components"]["responses"][resp["$ref"].split("/")[-1]]
            content = resp.get("content") or {}
            media = content.get("application/json") or content.get("*/*")
            assert media is not None, f"{method} {template} {status} declares no JSON body"
            return {**media["schema"], "components": doc.get("components", {})}
    raise AssertionError(f"{method} {path} is not in the spec")


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.Draft202012Validator if str(doc.get("openapi", "")).startswith("3.1") else jsonschema.Draft7Validator
    return cls(schema)


def check(client: httpx.Client, doc: dict[str, Any], method: str, path: str, *, expect: int,
          spec_path: str | None = None, **kw: Any) -> Any:
    """Send the request, assert the status, and validate the JSON body against the spec."""
    r = client.request(method, path, **kw)
    assert r.status_code == expect, (method, path, r.status_code, r.text[:300])
    body = r.json()
    validator(doc, schema_for(doc, method, spec_path or path.split("?")[0], r.status_code)).validate(body)
    return body
