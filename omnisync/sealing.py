"""Sealing of personal payloads kept for replay (dead letters, erasure jobs).

Dead letters must keep the original payload so a fixed mapping can replay it, yet the privacy scan
must find no personal data in them. The payload is sealed with Fernet (AES-128-CBC + HMAC) under
a key derived from the deployment's tombstone key, so only this deployment can open it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from omnisync.settings import get_settings


def _fernet() -> Fernet:
    secret = get_settings().tombstone_key.get_secret_value().encode()
    key = base64.urlsafe_b64encode(hashlib.sha256(b"omnisync-seal:" + secret).digest())
    return Fernet(key)


def seal(payload: Any) -> dict[str, str]:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return {"sealed": _fernet().encrypt(blob).decode()}


def unseal(sealed: dict[str, str]) -> Any:
    try:
        return json.loads(_fernet().decrypt(sealed["sealed"].encode()))
    except (InvalidToken, KeyError) as e:
        raise ValueError("payload cannot be unsealed with this deployment's key") from e
