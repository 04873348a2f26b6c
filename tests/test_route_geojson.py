"""Route files (GeoJSON) in, checked routes out: what is accepted, what it becomes, and
every refusal named by its feature (gateway/route.py, docs/routes.md).

The bad files in tests/data/routes/ hold one error class each, several cases per file;
each test lists every message the file must produce, so a missing check, an extra one
or a vaguer message fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vantrack.gateway import route, wire

DATA = Path(__file__).resolve().parent / "data" / "routes"


def errors_of(name: str) -> list[str]:
    with pytest.raises(route.RouteFileError) as e:
        route.load_file(DATA / name, source=name)
    return e.value.errors


def point(lon: float, lat: float, **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "properties": props,
            "geometry": {"type": "Point", "coordinates": [lon, lat]}}  # fmt: skip


def collection(*features: dict[str, Any], **props: Any) -> str:
    doc: dict[str, Any] = {"type": "FeatureCollection", "features": list(features)}
    if props:
        doc["properties"] = props
    return json.dumps(doc)


def stops(n: int) -> list[dict[str, Any]]:
    """n circle stops on a Barcelona grid (100-150 m apart)."""
    return [
        point(2.15 + (i // 25) * 0.0017, 41.38 + (i % 25) * 0.0013, stop_id=f"S-{i + 1:03d}",
              seq=i + 1)
        for i in range(n)
    ]  # fmt: skip


# ---- refusals, one error class per file ----------------------------------------------


def test_bad_json_names_line_and_column() -> None:
    assert errors_of("bad-json.geojson") == [
        "bad-json.geojson: bad JSON at line 5, column 3: Expecting ',' delimiter"
    ]


def test_not_a_feature_collection() -> None:
    assert errors_of("not-a-collection.geojson") == [
        'not-a-collection.geojson: expected a GeoJSON FeatureCollection, found "Feature"'
    ]


def test_ids_missing_duplicate_not_text_too_long() -> None:
    f = "ids.geojson: features"
    assert errors_of("ids.geojson") == [
        f"{f}[0]: properties.stop_id is missing (a stop needs an id)",
        f'{f}[2] (stop_id "S-2"): duplicate id "S-2" (also features[1])',
        f'{f}[3] (stop_id 4): stop_id must be a string (write "4")',
        f'{f}[4] (stop_id "a-stop-id-longer-than-thirty-two-bytes"): stop_id must be 1..32 '
        "bytes of printable text",
        f"{f}[5]: properties.zone_id is missing (a zone needs an id)",
        # Events carry the fence id alone: a zone may not share a stop's id.
        f'{f}[6] (zone_id "S-2"): duplicate id "S-2" (also features[1])',
    ]


def test_seq_missing_duplicate_or_not_a_positive_integer() -> None:
    f = "seqs.geojson: features"
    assert errors_of("seqs.geojson") == [
        f'{f}[0] (stop_id "S-1"): properties.seq is missing (stops are visited in seq order)',
        f'{f}[2] (stop_id "S-3"): duplicate seq 2 (also features[1])',
        f'{f}[3] (stop_id "S-4"): seq 0 is not an integer >= 1',
        f'{f}[4] (stop_id "S-5"): seq "5" is not an integer >= 1',
        f'{f}[5] (stop_id "S-6"): seq 6.5 is not an integer >= 1',
    ]


def test_coordinates_out_of_range_at_null_island_or_not_numbers() -> None:
    f = "coordinates.geojson: features"
    assert errors_of("coordinates.geojson") == [
        f'{f}[0] (stop_id "S-1"): Point: longitude 200.0 is outside -180..180',
        f'{f}[1] (stop_id "S-2"): Point: latitude -95.0 is outside -90..90',
        f'{f}[2] (stop_id "S-3"): Point: [0, 0] is within 1 km of [0, 0] (a missing geocode?)',
        f'{f}[3] (stop_id "S-4"): Point: ["2.17", "41.39"] is not a position [lon, lat] of numbers',
        f'{f}[4] (stop_id "S-5"): Point: [2.17] is not a position [lon, lat] of numbers',
    ]  # features[5] has an elevation: allowed by RFC 7946, ignored


def test_a_point_written_lat_lon_is_named_as_such() -> None:
    assert errors_of("swapped-point.geojson") == [
        'swapped-point.geojson: features[1] (stop_id "SYD-2"): Point: latitude 151.207 is '
        "beyond ±90: [-33.8701, 151.207] looks like [lat, lon]; GeoJSON is [lon, lat]"
    ]


def test_a_swapped_point_that_is_still_on_earth_is_caught_by_its_distance() -> None:
    # [41.40, 2.18] is a valid [lon, lat] (off Somalia); only its distance gives it away.
    assert errors_of("swapped-outlier.geojson") == [
        'swapped-outlier.geojson: features[4] (stop_id "S-4"): is about 5,451 km from the '
        "middle of the other features (more than 500 km); looks like [lat, lon]; GeoJSON is "
        "[lon, lat]"
    ]


def test_a_far_feature_that_is_not_swapped_gets_no_swap_hint() -> None:
    text = collection(*stops(4), point(2.3522, 48.8566, stop_id="PAR", seq=9))
    with pytest.raises(route.RouteFileError) as e:
        route.load_geojson(text, "r.json")
    assert e.value.errors == [
        'r.json: features[4] (stop_id "PAR"): is about 831 km from the middle of the other '
        "features (more than 500 km)"
    ]


def test_rings_unclosed_degenerate_crossing_holed_too_wide() -> None:
    f = "rings.geojson: features"
    crosses = "Polygon ring intersects itself"
    numbered = "(positions numbered from 0)"
    assert errors_of("rings.geojson") == [
        f'{f}[0] (stop_id "P-open"): Polygon ring is not closed (first [lon, lat] != last)',
        f'{f}[1] (stop_id "P-open5"): Polygon ring is not closed (first [lon, lat] != last)',
        f'{f}[2] (stop_id "P-two"): Polygon ring has 2 distinct vertices, at least 3',
        f'{f}[3] (stop_id "P-bowtie"): {crosses}: edge 0-1 meets edge 2-3 {numbered}',
        # A figure of eight touching itself at one point is not a simple ring either.
        f'{f}[4] (stop_id "P-eight"): {crosses}: edge 1-2 meets edge 4-5 {numbered}',
        # An edge doubling back over the previous one (a spike of no area).
        f'{f}[5] (stop_id "P-spike"): {crosses}: edge 1-2 meets edge 2-3 {numbered}',
        f'{f}[6] (stop_id "P-hole"): Polygon has 1 hole: only an outer ring is supported',
        f'{f}[7] (stop_id "P-wide"): Polygon is 33.4 km across, at most 20 km (a fence, not a '
        "region)",
        f'{f}[8] (stop_id "P-flat"): {crosses}: edge 1-2 meets edge 2-0 {numbered}',
        f'{f}[9] (stop_id "P-short"): Polygon ring has 3 positions, a closed ring needs 4+',
    ]  # features[10], concave, is fine


def test_too_many_vertices() -> None:
    import math

    ring = [[2.17 + 0.001 * math.cos(k / 65 * 2 * math.pi),
             41.39 + 0.001 * math.sin(k / 65 * 2 * math.pi)] for k in range(65)]  # fmt: skip
    feat = {"type": "Feature", "properties": {"stop_id": "P", "seq": 1},
            "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]}}  # fmt: skip
    with pytest.raises(route.RouteFileError) as e:
        route.load_geojson(collection(feat), "r.json")
    assert e.value.errors == ['r.json: features[0] (stop_id "P"): Polygon ring has 65 '
                              "vertices, at most 64"]  # fmt: skip
    feat["geometry"]["coordinates"] = [ring[:64] + [ring[0]]]
    assert route.load_geojson(collection(feat)).route.stops[0].kind == route.Kind.POLYGON


def test_radii_out_of_range_inverted_or_ambiguous() -> None:
    f = "radii.geojson: features"
    approaching = "approaching radius {} m must be more than the arrived radius {} m and at most"
    assert errors_of("radii.geojson") == [
        f'{f}[0] (stop_id "R-1"): arrived radius 2 m is outside 5..1000 m',
        f'{f}[1] (stop_id "R-2"): arrived radius 1500 m is outside 5..1000 m',
        f'{f}[2] (stop_id "R-3"): {approaching.format(70, 80)} 5000 m',
        f'{f}[3] (stop_id "R-4"): {approaching.format(6000, 80)} 5000 m',
        f'{f}[4] (stop_id "R-5"): {approaching.format(150, 200)} 5000 m (radius_out_m '
        "defaults to 150)",
        f'{f}[5] (stop_id "R-6"): give radius_m or radius_in_m, not both',
        f'{f}[6] (stop_id "R-7"): radius_m "60" is not a number of metres',
        f'{f}[7] (stop_id "R-8"): buffer_m 3000 is outside 0..2000 m',
    ]


def test_windows_and_service_times() -> None:
    f = "windows.geojson: features"
    assert errors_of("windows.geojson") == [
        f'{f}[0] (stop_id "W-1"): window_start "tomorrow at 9" is not an ISO 8601 date-time',
        f'{f}[1] (stop_id "W-2"): window_start "2026-05-09T09:00:00" has no UTC offset (add Z '
        "or +hh:mm)",
        f'{f}[2] (stop_id "W-3"): window_end is not after window_start',
        f'{f}[3] (stop_id "W-4"): service_s -5 is not a number of seconds 0..86400',
        f'{f}[4] (stop_id "W-5"): service_s "2m" is not a number of seconds 0..86400',
        f'{f}[5] (stop_id "W-6"): window_start "1999-12-31T23:00:00Z" is outside 2000..2136',
    ]


def test_geometry_types_roles_and_depots() -> None:
    f = "geometry.geojson: features"
    assert errors_of("geometry.geojson") == [
        f'{f}[0] (stop_id "G-1"): geometry "LineString" is not supported (Point or Polygon)',
        f'{f}[1] (stop_id "G-2"): has no geometry (a Point or a Polygon)',
        f'{f}[2] (stop_id "G-3"): geometry "MultiPolygon" is not supported (Point or Polygon)',
        f'{f}[3] (stop_id "G-4"): role "warehouse" is not "stop", "depot" or "zone"',
        f'{f}[5] (depot "D-2"): a second depot (the first is "D-1")',
        f"{f}[6]: not a GeoJSON Feature",
    ]


def test_thresholds_out_of_range() -> None:
    assert errors_of("params.geojson") == [
        "params.geojson: properties.hdop_max: 40 is not a number in 0.1..25.5",
        "params.geojson: properties.sats_min: 2.5 is not an integer in 0..32",
        "params.geojson: properties.confirm_s: -1 is not an integer in 0..3600",
    ]


@pytest.mark.parametrize(
    ("kind", "n", "message"),
    [("stop", 501, 'features[500] (stop_id "S-501"): more than 500 stops'),
     ("zone", 65, 'features[64] (zone_id "Z-65"): more than 64 zones')],
)  # fmt: skip
def test_more_features_than_a_van_holds(kind: str, n: int, message: str) -> None:
    if kind == "stop":
        features = stops(n)
    else:
        features = [point(2.17 + i * 1e-3, 41.39, role="zone", zone_id=f"Z-{i + 1}")
                    for i in range(n)]  # fmt: skip
    with pytest.raises(route.RouteFileError) as e:
        route.load_geojson(collection(*features), "r.json")
    assert e.value.errors == [f"r.json: {message}"]
    assert route.load_geojson(collection(*features[:-1])).route  # one fewer is fine


def test_all_errors_are_reported_up_to_twenty_then_counted() -> None:
    features = [point(2.17, 41.39, stop_id=f"S-{i}") for i in range(30)]  # no seq
    with pytest.raises(route.RouteFileError) as e:
        route.load_geojson(collection(*features), "r.json")
    assert len(e.value.errors) == 21
    assert e.value.errors[0].startswith('r.json: features[0] (stop_id "S-0"): properties.seq')
    assert e.value.errors[19].startswith('r.json: features[19] (stop_id "S-19"):')
    assert e.value.errors[20] == "r.json: ... and 10 more errors"


def test_unreadable_file_is_a_route_file_error(tmp_path: Path) -> None:
    with pytest.raises(route.RouteFileError) as e:
        route.load_file(tmp_path / "missing.geojson")
    assert e.value.errors == [f"{tmp_path / 'missing.geojson'}: cannot read: No such file or "
                              "directory"]  # fmt: skip


def test_nan_is_not_json() -> None:
    with pytest.raises(route.RouteFileError) as e:
        route.load_geojson('{"type": "FeatureCollection", "features": [NaN]}', "r.json")
    assert e.value.errors == ["r.json: bad JSON: NaN is not a JSON number"]


def test_json_nested_too_deeply_is_an_error_not_a_crash() -> None:
    with pytest.raises(route.RouteFileError) as e:
        route.load_geojson("[" * 100_000 + "]" * 100_000, "r.json")
    assert e.value.errors == ["r.json: bad JSON: nested too deeply"]


# ---- what a good file becomes --------------------------------------------------------


def test_valid_file_becomes_the_route_the_van_gets() -> None:
    loaded = route.load_file(DATA / "valid.geojson")
    r = loaded.route
    assert loaded.warnings == []
    # Thresholds: only those that differ from the van's defaults (sats_min 4 is one).
    assert r.params == {route.Param.HDOP_MAX_X10: 35, route.Param.CONFIRM_S: 15}
    assert r.depot == route.Fence(
        "depot", route.Kind.POLYGON, 0, 30,
        (41_404_500, 2_199_000, 41_404_500, 2_200_000, 41_405_200, 2_200_000, 41_405_200,
         2_199_000),
    )  # fmt: skip
    # Stops in seq order, whatever the file's order.
    assert [(s.id, s.seq) for s in r.stops] == [("S-10", 10), ("S-20", 20), ("S-30", 30)]
    s10, s20, s30 = r.stops
    assert (s10.kind, s10.inner_m, s10.outer_m, s10.coords) == (
        route.Kind.CIRCLE, 35, 150, (41_405_318, 2_193_361))  # fmt: skip
    assert (s20.inner_m, s20.outer_m, s20.service_s) == (40, 120, 240)
    # Windows in the reports' time base: GPS seconds since 2000 (10:00+02:00 = 08:00Z).
    assert wire.gps_time(s20.window_start or 0).isoformat() == "2026-05-09T08:00:00+00:00"
    assert wire.gps_time(s20.window_end or 0).isoformat() == "2026-05-09T10:00:00+00:00"
    assert (s30.kind, s30.outer_m, s30.window_start) == (route.Kind.POLYGON, 90, None)
    assert wire.gps_time(s30.window_end or 0).isoformat() == "2026-05-09T14:00:00+00:00"
    assert len(s30.vertices) == 5  # closing vertex dropped
    z1, z2 = r.zones
    assert (z1.id, z1.kind, z1.inner_m, z1.outer_m) == ("Z-1", route.Kind.CIRCLE, 100, 180)
    assert (z2.id, z2.kind, z2.outer_m, len(z2.vertices)) == ("Z-2", route.Kind.POLYGON, 90, 3)
    assert route.summary(r) == '3 stops (1 polygon), depot "depot", 2 zones'


def test_defaults_for_a_bare_point_stop_and_depot_id() -> None:
    text = collection(point(2.17, 41.39, role="depot"), point(2.171, 41.391, stop_id="A", seq=1))
    r = route.load_geojson(text).route
    assert r.depot is not None and (r.depot.id, r.depot.inner_m, r.depot.outer_m) == (
        "depot", 60, 150)  # fmt: skip
    assert (r.stops[0].inner_m, r.stops[0].outer_m, r.params) == (60, 150, {})


def test_radius_m_sets_the_arrived_radius_and_keeps_the_approaching_default() -> None:
    r = route.load_geojson(collection(point(2.17, 41.39, stop_id="A", seq=1, radius_m=25.4)))
    assert (r.route.stops[0].inner_m, r.route.stops[0].outer_m) == (25, 150)


def test_polygon_across_the_antimeridian_keeps_its_vertices_contiguous() -> None:
    r = route.load_file(DATA / "antimeridian.geojson").route
    poly = r.stops[0]
    # 179.999 then -179.999 is written 180.001: 222 m east, not 360 degrees west.
    assert poly.vertices == [(-16_790_000, 179_999_000), (-16_790_000, 180_001_000),
                             (-16_788_000, 180_001_000), (-16_788_000, 179_999_000)]  # fmt: skip
    # Circles keep their longitude as written.
    assert r.stops[1].coords == (-16_785_000, -179_997_000)


def test_polygon_starting_west_of_the_antimeridian_goes_below_minus_180() -> None:
    ring = [[-179.999, -16.79], [179.999, -16.79], [179.999, -16.788], [-179.999, -16.788],
            [-179.999, -16.79]]  # fmt: skip
    feat = {"type": "Feature", "properties": {"stop_id": "P", "seq": 1},
            "geometry": {"type": "Polygon", "coordinates": [ring]}}  # fmt: skip
    poly = route.load_geojson(collection(feat)).route.stops[0]
    assert [lon for _, lon in poly.vertices] == [-179_999_000, -180_001_000, -180_001_000,
                                                 -179_999_000]  # fmt: skip


def test_an_empty_collection_is_an_empty_route_with_a_warning() -> None:
    loaded = route.load_geojson(collection(), "r.json")
    assert loaded.route == route.Route({}, None, (), ())
    assert loaded.warnings == ["r.json: no stops: the van gets an empty route"]


def test_unknown_top_level_property_is_a_warning_not_an_error() -> None:
    loaded = route.load_geojson(collection(*stops(1), hdop_mx=3, name="Tuesday"), "r.json")
    assert loaded.warnings == [
        'r.json: properties: "hdop_mx" is not a threshold (hdop_max, sats_min, confirm_s, '
        "hold_s, depot_leave_s): ignored"
    ]
    assert loaded.route.params == {}


def test_thresholds_in_file_units() -> None:
    text = collection(*stops(1), hdop_max=2.5, sats_min=6, hold_s=45, depot_leave_s=120)
    r = route.load_geojson(text).route
    assert r.params == {0: 25, 1: 6, 3: 45}  # depot_leave_s 120 is the default: not sent
    assert dict(route.param_names(r.params)) == {"hdop_max": 2.5, "sats_min": 6, "hold_s": 45}


def test_sample_stop_files_load() -> None:
    samples = sorted((DATA.parent.parent.parent / "tools" / "routes").glob("*.stops.geojson"))
    assert [p.name for p in samples] == [
        "highway-run.stops.geojson", "sao-paulo-paulista.stops.geojson",
        "urban-round.stops.geojson",
    ]  # fmt: skip
    for p in samples:
        loaded = route.load_file(p)
        assert loaded.warnings == [] and loaded.route.depot is not None


# ---- the ring test itself ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ring", "crossing"),
    [
        ([(0, 0), (10, 0), (10, 10), (0, 10)], None),  # square
        ([(0, 0), (10, 0), (5, 5), (10, 10), (0, 10)], None),  # concave
        ([(0, 0), (10, 0), (10, 10), (0, 10), (0, 5)], None),  # straight-through vertex
        ([(0, 0), (10, 10), (10, 0), (0, 10)], (0, 2)),  # bow-tie
        ([(0, 0), (10, 0), (5, 0), (5, 5)], (0, 1)),  # doubles back on itself
        ([(0, 0), (10, 0), (10, 10), (5, 0), (0, 10)], (0, 2)),  # touches an edge: T
        ([(0, 0), (4, 0), (4, 4), (2, 0), (2, -3), (0, -3)], (0, 2)),
    ],
)
def test_ring_crossing(ring: list[tuple[int, int]], crossing: tuple[int, int] | None) -> None:
    assert route.ring_crossing(ring) == crossing


@settings(max_examples=200, deadline=None)
@given(st.integers(3, 12), st.integers(0, 2**32 - 1))
def test_star_shaped_rings_never_cross(n: int, seed: int) -> None:
    """Vertices in angle order around a centre at varying radii: always a simple ring."""
    import math
    import random

    rng = random.Random(seed)
    angles = sorted(rng.uniform(0, 2 * math.pi) for _ in range(n))
    assume(len({round(a, 6) for a in angles}) == n)
    ring = [(round(1e6 * rng.uniform(0.2, 1) * math.cos(a)),
             round(1e6 * rng.uniform(0.2, 1) * math.sin(a))) for a in angles]  # fmt: skip
    # Every edge must keep the centre on its left, or the ring is not star-shaped.
    assume(all(route._orient(ring[i - 1], ring[i], (0, 0)) > 0 for i in range(n)))
    assert route.ring_crossing(ring) is None


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["type", "features", "properties", "geometry",
                                        "coordinates", "stop_id", "seq", "role", "zone_id",
                                        "radius_m", "buffer_m", "window_start"]),
                      children, max_size=5),
    max_leaves=30,
))  # fmt: skip
def test_any_json_is_a_route_or_a_clear_error(doc: Any) -> None:
    if isinstance(doc, dict):
        doc.setdefault("type", "FeatureCollection")
    try:
        loaded = route.load_geojson(json.dumps(doc), "r.json")
    except route.RouteFileError as e:
        assert e.errors and all(line.startswith("r.json: ") for line in e.errors)
    else:
        route.validate(loaded.route.encode(1))
