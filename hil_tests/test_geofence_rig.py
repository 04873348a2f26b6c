"""End to end with a route: the gateway serves the day's stops, the van decides its own
arrivals, and every event reaches the store after the fix that decided it.

gps-sim drives urban-round; `vantrack route load` gave the van the sample stops
(tools/routes/urban-round.stops.geojson: a depot, 11 stops and 2 zones on the track).
The van runs as the rig runs every van, under `micropython -X heapsize=64K`: it fetches
the route at boot, restarts to build its fences in a clean heap (tools/rig.py starts it
again, as machine.soft_reset() does on a van), then decides events fix by fix.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import cbor2

from vantrack.gateway import wire
from vantrack.tools import mpy, rig

STOPS = mpy.REPO_ROOT / "tools" / "routes" / "urban-round.stops.geojson"
START = "2026-11-26T08:00:00Z"
APPROACHING, ARRIVED, DEPARTED, STARTED = 1, 2, 3, 4


def console_events(lines: list[str]) -> list[dict[str, Any]]:
    """The events the van logged (`I fence event t=.. type=.. x=.. n=..`), in order."""
    return [ev for ev in map(rig.parse_event_line, lines) if ev is not None]


def stored(db: Path, device: int) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Fence events in seq order (not the van's status records), and position time_ms
    by seq."""
    with sqlite3.connect(db) as conn:
        ev = conn.execute("SELECT seq, time_ms, type, fence, extra FROM events"
                          " WHERE device_id = ? AND type != 16 ORDER BY seq",
                          (device,)).fetchall()  # fmt: skip
        pos = dict(conn.execute("SELECT seq, time_ms FROM positions WHERE device_id = ?",
                                (device,)).fetchall())  # fmt: skip
    events = []
    for seq, time_ms, etype, fence, extra in ev:
        x = cbor2.loads(extra) if extra else {}
        events.append({"seq": seq, "time_ms": time_ms, "type": etype, "n": fence,
                       "x": x.get(7), "route": x.get(8)})  # fmt: skip
    return events, pos


def gps_ms(t: int) -> int:
    return round(wire.GPS_EPOCH.timestamp() * 1000) + t * 1000


