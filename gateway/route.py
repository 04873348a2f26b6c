"""A van's route for the day: GeoJSON in, validated, out as the compact CBOR the van reads.

`load_geojson()` reads a GeoJSON FeatureCollection (RFC 7946, positions [lon, lat]) of
stops, at most one depot and plain zones (docs/routes.md says which properties mean what)
and checks everything the van would otherwise trip over: ids and sequence numbers,
coordinate ranges and order, rings (closed, 3..64 distinct vertices, not crossing
themselves, at most 20 km wide), radii, time windows, counts. It reports every problem
it finds (up to `MAX_ERRORS`), each naming the feature, in one `RouteFileError`.

`Route.encode(version)` writes the route as deterministic CBOR per gateway/route.cddl
(the contract with the firmware); `decode()` reads it back and `validate()` checks a
payload against the CDDL with zcbor. `request_mac()` is the MAC a van puts in its
`GET /rt` query, `etag()` the ETag the gateway serves a route with.

Positions become integer microdegrees, as in reports. A polygon crossing the antimeridian
is written with each vertex's longitude taken relative to the first vertex (the
difference wrapped into [-180, 180)), so its vertices stay contiguous and a longitude
may pass ±180e6; the van compares positions the same way.

It does not store routes, speak CoAP, or decide arrivals (the van does that).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cache
from pathlib import Path
from typing import Any

import cbor2

from . import wire

FORMAT_VERSION = 1
CDDL_PATH = Path(__file__).with_name("route.cddl")
MAX_ERRORS = 20
MAX_STOPS = 500
MAX_ZONES = 64
MAX_VERTICES = 64
MAX_ID_BYTES = 32
MAX_ROUTE_BYTES = 65536  # a sanity limit for the transfer, not a promise about the van
MAX_VERSION = 0xFFFFFFFF
MAC_CONTEXT = b"vantrack-route:"
ETAG_LEN = 8

# Fence sizes, metres. A Point's `radius_m` is the arrived radius; the approaching one
# then keeps its default.
DEFAULT_INNER_M = 60
DEFAULT_OUTER_M = 150
DEFAULT_BUFFER_M = 90
INNER_RANGE_M = (5, 1000)
MAX_OUTER_M = 5000
BUFFER_RANGE_M = (0, 2000)
MAX_POLYGON_WIDTH_M = 20_000
# A feature this far from the middle of the others is a typo, not a delivery.
MAX_SPREAD_M = 500_000
MAX_SERVICE_S = 86_400

E6 = 1_000_000
EARTH_RADIUS_M = 6_371_008.8
_M_PER_E6 = EARTH_RADIUS_M * math.pi / 180 / E6  # metres per microdegree of latitude


class Kind(IntEnum):
    CIRCLE = 0
    POLYGON = 1


class Param(IntEnum):
    """Thresholds the route may set on the van (route.cddl `thresholds`)."""

    HDOP_MAX_X10 = 0
    SATS_MIN = 1
    CONFIRM_S = 2
    HOLD_S = 3
    DEPOT_LEAVE_S = 4


# The van's defaults: a route sends only the thresholds that differ from them.
PARAM_DEFAULTS = {
    Param.HDOP_MAX_X10: 50,
    Param.SATS_MIN: 4,
    Param.CONFIRM_S: 20,
    Param.HOLD_S: 30,
    Param.DEPOT_LEAVE_S: 120,
}


@dataclass(frozen=True)
class ParamSpec:
    name: str  # key in the FeatureCollection's "properties"
    param: Param
    lo: float
    hi: float
    scale: int = 1  # hdop_max is sent as HDOP x 10


PARAMS = (
    ParamSpec("hdop_max", Param.HDOP_MAX_X10, 0.1, 25.5, 10),
    ParamSpec("sats_min", Param.SATS_MIN, 0, 32),
    ParamSpec("confirm_s", Param.CONFIRM_S, 0, 3600),
    ParamSpec("hold_s", Param.HOLD_S, 0, 3600),
    ParamSpec("depot_leave_s", Param.DEPOT_LEAVE_S, 0, 3600),
)
# Top-level properties that are not thresholds but are expected in route files.
INFO_PROPERTIES = {"name", "description", "date", "driver", "vehicle", "notes"}


class RouteFileError(ValueError):
    """A route file that cannot be loaded; `errors` lists every problem found, one line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class RouteFormatError(ValueError):
    """CBOR that is not a route per route.cddl."""


