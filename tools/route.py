"""Routes for the GPS simulator: loading GPX / GeoJSON / NMEA logs, and the geometry on them.

A `Route` is a polyline on the WGS-84 sphere (great-circle segments) with an optional
elevation and time per point, and a list of `Stop`s placed along it (GPX `wpt`, GPX points
whose `<type>` is `stop`, GeoJSON Point features). Recorded NMEA logs are loaded as an
`NmeaLog`: the raw sentences grouped into epochs with their UTC offsets, so they can be
replayed byte for byte; `load_route` also accepts a log and turns its fixes into a timed route.

Public, stable API (used by tools/gpssim.py and the sim rig):
    load_route(path) -> Route                 GPX, GeoJSON or NMEA log; raises RouteError
    load_nmea_log(path) -> NmeaLog            raw sentences grouped in epochs; raises RouteError
    sniff_format(path) -> "gpx" | "geojson" | "nmea"
    Route.length_m, Route.point_at(d), Route.course_at(d), Route.alt_at(d), Route.stops
    haversine_m(lat1, lon1, lat2, lon2), bearing_deg(...), intermediate(...), destination(...)

This module does not emit NMEA or pace anything in time: see gpssim.py for that.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG); the sphere is plenty for a simulator
# A waypoint farther than this from the track is not a stop on it.
STOP_SNAP_RADIUS_M = 150.0


class RouteError(ValueError):
    """A route file that cannot be used; the message names the file and the problem."""


# --- geometry on the sphere --------------------------------------------------------------


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial great-circle bearing from point 1 to point 2, degrees true in [0, 360)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


def intermediate(
    lat1: float, lon1: float, lat2: float, lon2: float, frac: float
) -> tuple[float, float]:
    """The point a fraction `frac` of the way along the great circle from 1 to 2."""
    if frac <= 0.0:
        return lat1, lon1
    if frac >= 1.0:
        return lat2, lon2
    delta = haversine_m(lat1, lon1, lat2, lon2) / EARTH_RADIUS_M
    if delta < 1e-12:
        return lat1, lon1
    p1, l1, p2, l2 = map(math.radians, (lat1, lon1, lat2, lon2))
    a = math.sin((1 - frac) * delta) / math.sin(delta)
    b = math.sin(frac * delta) / math.sin(delta)
    x = a * math.cos(p1) * math.cos(l1) + b * math.cos(p2) * math.cos(l2)
    y = a * math.cos(p1) * math.sin(l1) + b * math.cos(p2) * math.sin(l2)
    z = a * math.sin(p1) + b * math.sin(p2)
    lat = math.degrees(math.atan2(z, math.hypot(x, y)))
    lon = math.degrees(math.atan2(y, x))
    return lat, (lon + 540.0) % 360.0 - 180.0


def destination(lat: float, lon: float, bearing: float, dist_m: float) -> tuple[float, float]:
    """The point `dist_m` metres from (lat, lon) on initial bearing `bearing` degrees."""
    d = dist_m / EARTH_RADIUS_M
    p1, l1, th = math.radians(lat), math.radians(lon), math.radians(bearing)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(th))
    l2 = l1 + math.atan2(
        math.sin(th) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    return math.degrees(p2), (math.degrees(l2) + 540.0) % 360.0 - 180.0


def _project(
    lat: float, lon: float, a: tuple[float, float], b: tuple[float, float]
) -> tuple[float, float]:
    """(distance in metres, fraction along a->b) of the point nearest (lat, lon) on a->b.

    Local equirectangular plane: exact enough for street-length segments.
    """
    k = math.cos(math.radians(a[0]))
    ax, ay = 0.0, 0.0
    bx, by = (b[1] - a[1]) * k, b[0] - a[0]
    px, py = (lon - a[1]) * k, lat - a[0]
    seg2 = bx * bx + by * by
    t = 0.0 if seg2 == 0 else max(0.0, min(1.0, ((px - ax) * bx + (py - ay) * by) / seg2))
    qx, qy = bx * t, by * t
    return math.radians(math.hypot(px - qx, py - qy)) * EARTH_RADIUS_M, t


# --- the route ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackPoint:
    lat: float
    lon: float
    ele: float | None = None
    time: datetime | None = None
    stop: bool = False
    name: str = ""


@dataclass(frozen=True)
class Stop:
    """A place on the route where the van dwells (a delivery, a pickup, the depot)."""

    name: str
    lat: float
    lon: float
    along_m: float  # distance from the start of the route, along the track


@dataclass
class Route:
    """A polyline with per-vertex elevation, optional times, and the stops along it.

    `points` are the points as loaded (duplicates kept, so times of a parked recorder
    survive); the geometry uses the de-duplicated vertices. Build one with `Route.build`.
    """

    name: str
    points: list[TrackPoint]
    stops: list[Stop] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    source: str = ""
    # derived geometry, filled by build()
    vertices: list[tuple[float, float]] = field(default_factory=list)
    cum_m: list[float] = field(default_factory=list)
    point_along_m: list[float] = field(default_factory=list)
    _ele_d: list[float] = field(default_factory=list)
    _ele_v: list[float] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        name: str,
        points: list[TrackPoint],
        stop_places: Sequence[tuple[str, float, float]] = (),
        source: str = "",
    ) -> Route:
        """Validate points, build the geometry and place the stops along the track."""
        where = source or name
        if len(points) < 2:
            raise RouteError(f"{where}: a route needs at least 2 points, found {len(points)}")
        route = cls(name=name, points=points, source=source)
        for lat, lon in [(p.lat, p.lon) for p in points] + [(s[1], s[2]) for s in stop_places]:
            _check_lat_lon(lat, lon, where)
        along = 0.0
        route.vertices = [(points[0].lat, points[0].lon)]
        route.cum_m = [0.0]
        route.point_along_m = [0.0]
        for p in points[1:]:
            last = route.vertices[-1]
            step = haversine_m(last[0], last[1], p.lat, p.lon)
            if step > 0.01:
                along += step
                route.vertices.append((p.lat, p.lon))
                route.cum_m.append(along)
            route.point_along_m.append(along)
        if along < 1.0:
            raise RouteError(f"{where}: all {len(points)} points are at the same place")
        for p, d in zip(points, route.point_along_m, strict=True):
            if p.ele is not None:
                route._ele_d.append(d)
                route._ele_v.append(p.ele)
        route._place_stops(stop_places)
        route._place_stops(
            [(p.name or f"point {i + 1}", p.lat, p.lon) for i, p in enumerate(points) if p.stop],
            along_hint=[d for p, d in zip(points, route.point_along_m, strict=True) if p.stop],
        )
        route.stops.sort(key=lambda s: s.along_m)
        return route

    # geometry queries

    @property
    def length_m(self) -> float:
        return self.cum_m[-1]

    @property
    def timed(self) -> bool:
        """True when every point carries a time (speeds then come from the recording)."""
        return all(p.time is not None for p in self.points)

    def _segment(self, d: float) -> tuple[int, float]:
        """Index i of the segment holding distance d (vertices i..i+1) and the fraction."""
        d = max(0.0, min(d, self.length_m))
        i = bisect.bisect_right(self.cum_m, d) - 1
        i = max(0, min(i, len(self.cum_m) - 2))
        seg = self.cum_m[i + 1] - self.cum_m[i]
        return i, (d - self.cum_m[i]) / seg

    def point_at(self, d: float) -> tuple[float, float]:
        """(lat, lon) at distance d metres along the route (clamped to its ends)."""
        i, frac = self._segment(d)
        a, b = self.vertices[i], self.vertices[i + 1]
        return intermediate(a[0], a[1], b[0], b[1], frac)

    def course_at(self, d: float) -> float:
        """Direction of travel at distance d: great-circle bearing to the vertex ahead."""
        i, frac = self._segment(d)
        if frac >= 1.0 - 1e-9 and i + 2 < len(self.vertices):
            i, frac = i + 1, 0.0
        lat, lon = self.point_at(d)
        b = self.vertices[i + 1]
        if haversine_m(lat, lon, b[0], b[1]) < 0.05:  # at the very end: keep the last heading
            a = self.vertices[i]
            return bearing_deg(a[0], a[1], b[0], b[1])
        return bearing_deg(lat, lon, b[0], b[1])

    def turn_deg(self, i: int) -> float:
        """Heading change at inner vertex i, in degrees [0, 180]."""
        a, b, c = self.vertices[i - 1], self.vertices[i], self.vertices[i + 1]
        h1 = bearing_deg(a[0], a[1], b[0], b[1])
        h2 = bearing_deg(b[0], b[1], c[0], c[1])
        return abs((h2 - h1 + 180.0) % 360.0 - 180.0)

    def alt_at(self, d: float, default: float) -> float:
        """Altitude at distance d, linearly interpolated from the points that have one."""
        if not self._ele_d:
            return default
        j = bisect.bisect_right(self._ele_d, d)
        if j == 0:
            return self._ele_v[0]
        if j >= len(self._ele_d):
            return self._ele_v[-1]
        d0, d1 = self._ele_d[j - 1], self._ele_d[j]
        v0, v1 = self._ele_v[j - 1], self._ele_v[j]
        return v0 if d1 == d0 else v0 + (v1 - v0) * (d - d0) / (d1 - d0)

    # stops

    def _place_stops(
        self, places: Sequence[tuple[str, float, float]], along_hint: list[float] | None = None
    ) -> None:
        """Put each stop on the track: the first pass within the snap radius, in file order.

        Delivery rounds list their stops in the order they are served, and a street can be
        driven twice, so the search moves forward from the previous stop; a stop only found
        behind it is still used (with a warning), a stop far from the track is dropped.
        """
        cursor = 0
        nseg = len(self.vertices) - 1
        for k, (name, lat, lon) in enumerate(places):
            if along_hint is not None:
                self.stops.append(Stop(name, lat, lon, along_hint[k]))
                continue
            found = self._first_pass(lat, lon, cursor, nseg)
            if found is None:
                found = self._first_pass(lat, lon, 0, cursor)
                if found is not None:
                    self.warnings.append(f"stop {name!r} is out of order along the track")
            if found is None:
                nearest = min(
                    _project(lat, lon, self.vertices[i], self.vertices[i + 1])[0]
                    for i in range(nseg)
                )
                self.warnings.append(
                    f"stop {name!r} is {nearest:.0f} m from the track "
                    f"(more than {STOP_SNAP_RADIUS_M:.0f} m): ignored"
                )
                continue
            i, frac = found
            cursor = i
            along = self.cum_m[i] + frac * (self.cum_m[i + 1] - self.cum_m[i])
            self.stops.append(Stop(name, lat, lon, along))

    def _first_pass(self, lat: float, lon: float, lo: int, hi: int) -> tuple[int, float] | None:
        best: tuple[float, int, float] | None = None
        for i in range(lo, hi):
            dist, frac = _project(lat, lon, self.vertices[i], self.vertices[i + 1])
            if dist <= STOP_SNAP_RADIUS_M:
                if best is None or dist < best[0]:
                    best = (dist, i, frac)
            elif best is not None:
                break  # the pass is over: keep its nearest point
        return None if best is None else (best[1], best[2])


def _check_lat_lon(lat: float, lon: float, where: str) -> None:
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise RouteError(f"{where}: coordinate ({lat}, {lon}) is not a finite number")
    if not -90.0 <= lat <= 90.0:
        raise RouteError(
            f"{where}: latitude {lat} is outside -90..90 (latitude and longitude swapped? "
            "GPX uses lat=/lon= attributes, GeoJSON positions are [longitude, latitude])"
        )
    if not -180.0 <= lon <= 180.0:
        raise RouteError(f"{where}: longitude {lon} is outside -180..180")


def _parse_time(text: str, where: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RouteError(f"{where}: time {text!r} is not an ISO 8601 date-time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC)


# --- file formats ------------------------------------------------------------------------


def sniff_format(path: str | Path) -> str:
    """'gpx', 'geojson' or 'nmea', from the first meaningful byte of the file."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise RouteError(f"{p}: cannot read: {e.strerror or e}") from None
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text:
        raise RouteError(f"{p}: the file is empty")
    if text.startswith(b"<"):
        return "gpx"
    if text.startswith((b"{", b"[")):
        return "geojson"
    if text.startswith((b"$", b"!", b"#")):
        return "nmea"
    suffix = p.suffix.lower()
    if suffix == ".gpx":
        return "gpx"
    if suffix in (".geojson", ".json"):
        return "geojson"
    if suffix in (".nmea", ".log", ".txt"):
        return "nmea"
    raise RouteError(f"{p}: not a GPX, GeoJSON or NMEA file (it starts with {text[:16]!r})")


