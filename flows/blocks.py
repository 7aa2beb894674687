"""Prefect blocks holding vendor credentials (typed, secrets as SecretStr).

One block type per vendor, saved under the name ``omnisync-<system>``. ``omnisync blocks create``
saves them from the environment or a sandbox info file; :func:`load_block` returns the connector's
credential model, or ``None`` when no block was saved.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import SecretStr

from connectors.credentials import (
    HubSpotCredentials,
    SalesforceCredentials,
    SegmentCredentials,
    SendGridCredentials,
    TwilioCredentials,
    ZoomCredentials,
)


class SalesforceBlock(Block):
    """A connected app's client credentials (OAuth client credentials flow); a static session id
    is accepted too, and works until Salesforce ends the session."""

    _block_type_name = "omnisync Salesforce"
    instance_url: str
    client_id: str | None = None
    client_secret: SecretStr | None = None
    session_id: SecretStr | None = None
    api_version: str = "59.0"
    ca_bundle: str | None = None


class HubSpotBlock(Block):
    _block_type_name = "omnisync HubSpot"
    access_token: SecretStr
    host: str = "https://api.hubapi.com"
    client_secret: SecretStr | None = None


class ZoomBlock(Block):
    """A Server-to-Server OAuth app (account id, client id and secret); a static access token is
    accepted too, and works until it expires (an hour)."""

    _block_type_name = "omnisync Zoom"
    base_url: str = "https://api.zoom.us"
    account_id: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    oauth_url: str = "https://zoom.us/oauth/token"
    access_token: SecretStr | None = None
    webhook_secret: SecretStr | None = None


class SegmentBlock(Block):
    _block_type_name = "omnisync Segment"
    tracking_url: str = "https://api.segment.io"
    write_key: SecretStr
    profile_url: str = "https://profiles.segment.com"
    space_id: str | None = None
    profile_token: SecretStr | None = None


class TwilioBlock(Block):
    _block_type_name = "omnisync Twilio"
    base_url: str = "https://api.twilio.com"
    account_sid: str
    auth_token: SecretStr


class SendGridBlock(Block):
    _block_type_name = "omnisync SendGrid"
    base_url: str = "https://api.sendgrid.com"
    api_key: SecretStr
    webhook_public_key: str | None = None


BLOCKS: dict[str, tuple[type[Block], type]] = {
    "salesforce": (SalesforceBlock, SalesforceCredentials),
    "hubspot": (HubSpotBlock, HubSpotCredentials),
    "zoom": (ZoomBlock, ZoomCredentials),
    "segment": (SegmentBlock, SegmentCredentials),
    "twilio": (TwilioBlock, TwilioCredentials),
    "sendgrid": (SendGridBlock, SendGridCredentials),
}


def block_name(system: str) -> str:
    return f"omnisync-{system}"


def _plain(model: Any) -> dict[str, Any]:
    out = {}
    for k, v in model:
        out[k] = v.get_secret_value() if isinstance(v, SecretStr) else v
    return out


def save_block(system: str, creds: Any, *, overwrite: bool = True) -> str:
    block_cls, _ = BLOCKS[system]
    block_cls(**_plain(creds)).save(block_name(system), overwrite=overwrite)
    return block_name(system)


def load_block(system: str) -> Any | None:
    block_cls, model = BLOCKS[system]
    try:
        block = block_cls.load(block_name(system))
    except (ValueError, RuntimeError):
        return None
    except Exception:  # no reachable Prefect API: fall back to the environment
        return None
    return model.model_validate(_plain(block))