@dataclass(frozen=True)
class Fence:
    """A circle (`coords` = (lat, lon)) or a polygon (`coords` = (lat0, lon0, lat1, ...)),
    microdegrees. Stops also carry their sequence number and optional window/service."""

    id: str
    kind: Kind
    inner_m: int
    outer_m: int
    coords: tuple[int, ...]
    seq: int | None = None
    window_start: int | None = None  # GPS seconds (wire.gps_time)
    window_end: int | None = None
    service_s: int | None = None
    name: str = field(default="", compare=False)  # the file's "name", kept off the wire

    @property
    def vertices(self) -> list[tuple[int, int]]:
        return list(zip(self.coords[0::2], self.coords[1::2], strict=True))

    def item(self) -> list[Any]:
        out: list[Any] = [self.id, int(self.kind), self.inner_m, self.outer_m, list(self.coords)]
        if self.seq is None:
            return out
        tail = [self.seq, self.window_start, self.window_end, self.service_s]
        while tail[-1] is None:  # trailing nils are left off
            tail.pop()
        return out + tail


@dataclass(frozen=True)
class Route:
    params: dict[int, int]
    depot: Fence | None
    stops: tuple[Fence, ...]
    zones: tuple[Fence, ...]

    def encode(self, version: int) -> bytes:
        """The route as deterministic CBOR (route.cddl), carrying `version`."""
        body = [
            FORMAT_VERSION,
            version,
            dict(sorted(self.params.items())),
            None if self.depot is None else self.depot.item(),
            [s.item() for s in self.stops],
            [z.item() for z in self.zones],
        ]
        return cbor2.dumps(body, canonical=True)

    def fences(self) -> Iterator[Fence]:
        if self.depot is not None:
            yield self.depot
        yield from self.stops
        yield from self.zones


def encode_checked(route: Route, version: int) -> bytes:
    """`route.encode(version)`, validated against route.cddl before anything stores it."""
    payload = route.encode(version)
    validate(payload)
    return payload


@dataclass(frozen=True)
class Loaded:
    route: Route
    warnings: list[str]
    text: str  # the file as read: what gets stored beside the route


# ---- the wire side ----------------------------------------------------------------------


def etag(payload: bytes) -> bytes:
    """The ETag a route is served with: the first 8 bytes of its SHA-256."""
    return hashlib.sha256(payload).digest()[:ETAG_LEN]


def request_mac(key: bytes, device_id: int) -> bytes:
    """What a van sends as `m` (hex) in `GET /rt`: HMAC-SHA256/64 of a fixed context and
    its id, with its key. It shows the van holds the key; it is the same on every request."""
    return wire.mac(key, MAC_CONTEXT + str(device_id).encode())


@cache
def _validator() -> Any:
    from zcbor.zcbor.zcbor import DataTranslator  # heavy import, once

    return DataTranslator.from_cddl(CDDL_PATH.read_text(), 4096).my_types["route"]


def validate(payload: bytes) -> None:
    """Raise RouteFormatError unless `payload` is a route per route.cddl."""
    from zcbor.zcbor.zcbor import CddlValidationError

    try:
        _validator().validate_str(payload)
    except CddlValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "does not match"
        raise RouteFormatError(f"not a route per route.cddl ({first[:100]})") from None


def _fence(item: list[Any]) -> Fence:
    extra = list(item[5:]) + [None] * (4 - len(item[5:]))
    return Fence(item[0], Kind(item[1]), item[2], item[3], tuple(item[4]), *extra)


def decode(payload: bytes) -> tuple[int, Route]:
    """(version, route) from route CBOR; validates it first."""
    validate(payload)
    obj = cbor2.loads(payload)
    route = Route(
        params=dict(obj[2]),
        depot=None if obj[3] is None else _fence(obj[3]),
        stops=tuple(_fence(s) for s in obj[4]),
        zones=tuple(_fence(z) for z in obj[5]),
    )
    return obj[1], route


# ---- geometry ---------------------------------------------------------------------------


