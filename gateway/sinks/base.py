"""What every sink shares: its configuration, the record it is given, and the contract.

A sink is one configured backend (`[[sink]]` in the gateway's TOML, docs/sinks.md): an
MQTT broker, a webhook endpoint, a Traccar server. The gateway never calls a backend
while it stores a report. Instead, the report's transaction also puts each new record
into the outbox of every enabled sink whose filter takes it (gateway/outbox.py), and a
relay task per sink reads the outbox and calls `Sink.send()` for each record:

- one device's records one at a time, in the order the gateway stored them;
- different devices concurrently, at most `concurrency` at once;
- a record leaves the outbox only after `send()` returned, so `send()` returns only
  once the backend has the record (MQTT PUBACK, HTTP 2xx). It raises `SinkError`
  otherwise, and the relay retries with capped exponential backoff. Delivery is at
  least once; `Record.key` travels with every message so receivers can deduplicate.

This module does no I/O. Each kind of sink lives in its own module (mqtt, webhook,
traccar) with a `SinkConfig` subclass holding its own keys and a `Sink` subclass.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .. import wire

EXTRA_VALUE = 7  # the type-specific value (gateway/store.py)
EXTRA_ROUTE = 8  # the route version a fence number belongs to


class SinkError(Exception):
    """A delivery that did not happen.

    `retry=False`: waiting will not help (a webhook endpoint answering 410 Gone); the
    relay disables the sink, keeping its outbox, until `vantrack sinks enable NAME`.
    `retry_after`: seconds the backend asked us to wait (HTTP Retry-After), if any.
    `device_only=True`: the backend works but refuses this device (Traccar does not
    know the van); only that device waits, and it never counts towards disabling.
    """

    def __init__(
        self, message: str, *, retry: bool = True, retry_after: float | None = None,
        device_only: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.retry = retry
        self.retry_after = retry_after
        self.device_only = device_only


# What `Sink.send()` returns for a record this kind of backend has no use for (Traccar
# and a record without a position): it leaves the outbox, but is not counted as a
# delivery and does not tell the relay that the backend works.
SKIPPED = "skipped"


class SinkConfigError(ValueError):
    """A sink setting that cannot be used. `key` is the key within the sink's table
    ("url", "filter.events"); the loader prefixes the sink ("sink[2] (ops).url: ...")."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Filter:
    """Which records a sink takes ([sink.filter] in the TOML). Applied when the record
    is stored: a record a sink does not take never enters its outbox."""

    devices: tuple[str, ...] = ()  # device names or numeric ids; empty: every device
    events: tuple[str, ...] | None = None  # event names (wire.event_name); None: all
    positions: bool = True  # position records

    def takes_device(self, device_id: int, name: str | None) -> bool:
        return not self.devices or str(device_id) in self.devices or name in self.devices

    def takes_event(self, event_type: int) -> bool:
        return self.events is None or wire.event_name(event_type) in self.events


@dataclass(frozen=True)
class SinkConfig:
    """Keys every sink has. A kind's config subclasses this, adding its own keys (with
    defaults, or without for required keys) and checking them in `check()`."""

    name: str  # unique; names the sink in the outbox, the CLI, logs and metrics
    type: str  # "mqtt", "webhook", "traccar"
    enabled: bool = True
    filter: Filter = field(default_factory=Filter)
    concurrency: int = 8  # devices delivered at once
    batch: int = 200  # outbox rows read per round
    backoff_min_s: float = 1.0  # first retry delay after a failure, doubled per failure
    backoff_max_s: float = 300.0  # cap of that delay
    # A sink failing this long without one success is disabled (logged, shown by
    # `vantrack sinks status`), its outbox kept; 0: never disabled.
    retry_for_s: float = 86400.0
    timeout_s: float = 10.0  # one delivery attempt

    def check(self) -> None:
        """Raise SinkConfigError naming the key for a value that cannot work. Subclasses
        call super().check() and add their own."""
        if self.concurrency < 1:
            raise SinkConfigError("concurrency", "must be >= 1")
        if not 1 <= self.batch <= 10000:
            raise SinkConfigError("batch", "must be in 1..10000")
        if not 0 < self.backoff_min_s <= self.backoff_max_s:
            raise SinkConfigError("backoff_min_s", "must be > 0 and <= backoff_max_s")
        if self.retry_for_s < 0:
            raise SinkConfigError("retry_for_s", "must be >= 0 (0: never disable)")
        if self.timeout_s <= 0:
            raise SinkConfigError("timeout_s", "must be > 0")
        for key in ("backoff_min_s", "backoff_max_s", "retry_for_s", "timeout_s"):
            if not math.isfinite(getattr(self, key)):
                raise SinkConfigError(key, "must be a finite number of seconds")
        if self.filter.events is not None:
            known = {wire.event_name(t) for t in wire.EventType}
            for name in self.filter.events:
                if name not in known:
                    names = ", ".join(sorted(known))
                    raise SinkConfigError(
                        "filter.events", f"unknown event {name!r} (known: {names})"
                    )


