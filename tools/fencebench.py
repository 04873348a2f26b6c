"""`vantrack bench geofence`: the firmware's geofence engine per fix, beside a naive one.

A van plays a sample route (gps-sim's fixes at 1 Hz, dwelling at its stops) against 10,
100 and 500 circle stops: the route's own deliveries first, then stops scattered over a
20 x 20 km square around it, plus the depot and three polygon zones (a 4 km concave
low-emission zone, a 32-vertex pedestrian area round one delivery, a small loading bay on
the way). tools/mp/bench_geofence.py runs under `micropython` with the heap capped and
measures firmware/fence.py and, in the same run (each in its own process, same input and
heap), a naive version that checks every fence on every fix in floats (it lives in the
bench script, not the firmware):

  us per fix       time per check() (time.ticks_us; the loop without check() subtracted)
  heap B per fix   gc.mem_alloc() around each fix with gc disabled ("over heap": one
                   fix's garbage does not fit the heap that way); "naive req": what the
                   naive version requests per fix, micropython.mem_total() with gc running
  B per fence      heap the built fences hold / fences (gc.mem_alloc(), gc.collect())

A count that does not fit the capped heap is run again with --big-heap, and the table
says so. The engine's import cost and the projection's error bounds (pure maths on the
host: the engine's local frame against the great circle, the sphere against WGS84) are
printed with it. Figures are measured, never asserted.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import sys
import tempfile
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from . import gpssim, mpy, rig

BENCH = Path(__file__).parent / "mp" / "bench_geofence.py"
EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)
EARTH_RADIUS_M = 6_371_008.8
UDEG_PER_M = 1e6 * 180 / (math.pi * EARTH_RADIUS_M)  # microdegrees of latitude per metre
WGS84_A = 6_378_137.0
WGS84_E2 = 6.694_379_990_14e-3
RESULT = re.compile(r"^RESULT (.*)$", re.M)
HEAD = re.compile(r"^(IMPORT|FIXED) bytes=(\d+)", re.M)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def setup_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    p = sub.add_parser(
        name,
        help="firmware geofence engine per fix (micropython, 64K heap) vs a naive one",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--route", default="urban-round", help="sample route (default urban-round)")
    p.add_argument(
        "--counts", default="10,100,500", help="numbers of stops, comma-separated (10,100,500)"
    )
    p.add_argument("--rounds", type=int, default=3, help="timed passes per count (default 3)")
    p.add_argument(
        "--heap", default=mpy.DEFAULT_HEAP, help=f"micropython heap (default {mpy.DEFAULT_HEAP})"
    )
    p.add_argument(
        "--big-heap", default="512K", help="heap for a count that does not fit (default 512K)"
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the scattered stops (default 1)")
    p.set_defaults(func=run)


# ---- the input: fences and fixes ---------------------------------------------------------
Fence = tuple[int, int, int, list[int]]  # kind, inner_m, outer_m, coords (udeg)


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[int, int]:
    """The point north_m and east_m from (lat, lon) degrees, in microdegrees."""
    dlat = north_m * UDEG_PER_M
    dlon = east_m * UDEG_PER_M / math.cos(math.radians(lat + dlat / 2e6))
    return round(lat * 1e6 + dlat), round(lon * 1e6 + dlon)


def polygon(lat: float, lon: float, ne: Sequence[tuple[float, float]], buf: int) -> Fence:
    coords: list[int] = []
    for n, e in ne:
        coords.extend(offset(lat, lon, n, e))
    return (1, 0, buf, coords)


def fences(route: gpssim.Route, n_stops: int, seed: int) -> tuple[Fence, list[Fence], list[Fence]]:
    """The depot, n_stops stops (the route's deliveries first) and three polygon zones."""
    depot = route.stops[0]
    lats = [v[0] for v in route.vertices]
    lons = [v[1] for v in route.vertices]
    clat, clon = (min(lats) + max(lats)) / 2, (min(lons) + max(lons)) / 2
    stops: list[Fence] = [(0, 60, 150, list(offset(s.lat, s.lon, 0, 0))) for s in route.stops[1:]]
    rnd = random.Random(seed)
    while len(stops) < n_stops:
        n, e = rnd.uniform(-10_000, 10_000), rnd.uniform(-10_000, 10_000)
        stops.append((0, 60, 150, list(offset(clat, clon, n, e))))
    stops = stops[:n_stops]
    lez = [(-2000, -2000), (-2000, 2000), (0, 2000), (0, 0), (2000, 0), (2000, -2000)]
    shop = route.stops[len(route.stops) // 2]
    ring = [(200 * math.cos(a * math.pi / 16), 200 * math.sin(a * math.pi / 16)) for a in range(32)]
    bay_at = route.vertices[len(route.vertices) // 3]
    bay = [(-30, -20), (-30, 20), (0, 35), (30, 20), (30, -20), (0, -35), (-10, 0), (0, -25)]
    zones = [
        polygon(clat, clon, lez, 100),
        polygon(shop.lat, shop.lon, ring, 30),
        polygon(bay_at[0], bay_at[1], bay, 20),
    ]
    return (0, 100, 300, list(offset(depot.lat, depot.lon, 0, 0))), stops, zones


def fixes(route: gpssim.Route) -> list[tuple[int, int, int, int, int]]:
    """gps-sim's fixes along the route at 1 Hz: (t since 2000, lat, lon, hdop x100, sats)."""
    out = []
    for ep in gpssim.epochs(route, rate_hz=1.0, seed=1):
        t = int((ep.utc - EPOCH_2000).total_seconds())
        out.append((t, round(ep.lat * 1e6), round(ep.lon * 1e6), round(ep.hdop * 100), ep.sats))
    return out


def encode(
    depot: Fence, stops: list[Fence], zones: list[Fence], fx: list[tuple[int, ...]]
) -> bytes:
    """The bench script's input (its header says the layout)."""
    words = array("i", [len(stops), len(zones), len(fx)])
    for kind, inner, outer, coords in [depot, *stops, *zones]:
        words.extend([kind, inner, outer, len(coords), *coords])
    for f in fx:
        words.extend(f)
    if sys.byteorder != "little":
        words.byteswap()
    return words.tobytes()


# ---- running it ------------------------------------------------------------------------
@dataclass
class Result:
    heap: str
    impl: str
    fences: int
    fixes: int
    us_per_fix: float
    alloc_per_fix: float  # gc.mem_alloc(), gc off; < 0: one fix's garbage does not fit
    req_per_fix: float  # micropython.mem_total(), gc running
    bytes_stored: int
    events: int

    @property
    def bytes_per_fence(self) -> float:
        return self.bytes_stored / max(self.fences, 1)


@dataclass
class Run:
    stops: int
    results: dict[str, Result]
    head: dict[str, int]  # IMPORT, FIXED: the bench script's figures before it runs
    notes: list[str]


def run_bench(
    path: Path, heap: str, rounds: int, impl: str
) -> tuple[Result | None, dict[str, int], str]:
    """Run the bench script for one implementation: its result (None if it failed), the
    fence module's import cost and the engine's fixed cost, and what went wrong."""
    proc = mpy.run(BENCH, [str(path), str(rounds), impl], heap=heap, timeout=1800)
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    head = {k: int(v) for k, v in HEAD.findall(out)}
    m = RESULT.search(out)
    if proc.returncode != 0 or not m:
        lines = (err + out).strip().splitlines() or ["failed"]
        why = "MemoryError" if "MemoryError" in err else lines[-1][-120:]
        return None, head, why
    kv = dict(item.split("=", 1) for item in m.group(1).split())
    r = Result(
        heap, kv["impl"], int(kv["fences"]), int(kv["fixes"]), float(kv["us_per_fix"]),
        float(kv["alloc_per_fix"]), float(kv["req_per_fix"]), int(kv["bytes_stored"]),
        int(kv["events"]),
    )  # fmt: skip
    return r, head, ""


def measure(
    n_stops: int, args: argparse.Namespace, route: gpssim.Route, fx: list, tmp: Path
) -> Run:
    """Both implementations on the same input, each in its own micropython process with
    the capped heap, or the big one if it does not fit."""
    depot, stops, zones = fences(route, n_stops, args.seed)
    path = tmp / f"fences-{n_stops}.bin"
    path.write_bytes(encode(depot, stops, zones, fx))
    run = Run(n_stops, {}, {}, [])
    for impl in ("engine", "naive"):
        _progress(f"  {n_stops} stops, {impl}, heap {args.heap} ...")
        r, head, why = run_bench(path, args.heap, args.rounds, impl)
        if r is None:
            _progress(f"  {impl} with {n_stops} stops does not fit {args.heap} ({why}): "
                      f"again at {args.big_heap}")  # fmt: skip
            run.notes.append(f"{impl}: {why} at {args.heap}, run at {args.big_heap}")
            r, head2, why2 = run_bench(path, args.big_heap, args.rounds, impl)
            head = head or head2
            if r is None:
                run.notes.append(f"{impl}: {why2} at {args.big_heap} too")
        if r is not None:
            run.results[impl] = r
        run.head = run.head or head
    return run


# ---- the projection's error ----------------------------------------------------------------
def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(a))


def projection_error(lat: float, dist_m: float) -> float:
    """Largest relative error, over all bearings, of the engine's local-frame distance
    (equirectangular, cos taken at the fence's centre) against the great circle on the
    same sphere, for a point dist_m from a fence centred at lat."""
    worst = 0.0
    for b in range(0, 360, 3):
        # The point dist_m away on the sphere along bearing b (direct problem).
        d = dist_m / EARTH_RADIUS_M
        p1 = math.radians(lat)
        br = math.radians(b)
        p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(br))
        dl = math.atan2(
            math.sin(br) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
        )
        dy = (p2 - p1) * EARTH_RADIUS_M
        dx = dl * math.cos(p1) * EARTH_RADIUS_M
        local = math.hypot(dx, dy)
        true_d = haversine_m(lat, 0.0, math.degrees(p2), math.degrees(dl))
        worst = max(worst, abs(local - true_d) / true_d)
    return worst


def sphere_scale_error(lat: float) -> tuple[float, float]:
    """Relative error of the mean-radius sphere's metres against WGS84 at lat: along the
    meridian and along the parallel."""
    s2 = math.sin(math.radians(lat)) ** 2
    meridian = WGS84_A * (1 - WGS84_E2) / (1 - WGS84_E2 * s2) ** 1.5
    normal = WGS84_A / math.sqrt(1 - WGS84_E2 * s2)
    return EARTH_RADIUS_M / meridian - 1, EARTH_RADIUS_M / normal - 1


def print_accuracy() -> None:
    lats = (0, 30, 45, 60, 70)
    dists = (150, 1000, 5000, 12000)
    print("\nprojection error: the engine's local frame against the great circle (same sphere),")
    print("largest over all bearings, % of the distance")
    print(f"{'lat':>5}" + "".join(f"{d:>10} m" for d in dists))
    for lat in lats:
        print(f"{lat:>5}" + "".join(f"{100 * projection_error(lat, d):>11.3f}%" for d in dists))
    print("\nthe mean-radius sphere against WGS84 (% of the distance; both signs occur)")
    print(f"{'lat':>5}{'N-S':>9}{'E-W':>9}{'cos factor':>12}")
    for lat in lats:
        ns, ew = sphere_scale_error(lat)
        kx = round(math.cos(math.radians(lat)) * 9109.1)
        print(f"{lat:>5}{100 * ns:>8.2f}%{100 * ew:>8.2f}%{100 * 0.5 / kx:>11.3f}%")
    print("(cos factor: rounding of the fence's fixed-point cos factor, E-W only)")


# ---- the command -------------------------------------------------------------------------
def _fmt_alloc(r: Result | None, requested: bool = False) -> str:
    if r is None:
        return "-"
    v = r.req_per_fix if requested else r.alloc_per_fix
    return "over heap" if v < 0 else f"{v:,.0f}"


def run(args: argparse.Namespace) -> int:
    counts = [int(c) for c in str(args.counts).split(",") if c.strip()]
    route = gpssim.load_route(rig.sample_route(args.route))
    _progress(f"bench geofence: {args.route}, gps-sim fixes at 1 Hz ...")
    fx = fixes(route)
    runs = []
    with tempfile.TemporaryDirectory(prefix="vantrack-fencebench-") as tmp:
        for n in counts:
            runs.append(measure(n, args, route, fx, Path(tmp)))
    print(f"\n{args.route}: {len(fx)} fixes at 1 Hz; each count with the depot and 3 polygon zones")
    print(
        f"\n{'':>17}{'us per fix':>20}{'':>6}{'heap bytes per fix':>32}{'bytes per fence':>22}"
        f"\n{'stops':>6}{'heap':>11}{'engine':>10}{'naive':>10}{'x':>6}{'engine':>8}{'naive':>12}"
        f"{'naive req':>12}{'engine':>11}{'naive':>11}{'events':>8}"
    )
    ok = True
    for r in runs:
        e, nv = r.results.get("engine"), r.results.get("naive")
        ok &= e is not None and nv is not None
        speed = f"{nv.us_per_fix / e.us_per_fix:.0f}" if e and nv and e.us_per_fix > 0 else "-"
        heaps = "/".join(dict.fromkeys(x.heap for x in (e, nv) if x))
        e_us = f"{e.us_per_fix:.1f}" if e else "-"
        n_us = f"{nv.us_per_fix:.1f}" if nv else "-"
        e_b = f"{e.bytes_per_fence:.1f}" if e else "-"
        n_b = f"{nv.bytes_per_fence:.1f}" if nv else "-"
        print(
            f"{r.stops:>6}{heaps:>11}{e_us:>10}{n_us:>10}{speed:>6}{_fmt_alloc(e):>8}"
            f"{_fmt_alloc(nv):>12}{_fmt_alloc(nv, True):>12}{e_b:>11}{n_b:>11}"
            f"{(e.events if e else '-'):>8}"
        )
        for note in r.notes:
            print(f"{'':>6}  ({note})")
    head = next((r.head for r in runs if r.head), {})
    print(
        f"\nfence module import: {head.get('IMPORT')} bytes of heap (.mpy, after gc.collect()).\n"
        f"engine fixed cost: {head.get('FIXED')} bytes (an engine on an empty route: the object,\n"
        "its scalars and slots, its arrays with room for the depot and 4 zones).\n"
        "heap bytes per fix: gc.mem_alloc() around each fix with gc disabled ('over heap':\n"
        "one fix's garbage does not fit that way); naive req: micropython.mem_total() with gc\n"
        "running, bytes requested before rounding to 32-byte GC blocks.\n"
        "bytes per fence: heap held by the built fences / fences (depot, stops, zones; the\n"
        "engine's fixed slot table and the polygons' vertices included).\n"
        "Objects on this 64-bit port are up to twice their ESP32 size; arrays are not.\n"
        "Each implementation runs in its own micropython process, same input, same heap."
    )
    print_accuracy()
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="fencebench")
    sub = parser.add_subparsers(dest="bench", required=True)
    setup_bench(sub, "geofence")
    ns = parser.parse_args(["geofence", *sys.argv[1:]])
    sys.exit(ns.func(ns))
