"""Typed credentials for every vendor. Secrets are ``SecretStr`` and never printed.

These are plain pydantic models: the flows load them from a Prefect block or from the
environment (``omnisync.credentials``) and hand them to connectors. Connectors never read the
environment themselves.

Salesforce and Zoom tokens expire (a Salesforce session after two hours idle by default, a Zoom
token after one hour), so a deployment that runs for days gives the connector the OAuth client
that issues them: Salesforce's client credentials flow (``client_id``/``client_secret`` of a
connected app, run as its integration user) and Zoom's Server-to-Server OAuth app
(``account_id``/``client_id``/``client_secret``). The connector fetches tokens and renews them
itself. A static ``session_id`` / ``access_token`` is still accepted (a quick test, or an older
configuration) and works until it expires.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator


class _Creds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SalesforceCredentials(_Creds):
    instance_url: str  # the org's My Domain URL: the token endpoint is {instance_url}/services/oauth2/token
    client_id: str | None = None  # connected app's consumer key (client credentials flow)
    client_secret: SecretStr | None = None
    session_id: SecretStr | None = None  # a session (access token) given by hand: used until it expires
    api_version: str = "59.0"
    ca_bundle: str | None = None  # path to a CA file (the local sandbox's test CA)

    @model_validator(mode="after")
    def _one_way_in(self) -> "SalesforceCredentials":
        if bool(self.client_id) != bool(self.client_secret):
            raise ValueError("client_id and client_secret go together (the connected app's consumer key and "
                             "secret)")
        if not self.client_id and not self.session_id:
            raise ValueError("give client_id and client_secret (OAuth client credentials flow), or a session_id")
        return self

    @property
    def oauth(self) -> bool:
        return bool(self.client_id)


class HubSpotCredentials(_Creds):
    access_token: SecretStr
    host: str = "https://api.hubapi.com"
    client_secret: SecretStr | None = None  # signs webhooks v3


class ZoomCredentials(_Creds):
    base_url: str = "https://api.zoom.us"
    account_id: str | None = None  # Server-to-Server OAuth app: account id, client id and secret
    client_id: str | None = None
    client_secret: SecretStr | None = None
    oauth_url: str = "https://zoom.us/oauth/token"
    access_token: SecretStr | None = None  # a token given by hand: used until it expires (one hour)
    webhook_secret: SecretStr | None = None

    @model_validator(mode="after")
    def _one_way_in(self) -> "ZoomCredentials":
        oauth = [bool(self.account_id), bool(self.client_id), bool(self.client_secret)]
        if any(oauth) and not all(oauth):
            raise ValueError("account_id, client_id and client_secret go together (the Server-to-Server OAuth "
                             "app's credentials)")
        if not any(oauth) and not self.access_token:
            raise ValueError("give account_id, client_id and client_secret (Server-to-Server OAuth), or an "
                             "access_token")
        return self

    @property
    def oauth(self) -> bool:
        return bool(self.client_id)


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
