"""Where flows and the webhook receiver get vendor credentials: a Prefect block, the environment, or a sandbox info file.

Order: ``OMNISYNC_<SYSTEM>_<FIELD>`` environment variables when any is set (Zoom's Server-to-Server
OAuth app: ``OMNISYNC_ZOOM_ACCOUNT_ID``, ``_CLIENT_ID``, ``_CLIENT_SECRET``; Salesforce's connected
app: ``OMNISYNC_SALESFORCE_INSTANCE_URL``, ``_CLIENT_ID``, ``_CLIENT_SECRET``); then the JSON written by
``omnisync sandbox --info FILE`` when ``OMNISYNC_SANDBOX_INFO`` names it (demo, tests, benchmarks);
then the Prefect block ``omnisync-<system>`` (production: ``omnisync blocks create``). The result is always the typed model
from :mod:`connectors.credentials`, secrets as ``SecretStr``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from connectors.credentials import (
    HubSpotCredentials,
    SalesforceCredentials,
    SegmentCredentials,
    SendGridCredentials,
    TwilioCredentials,
    ZoomCredentials,
)

MODELS: dict[str, type[BaseModel]] = {
    "salesforce": SalesforceCredentials,
    "hubspot": HubSpotCredentials,
    "zoom": ZoomCredentials,
    "segment": SegmentCredentials,
    "twilio": TwilioCredentials,
    "sendgrid": SendGridCredentials,
}
# Which credential fields take the sandbox's base URL (and CA file).
URL_FIELDS: dict[str, tuple[str, ...]] = {
    "salesforce": ("instance_url",),
    "hubspot": ("host",),
    "zoom": ("base_url",),
    "segment": ("tracking_url", "profile_url"),
    "twilio": ("base_url",),
    "sendgrid": ("base_url",),
}


class CredentialsMissing(RuntimeError):
    pass


def from_sandbox_info(system: str, info: dict[str, Any]) -> BaseModel:
    """Typed credentials for ``system`` from one entry of a sandbox info document."""
    entry = info[system]
    data = dict(entry.get("credentials") or {})
    for f in URL_FIELDS[system]:
        data[f] = entry["base_url"]
    if system == "salesforce" and entry.get("ca_cert"):
        data["ca_bundle"] = entry["ca_cert"]
    return MODELS[system].model_validate(data)


def from_env(system: str, environ: dict[str, str] | None = None) -> BaseModel | None:
    env = environ if environ is not None else os.environ
    prefix = f"OMNISYNC_{system.upper()}_"
    data = {k[len(prefix):].lower(): v for k, v in env.items() if k.startswith(prefix)}
    if not data:
        return None
    try:
        return MODELS[system].model_validate(data)
    except ValidationError as e:
        # Name the fields, never the values; a rule across fields (which set of them is needed)
        # has no field and says what to set instead.
        problems = [".".join(map(str, err["loc"])) or err["msg"].removeprefix("Value error, ") for err in e.errors()]
        raise CredentialsMissing(f"{system}: environment credentials incomplete or invalid ({'; '.join(problems)}); "
                                 f"set {prefix}<FIELD> variables or create the Prefect block") from None


def from_block(system: str) -> BaseModel | None:
    try:
        from flows.blocks import load_block
    except ImportError:  # pragma: no cover - blocks need prefect, always installed
        return None
    return load_block(system)


def sandbox_info(path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    path = path or os.environ.get("OMNISYNC_SANDBOX_INFO")
    if not path or not Path(path).exists():
        return None
    return json.loads(Path(path).read_text())


def load_credentials(system: str, *, use_blocks: bool = True) -> BaseModel:
    """Credentials for ``system`` from the environment, the sandbox info file or a Prefect block."""
    if system not in MODELS:
        raise ValueError(f"unknown system {system!r}; known: {sorted(MODELS)}")
    creds = from_env(system)
    if creds is not None:
        return creds
    info = sandbox_info()
    if info and system in info:
        return from_sandbox_info(system, info)
    if use_blocks:
        creds = from_block(system)
        if creds is not None:
            return creds
    raise CredentialsMissing(
        f"no credentials for {system}: create the Prefect block 'omnisync-{system}' "
        f"(omnisync blocks create), set OMNISYNC_{system.upper()}_* variables, or point "
        f"OMNISYNC_SANDBOX_INFO at a sandbox info file")
