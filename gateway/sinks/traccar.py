"""The Traccar sink: each stored record with a position, as one OsmAnd protocol request.

Traccar (traccar.org) takes OsmAnd reports on its port 5055: HTTP requests whose form
parameters (`id`, `lat`, `lon`, `timestamp`, `speed`, ...) its OsmAndProtocolDecoder
reads; every parameter it does not know becomes a position attribute. So a vantrack
event becomes a Traccar position with `event`, `stop`, `key`... attributes (docs/traccar.md).

What Traccar's decoder does with what we send (src/main/java/org/traccar/protocol/
OsmAndProtocolDecoder.java, v6.x; tests/osmand_server.py ports it):

- `timestamp`: a whole number below 2^31-1 is seconds, above it milliseconds. We send
  Unix ms, exact and unambiguous for any time after 1970-01-25.
- `speed` is knots (unless the Traccar admin set `osmand.speed`); ours is dm/s.
- it answers 400 when `id` is not a registered device, and closes the connection without
  an answer when a value cannot be parsed. It answers 200 as soon as it has decoded the
  request (Traccar >= 6.8 by default), or only once the position is stored (5.7 to 6.7 by
  default; >= 6.8 with `server.delayAcknowledgement`): a 200 is as durable as Traccar's
  settings make it (docs/traccar.md).

It does not send records without a position (Traccar would file them at the van's last
known place), altitude (our records carry none; Traccar then shows 0), nor use Traccar's
JSON variant (Traccar >= 6.7 only, and it requires an altitude).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from dataclasses import dataclass

import aiohttp
import yarl

from .. import wire
from ..log import emit
from .base import (
    EXTRA_ROUTE,
    EXTRA_VALUE,
    SKIPPED,
    Record,
    Sink,
    SinkConfig,
    SinkConfigError,
    SinkError,
    iso_ms,
)

log = logging.getLogger("vantrack.gateway.sinks.traccar")

KNOTS_PER_DMS = 0.1 * 3600 / 1852  # dm/s -> m/s -> nautical miles per hour
# Traccar reads a `timestamp` below Integer.MAX_VALUE as seconds, otherwise as ms.
JAVA_INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class TraccarConfig(SinkConfig):
    """`type = "traccar"`: a Traccar server's OsmAnd port."""

    url: str = "http://127.0.0.1:5055"
    # Which of our identifiers is the Traccar device's "identifier" (uniqueId): "name"
    # (the van's vantrack name) or "id" (its numeric device id, in decimal).
    device_id: str = "name"
    # "POST": parameters as an application/x-www-form-urlencoded body (Traccar reads the
    # body when the URL has no query); "GET": parameters in the URL's query.
    method: str = "POST"

    def check(self) -> None:
        super().check()
        try:
            u = urllib.parse.urlsplit(self.url)
        except ValueError as e:
            raise SinkConfigError("url", f"{self.url!r}: {e}") from None
        if u.scheme not in ("http", "https") or not u.hostname:
            raise SinkConfigError("url", f"must be http:// or https:// with a host: {self.url!r}")
        try:
            port = u.port  # raises ValueError for a port out of range
        except ValueError:
            raise SinkConfigError("url", f"bad port in {self.url!r}") from None
        if port == 0:
            raise SinkConfigError("url", f"bad port in {self.url!r}")
        if u.query or u.fragment:
            # Traccar reads the POST body only when the URL has no query parameters.
            raise SinkConfigError("url", "must have no query string or fragment")
        if self.device_id not in ("name", "id"):
            raise SinkConfigError("device_id", f"must be 'name' or 'id', not {self.device_id!r}")
        if self.method not in ("POST", "GET"):
            raise SinkConfigError("method", f"must be 'POST' or 'GET', not {self.method!r}")


