"""The one settings object: every environment variable the stack reads, typed, read once.

`.env.example` documents each variable; `tests/deploy` checks that compose sets only these.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SUPPORTED_DATABASE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")
ENVIRONMENTS = ("development", "production")


class Settings(BaseSettings):
    """Configuration of every component, from the environment (names are the field names, upper-case)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    environment: str = Field("development", description="development | production")
    database_url: str = "sqlite:///var/app.db"
    # a folder, or s3://bucket/prefix (registry/objectstore.py); a Path would mangle s3:// into s3:/
    model_dir: Path | str = Path("var/models")
    model_cache_dir: Path = Path("var/model-cache")  # where an s3:// registry's versions are downloaded
    experiments_log: Path = Path("experiments/runs.csv")
    ab_config: Path = Path("ab/experiment.yml")
    admin_token: str | None = None
    web_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=64)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_batch_rows: int = Field(1000, ge=1, le=100_000)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_header_bytes: int = Field(65_536, ge=1024, le=16 * 1_048_576)
    header_timeout_seconds: float = Field(10.0, gt=0, le=3600)
    body_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    model_poll_seconds: float = Field(5.0, gt=0, le=3600)
    prometheus_multiproc_dir: Path | None = None
    prediction_log: bool = True
    prediction_log_sample: float = Field(0.01, ge=0.0, le=1.0)
    prediction_log_retention_days: float = Field(90.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in SUPPORTED_DATABASE_SCHEMES:
            raise ValueError(
                f"scheme {scheme or value!r} is not supported; use "
                "sqlite:///path/to/app.db or postgresql+psycopg://user:pass@host:5432/db"
            )
        if scheme == "postgresql":  # plain postgresql:// would pick psycopg2, which we do not ship
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator("model_dir", mode="before")
    @classmethod
    def _model_dir(cls, value: object) -> Path | str:
        from registry import parse_model_dir  # light: boto3 loads only when an s3:// registry opens

        if not isinstance(value, str | Path):
            raise ValueError(f"expected a folder or s3://bucket/prefix, got {type(value).__name__}")
        return parse_model_dir(value)

    @field_validator("environment")
    @classmethod
    def _known_environment(cls, value: str) -> str:
        name = value.strip().lower()
        if name not in ENVIRONMENTS:
            raise ValueError(f"{value!r} is not one of {', '.join(ENVIRONMENTS)} (a typo such as 'prod' would "
                             "skip the production checks)")
        return name

    @field_validator("admin_token")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _no_weak_secrets_in_production(self) -> Settings:
        token = self.admin_token
        weak = token is not None and (len(token) < 24 or token.startswith("change-me"))
        if self.environment == "production" and weak:
            raise ValueError(
                "ADMIN_TOKEN is too weak for ENVIRONMENT=production: use 24+ random characters "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))') or leave it unset"
            )
        return self


class SettingsError(SystemExit):
    """Misconfiguration: the process stops at boot with a message naming the variable."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the environment once per process; exit with a readable message when it is wrong."""
    try:
        return Settings()
    except Exception as exc:  # pydantic ValidationError: turn it into one line per variable
        errors = getattr(exc, "errors", None)
        if errors is None:
            raise
        lines = []
        for e in errors():
            name = "_".join(str(p) for p in e["loc"]).upper()
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{name}: {msg}" if name else msg)  # a check across fields names its variables itself
        raise SettingsError("configuration error: " + "; ".join(lines)) from None
