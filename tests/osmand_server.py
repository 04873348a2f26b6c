"""A stand-in for Traccar's OsmAnd port (5055) that decodes requests as Traccar does.

The decoding is a port of Traccar's OsmAndProtocolDecoder.decodeQuery
(traccar/traccar, src/main/java/org/traccar/protocol/OsmAndProtocolDecoder.java, 6.x) and
of what it relies on: Netty's QueryStringDecoder (parameters from the URI; from the body,
read as US-ASCII, only when the URI has none; `&` and `;` separate, `+` is a space),
Java's Double.parseDouble / Long.parseLong, BaseProtocolDecoder.convertSpeed
(`osmand.speed`, knots by default) and the answers: 200 for a decoded position of a
known device, 400 when `id`/`deviceid` names no registered device (or is missing), the
connection closed without an answer when a value cannot be parsed.

Not ported: Traccar's JSON variant (Content-Type application/json, Traccar >= 6.7; such
a request is refused with 415 here), commands queued for a device (always answered with
an empty 200), `database.registerUnknown`, and what happens after decoding (filters,
storage): a decoded position is simply appended to `OsmAndServer.positions`.

    with OsmAndServer(devices={"van-7"}) as traccar:
        ... send to traccar.url ...
        traccar.positions[0].attributes["key"]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

JAVA_INT_MAX = 2**31 - 1
JAVA_LONG_MIN, JAVA_LONG_MAX = -(2**63), 2**63 - 1
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# UnitsConverter's ratios, as Traccar has them (knots per unit).
_KNOTS_PER = {"kmh": 0.539957, "mps": 1.94384, "mph": 0.868976}


class DecodeError(ValueError):
    """What makes Traccar's decoder throw: Traccar logs it and closes the connection."""


# Double.valueOf's grammar (Java SE docs): decimal or hexadecimal, optional f/d suffix.
_JAVA_DOUBLE = re.compile(
    r"[+-]?(?:NaN|Infinity"
    r"|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[fFdD]?"
    r"|0[xX](?:[0-9a-fA-F]+\.?|[0-9a-fA-F]*\.[0-9a-fA-F]+)[pP][+-]?[0-9]+[fFdD]?)",
    re.ASCII,
)


def java_parse_double(s: str) -> float:
    """Double.parseDouble: ValueError where Java throws NumberFormatException. Unlike
    Python's float(): accepts "12d", "0x1p3", "Infinity"; refuses "inf", "1_0"."""
    t = s.strip("".join(chr(c) for c in range(0x21)))  # String.trim(): chars <= U+0020
    if not _JAVA_DOUBLE.fullmatch(t):
        raise ValueError(f"not a Java double: {s!r}")
    body = t.lstrip("+-")
    sign = -1.0 if t.startswith("-") else 1.0
    if body == "NaN":
        return float("nan")
    if body == "Infinity":
        return sign * float("inf")
    if body[-1] in "fFdD":
        body = body[:-1]
    if body[:2] in ("0x", "0X"):
        try:
            return sign * float.fromhex(body)
        except OverflowError:
            return sign * float("inf")
    return sign * float(body)


def java_parse_long(s: str, lo: int = JAVA_LONG_MIN, hi: int = JAVA_LONG_MAX) -> int:
    """Long.parseLong (Integer.parseInt with the int range): no spaces, no underscores."""
    if not re.fullmatch(r"[+-]?[0-9]+", s, re.ASCII):
        raise ValueError(f"not a Java integer: {s!r}")
    v = int(s)
    if not lo <= v <= hi:
        raise ValueError(f"out of range: {s!r}")
    return v


def java_parse_int(s: str) -> int:
    return java_parse_long(s, -(2**31), JAVA_INT_MAX)


def _decode_component(s: str) -> str:
    """Netty's QueryStringDecoder.decodeComponent: %XX as UTF-8, '+' as a space."""
    if "%" not in s and "+" not in s:
        return s
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c != "%":
            out.append(" " if c == "+" else c)
            i += 1
            continue
        buf = bytearray()
        while i < len(s) and s[i] == "%":
            if i + 3 > len(s):
                raise DecodeError(f"unterminated escape sequence at index {i} of: {s}")
            hexpair = s[i + 1 : i + 3]
            if not re.fullmatch(r"[0-9a-fA-F]{2}", hexpair):
                raise DecodeError(f"invalid hex byte {hexpair!r} at index {i} of: {s}")
            buf.append(int(hexpair, 16))
            i += 3
        out.append(buf.decode("utf-8", errors="replace"))
    return "".join(out)


