"""`vantrack route load|show|rm|check` as an operator runs them, through the real CLI.

Exit codes: 0 done, 1 (unknown device, no route), 2 a route file that does not pass
(every problem named, nothing stored). Also: versions only ever go up for a device, the
store keeps what the van will get, an existing database gains the route tables, and the
sample stop files lie on the sample tracks the simulator drives.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import cbor2
import pytest
from gateway_fixture import add_device, vantrack

from vantrack.gateway import route
from vantrack.gateway.store import Store
from vantrack.tools.route import load_route

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "routes"
ROUTES = ROOT / "tools" / "routes"
VALID = DATA / "valid.geojson"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "gw.db"
    add_device(path, "van-1", tmp_path / "creds")
    return path


def routes_rows(db: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT device_id, version FROM routes").fetchall()


def test_load_prints_a_summary_and_stores_the_cbor_the_van_gets(db: Path) -> None:
    out = vantrack("route", "load", "van-1", str(VALID), "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    with sqlite3.connect(db) as conn:
        version, payload, etag, geojson = conn.execute(
            "SELECT version, cbor, etag, geojson FROM routes WHERE device_id = 1"
        ).fetchone()
    assert version == 1
    assert route.decode(payload) == (1, route.load_file(VALID).route)
    assert etag == route.etag(payload)
    assert geojson == VALID.read_text()
    assert out.stdout == (
        f'loaded route version 1 for van-1 (id 1): 3 stops (1 polygon), depot "depot", '
        f"2 zones; {len(payload)} bytes of CBOR (1 block of 256 bytes), etag {etag.hex()}\n"
    )


def test_each_load_is_a_new_version_and_rm_never_lets_a_number_come_back(db: Path) -> None:
    for expect in (1, 2):
        out = vantrack("route", "load", "1", str(VALID), "--db", str(db))  # by id too
        assert f"loaded route version {expect} " in out.stdout
    assert routes_rows(db) == [(1, 2)]
    out = vantrack("route", "rm", "van-1", "--db", str(db))
    assert (out.returncode, out.stdout) == (0, "removed route version 2 of van-1 (id 1)\n")
    assert routes_rows(db) == []
    again = vantrack("route", "rm", "van-1", "--db", str(db))
    assert (again.returncode, again.stderr) == (1, "vantrack: van-1 (id 1) has no route\n")
    # A van may still hold version 2: the next route must not be "version 1" again.
    out = vantrack("route", "load", "van-1", str(VALID), "--db", str(db))
    assert "loaded route version 3 " in out.stdout
    # Every version stays readable: events name fences within the version they were
    # decided under.
    s = Store(db)
    try:
        assert [route.decode(s.route_version(1, v) or b"")[0] for v in (1, 2, 3)] == [1, 2, 3]
        assert s.route_version(1, 4) is None
    finally:
        s.close()


def test_bad_file_prints_every_error_exits_2_and_stores_nothing(db: Path) -> None:
    vantrack("route", "load", "van-1", str(VALID), "--db", str(db))
    out = vantrack("route", "load", "van-1", str(DATA / "rings.geojson"), "--db", str(db))
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert len(lines) == 11 and out.stdout == ""
    assert lines[0] == (
        f'{DATA / "rings.geojson"}: features[0] (stop_id "P-open"): Polygon ring is not closed '
        "(first [lon, lat] != last)"
    )
    assert lines[-1] == f"vantrack: {DATA / 'rings.geojson'}: 10 errors; nothing stored"
    assert routes_rows(db) == [(1, 1)]  # the route it had is untouched


def test_bad_json_exits_2(db: Path, tmp_path: Path) -> None:
    bad = tmp_path / "route.geojson"
    bad.write_text('{"type": "FeatureCollection",\n "features": [}\n')
    out = vantrack("route", "load", "van-1", str(bad), "--db", str(db))
    assert out.returncode == 2
    assert out.stderr.splitlines()[0] == (f"{bad}: bad JSON at line 2, column 15: Expecting value")


def test_missing_file_exits_2(db: Path, tmp_path: Path) -> None:
    out = vantrack("route", "load", "van-1", str(tmp_path / "nope.geojson"), "--db", str(db))
    assert out.returncode == 2
    assert "nope.geojson: cannot read: No such file or directory" in out.stderr


def test_unknown_device_exits_1_and_stores_nothing(db: Path) -> None:
    out = vantrack("route", "load", "van-9", str(VALID), "--db", str(db))
    assert (out.returncode, out.stderr) == (
        1, "vantrack: no device 'van-9' (see `vantrack devices list`)\n")  # fmt: skip
    assert routes_rows(db) == []


def test_warnings_go_to_stderr_and_the_route_is_stored(db: Path, tmp_path: Path) -> None:
    f = tmp_path / "empty.geojson"
    f.write_text('{"type": "FeatureCollection", "features": []}')
    out = vantrack("route", "load", "van-1", str(f), "--db", str(db))
    assert out.returncode == 0
    assert out.stderr == f"warning: {f}: no stops: the van gets an empty route\n"
    assert "0 stops, no depot, 0 zones" in out.stdout


def test_show_table_json_and_geojson(db: Path) -> None:
    vantrack("route", "load", "van-1", str(VALID), "--db", str(db))
    table = vantrack("route", "show", "van-1", "--db", str(db))
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].startswith("van-1 (id 1): route version 1, loaded ")
    assert lines[1] == "thresholds: hdop_max 3.5, confirm_s 15"
    assert lines[2] == '3 stops (1 polygon), depot "depot", 2 zones'
    assert lines[4].split() == ["seq", "id", "fence", "lat", "lon", "radii", "m", "window",
                                "(UTC)", "service", "s", "name"]  # fmt: skip
    rows = [line.split() for line in lines[5:]]
    assert [r[:3] for r in rows] == [
        ["depot", "depot", "polygon/4"], ["10", "S-10", "circle"], ["20", "S-20", "circle"],
        ["30", "S-30", "polygon/5"], ["zone", "Z-1", "circle"], ["zone", "Z-2", "polygon/3"],
    ]  # fmt: skip
    assert rows[2][5:] == ["40/120", "2026-05-09T08:00Z..2026-05-09T10:00Z", "240", "-"]
    assert rows[0][-1] == "yard"  # names come from the file, they are not sent to the van

    js = json.loads(vantrack("route", "show", "van-1", "--json", "--db", str(db)).stdout)
    assert (js["device_name"], js["version"], js["params"]) == (
        "van-1", 1, {"hdop_max": 3.5, "confirm_s": 15})  # fmt: skip
    assert js["stops"][1] == {
        "id": "S-20", "seq": 20, "kind": "circle", "lat": 41.406233, "lon": 2.206919,
        "radius_in_m": 40, "radius_out_m": 120, "window_start": "2026-05-09T08:00:00Z",
        "window_end": "2026-05-09T10:00:00Z", "service_s": 240,
    }  # fmt: skip
    assert js["zones"][1]["vertices"] == [[41.401, 2.175], [41.401, 2.176], [41.402, 2.176]]
    assert js["bytes"] == len(route.load_file(VALID).route.encode(1))

    geo = vantrack("route", "show", "van-1", "--geojson", "--db", str(db))
    assert geo.stdout == VALID.read_text()


def test_show_without_a_route_exits_1(db: Path) -> None:
    out = vantrack("route", "show", "van-1", "--db", str(db))
    assert (out.returncode, out.stderr) == (
        1, "vantrack: van-1 (id 1) has no route (vantrack route load)\n")  # fmt: skip


def test_check_needs_no_store(tmp_path: Path) -> None:
    out = vantrack("route", "check", str(ROUTES / "urban-round.stops.geojson"), cwd=tmp_path)
    assert out.returncode == 0
    assert out.stdout.startswith(
        f"{ROUTES / 'urban-round.stops.geojson'}: ok: 11 stops (1 polygon), depot "
        '"depot", 2 zones; '
    )
    assert not (tmp_path / "vantrack.db").exists()
    bad = vantrack("route", "check", str(DATA / "swapped-point.geojson"))
    assert bad.returncode == 2 and "looks like [lat, lon]" in bad.stderr


def test_removing_a_device_removes_its_routes(db: Path) -> None:
    vantrack("route", "load", "van-1", str(VALID), "--db", str(db))
    assert vantrack("devices", "remove", "van-1", "--db", str(db)).returncode == 0
    assert routes_rows(db) == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM route_history").fetchone() == (0,)


def test_a_version_1_database_gains_the_route_tables(tmp_path: Path) -> None:
    """A store created before routes existed (user_version 1) opens and takes a route."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        from vantrack.gateway import store as storemod

        v1 = storemod.SCHEMA.split("CREATE TABLE IF NOT EXISTS routes")[0]
        conn.executescript(v1 + "PRAGMA user_version=1;")
        conn.execute("INSERT INTO devices VALUES (5, 'van-5', x'00', 0, NULL, NULL)")
    out = vantrack("route", "load", "van-5", str(VALID), "--db", str(path))
    assert out.returncode == 0, out.stderr
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == storemod.SCHEMA_VERSION
    s = Store(path)  # and again: creating the schema twice changes nothing
    try:
        stored = s.route(5)
        assert stored is not None and stored.version == 1
    finally:
        s.close()


