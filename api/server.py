"""Serve the API (``omnisync api``): uvicorn over :func:`api.app.create_app` on the configured store."""

from __future__ import annotations

from api.app import create_app

__all__ = ["create_app", "serve"]


def serve(host: str = "127.0.0.1", port: int = 8765, database_url: str | None = None) -> None:
    """Run the API until interrupted; ``database_url`` defaults to the settings (OMNISYNC_DATABASE_URL)."""
    import uvicorn

    from omnisync.privacy import install_log_masking

    install_log_masking(("", "omnisync", "uvicorn", "uvicorn.error"))
    app = create_app(database_url)
    # No access log: its lines carry lookup parameters (addresses, phone numbers) in the query string,
    # and its formatter needs the raw arguments the masking filter replaces.
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, proxy_headers=False)