def wrap_e6(d: int) -> int:
    """A longitude difference in microdegrees wrapped into [-180e6, 180e6)."""
    return (d + 180 * E6) % (360 * E6) - 180 * E6


def _local_m(lat0: int, lon0: int, lat: int, lon: int) -> tuple[float, float]:
    """(east, north) metres of a point from (lat0, lon0) on a plane tangent there
    (equirectangular): within 0.1 % over the 20 km a polygon may span."""
    k = math.cos(math.radians(lat0 / E6))
    return wrap_e6(lon - lon0) * k * _M_PER_E6, (lat - lat0) * _M_PER_E6


def _orient(a: tuple[int, int], b: tuple[int, int], c: tuple[int, int]) -> int:
    v = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    return (v > 0) - (v < 0)


def _on_segment(a: tuple[int, int], b: tuple[int, int], p: tuple[int, int]) -> bool:
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def segments_meet(
    a: tuple[int, int], b: tuple[int, int], c: tuple[int, int], d: tuple[int, int]
) -> bool:
    """Do segments a-b and c-d share any point? Exact (integer) arithmetic."""
    o1, o2, o3, o4 = _orient(a, b, c), _orient(a, b, d), _orient(c, d, a), _orient(c, d, b)
    if o1 != o2 and o3 != o4:
        return True
    return (
        (o1 == 0 and _on_segment(a, b, c))
        or (o2 == 0 and _on_segment(a, b, d))
        or (o3 == 0 and _on_segment(c, d, a))
        or (o4 == 0 and _on_segment(c, d, b))
    )