def load_route(path: str | Path) -> Route:
    """Load a GPX track/route, a GeoJSON LineString or the fixes of an NMEA log."""
    fmt = sniff_format(path)
    if fmt == "gpx":
        return _load_gpx(Path(path))
    if fmt == "geojson":
        return _load_geojson(Path(path))
    return load_nmea_log(path).to_route()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(el: ET.Element, name: str) -> str | None:
    for c in el:
        if _local(c.tag) == name:
            return (c.text or "").strip()
    return None


def _gpx_point(el: ET.Element, where: str) -> TrackPoint:
    try:
        lat = float(el.attrib["lat"])
        lon = float(el.attrib["lon"])
    except KeyError as e:
        raise RouteError(f"{where}: missing the {e.args[0]}= attribute") from None
    except ValueError:
        raise RouteError(
            f"{where}: lat={el.attrib.get('lat')!r} lon={el.attrib.get('lon')!r} are not numbers"
        ) from None
    _check_lat_lon(lat, lon, where)
    ele_text = _child_text(el, "ele")
    ele = None
    if ele_text:
        try:
            ele = float(ele_text)
        except ValueError:
            raise RouteError(f"{where}: <ele> {ele_text!r} is not a number") from None
    time_text = _child_text(el, "time")
    time = _parse_time(time_text, where) if time_text else None
    kind = (_child_text(el, "type") or "").lower()
    return TrackPoint(lat, lon, ele, time, kind == "stop", _child_text(el, "name") or "")


