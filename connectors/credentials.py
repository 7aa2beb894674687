"""Typed credentials for every vendor. Secrets are ``SecretStr`` and never printed.

These are plain pydantic models: the flows load them from a Prefect block or from the
environment (``omnisync.credentials``) and hand them to connectors. Connectors never read the
environment themselves.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, SecretStr


class _Creds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SalesforceCredentials(_Creds):
    instance_url: str
    session_id: SecretStr
    api_version: str = "59.0"
    ca_bundle: str | None = None  # path to a CA file (the local sandbox's test CA)


class HubSpotCredentials(_Creds):
    access_token: SecretStr
    host: str = "https://api.hubapi.com"
    client_secret: SecretStr | None = None  # signs webhooks v3


class ZoomCredentials(_Creds):
    base_url: str = "https://api.zoom.us"
    access_token: SecretStr
    webhook_secret: SecretStr | None = None


class SegmentCredentials(_Creds):
    tracking_url: str = "https://api.segment.io"
    write_key: SecretStr
    profile_url: str = "https://profiles.segment.com"
    space_id: str | None = None
    profile_token: SecretStr | None = None
    public_api_url: str = "https://api.segmentapis.com"  # regulations (user deletion and suppression)
    public_api_token: SecretStr | None = None


class TwilioCredentials(_Creds):
    base_url: str = "https://api.twilio.com"
    account_sid: str
    auth_token: SecretStr


class SendGridCredentials(_Creds):
    base_url: str = "https://api.sendgrid.com"
    api_key: SecretStr
    webhook_public_key: str | None = None  # PEM or base64 DER of the ECDSA verification key