def load_route(gateway: rig.GatewayProcess, name: str, path: Path = STOPS) -> None:
    proc = subprocess.run([*rig.CLI, "route", "load", name, str(path), "--db", str(gateway.db)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_the_van_decides_its_stops_and_every_event_is_stored_after_its_fix(van, gateway):
    cfg = gateway.van_config("van-g")
    load_route(gateway, "van-g")
    v = van("urban-round", config=cfg, echo=False, sim_args=["--seed", "5", "--start", START])
    lines = list(v.console())
    assert v.wait(120) == 0, lines[-10:]
    assert v.restarts == 1  # fetched at boot, restarted once to build the fences
    assert not [ln for ln in lines if ln.startswith("E ") or "Error" in ln], lines
    logged = console_events(lines)
    got, positions = stored(gateway.db, cfg["device_id"])
    # What the van decided is what the store holds, in the same order, exactly once.
    assert [(e["type"], e["n"], e["x"], gps_ms(e["t"])) for e in logged] == [
        (e["type"], e["n"], e["x"], e["time_ms"]) for e in got
    ]
    # Each event directly follows the position of the fix that decided it (or another
    # event of the same fix), and names the route version its fence number belongs to.
    for e in got:
        prev = e["seq"] - 1
        while prev not in positions:
            prev -= 1
            assert prev >= e["seq"] - 3, e
        assert positions[prev] // 1000 == e["time_ms"] // 1000, e
        assert e["route"] == 1
    # The round as the van saw it: out of the depot once, then every stop approached,
    # arrived at and left in order, with the dwell it measured.
    stops = [(e["type"], e["n"]) for e in logged if e["type"] in (APPROACHING, ARRIVED, DEPARTED)]
    assert stops == [(t, n) for n in range(1, 12) for t in (APPROACHING, ARRIVED, DEPARTED)]
    assert [e["type"] for e in logged].count(STARTED) == 1
    dwell = [e["x"] for e in logged if e["type"] == DEPARTED]
    assert all(60 <= d <= 150 for d in dwell), dwell
    assert not [e for e in logged if e["type"] == 6]  # no stop out of sequence
    stats = [ln for ln in lines if ln.startswith("I uplink stats")][-1]
    assert "queued=0" in stats and "dropped=0" in stats


def test_a_van_rebooted_mid_round_repeats_no_event_and_misses_no_stop(van, gateway):
    cfg = gateway.van_config("van-h")
    load_route(gateway, "van-h")
    sim = ["--seed", "6", "--start", START]
    first = van("urban-round", config=cfg, echo=False, sim_args=[*sim, "--duration", "900"])
    lines1 = list(first.console())
    assert first.wait(120) == 0, lines1[-10:]
    before = console_events(lines1)
    # The power comes back: the same flash, the GPS replaying the round from its start
    # (so the van drives past the stops it already served).
    second = rig.SimVan(rig.sample_route("urban-round"), first.flash_dir, config=cfg,
                        echo=False, sim_args=sim)  # fmt: skip
    with second:
        lines2 = list(second.console())
        assert second.wait(120) == 0, lines2[-10:]
    after = console_events(lines2)
    assert second.restarts == 0  # the route was in flash already: loaded at boot
    served = {e["n"] for e in before if e["type"] == ARRIVED}
    assert 1 <= len(served) < 11
    # No stop arrived at before the reboot is announced again; every other one is after.
    assert {e["n"] for e in after if e["type"] == ARRIVED} == set(range(1, 12)) - served
    both = before + after
    for n in range(1, 12):
        assert [e["type"] for e in both if e["n"] == n].count(DEPARTED) <= 1, n
    assert [e["type"] for e in before + after].count(STARTED) == 1
    got, _ = stored(gateway.db, cfg["device_id"])
    assert len(got) == len(before) + len(after), [
        ln for ln in lines1 + lines2 if "uplink stats" in ln or ln[:2] in ("E ", "W ")
    ][-8:]


def test_a_route_replaced_mid_round_keeps_the_stops_already_served(van, gateway, tmp_path):
    cfg = gateway.van_config("van-r")
    load_route(gateway, "van-r")
    sim = ["--seed", "7", "--start", START]
    first = van("urban-round", config=cfg, echo=False, sim_args=[*sim, "--duration", "900"])
    lines1 = list(first.console())
    assert first.wait(120) == 0, lines1[-10:]
    # The office replans: the same stops in the opposite order (every stop gets another
    # fence number) and the zones dropped. The van learns of version 2 from its first ack
    # after the reboot.
    plan = json.loads(STOPS.read_text())
    feats = [f for f in plan["features"] if f["properties"].get("role") != "zone"]
    stops = [f for f in feats if f["properties"].get("role") is None]
    for f in stops:
        f["properties"]["seq"] = len(stops) + 1 - f["properties"]["seq"]
    replanned = tmp_path / "replanned.geojson"
    replanned.write_text(json.dumps({**plan, "features": feats}))
    db = ["--db", str(gateway.db)]
    proc = subprocess.run([*rig.CLI, "route", "load", "van-r", str(replanned), *db],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    second = rig.SimVan(rig.sample_route("urban-round"), first.flash_dir, config=cfg,
                        echo=False, sim_args=sim)  # fmt: skip
    with second:
        lines2 = list(second.console())
        assert second.wait(120) == 0, lines2[-10:]
    # The first ack named version 2: fetched, restarted to build it.
    assert second.restarts == 1, [ln for ln in lines2 if ln[:2] in ("E ", "W ") or "route" in ln]
    assert "I route loaded version=2 stops=11 fences=12" in lines2
    # Stop ids, as the gateway maps each event's fence number through its own version.
    proc = subprocess.run([*rig.CLI, "events", "--device", "van-r", "--json", *db],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    events = [json.loads(ln) for ln in proc.stdout.splitlines()]
    arrived = [(e["route_version"], e["fence_id"]) for e in events if e["event"] == "arrived"]
    before = {stop for version, stop in arrived if version == 1}
    after = [stop for version, stop in arrived if version == 2]
    assert 1 <= len(before) < 11
    # What was served under version 1 is not served again; everything else is, once.
    assert sorted(after) == sorted({f["properties"]["stop_id"] for f in stops} - before), (
        before,
        after,
    )


def test_a_route_loaded_while_the_van_drives_reaches_it_through_the_ack(van, gateway):
    # No route at boot: the van tracks and reports. Then the office loads one; the next
    # ack names version 1, the van fetches it, restarts to build its fences and serves
    # the stops still ahead of it.
    cfg = gateway.van_config("van-s")
    v = van("urban-round", config=cfg, echo=False, speedup=60,
            sim_args=["--seed", "8", "--start", START, "--duration", "1200"])  # fmt: skip
    lines: list[str] = []
    for line in v.console():
        lines.append(line)
        if line.startswith("I gps stats") and "# route loaded" not in lines:
            load_route(gateway, "van-s")  # after the first minute of driving
            lines.append("# route loaded")
    assert v.wait(120) == 0, lines[-10:]
    loaded_at = lines.index("# route loaded")
    assert "I route fetched" in lines[loaded_at:]
    assert v.restarts == 1
    assert "I route loaded version=1 stops=11 fences=14" in lines[loaded_at:]
    events = console_events(lines)
    assert [e["type"] for e in events].count(ARRIVED) >= 3
    got, _ = stored(gateway.db, cfg["device_id"])
    assert [(e["type"], e["n"]) for e in got] == [(e["type"], e["n"]) for e in events]


def test_a_route_too_large_for_the_heap_is_left_out_and_costs_no_fix(van, gateway, tmp_path):
    # 120 stops (about 2.5 KB of fences on this 64-bit port) leave a 64 KB van too little
    # heap to run: it says so at boot and tracks and reports without fences, every fix
    # stored (it records every fix here), rather than lose fixes to MemoryError all day.
    feats = [{"type": "Feature", "properties": {"stop_id": f"S-{i:03d}", "seq": i + 1},
              "geometry": {"type": "Point", "coordinates": [2.15 + (i // 25) * 0.0017,
                                                            41.38 + (i % 25) * 0.0013]}}
             for i in range(120)]  # fmt: skip
    big = tmp_path / "big.geojson"
    big.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    cfg = gateway.van_config("van-big", report_period_s=1, report_stopped_period_s=1)
    load_route(gateway, "van-big", big)
    v = van("urban-round", config=cfg, echo=True, sim_args=["--seed", "9", "--start", START,
                                                             "--duration", "600"])  # fmt: skip
    lines = list(v.console())
    assert v.wait(120) == 0, lines[-10:]
    assert any(ln.startswith("E route too_large_for_heap") for ln in lines), lines[:20]
    assert not [ln for ln in lines if "fix_failed" in ln or "Error" in ln]
    assert console_events(lines) == []
    with sqlite3.connect(gateway.db) as conn:
        stored_n = conn.execute("SELECT count(*) FROM positions WHERE device_id = ?",
                                (cfg["device_id"],)).fetchone()[0]  # fmt: skip
    valid = [f for f in map(rig.parse_fix_line, lines) if f and f["valid"] and f["time"]]
    assert stored_n == len(valid) > 500