def _load_gpx(path: Path) -> Route:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        line, col = e.position
        reason = str(e).rsplit(": line", 1)[0]
        raise RouteError(f"{path}: bad XML at line {line}, column {col + 1}: {reason}") from None
    except OSError as e:
        raise RouteError(f"{path}: cannot read: {e.strerror or e}") from None
    if _local(root.tag) != "gpx":
        raise RouteError(f"{path}: not a GPX file (the root element is <{_local(root.tag)}>)")
    trkpts: list[TrackPoint] = []
    rtepts: list[TrackPoint] = []
    wpts: list[TrackPoint] = []
    name = _child_text(root, "name") or ""
    for el in root.iter():
        tag = _local(el.tag)
        if tag == "trkpt":
            trkpts.append(_gpx_point(el, f"{path}: trkpt {len(trkpts) + 1}"))
        elif tag == "rtept":
            rtepts.append(_gpx_point(el, f"{path}: rtept {len(rtepts) + 1}"))
        elif tag == "wpt":
            wpts.append(_gpx_point(el, f"{path}: wpt {len(wpts) + 1}"))
        elif tag in ("trk", "rte") and not name:
            name = _child_text(el, "name") or ""
    points = trkpts or rtepts
    if not points:
        raise RouteError(
            f"{path}: no track or route points (expected <trk><trkseg><trkpt> or <rte><rtept>)"
        )
    if any(p.time is not None for p in points) and not all(p.time is not None for p in points):
        untimed = sum(p.time is None for p in points)
        warn = f"{untimed} of {len(points)} points have no <time>: speeds from --speed-kmh"
        points = [TrackPoint(p.lat, p.lon, p.ele, None, p.stop, p.name) for p in points]
    else:
        warn = ""
    stop_places = [(w.name or f"wpt {i + 1}", w.lat, w.lon) for i, w in enumerate(wpts)]
    route = Route.build(name or path.stem, points, stop_places, source=str(path))
    if trkpts and rtepts:
        route.warnings.append("the file has both <trk> and <rte>: the <trk> is used")
    if warn:
        route.warnings.append(warn)
    _check_times(route)
    return route