def netty_parameters(s: str, has_path: bool = True) -> dict[str, list[str]]:
    """QueryStringDecoder(s, hasPath).parameters(), in the order Netty returns them
    (a LinkedHashMap: a name's values grouped at its first appearance)."""
    start = 0
    if has_path:
        m = re.search(r"[?#]", s)
        start = m.start() if m else len(s)
    params: dict[str, list[str]] = {}
    if start >= len(s):
        return params
    if s[start] == "?":
        start += 1

    def add(name_start: int, value_start: int, value_end: int) -> None:
        if name_start >= value_end:
            return
        if value_start <= name_start:
            value_start = value_end + 1
        name = _decode_component(s[name_start : value_start - 1])
        value = _decode_component(s[value_start:value_end])
        params.setdefault(name, []).append(value)

    name_start, value_start = start, -1
    i = start
    while i < len(s):
        c = s[i]
        if c == "=":
            if name_start == i:
                name_start = i + 1
            elif value_start < name_start:
                value_start = i + 1
        elif c in "&;":
            add(name_start, value_start, i)
            name_start = i + 1
        elif c == "#":
            break
        i += 1
    add(name_start, value_start, i)
    return params


def _parse_iso_zoned(value: str) -> dt.datetime:
    """DateTimeFormatter.ISO_ZONED_DATE_TIME (DateUtil.parseDate): an offset is required;
    a trailing [Region/Zone] is accepted (and, here, ignored in favour of the offset)."""
    v = re.sub(r"\[[^\]]*\]$", "", value)
    try:
        t = dt.datetime.fromisoformat(v)
    except ValueError as e:
        raise DecodeError(str(e)) from None
    if t.tzinfo is None:
        raise DecodeError(f"no offset in {value!r}")
    return t


@dataclass
class DecodedPosition:
    """The fields Traccar's Position gets from one OsmAnd request (defaults as Traccar's)."""

    device: str  # the unique id ("identifier") of the device that `id`/`deviceid` named
    fix_time: dt.datetime  # UTC, millisecond precision (a java.util.Date)
    valid: bool = True
    latitude: float = 0.0
    longitude: float = 0.0
    altitude: float = 0.0
    speed: float = 0.0  # knots
    course: float = 0.0
    accuracy: float = 0.0
    outdated: bool = False  # no lat/lon: Traccar fills in the last known location
    attributes: dict[str, Any] = field(default_factory=dict)
    cells: list[tuple[int, ...]] = field(default_factory=list)
    wifis: list[tuple[str, int]] = field(default_factory=list)
    params: dict[str, list[str]] = field(default_factory=dict)  # as decoded, for tests
    method: str = ""


