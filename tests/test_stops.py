"""`vantrack stops`: a van's day of planned stops against the events it decided, and
`vantrack events` naming the stop behind each fence number.

Devices and routes go in through the real CLI (`devices add`, `route load`); reports are
built with the reference encoder (gateway/wire.py), decoded and stored as the gateway
stores them (store.report_rows + Store.save), so fence numbers, the route version (extra
key 8) and the type-specific value (key 7) travel exactly as on the wire.
"""

from __future__ import annotations

import json
from pathlib import Path

from gateway_fixture import T0, Device, add_device, vantrack

from vantrack.gateway import store, wire

DAY = "2025-05-08"  # T0 = 2025-05-08T06:13:20Z
APPROACHING, ARRIVED, DEPARTED, STARTED, FINISHED, OUT_OF_SEQ, ZONE_IN, ZONE_OUT = range(1, 9)


def _stop(stop_id: str, seq: int, lon: float, **props: object) -> dict[str, object]:
    return {
        "type": "Feature",
        "properties": {"stop_id": stop_id, "seq": seq, **props},
        "geometry": {"type": "Point", "coordinates": [lon, 41.40]},
    }


def _route(path: Path, *stops: dict[str, object]) -> Path:
    features = [
        {"type": "Feature", "properties": {"role": "depot"},
         "geometry": {"type": "Point", "coordinates": [2.10, 41.40]}},
        *stops,
        {"type": "Feature", "properties": {"role": "zone", "zone_id": "Z-school"},
         "geometry": {"type": "Point", "coordinates": [2.30, 41.40]}},
    ]  # fmt: skip
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


# Version 1: depot 0, S1 1, S2 2, S3 3, zone 4. S2 has a delivery window.
def _v1(tmp: Path) -> Path:
    return _route(
        tmp / "v1.geojson", _stop("S1", 10, 2.11),
        _stop("S2", 20, 2.12, window_start="2025-05-08T08:00:00+02:00",
              window_end="2025-05-08T10:00:00+02:00"),
        _stop("S3", 30, 2.13),
    )  # fmt: skip


# Version 2 (replaces it): S2 dropped, S4 added: depot 0, S1 1, S3 2, S4 3, zone 4.
def _v2(tmp: Path) -> Path:
    return _route(
        tmp / "v2.geojson", _stop("S1", 10, 2.11), _stop("S3", 30, 2.13), _stop("S4", 40, 2.14)
    )


def _setup(tmp: Path, *routes: Path) -> tuple[Path, Device]:
    db = tmp / "gw.db"
    dev = add_device(db, "van-7", tmp / "creds")
    for r in routes:
        out = vantrack("route", "load", "van-7", str(r), "--db", str(db))
        assert out.returncode == 0, out.stderr
    return db, dev


Ev = tuple[int, int, int, int | None, int]  # (seconds after t0, type, fence, key 7, version)


def _store(db: Path, dev: Device, events: list[Ev], seq: int = 0, t0: int = T0) -> None:
    """One report of these events (each at a plausible fix), stored as the gateway does."""
    recs: list[wire.Record] = []
    for i, (dt_s, etype, fence, value, version) in enumerate(events):
        extra = {8: version} if value is None else {7: value, 8: version}
        recs.append(wire.Event(seq + i, wire.gps_time(t0 + dt_s), etype, 41_400_000,
                               2_110_000, fence, 9, 8, extra))  # fmt: skip
    report = wire.decode(wire.encode(dev.id, seq, t0, recs, dev.key))
    s = store.Store(db)
    try:
        s.save(dev.id, *store.report_rows(report, store.now_ms()), received_ms=store.now_ms())
    finally:
        s.close()


def _stops(db: Path, *args: str) -> str:
    out = vantrack("stops", "van-7", "--db", str(db), *args)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    return out.stdout


def _round(version: int = 1) -> list[Ev]:
    return [
        (0, STARTED, 0, 150, version),
        (590, APPROACHING, 1, None, version),
        (600, ARRIVED, 1, 25, version),       # inside since 06:22:55
        (900, DEPARTED, 1, 240, version),
        (1500, ARRIVED, 2, 20, version),      # 06:38:00
        (1800, DEPARTED, 2, 200, version),
        (2000, ZONE_IN, 4, 20, version),
        (2100, ZONE_OUT, 4, 90, version),
        (2400, ARRIVED, 3, 30, version),      # 06:52:50
        (2700, DEPARTED, 3, 250, version),
        (3600, FINISHED, 0, 20, version),
    ]  # fmt: skip


def test_all_stops_visited_in_order(tmp_path: Path) -> None:
    db, dev = _setup(tmp_path, _v1(tmp_path))
    _store(db, dev, _round())
    assert _stops(db, "--date", DAY) == (
        "van-7 (id 1) on 2025-05-08 (UTC): route version 1, events under versions 1\n"
        "seq  stop  window       arrived   departed  dwell s  in sequence\n"
        " 10  S1    -            06:22:55  06:28:20      240  yes\n"
        " 20  S2    06:00-08:00  06:38:00  06:43:20      200  yes\n"
        " 30  S3    -            06:52:50  06:58:20      250  yes\n"
        "visited 3 of 3, out of sequence 0\n"
    )


