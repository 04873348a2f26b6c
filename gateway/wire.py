"""The gateway's side of the report wire format (gateway/wire.cddl, docs/wire-format.md).

`decode()` turns a CoAP payload into a `Report` of absolute, typed records: cbor2 decodes,
zcbor validates against the CDDL (the contract), then the deltas are resolved. Every
failure is a `WireError` with a short machine-readable reason and a one-line detail for
the 4.00 diagnostic. `verify()` checks the HMAC with the device's key. `encode()` is the
host's reference encoder (load generator, interop tests, benchmarks); the van's own
encoder is firmware/report.py, tested against this decoder.
It does not know about CoAP, storage or devices.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cache
from pathlib import Path
from typing import Any

import cbor2

VERSION = 1
CDDL_PATH = Path(__file__).with_name("wire.cddl")
GPS_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
MAC_LEN = 8
# Key 5 (0x05) followed by a byte string of 8 (0x48) closes every report.
MAC_TRAILER = bytes([0x05, 0x40 | MAC_LEN])
RECORD_TIME_UNIT_S = 0.1  # dt is in deciseconds


class Key(IntEnum):
    VERSION = 0
    DEVICE = 1
    SEQ = 2
    T0 = 3
    RECORDS = 4
    MAC = 5


class EventKey(IntEnum):
    TYPE = 0
    DT = 1
    LAT = 2
    LON = 3
    FENCE = 4
    HDOP = 5
    SATS = 6


class EventType(IntEnum):
    """Event type numbers (docs/wire-format.md). Decided on the device."""

    APPROACHING = 1
    ARRIVED = 2
    DEPARTED = 3
    ROUTE_STARTED = 4
    ROUTE_FINISHED = 5
    OUT_OF_SEQUENCE = 6
    ZONE_ENTER = 7
    ZONE_EXIT = 8
    STATUS = 16


class StatusKey(IntEnum):
    """Type-specific keys of a status event (type 16, docs/wire-format.md)."""

    DROPPED = 7  # positions thinned out of the van's full queue since its previous status
    QUEUED = 9  # records waiting on the van, unacknowledged, not counting this one
    CAUSE = 10  # StatusCause


class StatusCause(IntEnum):
    """Why the van wrote a status record (status key 10)."""

    BOOT = 1
    LINK_BACK = 2  # the gateway answers again after an outage
    QUEUE_THINNED = 3  # the flash queue was full: positions were dropped
    BACKLOG_DELIVERED = 4  # the queue is empty again after a backlog


def cause_name(code: int) -> str:
    try:
        return StatusCause(code).name.lower()
    except ValueError:
        return f"cause_{code}"


def event_name(code: int) -> str:
    try:
        return EventType(code).name.lower()
    except ValueError:
        return f"event_{code}"


# The type-specific value (extra key 7) by name, per event type (docs/geofencing.md).
VALUE_NAMES = {
    EventType.ARRIVED: "inside_s",
    EventType.DEPARTED: "dwell_s",
    EventType.ROUTE_STARTED: "outside_s",
    EventType.ROUTE_FINISHED: "inside_s",
    EventType.OUT_OF_SEQUENCE: "expected",
    EventType.ZONE_ENTER: "inside_s",
    EventType.ZONE_EXIT: "dwell_s",
}


# Status records' keys by name (event type 16, docs/wire-format.md).
STATUS_NAMES = {
    StatusKey.DROPPED: "dropped",
    StatusKey.QUEUED: "queued",
    StatusKey.CAUSE: "cause",
}


class WireError(ValueError):
    """A payload that is not a valid report. `reason` is a short code for counters/logs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[WireError], tuple[str, str]]:
        # Decoding runs in worker processes: the error must cross back intact.
        return (WireError, (self.reason, self.detail))


@dataclass(frozen=True)
class Position:
    seq: int
    time: dt.datetime
    lat_e6: int
    lon_e6: int
    speed_dms: int | None  # decimetres per second
    course_deg: int | None
    hdop_x10: int | None = None
    sats: int | None = None

    @property
    def lat(self) -> float:
        return self.lat_e6 / 1e6

    @property
    def lon(self) -> float:
        return self.lon_e6 / 1e6

    @property
    def speed_mps(self) -> float | None:
        return None if self.speed_dms is None else self.speed_dms / 10


