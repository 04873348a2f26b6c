"""The van reads its GPS: gps-sim on a pty -> firmware under micropython -> fixes.

The oracle is the simulator's own NMEA for the same seed and start time, decoded by
pynmea2: every epoch the simulator sends must come out of the firmware once, in order,
with the same time, position (to the firmware's 1e-6 degree resolution) and speed.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pynmea2
import pytest

from vantrack.tools import rig

START = "2026-11-26T08:00:00Z"
KNOT = 1852 / 3600


def simulator_epochs(route: str, *args: str) -> list[dict]:
    """What the simulator sends (to stdout, same options), decoded by pynmea2's RMC."""
    out = subprocess.run(
        [sys.executable, "-m", "vantrack.tools.cli", "gps-sim", str(rig.sample_route(route)),
         "--fast", "--start", START, *args],
        capture_output=True, check=True, timeout=120,
    ).stdout.decode()  # fmt: skip
    epochs = []
    for line in out.splitlines():
        try:
            msg = pynmea2.parse(line, check=True)
        except pynmea2.ParseError:
            continue  # a fault the simulator injected on purpose
        if isinstance(msg, pynmea2.types.talker.RMC) and msg.status == "A":
            when = dt.datetime.combine(msg.datestamp, msg.timestamp).replace(tzinfo=dt.UTC)
            epochs.append(
                {
                    "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "lat": msg.latitude,
                    "lon": msg.longitude,
                    "speed_mps": float(msg.spd_over_grnd) * KNOT,
                }
            )
    return epochs


def test_urban_round_comes_out_of_the_firmware_fix_by_fix(van):
    expected = simulator_epochs("urban-round", "--seed", "3")
    v = van("urban-round", sim_args=["--seed", "3", "--start", START])
    fixes = [f for f in v.fixes() if f["valid"]]
    assert v.wait(120) == 0
    assert len(expected) > 100
    assert [f["time"] for f in fixes] == [e["time"] for e in expected]
    for got, want in zip(fixes, expected, strict=True):
        assert got["lat"] == pytest.approx(want["lat"], abs=6e-7), got["time"]
        assert got["lon"] == pytest.approx(want["lon"], abs=6e-7), got["time"]
        assert got["speed_mps"] == pytest.approx(want["speed_mps"], abs=0.002), got["time"]


def test_ten_hz_highway_run_keeps_every_epoch(van):
    expected = simulator_epochs("highway-run", "--rate", "10", "--seed", "5")
    v = van("highway-run", rate_hz=10, sim_args=["--seed", "5", "--start", START])
    fixes = [f for f in v.fixes() if f["valid"]]
    assert v.wait(180) == 0
    assert len(fixes) == len(expected) > 1000
    assert fixes[-1]["time"] == expected[-1]["time"]


def intact_positions(route: str, *args: str) -> dict[str, tuple[float, float]]:
    """Time of day -> position, from every RMC/GGA line the simulator sent intact."""
    out = subprocess.run(
        [sys.executable, "-m", "vantrack.tools.cli", "gps-sim", str(rig.sample_route(route)),
         "--fast", "--start", START, *args],
        capture_output=True, check=True, timeout=120,
    ).stdout.decode(errors="replace")  # fmt: skip
    seen: dict[str, tuple[float, float]] = {}
    for line in out.splitlines():
        try:
            msg = pynmea2.parse(line.strip(), check=True)
        except (pynmea2.ParseError, UnicodeError):
            continue
        if isinstance(msg, pynmea2.types.talker.RMC | pynmea2.types.talker.GGA) and msg.latitude:
            seen[msg.timestamp.strftime("%H:%M:%S.%f")[:12]] = (msg.latitude, msg.longitude)
    return seen


def test_faulty_receiver_never_crashes_the_van_and_bad_lines_never_become_fixes(van):
    faults = ["--seed", "11", "--faults", "drop=0.02,checksum=0.05,truncate=0.02",
              "--faults", "noise=200@300,noise=64@900,nofix=60@1200"]  # fmt: skip
    intact = intact_positions("urban-round", *faults)
    v = van("urban-round", sim_args=[*faults, "--start", START])
    lines = list(v.console())
    assert v.wait(120) == 0
    assert not any("Traceback" in ln for ln in lines)
    decoded = [f for f in map(rig.parse_fix_line, lines) if f]
    fixes = [f for f in decoded if f["valid"]]
    assert len(fixes) > 100
    # The 60 s tunnel (nofix=60@1200): epochs reported as no fix, never as a position.
    tunnel = [f for f in decoded if not f["valid"]]
    assert len(tunnel) >= 50 and all(f["lat"] is None for f in tunnel)
    # Every position the firmware reports was sent intact by the simulator in that epoch:
    # a corrupted, truncated or noisy line never turns into a position.
    for f in fixes:
        tod = f["time"][11:23]
        assert tod in intact, f
        assert f["lat"] == pytest.approx(intact[tod][0], abs=6e-7)
        assert f["lon"] == pytest.approx(intact[tod][1], abs=6e-7)
    stats = [ln for ln in lines if ln.startswith("I gps stats ")]
    assert stats, lines[-5:]
    assert '"checksum": 0' not in stats[-1], stats[-1]
