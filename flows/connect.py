"""Connector construction for flows: one class per system, one shared rate budget per vendor."""

from __future__ import annotations

import importlib
import threading
from typing import Any

from connectors.base import Connector
from connectors.http import RateBudget
from omnisync.credentials import load_credentials

CONNECTORS: dict[str, str] = {
    "salesforce": "connectors.salesforce:SalesforceConnector",
    "hubspot": "connectors.hubspot:HubSpotConnector",
    "zoom": "connectors.zoom:ZoomConnector",
    "twilio": "connectors.twilio:TwilioConnector",
    "sendgrid": "connectors.sendgrid:SendGridConnector",
    "segment": "connectors.segment:SegmentConnector",
}
# Documented per-app limits (requests per second, burst). Usage headers lower them further.
BUDGETS: dict[str, tuple[float, int]] = {
    "salesforce": (25.0, 25),  # concurrency-limited; the daily quota is enforced by the connector
    "hubspot": (10.0, 100),  # 100 requests / 10 s (Free/Starter)
    "zoom": (20.0, 20),  # "Medium" APIs: 20/s on Pro (60/s Business+); X-RateLimit-Remaining lowers it
    "twilio": (100.0, 100),
    "sendgrid": (10.0, 50),
    "segment": (50.0, 100),
}
_budgets: dict[str, RateBudget] = {}
_lock = threading.Lock()


def budget_for(system: str) -> RateBudget:
    """The process-wide budget for ``system``: every connector instance in this process shares it."""
    with _lock:
        if system not in _budgets:
            rate, burst = BUDGETS[system]
            _budgets[system] = RateBudget(rate, burst)
        return _budgets[system]


def connector_class(system: str) -> type[Connector]:
    module, _, cls = CONNECTORS[system].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_connector(system: str, credentials: Any | None = None, **kw: Any) -> Connector:
    creds = credentials if credentials is not None else load_credentials(system)
    kw.setdefault("budget", budget_for(system))
    return connector_class(system)(creds, **kw)
