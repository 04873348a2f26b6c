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
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sinks import KINDS, Filter, SinkConfig, SinkConfigError, sink_class

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
    # The fleet this gateway serves: in MQTT topics (vantrack/<fleet>/...) and in the
    # CloudEvents source of webhooks.
    fleet: str = "default"


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint (GET /metrics); off unless a port is set."""

    bind: str = "127.0.0.1"
    port: int = 0  # TCP port; 0: no endpoint


@dataclass(frozen=True)
class LogConfig:
    format: str = "kv"  # "kv" (key=value) or "json"
    level: str = "info"  # debug, info, warning, error


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    sinks: tuple[SinkConfig, ...] = ()  # [[sink]] tables, in file order


LOG_FORMATS = ("kv", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
_SECTIONS: dict[str, type[Any]] = {
    "gateway": GatewayConfig, "log": LogConfig, "metrics": MetricsConfig,
}  # fmt: skip
# Fleet and sink names appear in MQTT topics, URLs, metrics labels and the outbox.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
    if not NAME.fullmatch(g.fleet):
        raise ConfigError(f"gateway.fleet: {g.fleet!r} is not a name (letters, digits, . _ -)")
    m = cfg.metrics
    if not 0 <= m.port <= 65535:
        raise ConfigError(f"metrics.port: {m.port} is not a TCP port (0 = off)")
    if log.format not in LOG_FORMATS:
        raise ConfigError(f"log.format: {log.format!r} is not one of {', '.join(LOG_FORMATS)}")
    if log.level not in LOG_LEVELS:
        raise ConfigError(f"log.level: {log.level!r} is not one of {', '.join(LOG_LEVELS)}")


def _typed(where: str, value: Any, hint: Any) -> Any:
    """Check a TOML value against a sink config field's annotation."""
    if hint is bool or hint is str or hint is int or hint is float:
        return _coerce(where, value, hint())
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and type(None) in args:  # `str | None`
        return None if value is None else _typed(where, value, args[0])
    if typing.get_origin(hint) is tuple:  # tuple[str, ...]: a list of strings
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    raise ConfigError(f"{where}: unsupported setting type {hint}")  # a bug in a sink module


def _filter(where: str, table: Any) -> Filter:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table ([sink.filter])")
    known = {f.name for f in dataclasses.fields(Filter)}
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key} (known: {', '.join(sorted(known))})")
    devices = table.get("devices", [])
    if not isinstance(devices, list) or not all(
        isinstance(d, str) and d or isinstance(d, int) and not isinstance(d, bool) for d in devices
    ):
        raise ConfigError(f"{where}.devices: expected a list of device names or ids")
    events = table.get("events")
    if events is not None:
        events = _typed(f"{where}.events", events, tuple[str, ...])
    positions = _coerce(f"{where}.positions", table.get("positions", True), True)
    return Filter(tuple(str(d) for d in devices), events, positions)


def _sink(path: Path, i: int, table: Any) -> SinkConfig:
    """One [[sink]] table: its kind's config class, every key checked, naming the key."""
    where = f"{path}: sink[{i}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table ([[sink]])")
    kind, name = table.get("type"), table.get("name")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ConfigError(f"{where}.type: {kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"{where}.name: {name!r} is not a name (letters, digits, . _ -)")
    where = f"{path}: sink[{i}] ({name})"
    cls = sink_class(kind).config_class
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(
                f"{where}: unknown key {key} for a {kind} sink (known: {', '.join(sorted(known))})"
            )
        if key == "filter":
            values[key] = _filter(f"{where}.filter", value)
        elif key in ("type", "name"):
            values[key] = value
        else:
            values[key] = _typed(f"{where}.{key}", value, hints[key])
    try:
        cfg = cls(**values)
        cfg.check()
    except SinkConfigError as e:
        raise ConfigError(f"{where}.{e.key}: {e.message}") from None
    except (TypeError, ValueError) as e:  # a sink's check() that failed to name the key
        raise ConfigError(f"{where}: {e}") from None
    return cfg


def _sinks(path: Path, tables: Any) -> tuple[SinkConfig, ...]:
    if not isinstance(tables, list):
        raise ConfigError(f"{path}: sink must be an array of tables ([[sink]])")
    sinks = tuple(_sink(path, i, t) for i, t in enumerate(tables))
    names = [s.name for s in sinks]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ConfigError(f"{path}: sink[{i}].name: {n!r} is used by another sink")
    return sinks


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
    sinks: tuple[SinkConfig, ...] = ()
    if env.get(DB_ENV):
        sections["gateway"]["db"] = Path(env[DB_ENV])
    if path is not None:
        data = _read_toml(path)
        for name, table in data.items():
            if name == "sink":
                sinks = _sinks(path, table)
                continue
            if name not in _SECTIONS:
                sections_known = ", ".join([*_SECTIONS, "sink"])
                raise ConfigError(f"{path}: unknown section [{name}] (known: {sections_known})")
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
    cfg = Config(**{name: cls(**sections[name]) for name, cls in _SECTIONS.items()}, sinks=sinks)
    _check(cfg)
    return cfg
