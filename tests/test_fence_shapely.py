"""The geofence engine's geometry under MicroPython, checked against shapely.

firmware/fence.py classifies a position per fence as inside (the inner circle, or the
polygon), near (the outer circle, or the polygon's buffer) or outside, in integer
arithmetic in a local frame (docs/geofencing.md, "Geometry"). Here thousands of seeded
random points per shape, most of them on or within a few metres of a boundary, go through
the engine's own test (Geofence._where, via tools/mp/fence_probe.py under `micropython -X
heapsize=64K`), and shapely decides the same in floats.

The truth is computed in the frame the docs define, not in another projection: the
equirectangular frame around the fence's centre (a circle's centre, a polygon's
bounding-box centre, both in integer microdegrees as the engine takes them) on the sphere
of mean radius 6,371,008.8 m, longitudes wrapped into +-180 degrees. What is checked is
the engine's integer implementation of that frame; the frame's own error against great
circles is the table in the docs, measured by `vantrack bench geofence`.

The engine and shapely must agree on every point except those within a tolerance band of
the boundary they disagree about. The band is derived from fence.py's integer units
(`band_m` below), not fitted to the results, and is itself checked to be small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon

from vantrack.tools import mpy

PROBE = mpy.REPO_ROOT / "tools" / "mp" / "fence_probe.py"
R_EARTH = 6371008.8
M_UDEG = R_EARTH * math.pi / 180 / 1e6  # metres per microdegree of latitude (0.11119508)
FULL, HALF = 360_000_000, 180_000_000
# fence.py's constants: dm per udeg of latitude (Q13), the largest half-extent in units.
KY, Q, MAXU = 9109, 13, 8191
Q14 = 16384

BCN = (41_404_925, 2_199_582)  # the urban-round depot, Barcelona
FIJI = (-16_800_000, 179_999_800)  # Taveuni: the 180th meridian crosses the island
LAT60 = (60_000_000, 24_940_000)  # 60 degrees north, by Helsinki

N_BOX = 2000  # uniform in the box around the outer boundary
N_EDGE = 4000  # per boundary: on it and at small distances either side


def wrap(dlon: np.ndarray | int) -> np.ndarray | int:
    return (dlon + HALF) % FULL - HALF


def to_udeg(base: tuple[int, int], ne: np.ndarray) -> np.ndarray:
    """Local metres (north, east) around base -> integer microdegrees (lat, lon)."""
    lat = base[0] + np.round(ne[:, 0] / M_UDEG).astype(np.int64)
    cos = np.cos(np.radians(base[0] / 1e6))
    lon = base[1] + np.round(ne[:, 1] / (M_UDEG * cos)).astype(np.int64)
    return np.stack([lat, lon], axis=1)


@dataclass
class Shape:
    name: str
    kind: str  # "c" circle, "p" polygon
    inner: int  # circle: inner radius, m
    outer: int  # circle: outer radius; polygon: buffer, m
    coords: np.ndarray  # (n, 2) integer udeg lat, lon (lon may run past 180 degrees)

    # The engine's frame for the fence (fence.py, __init__).
    @property
    def centre(self) -> tuple[int, int]:
        if self.kind == "c":
            return int(self.coords[0, 0]), int(self.coords[0, 1])
        lo = self.coords.min(axis=0)
        hi = self.coords.max(axis=0)
        size = hi - lo
        return int(lo[0] + (size[0] >> 1)), int(lo[1] + (size[1] >> 1))

    @property
    def cos(self) -> float:
        return math.cos(math.radians(self.centre[0] / 1e6))

    def half_extent_m(self) -> int:
        if self.kind == "c":
            return self.outer
        size = self.coords.max(axis=0) - self.coords.min(axis=0)
        return int(max(size[0], size[1] * self.cos) * 556 / 10000) + 1 + self.outer

    def shift(self) -> int:
        s = 0
        while self.half_extent_m() * 10 > MAXU << s:
            s += 1
        return s

    def local(self, latlon: np.ndarray) -> np.ndarray:
        """Integer udeg -> metres (x east, y north) in the documented frame."""
        clat, clon = self.centre
        y = (latlon[:, 0] - clat) * M_UDEG
        x = wrap(latlon[:, 1] - clon) * M_UDEG * self.cos
        return np.stack([x, y], axis=1)

    def polygon(self) -> Polygon:
        return Polygon(self.local(self.coords))

    def probe_line(self) -> str:
        if self.kind == "c":
            c = self.coords[0]
            return f"c {self.inner} {self.outer} {c[0]} {c[1]}"
        return f"p {self.outer} " + " ".join(str(int(v)) for v in self.coords.ravel())

    def band_m(self) -> dict[str, float]:
        """How far from each boundary the engine may disagree with the exact frame, m.

        From fence.py's integer arithmetic, per boundary:
        - offsets in microdegrees are exact; above s = 3 they first lose a = s - 3 low bits
          (floor), then are scaled and floored to the unit u = 2**s dm: each coordinate
          of a point (and of a polygon vertex) is off by less than u + (2**a - 1) udeg,
          so a point moves less than sqrt(2) times that, and so does an edge;
        - the scale of each axis is a fixed-point factor: the cos factor rounded to an
          integer (0.5 / factor, as the docs say) and KY = 9109 for 0.11119508 m per udeg
          (Q13); a scale error e changes a distance d by at most e * d (for polygons the
          scaling applies to points and vertices alike, so it only moves the buffer);
        - radii and the buffer are rounded to the unit: half a unit;
        - the buffer's edge distance uses each edge's unit direction rounded to Q14: the
          perpendicular is off by at most |offset from the edge's start| * sqrt(2) * 0.5
          / 16384, the offset being at most the longest edge plus the buffer.
        """
        s = self.shift()
        a = max(s - 3, 0)
        u = (1 << s) / 10
        coord = u + ((1 << a) - 1) * M_UDEG
        kx = max(1, round(self.cos * 91091 / 10))
        scale = max(0.5 / kx, abs(KY / 81920 / M_UDEG - 1))
        if self.kind == "c":
            move = math.sqrt(2) * coord
            return {
                "inner": move + u / 2 + scale * self.inner,
                "outer": move + u / 2 + scale * self.outer,
            }
        ring = np.asarray(self.polygon().exterior.coords)
        longest = float(np.max(np.hypot(*np.diff(ring, axis=0).T)))
        move = 2 * math.sqrt(2) * coord
        direction = (longest + self.outer + 2 * move) * math.sqrt(2) * 0.5 / Q14
        return {
            "inner": move,
            "outer": move + u / 2 + scale * self.outer + direction,
        }


def circle(name: str, base: tuple[int, int], inner: int, outer: int) -> Shape:
    return Shape(name, "c", inner, outer, np.array([base], dtype=np.int64))


def polygon(name: str, base: tuple[int, int], buffer: int, ne: list[tuple[int, int]]) -> Shape:
    c = to_udeg(base, np.array(ne, dtype=float))
    # Vertices stay contiguous across the antimeridian (as the gateway writes them):
    # each longitude relative to the first, so a ring may run past 180 degrees.
    c[:, 1] = c[0, 1] + wrap(c[:, 1] - c[0, 1])
    return Shape(name, "p", 0, buffer, c)


SHAPES = [
    circle("circle_20_60", BCN, 20, 60),
    circle("circle_60_150", BCN, 60, 150),
    circle("circle_150_1000", BCN, 150, 1000),
    circle("circle_1000_1200_lat60", LAT60, 1000, 1200),
    circle("circle_60_150_antimeridian", FIJI, 60, 150),
    polygon(
        "convex_hexagon_buffer50",
        BCN,
        50,
        [
            (round(250 * math.cos(k * math.pi / 3 + 0.2)), round(250 * math.sin(k * math.pi / 3)))
            for k in range(6)
        ],
    ),
    # A U: a notch 100 m wide and 120 m deep, wider than twice the buffer, so the bottom
    # of the notch is outside, its sides near.
    polygon(
        "concave_u_buffer40",
        BCN,
        40,
        [(0, 0), (200, 0), (200, 300), (0, 300), (0, 200), (120, 200), (120, 100), (0, 100)],
    ),
    polygon(
        "concave_l_buffer90_lat60",
        LAT60,
        90,
        [(0, 0), (400, 0), (400, 120), (120, 120), (120, 400), (0, 400)],
    ),
    # Astride the 180th meridian: vertices from 179.998 to 180.002 degrees.
    polygon(
        "pentagon_buffer25_antimeridian",
        (FIJI[0], HALF),
        25,
        [(-150, -200), (120, -180), (180, 60), (-20, 210), (-160, 90)],
    ),
]


def sample(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """Integer udeg points: uniform in a box, and on and near each boundary."""
    band = shape.band_m()
    if shape.kind == "c":
        reach = shape.outer * 1.2
        box = rng.uniform(-reach, reach, size=(N_BOX, 2))
        near = []
        for key, r in (("inner", shape.inner), ("outer", shape.outer)):
            d = r + offsets(band[key], rng)
            th = rng.uniform(0, 2 * math.pi, N_EDGE)
            near.append(np.stack([d * np.cos(th), d * np.sin(th)], axis=1))
        xy = np.concatenate([box, *near])
    else:
        poly = shape.polygon()
        grown = poly.buffer(shape.outer, quad_segs=64)
        x0, y0, x1, y1 = grown.bounds
        pad = 0.1 * max(x1 - x0, y1 - y0)
        box = np.stack(
            [rng.uniform(x0 - pad, x1 + pad, N_BOX), rng.uniform(y0 - pad, y1 + pad, N_BOX)],
            axis=1,
        )
        near = []
        for key, ring in (("inner", poly.exterior), ("outer", grown.exterior)):
            at = shapely.line_interpolate_point(ring, rng.uniform(0, 1, N_EDGE), normalized=True)
            on = shapely.get_coordinates(at)
            d = offsets(band[key], rng)
            th = rng.uniform(0, 2 * math.pi, N_EDGE)
            near.append(on + np.stack([d * np.cos(th), d * np.sin(th)], axis=1))
        xy = np.concatenate([box, *near])
    # Local metres -> udeg in the fence's own frame (so points land where intended).
    clat, clon = shape.centre
    lat = clat + np.round(xy[:, 1] / M_UDEG).astype(np.int64)
    lon = wrap(clon + np.round(xy[:, 0] / (M_UDEG * shape.cos)).astype(np.int64))
    return np.stack([lat, lon], axis=1)


def offsets(band: float, rng: np.random.Generator) -> np.ndarray:
    """Signed distances from a boundary: a tenth on it, the rest within 3 bands or 5 m."""
    n0 = N_EDGE // 10
    n1 = (N_EDGE - n0) // 2
    return np.concatenate(
        [
            np.zeros(n0),
            rng.uniform(-3 * band, 3 * band, n1),
            rng.uniform(-5, 5, N_EDGE - n0 - n1),
        ]
    )


def truth(shape: Shape, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shapely's class (0, 1, 2) per point, and each point's distance to either boundary."""
    xy = shape.local(pts)
    if shape.kind == "c":
        d = np.hypot(xy[:, 0], xy[:, 1])
        cls = (d <= shape.inner).astype(int) + (d <= shape.outer)
        return cls, np.abs(d - shape.inner), np.abs(d - shape.outer)
    poly = shape.polygon()
    p = shapely.points(xy)
    inside = shapely.covers(poly, p)
    dist = shapely.distance(poly, p)
    cls = np.where(inside, 2, np.where(dist <= shape.outer, 1, 0))
    to_ring = shapely.distance(poly.exterior, p)
    to_buffer = np.where(inside, shape.outer + to_ring, np.abs(dist - shape.outer))
    return cls, to_ring, to_buffer