def _e6(v: int) -> str:
    """Micro-degrees as exact decimal degrees: -33123456 -> "-33.123456"."""
    sign = "-" if v < 0 else ""
    whole, frac = divmod(abs(v), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"


def _attr(v: object) -> str:
    """An attribute value as Traccar types it back: a number, true/false, or text."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def osmand_params(record: Record, device_id: str = "name") -> list[tuple[str, str]]:
    """The OsmAnd parameters for a record with a position, `id` first (Traccar resolves
    the device as it meets `id`). `device_id`: "name" or "id" (TraccarConfig)."""
    assert record.lat_e6 is not None and record.lon_e6 is not None
    t = record.time_ms
    p = [
        ("id", str(record.device_id) if device_id == "id" else record.device),
        # ISO only for a time Traccar would read as seconds (not a real GPS time).
        ("timestamp", str(t) if t > JAVA_INT_MAX else iso_ms(t)),
        ("lat", _e6(record.lat_e6)),
        ("lon", _e6(record.lon_e6)),
        ("valid", "true"),
    ]
    if record.speed_dms is not None:
        p.append(("speed", repr(round(record.speed_dms * KNOTS_PER_DMS, 4))))
    if record.course_deg is not None:
        p.append(("bearing", str(record.course_deg)))
    if record.hdop_x10 is not None:
        whole, tenth = divmod(record.hdop_x10, 10)
        p.append(("hdop", f"{whole}.{tenth}"))
    if record.sats is not None:
        p.append(("sat", str(record.sats)))  # Traccar's own satellites attribute
    p.append(("seq", str(record.seq)))
    p.append(("key", record.key))
    if record.event is None:
        return p
    p.append(("event", wire.event_name(record.event)))
    if record.stop is not None:
        p.append(("stop", record.stop))
    if record.fence is not None:
        p.append(("fence", str(record.fence)))
    if EXTRA_ROUTE in record.extra:
        p.append(("route_version", _attr(record.extra[EXTRA_ROUTE])))
    if record.event == wire.EventType.STATUS:
        for k, name in wire.STATUS_NAMES.items():
            value = record.extra.get(k)
            if value is None:
                continue
            if k == wire.StatusKey.CAUSE and isinstance(value, int):
                value = wire.cause_name(value)  # "boot" reads better than 1 in Traccar
            p.append((name, _attr(value)))
    else:
        try:
            value_name = wire.VALUE_NAMES.get(wire.EventType(record.event))
        except ValueError:  # an event type newer than this gateway: no value name
            value_name = None
        if value_name is not None and EXTRA_VALUE in record.extra:
            p.append((value_name, _attr(record.extra[EXTRA_VALUE])))
    return p


class TraccarSink(Sink):
    """Sends each record with a position to Traccar's OsmAnd port; a record without one
    (lat/lon None, such as a status written before the first fix) is skipped: `send()`
    returns without a request, and the record leaves the outbox."""

    config_class = TraccarConfig

    def __init__(self, cfg: SinkConfig, fleet: str) -> None:
        if not isinstance(cfg, TraccarConfig):
            raise TypeError(f"TraccarSink needs a TraccarConfig, got {type(cfg).__name__}")
        super().__init__(cfg, fleet)
        self.tcfg = cfg
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # No connection yet: aiohttp connects on the first request.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.tcfg.timeout_s),
                headers={"User-Agent": "vantrack-gateway"},
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def target(self) -> str:
        u = urllib.parse.urlsplit(self.tcfg.url)
        netloc = u.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if u.port is not None:
            netloc += f":{u.port}"
        return urllib.parse.urlunsplit((u.scheme, netloc, u.path, "", ""))

    async def send(self, record: Record) -> str | None:
        if record.lat_e6 is None or record.lon_e6 is None:
            return SKIPPED  # Traccar would show it at the last known place
        if self._session is None:
            await self.start()
        assert self._session is not None
        body = urllib.parse.urlencode(osmand_params(record, self.tcfg.device_id))
        try:
            async with asyncio.timeout(self.tcfg.timeout_s):
                status, text = await self._request(self._session, body)
        except TimeoutError:
            raise SinkError(f"no answer from Traccar within {self.tcfg.timeout_s:g} s") from None
        except aiohttp.ClientConnectorError as e:
            # os_error is not set on every subclass (certificate errors).
            os_error = getattr(e, "os_error", None)
            reason = getattr(os_error, "strerror", None) or str(os_error or e)
            raise SinkError(f"cannot connect to Traccar at {self.target()}: {reason}") from None
        except aiohttp.ServerDisconnectedError:
            raise SinkError(
                "Traccar closed the connection without an answer (it does so for a "
                "request it cannot decode)"
            ) from None
        except aiohttp.ClientError as e:
            raise SinkError(f"HTTP error talking to Traccar: {type(e).__name__}: {e}") from None
        except OSError as e:
            raise SinkError(f"network error talking to Traccar: {e}") from None
        if 200 <= status < 300:
            if text.strip():
                # Traccar hands a command queued for the device over in the answer (and
                # removes it from its queue). Vans cannot run them: log what was lost.
                emit(
                    log, "traccar_command_ignored", logging.WARNING,
                    sink=self.cfg.name, device=record.device, command=text[:200],
                )  # fmt: skip
            return None
        if status == 400:
            ident = "numeric id" if self.tcfg.device_id == "id" else "name"
            sent = str(record.device_id) if self.tcfg.device_id == "id" else record.device
            raise SinkError(
                f"Traccar answered 400: device {sent!r} is probably not registered in "
                f"Traccar with that identifier (device_id = {self.tcfg.device_id!r}: "
                f"the van's {ident})",
                device_only=True,
            )
        raise SinkError(f"Traccar answered HTTP {status}")

    async def _request(self, session: aiohttp.ClientSession, body: str) -> tuple[int, str]:
        url = self.tcfg.url
        for attempt in (1, 2):
            try:
                if self.tcfg.method == "GET":
                    sep = "" if urllib.parse.urlsplit(url).path else "/"
                    resp_cm = session.get(yarl.URL(f"{url}{sep}?{body}", encoded=True))
                else:
                    resp_cm = session.post(
                        url,
                        data=body.encode("ascii"),
                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                    )
                async with resp_cm as resp:
                    return resp.status, await resp.text(errors="replace")
            except aiohttp.ServerDisconnectedError:
                # A kept-alive connection Traccar closed while idle: retry once on a
                # fresh one. A second close is Traccar refusing the request.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")
