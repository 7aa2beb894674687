"""Vendor-side signing for webhook tests (helpers only, no tests): each vendor's algorithm written out from shared/specs.

Kept separate from the receiver on purpose: a test that signed with the receiver's own code could
not catch the receiver getting the algorithm wrong.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
BASE = "http://testserver"
NOW = 1_795_000_010.0  # the receiver's clock in these tests (2026-11-18T11:06:50Z)

HUBSPOT_SECRET = "hs-client-secret-for-tests"
ZOOM_SECRET = "zoom-secret-token-for-tests"
TWILIO_TOKEN = "twilio-auth-token-for-tests"


def fixture(name: str):
    return json.loads((FIXTURES / name).read_text())


def _sendgrid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class Signers:
    """Signs requests as each vendor does; ``secrets(vendor)`` is what the receiver is configured with."""

    sendgrid_key: ec.EllipticCurvePrivateKey = field(default_factory=_sendgrid_key)

    def sendgrid_public(self, key: ec.EllipticCurvePrivateKey | None = None) -> str:
        der = (key or self.sendgrid_key).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()

    def secrets(self, vendor: str) -> str | None:
        return {"hubspot": HUBSPOT_SECRET, "zoom": ZOOM_SECRET, "twilio": TWILIO_TOKEN,
                "sendgrid": self.sendgrid_public()}[vendor]

    # Each returns (body bytes, headers) for a POST to BASE + /webhooks/<vendor>.
    def hubspot(self, body: bytes, *, ts: float = NOW, secret: str = HUBSPOT_SECRET,
                url: str = BASE + "/webhooks/hubspot") -> tuple[bytes, dict[str, str]]:
        ms = str(int(ts * 1000))
        sig = base64.b64encode(hmac.new(secret.encode(), b"POST" + url.encode() + body + ms.encode(),
                                        hashlib.sha256).digest()).decode()
        return body, {"Content-Type": "application/json", "X-HubSpot-Request-Timestamp": ms,
                      "X-HubSpot-Signature-v3": sig}

    def zoom(self, body: bytes, *, ts: float = NOW, secret: str = ZOOM_SECRET) -> tuple[bytes, dict[str, str]]:
        t = str(int(ts))
        sig = "v0=" + hmac.new(secret.encode(), f"v0:{t}:".encode() + body, hashlib.sha256).hexdigest()
        return body, {"Content-Type": "application/json", "x-zm-request-timestamp": t, "x-zm-signature": sig}

    def twilio(self, form: dict[str, str], *, secret: str = TWILIO_TOKEN,
               url: str = BASE + "/webhooks/twilio") -> tuple[bytes, dict[str, str]]:
        data = url + "".join(k + form[k] for k in sorted(form))
        sig = base64.b64encode(hmac.new(secret.encode(), data.encode(), hashlib.sha1).digest()).decode()
        return urlencode(form).encode(), {"Content-Type": "application/x-www-form-urlencoded",
                                          "X-Twilio-Signature": sig}

    def sendgrid(self, body: bytes, *, ts: float = NOW,
                 key: ec.EllipticCurvePrivateKey | None = None) -> tuple[bytes, dict[str, str]]:
        t = str(int(ts))
        sig = (key or self.sendgrid_key).sign(t.encode() + body, ec.ECDSA(hashes.SHA256()))
        return body, {"Content-Type": "application/json",
                      "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(sig).decode(),
                      "X-Twilio-Email-Event-Webhook-Timestamp": t}

    def sign(self, vendor: str, body: bytes, **kw) -> tuple[bytes, dict[str, str]]:
        """Sign a raw body (Twilio: a form-encoded body, re-parsed to sign it as Twilio would)."""
        if vendor == "twilio":
            from urllib.parse import parse_qsl

            return self.twilio(dict(parse_qsl(body.decode(), keep_blank_values=True)), **kw)
        return getattr(self, vendor)(body, **kw)


def sample(vendor: str) -> bytes:
    """The fixture body a vendor would post."""
    if vendor == "twilio":
        return urlencode(fixture("twilio_inbound_stop.json")).encode()
    name = {"hubspot": "hubspot_contact_events.json", "zoom": "zoom_engagement_ended.json",
            "sendgrid": "sendgrid_events.json"}[vendor]
    return json.dumps(fixture(name)).encode()


EXPECTED_EVENTS = {"hubspot": 2, "zoom": 1, "twilio": 1, "sendgrid": 3}
