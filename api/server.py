"""Serve the API (``omnisync api``): uvicorn over :func:`api.app.create_app` on the configured store.

One process answers a screen-pop lookup in about 0.7 ms of CPU (HTTP parsing, the fast path in
:class:`api.app.LookupFastPath`, two indexed queries on the driver: see :mod:`api.screenpop`), so it
serves well over 1,000 lookups/s per core; ``OMNISYNC_API_WORKERS=N`` runs N processes on the same
port for more.
"""

from __future__ import annotations

import os

from api.app import create_app

__all__ = ["create_app", "serve"]


def app_from_settings():
    """The app on the store the settings name (the factory each uvicorn worker process calls)."""
    return create_app(None)


def serve(host: str = "127.0.0.1", port: int = 8765, database_url: str | None = None,
          workers: int | None = None) -> None:
    """Run the API until interrupted; ``database_url`` defaults to the settings (OMNISYNC_DATABASE_URL)."""
    import uvicorn

    from omnisync.privacy import install_log_masking
    from omnisync.settings import reset_settings

    install_log_masking(("", "omnisync", "uvicorn", "uvicorn.error"))
    workers = workers or int(os.environ.get("OMNISYNC_API_WORKERS", "1") or 1)
    if workers < 1:
        raise ValueError("OMNISYNC_API_WORKERS must be a positive number of processes")
    if database_url:
        # worker processes read the store from the environment, like every omnisync command
        os.environ["OMNISYNC_DATABASE_URL"] = database_url
        reset_settings()
    # No access log: its lines carry lookup parameters (addresses, phone numbers) in the query string,
    # and its formatter needs the raw arguments the masking filter replaces.
    options = dict(host=host, port=port, log_level="info", access_log=False, proxy_headers=False)
    if workers == 1:
        uvicorn.run(app_from_settings(), **options)
    else:
        uvicorn.run("api.server:app_from_settings", factory=True, workers=workers, **options)