def engine(shapes: list[Shape], pts: list[np.ndarray]) -> list[np.ndarray]:
    """The engine's class per point, one micropython process for all shapes."""
    lines = [s.probe_line() for s in shapes]
    for f, p in enumerate(pts, start=1):
        lines.extend(f"{f} {lat} {lon}" for lat, lon in p.tolist())
    proc = mpy.run(PROBE, heap="64K", input=("\n".join(lines) + "\n").encode(), timeout=120)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    digits = np.frombuffer(proc.stdout.replace(b"\n", b""), dtype=np.uint8) - ord("0")
    assert len(digits) == sum(len(p) for p in pts)
    return np.split(digits.astype(int), np.cumsum([len(p) for p in pts])[:-1])


@pytest.fixture(scope="module")
def results() -> dict[str, tuple[Shape, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(20260509)
    pts = [sample(s, rng) for s in SHAPES]
    got = engine(SHAPES, pts)
    return {s.name: (s, p, g) for s, p, g in zip(SHAPES, pts, got, strict=True)}


@pytest.mark.parametrize("name", [s.name for s in SHAPES])
def test_engine_agrees_with_shapely_outside_the_tolerance_band(
    name: str, results: dict[str, tuple[Shape, np.ndarray, np.ndarray]]
) -> None:
    shape, pts, got = results[name]
    band = shape.band_m()
    want, to_inner, to_outer = truth(shape, pts)
    # A disagreement is across the inner boundary (2 against 1, or 2 against 0 where the
    # outer is crossed too) and/or the outer one (1 or 2 against 0).
    lo = np.minimum(got, want)
    hi = np.maximum(got, want)
    across_inner = (hi == 2) & (lo < 2)
    across_outer = (lo == 0) & (hi > 0)
    excess = np.maximum(
        np.where(across_inner, to_inner - band["inner"], -np.inf),
        np.where(across_outer, to_outer - band["outer"], -np.inf),
    )
    in_band = (to_inner <= band["inner"]) | (to_outer <= band["outer"])
    wrong = got != want
    worst = max(
        np.max(to_inner[across_inner], initial=0.0), np.max(to_outer[across_outer], initial=0.0)
    )
    print(
        f"\n{name}: {len(pts)} points, {int(in_band.sum())} in the band "
        f"(inner {band['inner']:.3f} m, outer {band['outer']:.3f} m), "
        f"{int(wrong.sum())} disagree, the farthest {worst:.3f} m from its boundary; "
        f"classes engine {np.bincount(got, minlength=3).tolist()}"
    )
    # The sample reaches every class and the band, or it proves little.
    assert set(np.unique(want)) == {0, 1, 2}
    assert in_band.sum() >= 100
    bad = np.flatnonzero(excess > 0)
    assert not len(bad), [
        (
            pts[i].tolist(),
            int(got[i]),
            int(want[i]),
            round(float(to_inner[i]), 3),
            round(float(to_outer[i]), 3),
        )
        for i in bad[:10]
    ]


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_tolerance_band_is_small(shape: Shape) -> None:
    # The docs promise half a unit of rounding (5 cm up to 819 m) and 0.016 % for the cos
    # factor at 70 degrees: up to 819 m the whole band stays under half a metre, beyond it
    # under 0.05 % of the fence's half-extent (units of 0.2 m and more).
    band = shape.band_m()
    e = shape.half_extent_m()
    limit = 0.5 if e <= 819 else 0.0005 * e
    assert max(band.values()) < limit, (band, e)