def test_a_skipped_stop_is_not_visited_and_the_arrival_that_skipped_it_is_out_of_sequence(
    tmp_path: Path,
) -> None:
    db, dev = _setup(tmp_path, _v1(tmp_path))
    events = [e for e in _round() if e[2] != 2 or e[1] in (ZONE_IN, ZONE_OUT)]
    events.insert(6, (2400, OUT_OF_SEQ, 3, 2, 1))  # right after arrived 3: expected 2
    _store(db, dev, events)
    assert _stops(db, "--date", DAY) == (
        "van-7 (id 1) on 2025-05-08 (UTC): route version 1, events under versions 1\n"
        "seq  stop  window       arrived   departed  dwell s  in sequence\n"
        " 10  S1    -            06:22:55  06:28:20      240  yes\n"
        " 20  S2    06:00-08:00  -         -               -  -\n"
        " 30  S3    -            06:52:50  06:58:20      250  no (expected S2)\n"
        "visited 2 of 3, out of sequence 1; not visited: S2\n"
    )


def test_one_stop_out_of_sequence_then_the_skipped_one_in_sequence(tmp_path: Path) -> None:
    db, dev = _setup(tmp_path, _v1(tmp_path))
    _store(db, dev, [
        (600, ARRIVED, 1, 25, 1), (900, DEPARTED, 1, 240, 1),
        (1500, ARRIVED, 3, 20, 1), (1500, OUT_OF_SEQ, 3, 2, 1), (1800, DEPARTED, 3, 200, 1),
        (2400, ARRIVED, 2, 30, 1), (2700, DEPARTED, 2, 250, 1),
    ])  # fmt: skip
    out = vantrack("stops", "van-7", "--db", str(db), "--date", DAY, "--json")
    assert out.returncode == 0, out.stderr
    day = json.loads(out.stdout)
    rows = [(s["stop_id"], s["arrived"], s["in_sequence"], s["expected"]) for s in day["stops"]]
    assert rows == [
        ("S1", "2025-05-08T06:22:55Z", True, None),
        ("S2", "2025-05-08T06:52:50Z", True, None),
        ("S3", "2025-05-08T06:38:00Z", False, "S2"),
    ]  # fmt: skip
    assert (day["visited"], day["planned"], day["out_of_sequence"]) == (3, 3, 1)
    assert day["stops"][1]["window_start"] == "2025-05-08T06:00:00Z"
    assert _stops(db, "--date", DAY).splitlines()[-1] == "visited 3 of 3, out of sequence 1"


def test_two_days_are_two_rounds_each_under_its_own_route(tmp_path: Path) -> None:
    db, dev = _setup(tmp_path, _v1(tmp_path))
    _store(db, dev, _round(1))
    out = vantrack("route", "load", "van-7", str(_v2(tmp_path)), "--db", str(db))
    assert out.returncode == 0, out.stderr
    # The next day, under version 2: only S1 and S4 (fences 1 and 3 there).
    _store(db, dev, [(600, ARRIVED, 1, 21, 2), (700, DEPARTED, 1, 60, 2),
                     (1600, ARRIVED, 3, 22, 2)], seq=100, t0=T0 + 86_400)  # fmt: skip
    assert _stops(db, "--date", DAY).splitlines()[-1] == "visited 3 of 3, out of sequence 0"
    assert _stops(db, "--date", "2025-05-09") == (
        "van-7 (id 1) on 2025-05-09 (UTC): route version 2, events under versions 2\n"
        "seq  stop  window  arrived   departed  dwell s  in sequence\n"
        " 10  S1    -       06:22:59  06:25:00       60  yes\n"
        " 30  S3    -       -         -               -  -\n"
        " 40  S4    -       06:39:38  -               -  yes\n"
        "visited 2 of 3, out of sequence 0; not visited: S3\n"
    )
    # A day in another zone: Madrid is UTC+2 in May, so the same events are 08:..
    madrid = _stops(db, "--date", "2025-05-09", "--tz", "Europe/Madrid")
    assert madrid.splitlines()[0].endswith("(Europe/Madrid): route version 2, events under "
                                           "versions 2")  # fmt: skip
    assert " 10  S1    -       08:22:59  08:25:00       60  yes" in madrid
    # A day with no events and no route loaded before it ended (routes here were loaded
    # in 2026): no route that day.
    none = vantrack("stops", "van-7", "--db", str(db), "--date", "2025-05-07")
    assert (none.returncode, none.stdout) == (1, "")
    assert none.stderr == (
        "vantrack: van-7 (id 1) had no route on 2025-05-07 (UTC) (vantrack route load)\n"
    )


