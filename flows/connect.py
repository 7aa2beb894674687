"""Connector construction for flows: one class per system, one shared rate budget per vendor.

The budget is per process, or kept in the store and shared by every worker when the store is
PostgreSQL (``OMNISYNC_SHARED_BUDGETS`` overrides): concurrent flow runs against one tenant then
stay within its limits together. Budgets are per system (one tenant per store)."""

from __future__ import annotations

import importlib
import threading
from typing import Any

from connectors.base import Connector
from connectors.http import RateBudget
from omnisync.credentials import load_credentials
from omnisync.settings import get_settings

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
# HubSpot's search endpoints have a limit of their own (about 5 requests/s per portal).
SEARCH_BUDGET: tuple[float, int] = (4.0, 1)
_budgets: dict[tuple[str, str], RateBudget] = {}
_lock = threading.Lock()


def shared_budgets() -> bool:
    """Budgets in the store (shared by every worker) or per process: ``OMNISYNC_SHARED_BUDGETS``,
    by default on when the store is PostgreSQL."""
    settings = get_settings()
    if settings.shared_budgets is not None:
        return settings.shared_budgets
    return settings.resolved_database_url.startswith("postgresql")


def budget_for(system: str, name: str | None = None, limits: tuple[float, int] | None = None) -> RateBudget:
    """The budget for ``system`` (or a named sub-limit of it) that every connector here shares:
    process-wide, or store-wide across worker processes (:mod:`flows.budget`)."""
    name = name or system
    shared = shared_budgets()
    url = get_settings().resolved_database_url if shared else ""
    with _lock:
        if (name, url) not in _budgets:
            rate, burst = limits or BUDGETS[system]
            if shared:
                from flows.budget import SharedRateBudget
                from identity.store import get_engine

                _budgets[(name, url)] = SharedRateBudget(get_engine(url), name, rate, burst)
            else:
                _budgets[(name, url)] = RateBudget(rate, burst)
        return _budgets[(name, url)]


def connector_class(system: str) -> type[Connector]:
    module, _, cls = CONNECTORS[system].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_connector(system: str, credentials: Any | None = None, **kw: Any) -> Connector:
    creds = credentials if credentials is not None else load_credentials(system)
    kw.setdefault("budget", budget_for(system))
    if system == "hubspot":
        kw.setdefault("search_budget", budget_for(system, "hubspot-search", SEARCH_BUDGET))
    return connector_class(system)(creds, **kw)
