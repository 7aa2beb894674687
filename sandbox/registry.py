"""Every vendor sandbox by name (imported lazily so one broken emulator cannot block the others)."""

from __future__ import annotations

import importlib

from sandbox.framework import Sandbox

SANDBOXES: dict[str, str] = {
    "salesforce": "sandbox.salesforce:SalesforceSandbox",
    "hubspot": "sandbox.hubspot:HubSpotSandbox",
    "zoom": "sandbox.zoom:ZoomSandbox",
    "twilio": "sandbox.twilio:TwilioSandbox",
    "sendgrid": "sandbox.sendgrid:SendGridSandbox",
    "segment": "sandbox.segment:SegmentSandbox",
}


def sandbox_class(name: str) -> type[Sandbox]:
    module, _, cls = SANDBOXES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build(name: str, *, size: int, seed: int) -> Sandbox:
    return sandbox_class(name)(size=size, seed=seed)