def _check_times(route: Route) -> None:
    if not route.timed:
        return
    times = [p.time for p in route.points]
    for k in range(1, len(times)):
        t0, t1 = times[k - 1], times[k]
        assert t0 is not None and t1 is not None
        dt = (t1 - t0).total_seconds()
        dd = route.point_along_m[k] - route.point_along_m[k - 1]
        if dt < 0:
            raise RouteError(f"{route.source}: point {k + 1}: time goes backwards ({t1} < {t0})")
        if dt == 0 and dd > 1.0:
            raise RouteError(
                f"{route.source}: point {k + 1}: moves {dd:.0f} m in zero time (same <time>)"
            )


def _load_geojson(path: Path) -> Route:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RouteError(
            f"{path}: bad JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise RouteError(f"{path}: cannot read: {e}") from None
    lines: list[tuple[list[Any], dict[str, Any]]] = []
    stop_places: list[tuple[str, float, float]] = []

    def visit(obj: Any, props: dict[str, Any]) -> None:
        if not isinstance(obj, dict):
            raise RouteError(f"{path}: expected a GeoJSON object, found {type(obj).__name__}")
        kind = obj.get("type")
        if kind == "FeatureCollection":
            for f in obj.get("features") or []:
                visit(f, {})
        elif kind == "Feature":
            visit(obj.get("geometry") or {"type": None}, obj.get("properties") or {})
        elif kind == "LineString":
            lines.append((obj.get("coordinates") or [], props))
        elif kind == "Point":
            c = obj.get("coordinates") or []
            lon, lat = _geojson_pos(c, f"{path}: Point {len(stop_places) + 1}")
            if props.get("stop", True):
                stop_places.append(
                    (str(props.get("name") or f"point {len(stop_places) + 1}"), lat, lon)
                )
        elif kind is None:
            pass  # a Feature without geometry is allowed by RFC 7946
        else:
            raise RouteError(
                f"{path}: unsupported GeoJSON type {kind!r} (expected a LineString, "
                "or a FeatureCollection with one LineString and optional Point stops)"
            )

    visit(doc, {})
    if not lines:
        raise RouteError(f"{path}: no LineString found (a route needs one)")
    if len(lines) > 1:
        raise RouteError(f"{path}: found {len(lines)} LineStrings, expected exactly one")
    coords, props = lines[0]
    times = props.get("coordTimes") or props.get("times")
    if times is not None and (not isinstance(times, list) or len(times) != len(coords)):
        raise RouteError(f"{path}: properties.coordTimes must list one time per coordinate")
    points = []
    for i, c in enumerate(coords):
        where = f"{path}: LineString position {i + 1}"
        lon, lat = _geojson_pos(c, where)
        ele = float(c[2]) if len(c) > 2 and c[2] is not None else None
        t = _parse_time(str(times[i]), where) if times else None
        points.append(TrackPoint(lat, lon, ele, t))
    if not points:
        raise RouteError(f"{path}: the LineString has no coordinates")
    route = Route.build(str(props.get("name") or path.stem), points, stop_places, str(path))
    _check_times(route)
    return route


def _geojson_pos(c: Any, where: str) -> tuple[float, float]:
    if not isinstance(c, list) or len(c) < 2:
        raise RouteError(f"{where}: a position must be [longitude, latitude(, elevation)]")
    try:
        lon, lat = float(c[0]), float(c[1])
    except (TypeError, ValueError):
        raise RouteError(f"{where}: {c!r} is not a pair of numbers") from None
    _check_lat_lon(lat, lon, where)
    return lon, lat


# --- recorded NMEA logs ------------------------------------------------------------------

# Sentences whose first field (or fifth, for GLL) is the UTC time of the epoch.
_TIME_FIELD = {"RMC": 1, "GGA": 1, "GNS": 1, "GLL": 5, "ZDA": 1, "GBS": 1, "GST": 1}
_HHMMSS = re.compile(rb"^(\d\d)(\d\d)(\d\d(?:\.\d+)?)$")


@dataclass
class NmeaLog:
    """A recorded log: `epochs` are (seconds since the first epoch, raw lines without EOL)."""

    source: str
    epochs: list[tuple[float, list[bytes]]]

    @property
    def sentence_count(self) -> int:
        return sum(len(lines) for _, lines in self.epochs)

    @property
    def duration_s(self) -> float:
        return self.epochs[-1][0] if self.epochs else 0.0

    def to_route(self) -> Route:
        """The valid RMC/GGA fixes of the log as a timed route (for `epochs()` playback)."""
        import pynmea2  # only needed here; the replay path does not parse sentences

        points: list[TrackPoint] = []
        day = datetime(2000, 1, 1, tzinfo=UTC)
        for offset, lines in self.epochs:
            for raw in lines:
                try:
                    msg = pynmea2.parse(raw.decode("ascii"))
                except (pynmea2.ParseError, UnicodeDecodeError, ValueError):
                    continue
                ok = (getattr(msg, "sentence_type", "") == "RMC" and msg.status == "A") or (
                    getattr(msg, "sentence_type", "") == "GGA" and str(msg.gps_qual) not in "0"
                )
                if not ok or not msg.lat or not msg.lon:
                    continue
                ele = float(msg.altitude) if msg.sentence_type == "GGA" and msg.altitude else None
                points.append(
                    TrackPoint(msg.latitude, msg.longitude, ele, day + timedelta(seconds=offset))
                )
                break  # one fix per epoch
        if len(points) < 2:
            raise RouteError(f"{self.source}: fewer than 2 valid fixes in the NMEA log")
        route = Route.build(Path(self.source).stem, points, source=self.source)
        return route


def _time_of(line: bytes) -> tuple[str, float] | None:
    """(sentence kind, seconds of day) of a sentence that carries the epoch time, else None."""
    if len(line) < 7 or line[:1] not in (b"$", b"!"):
        return None
    body = line[1:].split(b"*", 1)[0]
    fields = body.split(b",")
    kind = fields[0][-3:].decode("ascii", "replace")
    idx = _TIME_FIELD.get(kind)
    if idx is None or len(fields) <= idx:
        return None
    m = _HHMMSS.match(fields[idx])
    if not m:
        return None
    h, mi, s = int(m.group(1)), int(m.group(2)), float(m.group(3))
    if h > 23 or mi > 59 or s >= 61:
        return None
    return kind, h * 3600 + mi * 60 + s


def load_nmea_log(path: str | Path) -> NmeaLog:
    """Read a log (comment lines start with #) and group its sentences into epochs.

    An epoch starts when a time-carrying sentence (RMC, GGA, GNS, GLL, ZDA, ...) shows a
    new UTC time. Offsets follow the log's clock across midnight; a jump backwards or of
    more than a minute (a receiver's bad clock) is replayed one second after the previous
    epoch rather than stalling or rewinding the replay.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise RouteError(f"{p}: cannot read: {e.strerror or e}") from None
    lines = [
        raw.rstrip(b"\r") for raw in data.split(b"\n") if raw.strip() and not raw.startswith(b"#")
    ]
    if not any(line.startswith((b"$", b"!")) for line in lines):
        raise RouteError(f"{p}: no NMEA sentences (lines starting with $) in the log")
    stamps = [_time_of(line) for line in lines]
    # The epoch clock is the first fix sentence kind in the log: some receivers stamp
    # ZDA or GST a second or two apart from the fix in the same epoch.
    kinds = [s[0] for s in stamps if s is not None]
    primary = next((k for k in kinds if k in ("RMC", "GGA", "GNS", "GLL")), None)
    primary = primary or (kinds[0] if kinds else None)
    epochs: list[tuple[float, list[bytes]]] = []
    current: list[bytes] = []
    prev_t: float | None = None
    offset = 0.0
    for line, stamp in zip(lines, stamps, strict=True):
        if stamp is not None and stamp[0] == primary and stamp[1] != prev_t:
            if prev_t is not None:
                step = (stamp[1] - prev_t) % 86400.0
                if current:
                    epochs.append((offset, current))
                    current = []
                offset = round(offset + (step if 0 < step <= 60 else 1.0), 3)
            prev_t = stamp[1]
        current.append(line)
    if current:
        epochs.append((offset, current))
    return NmeaLog(str(p), epochs)