@dataclass(frozen=True)
class Event:
    seq: int
    time: dt.datetime
    type: int
    lat_e6: int | None = None
    lon_e6: int | None = None
    fence: int | str | None = None
    hdop_x10: int | None = None
    sats: int | None = None
    extra: dict[int, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return event_name(self.type)


Record = Position | Event


@dataclass(frozen=True)
class Report:
    version: int
    device_id: int
    seq: int
    t0: int
    records: list[Record]
    mac: bytes
    signed: bytes  # the payload bytes the MAC covers

    @property
    def last_seq(self) -> int:
        return self.seq + len(self.records) - 1


@cache
def _validator() -> Any:
    from zcbor.zcbor.zcbor import DataTranslator  # heavy import, once

    return DataTranslator.from_cddl(CDDL_PATH.read_text(), 4096).my_types["report"]


def warm_up() -> None:
    """Compile the CDDL now (in a decode worker) rather than on the first report."""
    _validator()


def validate(payload: bytes) -> None:
    """Raise WireError(reason='schema') unless the payload matches the CDDL `report`."""
    from zcbor.zcbor.zcbor import CddlValidationError

    try:
        _validator().validate_str(payload)
    except CddlValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "does not match"
        raise WireError("schema", f"not a report per wire.cddl ({first[:80]})") from None


def gps_time(seconds: float) -> dt.datetime:
    return GPS_EPOCH + dt.timedelta(seconds=seconds)


def decode(payload: bytes, *, max_bytes: int | None = None) -> Report:
    """Decode and validate one report. Raises WireError with a short reason."""
    if max_bytes is not None and len(payload) > max_bytes:
        raise WireError("too_large", f"{len(payload)} bytes > {max_bytes}")
    if not payload:
        raise WireError("empty", "no payload")
    try:
        obj = cbor2.loads(payload)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as e:
        raise WireError("not_cbor", str(e)[:100] or type(e).__name__) from None
    if not isinstance(obj, dict):
        raise WireError("schema", f"a report is a CBOR map, got {type(obj).__name__}")
    version = obj.get(Key.VERSION)
    if version != VERSION:
        raise WireError("version", f"format version {version!r} not supported (want {VERSION})")
    validate(payload)
    # The MAC is the last map entry; it covers every byte before it (docs/wire-format.md).
    if payload[-MAC_LEN - 2 : -MAC_LEN] != MAC_TRAILER:
        raise WireError("mac_position", "the MAC (key 5) must be the last entry")
    t0 = obj[Key.T0]
    seq = obj[Key.SEQ]
    return Report(
        version=version,
        device_id=obj[Key.DEVICE],
        seq=seq,
        t0=t0,
        records=list(_records(obj[Key.RECORDS], seq, t0)),
        mac=obj[Key.MAC],
        signed=payload[: -MAC_LEN - 2],
    )


def _records(raw: Sequence[Any], seq: int, t0: int) -> Iterable[Record]:
    ds = 0  # deciseconds since t0
    lat = lon = 0
    for i, rec in enumerate(raw):
        if isinstance(rec, list):
            ds += rec[0]
            lat += rec[1]
            lon += rec[2]
            if not (-90_000_000 <= lat <= 90_000_000 and -180_000_000 <= lon <= 180_000_000):
                raise WireError("position", f"record {i}: position {lat},{lon} out of range")
            hdop, sats = (rec[5], rec[6]) if len(rec) == 7 else (None, None)
            yield Position(seq + i, gps_time(t0 + ds / 10), lat, lon, rec[3], rec[4], hdop, sats)
        else:
            ds += rec[EventKey.DT]
            known = {k.value for k in EventKey}
            yield Event(
                seq=seq + i,
                time=gps_time(t0 + ds / 10),
                type=rec[EventKey.TYPE],
                lat_e6=rec.get(EventKey.LAT),
                lon_e6=rec.get(EventKey.LON),
                fence=rec.get(EventKey.FENCE),
                hdop_x10=rec.get(EventKey.HDOP),
                sats=rec.get(EventKey.SATS),
                extra={k: v for k, v in rec.items() if k not in known},
            )


def mac(key: bytes, signed: bytes) -> bytes:
    """HMAC-SHA256 truncated to 64 bits (as COSE's HMAC 256/64)."""
    return hmac.new(key, signed, hashlib.sha256).digest()[:MAC_LEN]


def verify(report: Report, key: bytes) -> bool:
    return hmac.compare_digest(mac(key, report.signed), report.mac)


# ---- reference encoder (host side) -------------------------------------------------


def encode(
    device_id: int,
    seq: int,
    t0: int,
    records: Sequence[Record],
    key: bytes,
) -> bytes:
    """Encode a report exactly as the firmware does (deterministic CBOR, MAC last).

    Record times must not go backwards and must be at or after t0; positions are
    delta-encoded against the previous position, the first one absolute, and only the
    first position carries hdop/sats.
    """
    out: list[Any] = []
    prev_ds = 0
    lat = lon = 0
    first_position = True
    for rec in records:
        ds = round((rec.time - gps_time(t0)).total_seconds() * 10)
        if ds < prev_ds:
            raise ValueError("records must be in time order, at or after t0")
        dt_ds, prev_ds = ds - prev_ds, ds
        if isinstance(rec, Position):
            item = [dt_ds, rec.lat_e6 - lat, rec.lon_e6 - lon, rec.speed_dms, rec.course_deg]
            if first_position and rec.hdop_x10 is not None and rec.sats is not None:
                item += [rec.hdop_x10, rec.sats]
            first_position = False
            lat, lon = rec.lat_e6, rec.lon_e6
            out.append(item)
        else:
            ev: dict[int, Any] = {EventKey.TYPE: rec.type, EventKey.DT: dt_ds}
            for k, v in (
                (EventKey.LAT, rec.lat_e6),
                (EventKey.LON, rec.lon_e6),
                (EventKey.FENCE, rec.fence),
                (EventKey.HDOP, rec.hdop_x10),
                (EventKey.SATS, rec.sats),
            ):
                if v is not None:
                    ev[k] = v
            ev.update(sorted(rec.extra.items()))
            out.append({int(k): v for k, v in ev.items()})
    body = {Key.VERSION: VERSION, Key.DEVICE: device_id, Key.SEQ: seq, Key.T0: t0}
    body[Key.RECORDS] = out  # type: ignore[assignment]
    head = cbor2.dumps({int(k): v for k, v in body.items()}, canonical=True)
    # Reopen the map with one more entry and append the MAC as its last key.
    signed = _grow_map(head)
    return signed + MAC_TRAILER + mac(key, signed)


def _grow_map(encoded_map: bytes) -> bytes:
    """The same map with its entry count raised by one (5 -> 6 entries: 0xa5 -> 0xa6)."""
    if encoded_map[0] != 0xA5:
        raise ValueError("expected a 5-entry map")
    return bytes([0xA6]) + encoded_map[1:]


def diagnostic(payload: bytes) -> str:
    """CBOR diagnostic notation (RFC 8949 section 8) of any CBOR item."""
    import cbor_diag

    return str(cbor_diag.cbor2diag(payload))
