"""The gateway's configuration: one frozen, typed object built once from TOML + CLI.

`load()` reads an optional TOML file (tomllib), checks every key and type against the
dataclasses below, applies command-line overrides and returns a `Config`. Everything
that needs a setting receives the `Config` (or one of its sections); nothing reads
globals or the environment later. Precedence, highest first: command-line flag, TOML
file, `$VANTRACK_DB` (for the database path only), built-in default.

Bad configuration raises `ConfigError` naming the file, key or line; the CLI turns it
into a one-line message and exit code 2. This module does not open sockets or files
other than the config file itself.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DB = "vantrack.db"
DB_ENV = "VANTRACK_DB"
COAP_PORT = 5683


class ConfigError(Exception):
    """Configuration that cannot be used; the message names the key or line."""


@dataclass(frozen=True)
class GatewayConfig:
    bind: str = "::"  # all addresses, IPv4 and IPv6
    port: int = COAP_PORT
    db: Path = Path(DEFAULT_DB)
    max_report_bytes: int = 1024
    credentials_dir: Path = Path("credentials")
    # How long a write waits for a lock held by another connection (a `vantrack devices`
    # command, a backup) before the report gets 5.03 and the van retries later.
    busy_timeout_ms: int = 2000
    max_age_s: int = 30  # Max-Age of a 5.03: when the van should try again
    stats_interval_s: float = 60.0  # how often the rejection counters are logged; 0 = never
    # Processes that decode and validate reports against the CDDL (zcbor is pure Python
    # and costs milliseconds per report): keeps the event loop free and uses every core.
    # 0 = decode in the event loop's process.
    decode_workers: int = 2


@dataclass(frozen=True)
class LogConfig:
    format: str = "kv"  # "kv" (key=value) or "json"
    level: str = "info"  # debug, info, warning, error


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    log: LogConfig = field(default_factory=LogConfig)


LOG_FORMATS = ("kv", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
_SECTIONS: dict[str, type[Any]] = {"gateway": GatewayConfig, "log": LogConfig}


def _coerce(where: str, value: Any, default: Any) -> Any:
    """Check a TOML value against the type of the field's default."""
    if isinstance(default, Path):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: expected a path (string), got {value!r}")
        return Path(value).expanduser()
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"{where}: expected {type(default).__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _check(cfg: Config) -> None:
    g, log = cfg.gateway, cfg.log
    if not 0 <= g.port <= 65535:
        raise ConfigError(f"gateway.port: {g.port} is not a UDP port (0-65535)")
    if not 16 <= g.max_report_bytes <= 65000:
        raise ConfigError(f"gateway.max_report_bytes: {g.max_report_bytes} not in 16..65000")
    if g.busy_timeout_ms < 0:
        raise ConfigError("gateway.busy_timeout_ms: must be >= 0")
    if not 0 <= g.max_age_s <= 3600:
        raise ConfigError("gateway.max_age_s: must be in 0..3600")
    if g.stats_interval_s < 0:
        raise ConfigError("gateway.stats_interval_s: must be >= 0")
    if not 0 <= g.decode_workers <= 64:
        raise ConfigError("gateway.decode_workers: must be in 0..64")
    if log.format not in LOG_FORMATS:
        raise ConfigError(f"log.format: {log.format!r} is not one of {', '.join(LOG_FORMATS)}")
    if log.level not in LOG_LEVELS:
        raise ConfigError(f"log.level: {log.level!r} is not one of {', '.join(LOG_LEVELS)}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from None
    try:
        return tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: bad TOML: {e}") from None  # names line and column


def load(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration. `overrides` maps "section.key" to command-line values
    (None means "not given")."""
    env = os.environ if environ is None else environ
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    if env.get(DB_ENV):
        sections["gateway"]["db"] = Path(env[DB_ENV])
    if path is not None:
        data = _read_toml(path)
        for name, table in data.items():
            if name not in _SECTIONS:
                raise ConfigError(
                    f"{path}: unknown section [{name}] (known: {', '.join(_SECTIONS)})"
                )
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: {name} must be a table ([{name}])")
            defaults = _SECTIONS[name]()
            known = {f.name for f in dataclasses.fields(defaults)}
            for key, value in table.items():
                if key not in known:
                    raise ConfigError(
                        f"{path}: unknown key {name}.{key} (known: {', '.join(sorted(known))})"
                    )
                where = f"{path}: {name}.{key}"
                sections[name][key] = _coerce(where, value, getattr(defaults, key))
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        name, key = dotted.split(".", 1)
        sections[name][key] = value
    cfg = Config(**{name: cls(**sections[name]) for name, cls in _SECTIONS.items()})
    _check(cfg)
    return cfg