def jsonable(v: Any) -> Any:
    """A decoded CBOR value as JSON-ready data: bytes as hex, map keys as text, anything
    else JSON has no type for (a CBOR tag...) as its repr."""
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    return repr(v)


def iso_ms(ms: int) -> str:
    """Unix ms as RFC 3339 UTC with milliseconds: 2026-11-26T10:51:05.123Z."""
    t = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@dataclass(frozen=True)
class Record:
    """One stored record as relayed: a position, or an event with its fix."""

    device_id: int
    # The device's name (letters, digits, . _ -), or its id in decimal if it is no longer
    # registered: safe in MQTT topics and URLs.
    device: str
    seq: int  # the van's record number
    time_ms: int  # device (GPS) time, Unix ms UTC
    received_ms: int  # when the gateway stored it
    lat_e6: int | None
    lon_e6: int | None
    speed_dms: int | None = None  # decimetres per second
    course_deg: int | None = None
    hdop_x10: int | None = None
    sats: int | None = None
    event: int | None = None  # wire.EventType; None: a position
    fence: int | str | None = None  # fence number in the route version (or a zone id)
    stop: str | None = None  # that fence's id, resolved through its route version
    extra: dict[int, Any] = field(default_factory=dict)  # type-specific keys, decoded
    # The newest device time this sink has been given for this device (so far): what a
    # retained "current state" message should show. Backlog records are not latest.
    latest: bool = False

    @property
    def key(self) -> str:
        """The idempotency key, the same on every delivery of this record."""
        return f"{self.device_id}-{self.seq}"

    @property
    def is_position(self) -> bool:
        return self.event is None

    @property
    def event_name(self) -> str | None:
        return None if self.event is None else wire.event_name(self.event)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready data, the body every sink builds on (docs/sinks.md)."""
        out: dict[str, Any] = {
            "key": self.key,
            "device": self.device,
            "device_id": self.device_id,
            "seq": self.seq,
            "kind": "position" if self.event is None else "event",
            "time": iso_ms(self.time_ms),
            "received": iso_ms(self.received_ms),
            "lat": None if self.lat_e6 is None else self.lat_e6 / 1e6,
            "lon": None if self.lon_e6 is None else self.lon_e6 / 1e6,
        }
        if self.speed_dms is not None:
            out["speed_kmh"] = round(self.speed_dms * 0.36, 2)
        if self.course_deg is not None:
            out["course"] = self.course_deg
        if self.hdop_x10 is not None:
            out["hdop"] = self.hdop_x10 / 10
        if self.sats is not None:
            out["sats"] = self.sats
        if self.event is None:
            return out
        out["event"] = self.event_name
        out["fence"] = self.fence
        out["stop"] = self.stop
        if EXTRA_ROUTE in self.extra:
            out["route_version"] = jsonable(self.extra[EXTRA_ROUTE])
        if self.event == wire.EventType.STATUS:
            for k, name in wire.STATUS_NAMES.items():
                if k in self.extra:
                    out[name] = jsonable(self.extra[k])
            cause = self.extra.get(wire.StatusKey.CAUSE)
            if isinstance(cause, int):
                out["cause_name"] = wire.cause_name(cause)
        else:
            value_name = wire.VALUE_NAMES.get(self.event)  # type: ignore[call-overload]
            if value_name is not None and EXTRA_VALUE in self.extra:
                out[value_name] = jsonable(self.extra[EXTRA_VALUE])
        return out


class Sink(abc.ABC):
    """One backend. Created once per gateway run with its config and the fleet name."""

    config_class: ClassVar[type[SinkConfig]] = SinkConfig

    def __init__(self, cfg: SinkConfig, fleet: str) -> None:
        self.cfg = cfg
        self.fleet = fleet

    async def start(self) -> None:
        """Called once before the first `send()`. Must not fail when the backend is
        down: connect lazily in `send()` (the outbox holds records meanwhile)."""
        return None

    @abc.abstractmethod
    async def send(self, record: Record) -> str | None:
        """Deliver one record; return only once the backend has it (None), or return
        SKIPPED for a record this backend has no use for. Raise SinkError (never anything
        else for a backend's failure) when it did not. Bounded by `cfg.timeout_s`.
        Called concurrently for different devices, one record at a time per device."""

    async def close(self) -> None:
        """Release connections; called once at shutdown, after the last `send()`."""
        return None

    def target(self) -> str:
        """Where it delivers, for logs and `sinks status`, without secrets."""
        return self.cfg.type


def fields_of(cls: type[SinkConfig]) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}
