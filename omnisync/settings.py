"""Process-wide settings, read once from the environment (``OMNISYNC_*``).

Only deployment facts live here (where the store is, the default phone region, the key used to
hash tombstones). Vendor credentials are not settings: they are typed objects loaded by the flows
from Prefect blocks or the environment (see ``connectors.credentials``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMNISYNC_", extra="ignore")

    home: Path = Field(default=Path(".omnisync"), description="working directory for the SQLite store and run files")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite under `home` when unset")
    default_region: str = Field(default="US", description="region used to read phone numbers without a country code")
    tombstone_key: SecretStr = Field(
        default=SecretStr("omnisync-local-tombstone-key"),
        description="HMAC key for erasure tombstones; set a real secret in production",
    )
    loop_alarm_threshold: int = Field(default=3, description="echo bounces of one record before a loop alarm")
    shared_budgets: bool | None = Field(
        default=None, description="vendor rate budgets kept in the store and shared by every worker process; "
                                  "default: on when the store is PostgreSQL (where several workers share it)")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.home / 'omnisync.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget cached settings so a changed environment is read again (CLI entry, tests)."""
    get_settings.cache_clear()