def ring_crossing(ring: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """The first pair of edges (i, j) of a closed ring (edge i joins vertex i to i+1,
    the last edge closes it) that touch or cross, other than neighbours meeting at
    their shared vertex; a neighbour folding back over its edge counts too. O(n^2)."""
    n = len(ring)
    edges = [(ring[i], ring[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        a, b = edges[i]
        c = edges[(i + 1) % n][1]
        # Neighbours: collinear and pointing back means the ring doubles over itself.
        if (
            _orient(a, b, c) == 0
            and (b[0] - a[0]) * (c[0] - b[0]) + (b[1] - a[1]) * (c[1] - b[1]) < 0
        ):
            return i, (i + 1) % n
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # neighbours through vertex 0
            if segments_meet(a, b, *edges[j]):
                return i, j
    return None


# ---- GeoJSON ----------------------------------------------------------------------------


class _TooMany(Exception):
    pass


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: Any) -> str:
    """A value as the file wrote it (JSON), for messages."""
    try:
        return json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(v)


@dataclass
class _Anchor:
    """Where a feature is, for the check that no feature is far from the others."""

    where: str
    lat: int
    lon: int


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.more = 0  # errors beyond MAX_ERRORS

    def error(self, where: str, message: str) -> None:
        if len(self.errors) >= MAX_ERRORS:
            self.more += 1
            return
        self.errors.append(f"{self.source}: {where}{': ' if where else ''}{message}")

    def warn(self, where: str, message: str) -> None:
        self.warnings.append(f"{self.source}: {where}{': ' if where else ''}{message}")

    # -- positions --
    def position(self, where: str, c: Any) -> tuple[int, int] | None:
        """(lat_e6, lon_e6) of a GeoJSON position, or None after reporting why not."""
        if not isinstance(c, list) or not 2 <= len(c) <= 3 or not all(map(_is_number, c)):
            self.error(where, f"{_fmt(c)} is not a position [lon, lat] of numbers")
            return None
        lon, lat = c[0], c[1]
        if not -90 <= lat <= 90:
            if abs(lon) <= 90 and abs(lat) <= 180:
                self.error(
                    where,
                    f"latitude {_fmt(lat)} is beyond ±90: {_fmt(c)} looks like [lat, lon]; "
                    "GeoJSON is [lon, lat]",
                )
            else:
                self.error(where, f"latitude {_fmt(lat)} is outside -90..90")
            return None
        if not -180 <= lon <= 180:
            self.error(where, f"longitude {_fmt(lon)} is outside -180..180")
            return None
        if abs(lat) < 0.01 and abs(lon) < 0.01:
            self.error(where, f"{_fmt(c)} is within 1 km of [0, 0] (a missing geocode?)")
            return None
        return round(lat * E6), round(lon * E6)

    # -- the collection --
    def parse(self, text: str) -> Loaded:
        try:
            doc = json.loads(text, parse_constant=_reject_constant)
        except json.JSONDecodeError as e:
            self.error("", f"bad JSON at line {e.lineno}, column {e.colno}: {e.msg}")
            raise RouteFileError(self.errors) from None
        except ValueError as e:
            self.error("", f"bad JSON: {e}")
            raise RouteFileError(self.errors) from None
        except RecursionError:
            self.error("", "bad JSON: nested too deeply")
            raise RouteFileError(self.errors) from None
        if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
            kind = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
            self.error("", f"expected a GeoJSON FeatureCollection, found {_fmt(kind)}")
            raise RouteFileError(self.errors)
        features = doc.get("features")
        if not isinstance(features, list):
            self.error("", '"features" must be an array of Features')
            raise RouteFileError(self.errors)
        params = self.params(doc.get("properties"))
        depot: Fence | None = None
        stops: list[Fence] = []
        zones: list[Fence] = []
        anchors: list[_Anchor] = []
        ids: dict[str, str] = {}
        seqs: dict[int, str] = {}
        try:
            for i, feat in enumerate(features):
                got = self.feature(i, feat, ids, seqs)
                if got is None:
                    continue
                role, fence, anchor = got
                anchors.append(anchor)
                where = anchor.where
                if role == "depot":
                    if depot is not None:
                        self.error(where, f"a second depot (the first is {_fmt(depot.id)})")
                    depot = fence
                elif role == "zone":
                    if len(zones) == MAX_ZONES:
                        self.error(where, f"more than {MAX_ZONES} zones")
                        raise _TooMany
                    zones.append(fence)
                else:
                    if len(stops) == MAX_STOPS:
                        self.error(where, f"more than {MAX_STOPS} stops")
                        raise _TooMany
                    stops.append(fence)
        except _TooMany:
            pass
        self.spread(anchors)
        if not stops and not self.errors:
            self.warn("", "no stops: the van gets an empty route")
        if self.errors:
            if self.more:
                self.errors.append(f"{self.source}: ... and {self.more} more errors")
            raise RouteFileError(self.errors)
        stops.sort(key=lambda s: s.seq or 0)
        route = Route(params, depot, tuple(stops), tuple(zones))
        size = len(route.encode(MAX_VERSION))
        if size > MAX_ROUTE_BYTES:
            self.error(
                "",
                f"the route is {size} bytes as CBOR, at most {MAX_ROUTE_BYTES}: use circles "
                "or fewer polygon vertices",
            )
            raise RouteFileError(self.errors)
        return Loaded(route, self.warnings, text)

    def params(self, props: Any) -> dict[int, int]:
        if props is None:
            return {}
        if not isinstance(props, dict):
            self.error("properties", "must be an object")
            return {}
        out: dict[int, int] = {}
        specs = {s.name: s for s in PARAMS}
        for key, value in props.items():
            spec = specs.get(key)
            if spec is None:
                if key not in INFO_PROPERTIES:
                    known = ", ".join(s.name for s in PARAMS)
                    self.warn("properties", f"{_fmt(key)} is not a threshold ({known}): ignored")
                continue
            where = f"properties.{key}"
            ok = _is_number(value) and spec.lo <= value <= spec.hi
            if ok and spec.scale == 1 and value != int(value):
                ok = False
            if not ok:
                what = "a number" if spec.scale != 1 else "an integer"
                self.error(where, f"{_fmt(value)} is not {what} in {spec.lo:g}..{spec.hi:g}")
                continue
            v = round(value * spec.scale)
            if v != PARAM_DEFAULTS[spec.param]:
                out[int(spec.param)] = v
        return out

    # -- one feature --
    def feature(
        self, i: int, feat: Any, ids: dict[str, str], seqs: dict[int, str]
    ) -> tuple[str, Fence, _Anchor] | None:
        where = f"features[{i}]"
        if not isinstance(feat, dict) or feat.get("type") != "Feature":
            self.error(where, "not a GeoJSON Feature")
            return None
        props = feat.get("properties")
        if props is None:
            props = {}
        if not isinstance(props, dict):
            self.error(where, "properties must be an object")
            return None
        role = props.get("role", "stop")
        id_key = "zone_id" if role == "zone" else "stop_id"
        fid = props.get(id_key)
        if fid is None and role == "depot":
            fid = "depot"
        if fid is not None:
            label = "depot" if role == "depot" else id_key
            where = f"features[{i}] ({label} {_fmt(fid)})"
        if role not in ("stop", "depot", "zone"):
            self.error(where, f'role {_fmt(role)} is not "stop", "depot" or "zone"')
            return None
        ok = True
        if fid is None:
            self.error(where, f"properties.{id_key} is missing (a {role} needs an id)")
            ok = False
        elif not isinstance(fid, str):
            self.error(where, f"{id_key} must be a string (write {_fmt(str(fid))})")
            ok = False
        elif not fid.strip() or len(fid.encode()) > MAX_ID_BYTES or not fid.isprintable():
            self.error(where, f"{id_key} must be 1..{MAX_ID_BYTES} bytes of printable text")
            ok = False
        elif fid in ids:
            self.error(where, f"duplicate id {_fmt(fid)} (also {ids[fid]})")
            ok = False
        else:
            ids[fid] = f"features[{i}]"
        seq = window_start = window_end = service_s = None
        if role == "stop":
            seq = self.seq(where, props.get("seq"), seqs, i)
            ok = ok and seq is not None
            window_start = self.time(where, props, "window_start")
            window_end = self.time(where, props, "window_end")
            if window_start is not None and window_end is not None and window_end <= window_start:
                self.error(where, "window_end is not after window_start")
            service_s = self.service(where, props.get("service_s"))
        shape = self.geometry(where, feat.get("geometry"), props)
        if shape is None or not ok or not isinstance(fid, str):
            return None
        kind, inner, outer, coords = shape
        name = props.get("name")
        fence = Fence(
            fid, kind, inner, outer, tuple(coords), seq, window_start, window_end, service_s,
            name=name if isinstance(name, str) else "",
        )  # fmt: skip
        lat = round(statistics.fmean(coords[0::2]))
        lon = coords[1] + round(statistics.fmean(wrap_e6(x - coords[1]) for x in coords[1::2]))
        return role, fence, _Anchor(where, lat, wrap_e6(lon))

    def seq(self, where: str, v: Any, seqs: dict[int, str], i: int) -> int | None:
        if v is None:
            self.error(where, "properties.seq is missing (stops are visited in seq order)")
            return None
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 0xFFFFFFFF:
            self.error(where, f"seq {_fmt(v)} is not an integer >= 1")
            return None
        if v in seqs:
            self.error(where, f"duplicate seq {v} (also {seqs[v]})")
            return None
        seqs[v] = f"features[{i}]"
        return v

    def time(self, where: str, props: dict[str, Any], key: str) -> int | None:
        v = props.get(key)
        if v is None:
            return None
        t = None
        if isinstance(v, str):
            try:
                t = dt.datetime.fromisoformat(v.strip())
            except ValueError:
                pass
        if t is None:
            self.error(where, f"{key} {_fmt(v)} is not an ISO 8601 date-time")
            return None
        if t.tzinfo is None:
            self.error(where, f"{key} {_fmt(v)} has no UTC offset (add Z or +hh:mm)")
            return None
        s = math.floor((t - wire.GPS_EPOCH).total_seconds())
        if not 0 <= s <= 0xFFFFFFFF:
            self.error(where, f"{key} {_fmt(v)} is outside 2000..2136")
            return None
        return s

    def service(self, where: str, v: Any) -> int | None:
        if v is None:
            return None
        if not _is_number(v) or not 0 <= v <= MAX_SERVICE_S:
            self.error(where, f"service_s {_fmt(v)} is not a number of seconds 0..{MAX_SERVICE_S}")
            return None
        return round(v)

    def geometry(
        self, where: str, geom: Any, props: dict[str, Any]
    ) -> tuple[Kind, int, int, list[int]] | None:
        if not isinstance(geom, dict):
            self.error(where, "has no geometry (a Point or a Polygon)")
            return None
        kind = geom.get("type")
        coords = geom.get("coordinates")
        if kind == "Point":
            radii = self.radii(where, props)
            pos = self.position(f"{where}: Point", coords)
            if pos is None or radii is None:
                return None
            return Kind.CIRCLE, radii[0], radii[1], [pos[0], pos[1]]
        if kind == "Polygon":
            buffer = self.buffer(where, props)
            ring = self.ring(where, coords)
            if ring is None or buffer is None:
                return None
            return Kind.POLYGON, 0, buffer, [x for v in ring for x in v]
        self.error(where, f"geometry {_fmt(kind)} is not supported (Point or Polygon)")
        return None

    def _metres(self, where: str, props: dict[str, Any], key: str) -> float | None:
        v = props.get(key)
        if v is None:
            return None
        if not _is_number(v):
            self.error(where, f"{key} {_fmt(v)} is not a number of metres")
            raise ValueError
        return float(v)

    def radii(self, where: str, props: dict[str, Any]) -> tuple[int, int] | None:
        try:
            r = self._metres(where, props, "radius_m")
            r_in = self._metres(where, props, "radius_in_m")
            r_out = self._metres(where, props, "radius_out_m")
        except ValueError:
            return None
        if r is not None and r_in is not None:
            self.error(where, "give radius_m or radius_in_m, not both")
            return None
        inner = round(r if r is not None else r_in if r_in is not None else DEFAULT_INNER_M)
        outer = round(r_out if r_out is not None else DEFAULT_OUTER_M)
        lo, hi = INNER_RANGE_M
        if not lo <= inner <= hi:
            self.error(where, f"arrived radius {inner} m is outside {lo}..{hi} m")
            return None
        if not inner < outer <= MAX_OUTER_M:
            hint = "" if r_out is not None else f" (radius_out_m defaults to {DEFAULT_OUTER_M})"
            self.error(
                where,
                f"approaching radius {outer} m must be more than the arrived radius "
                f"{inner} m and at most {MAX_OUTER_M} m{hint}",
            )
            return None
        return inner, outer

    def buffer(self, where: str, props: dict[str, Any]) -> int | None:
        try:
            b = self._metres(where, props, "buffer_m")
        except ValueError:
            return None
        buffer = round(b if b is not None else DEFAULT_BUFFER_M)
        lo, hi = BUFFER_RANGE_M
        if not lo <= buffer <= hi:
            self.error(where, f"buffer_m {buffer} is outside {lo}..{hi} m")
            return None
        return buffer

    def ring(self, where: str, coords: Any) -> list[tuple[int, int]] | None:
        """The outer ring as (lat_e6, lon_e6) vertices, not closed, longitudes normalised
        to the first vertex, or None after reporting what is wrong with it."""
        if not isinstance(coords, list) or not coords or not isinstance(coords[0], list):
            self.error(where, "Polygon coordinates must be [[[lon, lat], ...]] (one ring)")
            return None
        if len(coords) > 1:
            holes = len(coords) - 1
            self.error(
                where,
                f"Polygon has {holes} hole{'s' * (holes > 1)}: only an outer ring is supported",
            )
            return None
        raw = coords[0]
        if len(raw) < 4:
            self.error(where, f"Polygon ring has {len(raw)} positions, a closed ring needs 4+")
            return None
        ring: list[tuple[int, int]] = []
        index: list[int] = []  # each vertex's number in the file, for messages
        bad = False
        for k, c in enumerate(raw):
            p = self.position(f"{where}: Polygon vertex {k}", c)
            bad = bad or p is None
            if p is not None and (not ring or p != ring[-1]):
                ring.append(p)
                index.append(k)
        if bad:
            return None
        if ring[-1] != ring[0]:
            self.error(where, "Polygon ring is not closed (first [lon, lat] != last)")
            return None
        if len(ring) > 1:
            ring.pop()  # the closing vertex
            index.pop()
        lon0 = ring[0][1]
        ring = [(lat, lon0 + wrap_e6(lon - lon0)) for lat, lon in ring]
        if len(set(ring)) < 3:
            self.error(where, f"Polygon ring has {len(set(ring))} distinct vertices, at least 3")
            return None
        if len(ring) > MAX_VERTICES:
            self.error(where, f"Polygon ring has {len(ring)} vertices, at most {MAX_VERTICES}")
            return None
        xy = [_local_m(ring[0][0], lon0, lat, lon) for lat, lon in ring]
        width = max(max(p[0] for p in xy) - min(p[0] for p in xy),
                    max(p[1] for p in xy) - min(p[1] for p in xy))  # fmt: skip
        if width > MAX_POLYGON_WIDTH_M:
            self.error(
                where,
                f"Polygon is {width / 1000:.1f} km across, at most {MAX_POLYGON_WIDTH_M // 1000} "
                "km (a fence, not a region)",
            )
            return None
        # Crossing is affine-invariant: test in exact microdegrees (lon, lat as x, y).
        crossing = ring_crossing([(lon, lat) for lat, lon in ring])
        if crossing is not None:
            n = len(ring)
            i, j = (f"{index[e]}-{index[(e + 1) % n]}" for e in crossing)
            self.error(
                where,
                f"Polygon ring intersects itself: edge {i} meets edge {j} (positions "
                "numbered from 0)",
            )
            return None
        if _area2(ring) == 0:
            self.error(where, "Polygon ring has no area")
            return None
        return ring

    def spread(self, anchors: list[_Anchor]) -> None:
        """Flag features far from the middle of the others (a typo or swapped coordinates)."""
        if len(anchors) < 3:
            return
        lat_m = round(statistics.median(a.lat for a in anchors))
        ref = anchors[0].lon
        lon_m = wrap_e6(ref + round(statistics.median(wrap_e6(a.lon - ref) for a in anchors)))
        for a in anchors:
            d = math.hypot(*_local_m(lat_m, lon_m, a.lat, a.lon))
            if d <= MAX_SPREAD_M:
                continue
            swapped = (a.lon, a.lat)  # read back as if the file had [lat, lon]
            hint = ""
            if abs(swapped[0]) <= 90 * E6 and (
                math.hypot(*_local_m(lat_m, lon_m, *swapped)) <= MAX_SPREAD_M
            ):
                hint = "; looks like [lat, lon]; GeoJSON is [lon, lat]"
            self.error(
                a.where,
                f"is about {d / 1000:,.0f} km from the middle of the other features "
                f"(more than {MAX_SPREAD_M // 1000} km){hint}",
            )


def _area2(ring: Sequence[tuple[int, int]]) -> int:
    """Twice the signed area of a ring in microdegrees squared (shoelace)."""
    n = len(ring)
    return sum(
        ring[i][1] * ring[(i + 1) % n][0] - ring[(i + 1) % n][1] * ring[i][0] for i in range(n)
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_geojson(text: str, source: str = "route") -> Loaded:
    """Parse and check a route file's text. Raises RouteFileError listing every problem
    found (each line starts with `source`)."""
    return _Parser(source).parse(text)


def load_file(path: Path, source: str | None = None) -> Loaded:
    """`load_geojson` on a file; an unreadable file is a RouteFileError too."""
    where = source if source is not None else str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise RouteFileError([f"{where}: cannot read: {reason}"]) from None
    return load_geojson(text, where)


def summary(route: Route) -> str:
    """`12 stops (1 polygon), depot "depot", 1 zone`."""
    polys = sum(s.kind == Kind.POLYGON for s in route.stops)
    parts = [f"{len(route.stops)} stop{'s' * (len(route.stops) != 1)}"]
    if polys:
        parts[0] += f" ({polys} polygon{'s' * (polys != 1)})"
    parts.append("no depot" if route.depot is None else f"depot {_fmt(route.depot.id)}")
    parts.append(f"{len(route.zones)} zone{'s' * (len(route.zones) != 1)}")
    return ", ".join(parts)


def param_names(params: dict[int, int]) -> Iterable[tuple[str, float]]:
    """The thresholds of a route as (GeoJSON name, value in the file's units)."""
    by_param = {int(s.param): s for s in PARAMS}
    for k, v in sorted(params.items()):
        spec = by_param.get(k)
        if spec is None:
            yield f"param_{k}", v
        else:
            yield spec.name, v / spec.scale if spec.scale != 1 else v