# ---- the sample stop files and the sample tracks ---------------------------------------


def _inside(lat: float, lon: float, ring: list[tuple[int, int]]) -> bool:
    """Even-odd test in microdegrees (a few hundred metres: the plane is fine)."""
    x, y = lon * 1e6, lat * 1e6
    inside = False
    for (la1, lo1), (la2, lo2) in zip(ring, ring[1:] + ring[:1], strict=True):
        if (la1 > y) != (la2 > y) and x < lo1 + (y - la1) * (lo2 - lo1) / (la2 - la1):
            inside = not inside
    return inside


def _metres(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    k = math.cos(math.radians(lat1))
    return math.hypot((lon2 - lon1) * k, lat2 - lat1) * 111_195


@pytest.mark.parametrize("name", ["urban-round", "highway-run", "sao-paulo-paulista"])
def test_sample_stops_lie_on_the_track_the_simulator_drives(name: str) -> None:
    track = load_route(ROUTES / f"{name}.gpx")
    r = route.load_file(ROUTES / f"{name}.stops.geojson").route
    samples = [track.point_at(d) for d in range(0, int(track.length_m) + 1, 2)]
    first = track.point_at(0)
    assert r.depot is not None
    assert _metres(first[0], first[1], r.depot.coords[0] / 1e6, r.depot.coords[1] / 1e6) < 1
    for f in r.fences():
        if f.kind == route.Kind.CIRCLE:
            lat, lon = f.coords[0] / 1e6, f.coords[1] / 1e6
            nearest = min(_metres(lat, lon, p[0], p[1]) for p in samples)
            assert nearest < 2, f"{f.id} is {nearest:.0f} m from the track"
        else:
            assert any(_inside(p[0], p[1], f.vertices) for p in samples), f"{f.id} not driven"
    if name == "urban-round":
        kinds = {(f.seq is None, f.kind) for f in r.fences() if f is not r.depot}
        assert (False, route.Kind.POLYGON) in kinds and (True, route.Kind.POLYGON) in kinds
        # The GPX stops, in the order the van reaches them, are the route's stops.
        gpx = [s.name for s in track.stops[1:]]
        names = {f.id: f.name for f in route.load_file(ROUTES / f"{name}.stops.geojson")
                 .route.fences()}  # fmt: skip
        assert [names[s.id] for s in r.stops] == gpx


def test_load_works_while_another_connection_reads(db: Path) -> None:
    """WAL: a reader with an open transaction (the gateway) does not block the load."""
    reader = sqlite3.connect(db)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM devices").fetchone()
        out = vantrack("route", "load", "van-1", str(VALID), "--db", str(db))
        assert out.returncode == 0, out.stderr
        # The reader's snapshot predates the load; a new read sees it.
        reader.execute("COMMIT")
        got = reader.execute("SELECT cbor FROM routes").fetchone()[0]
        assert cbor2.loads(got)[1] == 1
    finally:
        reader.close()