def decode_query(
    uri: str,
    body: bytes,
    devices: Iterable[str],
    *,
    speed_unit: str = "kn",
    local_tz: dt.tzinfo = dt.UTC,
    now: dt.datetime | None = None,
) -> tuple[int, DecodedPosition | None]:
    """OsmAndProtocolDecoder.decodeQuery: (HTTP status, position or None). Raises
    DecodeError where Traccar's decoder throws (then Traccar closes the connection)."""
    known = set(devices)
    params = netty_parameters(uri)
    if not params:
        params = netty_parameters(body.decode("ascii", errors="replace"), has_path=False)
    pos = DecodedPosition(device="", fix_time=EPOCH, params=params)
    fix_time: dt.datetime | None = None
    latitude: float | None = None
    longitude: float | None = None
    attrs = pos.attributes
    try:
        for key, values in params.items():
            for value in values:
                match key:
                    case "id" | "deviceid":
                        if value not in known:
                            return 400, None
                        pos.device = value
                    case "notificationToken":
                        pass  # stored for push notifications, not on the position
                    case "valid":
                        pos.valid = value.lower() == "true" or value == "1"
                    case "timestamp":
                        try:
                            ms = java_parse_long(value)
                            if ms < JAVA_INT_MAX:
                                ms *= 1000
                            fix_time = EPOCH + dt.timedelta(milliseconds=ms)
                        except ValueError:
                            if "T" in value:
                                t = _parse_iso_zoned(value).astimezone(dt.UTC)
                                fix_time = t.replace(microsecond=t.microsecond // 1000 * 1000)
                            else:
                                try:
                                    t = dt.datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
                                except ValueError as e:
                                    raise DecodeError(str(e)) from None
                                fix_time = t.replace(tzinfo=local_tz).astimezone(dt.UTC)
                    case "lat":
                        latitude = java_parse_double(value)
                    case "lon":
                        longitude = java_parse_double(value)
                    case "location":
                        parts = _java_split(value, ",")
                        latitude = java_parse_double(parts[0])
                        longitude = java_parse_double(parts[1])
                    case "cell":
                        cell = _java_split(value, ",")
                        n = 5 if len(cell) > 4 else 4
                        pos.cells.append(tuple(java_parse_int(cell[i]) for i in range(n)))
                    case "wifi":
                        wifi = _java_split(value, ",")
                        pos.wifis.append((wifi[0].replace("-", ":"), java_parse_int(wifi[1])))
                    case "speed":
                        v = java_parse_double(value)
                        pos.speed = v * _KNOTS_PER[speed_unit] if speed_unit in _KNOTS_PER else v
                    case "bearing" | "heading":
                        pos.course = java_parse_double(value)
                    case "altitude":
                        pos.altitude = java_parse_double(value)
                    case "accuracy":
                        pos.accuracy = java_parse_double(value)
                    case "hdop":
                        attrs["hdop"] = java_parse_double(value)
                    case "batt":
                        attrs["batteryLevel"] = java_parse_double(value)
                    case "driverUniqueId":
                        attrs["driverUniqueId"] = value
                    case "charge":
                        attrs["charge"] = value.lower() == "true"
                    case _:
                        try:
                            attrs[key] = java_parse_double(value)
                        except ValueError:
                            attrs[key] = {"true": True, "false": False}.get(value, value)
    except (ValueError, IndexError) as e:
        raise DecodeError(f"{type(e).__name__}: {e}") from None

    pos.fix_time = fix_time if fix_time is not None else _now_ms(now)
    if latitude is not None and longitude is not None:
        pos.latitude, pos.longitude = latitude, longitude
    elif pos.device:
        pos.outdated = True  # getLastLocation()
    if not pos.device:
        return 400, None
    return 200, pos


def _java_split(s: str, sep: str) -> list[str]:
    """String.split: trailing empty strings removed."""
    parts = s.split(sep)
    while parts and parts[-1] == "":
        parts.pop()
    return parts or [""]


def _now_ms(now: dt.datetime | None) -> dt.datetime:
    t = now or dt.datetime.now(dt.UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


class OsmAndServer:
    """A real HTTP server on 127.0.0.1 (a free port) in its own thread and event loop.

    `devices`: the registered unique ids ("identifier" in Traccar's UI); `add_device()`
    registers one more. `positions`: what was decoded, in arrival order. `requests`:
    how many HTTP requests arrived. `delay_s`: hold each answer this long, as Traccar
    does while it stores a position (it answers only once processing is done).
    `drop`: close this many connections without an answer before answering again, as a
    Traccar restart or its idle timeout on a kept-alive connection can.
    """

    def __init__(
        self,
        devices: Iterable[str] = (),
        *,
        speed_unit: str = "kn",
        local_tz: dt.tzinfo = dt.UTC,
        delay_s: float = 0.0,
        drop: int = 0,
    ) -> None:
        self.devices: set[str] = set(devices)
        self.speed_unit = speed_unit
        self.local_tz = local_tz
        self.delay_s = delay_s
        self.drop = drop
        self.positions: list[DecodedPosition] = []
        self.requests = 0
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_device(self, unique_id: str) -> None:
        with self._lock:
            self.devices.add(unique_id)

    def start(self) -> OsmAndServer:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="osmand", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), loop).result(10)
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> OsmAndServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[DecodedPosition]:
        deadline = time.monotonic() + timeout
        while len(self.positions) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.positions)

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with self._lock:
            self.requests += 1
            devices = set(self.devices)
            drop, self.drop = self.drop > 0, max(self.drop - 1, 0)
        if drop:
            return self._close(request)
        if request.headers.get("Content-Type", "").startswith("application/json"):
            return web.Response(status=415)  # Traccar's JSON variant: not ported
        try:
            status, pos = decode_query(
                request.raw_path, body, devices,
                speed_unit=self.speed_unit, local_tz=self.local_tz,
            )  # fmt: skip
        except DecodeError:
            # Traccar: the exception reaches MainEventHandler, which closes the channel.
            return self._close(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if pos is not None:
            pos.method = request.method
            with self._lock:
                self.positions.append(pos)
        return web.Response(status=status)

    @staticmethod
    def _close(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response(status=500)  # never written: the connection is gone