def test_a_route_replaced_mid_day_maps_each_event_through_its_own_version(
    tmp_path: Path,
) -> None:
    db, dev = _setup(tmp_path, _v1(tmp_path), _v2(tmp_path))
    # Under version 1 fence 2 is S2; under version 2 fence 2 is S3 and 3 is S4.
    _store(db, dev, [
        (600, ARRIVED, 1, 25, 1), (900, DEPARTED, 1, 240, 1),
        (1500, ARRIVED, 2, 20, 1), (1800, DEPARTED, 2, 200, 1),
        (2400, ARRIVED, 2, 30, 2), (2700, DEPARTED, 2, 250, 2),
        (3000, ARRIVED, 3, 40, 2),
    ])  # fmt: skip
    assert _stops(db, "--date", DAY) == (
        "van-7 (id 1) on 2025-05-08 (UTC): route version 2, events under versions 1, 2\n"
        "seq  stop  window  arrived   departed  dwell s  in sequence\n"
        " 10  S1    -       06:22:55  06:28:20      240  yes\n"
        " 30  S3    -       06:52:50  06:58:20      250  yes\n"
        " 40  S4    -       07:02:40  -               -  yes\n"
        "  -  S2    -       06:38:00  06:43:20      200  yes\n"
        "visited 3 of 3, out of sequence 0\n"
        "seq -: a stop of an earlier route version that day, not in this one\n"
    )
    # `vantrack events` names the stop next to the number, through the same versions.
    out = vantrack("events", "--db", str(db), "--json")
    assert out.returncode == 0, out.stderr
    got = [json.loads(x) for x in out.stdout.splitlines()]
    assert [(e["event"], e["fence"], e["fence_id"], e["route_version"]) for e in got] == [
        ("arrived", 1, "S1", 1), ("departed", 1, "S1", 1),
        ("arrived", 2, "S2", 1), ("departed", 2, "S2", 1),
        ("arrived", 2, "S3", 2), ("departed", 2, "S3", 2),
        ("arrived", 3, "S4", 2),
    ]  # fmt: skip
    assert (got[0]["inside_s"], got[1]["dwell_s"], got[1]["extra"]) == (25, 240, {"7": 240, "8": 1})
    table = vantrack("events", "--db", str(db)).stdout.splitlines()
    assert table[0].split() == ["device", "seq", "time", "(UTC)", "event", "lat", "lon",
                                "fence", "extra"]  # fmt: skip
    assert " 2 S2 " in table[3] and " 2 S3 " in table[5]


def test_events_name_each_type_specific_value(tmp_path: Path) -> None:
    db, dev = _setup(tmp_path, _v1(tmp_path))
    events = _round()
    events.insert(5, (1500, OUT_OF_SEQ, 2, 1, 1))
    _store(db, dev, events)
    out = vantrack("events", "--db", str(db), "--json")
    got = [json.loads(x) for x in out.stdout.splitlines()]
    named = [
        {k: v for k, v in e.items() if k in {
            "event", "fence_id", "inside_s", "dwell_s", "outside_s", "expected", "expected_id"}}
        for e in got
    ]  # fmt: skip
    assert named == [
        {"event": "route_started", "fence_id": "depot", "outside_s": 150},
        {"event": "approaching", "fence_id": "S1"},
        {"event": "arrived", "fence_id": "S1", "inside_s": 25},
        {"event": "departed", "fence_id": "S1", "dwell_s": 240},
        {"event": "arrived", "fence_id": "S2", "inside_s": 20},
        {"event": "out_of_sequence", "fence_id": "S2", "expected": 1, "expected_id": "S1"},
        {"event": "departed", "fence_id": "S2", "dwell_s": 200},
        {"event": "zone_enter", "fence_id": "Z-school", "inside_s": 20},
        {"event": "zone_exit", "fence_id": "Z-school", "dwell_s": 90},
        {"event": "arrived", "fence_id": "S3", "inside_s": 30},
        {"event": "departed", "fence_id": "S3", "dwell_s": 250},
        {"event": "route_finished", "fence_id": "depot", "inside_s": 20},
    ]


def test_unknown_device_and_bad_options_are_clear_errors(tmp_path: Path) -> None:
    db, _ = _setup(tmp_path)
    for args, message in (
        (["van-9"], "vantrack: no device 'van-9' (see `vantrack devices list`)\n"),
        (["van-7", "--date", DAY], "vantrack: van-7 (id 1) had no route on 2025-05-08 (UTC)"
                                   " (vantrack route load)\n"),
        (["van-7", "--date", "8/5/2025"], "vantrack: --date '8/5/2025': use YYYY-MM-DD\n"),
        (["van-7", "--tz", "Mars/Olympus"], "vantrack: --tz 'Mars/Olympus': not a known IANA "
                                            "time zone (e.g. Europe/Madrid)\n"),
    ):  # fmt: skip
        out = vantrack("stops", *args, "--db", str(db))
        assert (out.returncode, out.stdout, out.stderr) == (1, "", message)
