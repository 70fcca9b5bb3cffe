"""Settings, and the one place the environment is read.

Library code takes explicit arguments; the CLI (and later the services) build them from
:func:`Settings.from_env`, so a test or an embedding application never has the environment change
behaviour behind its back.

| variable | meaning | default |
|---|---|---|
| ``DWCP_PG_DSN`` | PostgreSQL for production telemetry | ``postgresql://postgres@127.0.0.1:5432/test`` |
| ``DWCP_REDIS_URL`` | Redis for the serving feature cache | ``redis://127.0.0.1:6379/0`` |
| ``DWCP_TELEMETRY_ENABLED`` | collector on the transfer path | off |
| ``DWCP_DICT_DIR`` | directory of trained zstd dictionaries | none |
| ``DWCP_CHECKSUM`` | frame checksum, ``xxh3`` or ``crc32c`` | ``xxh3`` |
| ``DWCP_STORE_URL`` | telemetry store of the data commands | ``sqlite:///dwcp-telemetry.db`` |
| ``DWCP_MODEL_KEY`` | key that signs trained models and that loaders require (≥ 16 bytes) | none |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import ConfigError

__all__ = ["DEFAULT_PG_DSN", "DEFAULT_REDIS_URL", "DEFAULT_STORE_URL", "Settings"]

DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_STORE_URL = "sqlite:///dwcp-telemetry.db"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {raw!r}")


@dataclass(frozen=True, slots=True)
class Settings:
    pg_dsn: str = DEFAULT_PG_DSN
    redis_url: str = DEFAULT_REDIS_URL
    telemetry_enabled: bool = False
    dict_dir: str | None = None
    checksum: str = "xxh3"
    store_url: str = DEFAULT_STORE_URL
    model_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        checksum = env.get("DWCP_CHECKSUM", "xxh3").strip().lower()
        if checksum not in ("xxh3", "crc32c"):
            raise ConfigError(f"DWCP_CHECKSUM must be xxh3 or crc32c, got {checksum!r}")
        return cls(
            pg_dsn=env.get("DWCP_PG_DSN", DEFAULT_PG_DSN),
            redis_url=env.get("DWCP_REDIS_URL", DEFAULT_REDIS_URL),
            telemetry_enabled=_flag(env, "DWCP_TELEMETRY_ENABLED", False),
            dict_dir=env.get("DWCP_DICT_DIR") or None,
            checksum=checksum,
            store_url=env.get("DWCP_STORE_URL") or DEFAULT_STORE_URL,
            model_key=_model_key(env),
        )


def _model_key(env: Mapping[str, str]) -> bytes | None:
    raw = env.get("DWCP_MODEL_KEY")
    if not raw:
        return None
    key = raw.encode()
    if len(key) < 16:
        raise ConfigError("DWCP_MODEL_KEY must be at least 16 bytes")
    return key
