"""The route as the van gets it: CBOR per gateway/route.cddl, checked with zcbor.

Every route the loader produces must validate against the CDDL and decode back to the
same route; the CDDL must refuse what the van could not use; the sizes in
docs/routes.md are the ones measured here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vantrack.gateway import route, wire

ROOT = Path(__file__).resolve().parent.parent
GOOD_FILES = [
    ROOT / "tests" / "data" / "routes" / "valid.geojson",
    ROOT / "tests" / "data" / "routes" / "antimeridian.geojson",
    *sorted((ROOT / "tools" / "routes").glob("*.stops.geojson")),
]


@pytest.mark.parametrize("path", GOOD_FILES, ids=lambda p: p.name)
def test_loaded_routes_validate_against_the_cddl_and_decode_back_equal(path: Path) -> None:
    r = route.load_file(path).route
    payload = r.encode(7)
    route.validate(payload)
    assert route.decode(payload) == (7, r)
    # Deterministic: the same route always encodes to the same bytes (and ETag).
    assert cbor2.dumps(cbor2.loads(payload), canonical=True) == payload
    assert r.encode(7) == payload


def test_layout_of_a_route_as_the_cddl_and_docs_describe_it() -> None:
    r = route.load_file(ROOT / "tests" / "data" / "routes" / "valid.geojson").route
    obj = cbor2.loads(r.encode(3))
    assert obj[:3] == [1, 3, {0: 35, 2: 15}]
    assert obj[3] == ["depot", 1, 0, 30, [41404500, 2199000, 41404500, 2200000, 41405200,
                                          2200000, 41405200, 2199000]]  # fmt: skip
    t0 = round((wire.gps_time(0).replace(year=2026, month=5, day=9, hour=8)
                - wire.gps_time(0)).total_seconds())  # fmt: skip
    assert obj[4] == [
        ["S-10", 0, 35, 150, [41405318, 2193361], 10],  # no window, no service: seq only
        ["S-20", 0, 40, 120, [41406233, 2206919], 20, t0, t0 + 7200, 240],
        ["S-30", 1, 0, 90, [41402500, 2182000, 41402500, 2182400, 41402900, 2182400,
                            41402700, 2182200, 41402900, 2182000], 30, None, t0 + 6 * 3600],
    ]  # fmt: skip
    assert obj[5] == [["Z-1", 0, 100, 180, [41400000, 2180000]],
                      ["Z-2", 1, 0, 90, [41401000, 2175000, 41401000, 2176000, 41402000,
                                         2176000]]]  # fmt: skip


def _good() -> list[Any]:
    return cbor2.loads(route.load_file(GOOD_FILES[0]).route.encode(1))  # type: ignore[no-any-return]


def _set(obj: list[Any], path: tuple[int, ...], value: Any) -> list[Any]:
    target = obj
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return obj


BAD: dict[str, tuple[tuple[int, ...], Any]] = {
    "format version 2": ((0,), 2),
    "negative version": ((1,), -1),
    "threshold out of range": ((2,), {0: 0}),
    "negative threshold": ((2,), {3: -5}),
    "threshold key too big": ((2,), {70000: 1}),
    "kind 2": ((4, 0, 1), 2),
    "circle with inner 0": ((4, 0, 2), 0),
    "circle inner too big": ((4, 0, 2), 1001),
    "circle with 3 coords": ((4, 0, 4), [1, 2, 3]),
    "latitude beyond 90": ((4, 0, 4), [90_000_001, 0]),
    "circle longitude beyond 180": ((4, 0, 4), [0, 180_000_001]),
    "polygon with 2 vertices": ((4, 2, 4), [1, 2, 3, 4]),
    "polygon with odd coords": ((4, 2, 4), [1, 2, 3, 4, 5, 6, 7]),
    "polygon with 65 vertices": ((4, 2, 4), [1, 2] * 65),
    "polygon with inner 1": ((4, 2, 2), 1),
    "polygon buffer too big": ((4, 2, 3), 2001),
    "polygon longitude beyond 360": ((4, 2, 4), [0, 360_000_001, 1, 1, 2, 2]),
    "empty id": ((4, 0, 0), ""),
    "id of 33 bytes": ((4, 0, 0), "x" * 33),
    "integer id": ((4, 0, 0), 7),
    "stop without seq": ((4, 0), ["S-10", 0, 35, 150, [41405318, 2193361]]),
    "stop with five extras": ((4, 1), ["S", 0, 40, 120, [1, 2], 20, 1, 2, 3, 4]),
    "service beyond a day": ((4, 1, 8), 86_401),
    "zone with a seq": ((5, 0), ["Z-1", 0, 100, 180, [41400000, 2180000], 1]),
    "depot that is a stop": ((3,), ["D", 0, 60, 150, [1, 2], 1]),
}


@pytest.mark.parametrize("case", BAD)
def test_cddl_refuses_what_the_van_could_not_use(case: str) -> None:
    path, value = BAD[case]
    payload = cbor2.dumps(_set(_good(), path, value), canonical=True)
    with pytest.raises(route.RouteFormatError):
        route.validate(payload)


def test_cddl_allows_unknown_thresholds_for_later_versions() -> None:
    route.validate(cbor2.dumps(_set(_good(), (2,), {0: 35, 9: -3}), canonical=True))


# Sizes documented in docs/routes.md ("Sizes"): ids "S-001".., default radii, seq, a depot.
DOCUMENTED_BYTES = {
    (10, "circle"): 269, (100, "circle"): 2507, (500, "circle"): 12753,
    (10, "windows"): 389, (100, "windows"): 3707, (500, "windows"): 18753,
    (10, "polygon"): 959, (100, "polygon"): 9407, (500, "polygon"): 47253,
}  # fmt: skip


def sized_route(n: int, style: str) -> str:
    depot = {"type": "Point", "coordinates": [2.199582, 41.404925]}
    feats: list[dict[str, Any]] = [
        {"type": "Feature", "properties": {"role": "depot"}, "geometry": depot}
    ]
    for i in range(n):
        lat, lon = 41.38 + (i % 25) * 0.0013, 2.15 + (i // 25) * 0.0017
        props: dict[str, Any] = {"stop_id": f"S-{i + 1:03d}", "seq": i + 1}
        if style == "windows":
            props |= {"window_start": "2026-05-09T08:00:00Z",
                      "window_end": "2026-05-09T10:00:00Z", "service_s": 120}  # fmt: skip
        if style == "polygon":  # 8 vertices
            d = 0.0002
            ring = [[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon + d / 2, lat + 1.5 * d],
                    [lon, lat + d], [lon - d / 2, lat + d / 2], [lon - d / 2, lat + d / 4],
                    [lon - d / 4, lat], [lon, lat]]  # fmt: skip
            geom: dict[str, Any] = {"type": "Polygon", "coordinates": [ring]}
        else:
            geom = {"type": "Point", "coordinates": [round(lon, 6), round(lat, 6)]}
        feats.append({"type": "Feature", "properties": props, "geometry": geom})
    return json.dumps({"type": "FeatureCollection", "features": feats})


@pytest.mark.parametrize(("n", "style"), DOCUMENTED_BYTES)
def test_route_sizes_are_the_documented_ones(n: int, style: str) -> None:
    payload = route.load_geojson(sized_route(n, style)).route.encode(1)
    route.validate(payload)
    assert len(payload) == DOCUMENTED_BYTES[n, style]


def test_request_mac_and_etag() -> None:
    key = bytes(range(16))
    # HMAC-SHA256(key, "vantrack-route:42") truncated to 8 bytes: the same MAC as reports.
    import hashlib
    import hmac

    want = hmac.new(key, b"vantrack-route:42", hashlib.sha256).digest()[:8]
    assert route.request_mac(key, 42) == want
    assert route.etag(b"abc") == hashlib.sha256(b"abc").digest()[:8]


_ids = st.text(st.characters(codec="utf-8", categories=("L", "N", "P")), min_size=1, max_size=8)
_lat = st.integers(-89_000_000, 89_000_000)
_lon = st.integers(-179_000_000, 179_000_000)


@st.composite
def routes(draw: st.DrawFn) -> route.Route:
    def fence(fid: str, seq: int | None) -> route.Fence:
        if draw(st.booleans()):
            inner = draw(st.integers(5, 1000))
            outer = draw(st.integers(inner + 1, 5000))
            return route.Fence(fid, route.Kind.CIRCLE, inner, outer, (draw(_lat), draw(_lon)),
                               seq)  # fmt: skip
        n = draw(st.integers(3, 64))
        coords = tuple(x for _ in range(n) for x in (draw(_lat), draw(_lon)))
        return route.Fence(fid, route.Kind.POLYGON, 0, draw(st.integers(0, 2000)), coords, seq)

    ids = draw(st.lists(_ids, unique=True, min_size=1, max_size=12))
    nstops = draw(st.integers(0, len(ids) - 1))
    stops = []
    for k, fid in enumerate(ids[1 : 1 + nstops]):
        f = fence(fid, k + 1)
        times = draw(st.lists(st.none() | st.integers(0, 2**32 - 1), max_size=2))
        service = draw(st.none() | st.integers(0, 86400))
        ws, we = (times + [None, None])[:2]
        stops.append(route.Fence(f.id, f.kind, f.inner_m, f.outer_m, f.coords, f.seq, ws, we,
                                 service))  # fmt: skip
    zones = [fence(fid, None) for fid in ids[1 + nstops :]]
    depot = fence(ids[0], None) if draw(st.booleans()) else None
    params = draw(st.dictionaries(st.integers(5, 65535), st.integers(-(2**31), 2**31 - 1),
                                  max_size=2))  # fmt: skip
    if draw(st.booleans()):
        params[route.Param.HDOP_MAX_X10] = draw(st.integers(1, 255))
    return route.Route(params, depot, tuple(stops), tuple(zones))


@settings(max_examples=150, deadline=None)
@given(routes(), st.integers(0, 2**32 - 1))
def test_any_route_round_trips_and_validates(r: route.Route, version: int) -> None:
    payload = r.encode(version)
    route.validate(payload)
    assert route.decode(payload) == (version, r)
