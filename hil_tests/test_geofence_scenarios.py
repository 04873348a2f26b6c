"""One sim-rig scenario per geofence event, each on a short dedicated track.

The tracks and their stop files are in hil_tests/data (a GPX track whose points are
where the van drives, stop-marked points where gps-sim parks it for --stop-time; the
route the gateway serves is the `.stops.geojson` beside it). Each runs in about a second
with --fast under `micropython -X heapsize=64K`. The van is never told where it is
parked: it decides from the fixes alone, and what it decides is checked against the
docs/geofencing.md semantics (confirm_s 20, hold_s 30, depot_leave_s 120, radii 60/150 m)
and against the ground truth, which the test replays itself with gps-sim's library
(`gpssim.epochs` without faults: where the van really was each second).
Every event the van logs must also be what the gateway stored, in the same order.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from vantrack.tools import gpssim, rig
from vantrack.tools.route import haversine_m

from .test_geofence_rig import console_events, gps_ms, stored

DATA = Path(__file__).resolve().parent / "data"
START = "2026-11-26T08:00:00Z"
START_DT = dt.datetime(2026, 11, 26, 8, tzinfo=dt.UTC)
T0 = int((START_DT - rig.GPS_EPOCH).total_seconds())  # GPS time of the first epoch
APPROACHING, ARRIVED, DEPARTED, STARTED, FINISHED, OUT_OF_SEQ, ENTER, EXIT = range(1, 9)
CONFIRM_S, HOLD_S, DEPOT_LEAVE_S = 20, 30, 120  # the route files keep the defaults
INNER_M, OUTER_M = 60, 150


def drive(
    van: Any, gateway: rig.GatewayProcess, name: str, *sim: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """Load hil_tests/data/NAME.stops.geojson as the van's route, play NAME.gpx into it,
    and return the events it logged (t made relative to the first epoch, as gps-sim's
    fault times are) after checking the gateway stored exactly those, in order; and the
    console."""
    cfg = gateway.van_config(f"van-{name}")
    proc = subprocess.run(
        [*rig.CLI, "route", "load", cfg["device_name"], str(DATA / f"{name}.stops.geojson"),
         "--db", str(gateway.db)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    v = van(DATA / f"{name}.gpx", config=cfg, echo=False, sim_args=["--start", START, *sim])
    lines = list(v.console())
    assert v.wait(60) == 0, lines[-10:]
    assert v.restarts == 1  # fetched the route at boot, restarted once to build the fences
    assert not [ln for ln in lines if ln.startswith("E ") or "Error" in ln], lines
    logged = console_events(lines)
    got, _ = stored(gateway.db, cfg["device_id"])
    assert [(e["type"], e["n"], e["x"], gps_ms(e["t"])) for e in logged] == [
        (e["type"], e["n"], e["x"], e["time_ms"]) for e in got
    ]
    assert all(e["route"] == 1 for e in got)
    return [{**e, "t": e["t"] - T0} for e in logged], lines


def kinds(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(e["type"], e["n"]) for e in events]


def the(events: list[dict[str, Any]], etype: int, n: int) -> dict[str, Any]:
    """The one event of this type for this fence (fails if there are none or several)."""
    found = [e for e in events if e["type"] == etype and e["n"] == n]
    assert len(found) == 1, (etype, n, events)
    return found[0]


class Truth:
    """Where gps-sim really put the van each second (no jitter, no outages)."""

    def __init__(self, name: str, stop_time_s: float, speed_kmh: float = 30.0) -> None:
        route = gpssim.load_route(DATA / f"{name}.gpx")
        self.epochs = [
            (round((e.utc - START_DT).total_seconds()), e.lat, e.lon, e.speed_mps)
            for e in gpssim.epochs(route, 1.0, START_DT, stop_time_s, speed_kmh)
        ]
        doc = json.loads((DATA / f"{name}.stops.geojson").read_text())
        self.fences = {
            f["properties"].get("stop_id") or f["properties"]["zone_id"]: (
                f["geometry"]["coordinates"][1], f["geometry"]["coordinates"][0],
            )
            for f in doc["features"]
        }  # fmt: skip

    def dist(self, fence: str) -> list[tuple[int, float]]:
        lat, lon = self.fences[fence]
        return [(t, haversine_m(a, b, lat, lon)) for t, a, b, _ in self.epochs]

    def first_within(self, fence: str, r: float, after: int = 0) -> int:
        return next(t for t, d in self.dist(fence) if t >= after and d <= r)

    def last_within(self, fence: str, r: float, before: int | None = None) -> int:
        return max(t for t, d in self.dist(fence) if d <= r and (before is None or t <= before))

    def parked(self) -> list[tuple[int, int]]:
        """(first, last) second of each period the van stands still."""
        out: list[tuple[int, int]] = []
        for t, _, _, v in self.epochs:
            if v == 0.0 and t > 0 and t < self.epochs[-1][0]:
                if out and out[-1][1] == t - 1:
                    out[-1] = (out[-1][0], t)
                else:
                    out.append((t, t))
        return out


def test_van_parked_40m_from_a_stop_with_10m_jitter_arrives_and_departs_once(van, gateway):
    truth = Truth("park-beside-stop", stop_time_s=180)
    (park,) = truth.parked()
    assert park[1] - park[0] + 1 >= 180
    # The van stands 40 m from the stop for 3 minutes: 30..50 m with the jitter.
    assert 39.5 <= min(d for _, d in truth.dist("P1")) <= 40.5
    ev, _ = drive(
        van,
        gateway,
        "park-beside-stop",
        "--stop-time",
        "180",
        "--faults",
        "jitter=10",
        "--seed",
        "11",
    )
    assert kinds(ev) == [(APPROACHING, 1), (ARRIVED, 1), (DEPARTED, 1)]
    arrived, departed = the(ev, ARRIVED, 1), the(ev, DEPARTED, 1)
    assert arrived["x"] == CONFIRM_S  # decided by the 20th second inside, not later
    # Dwell runs from the first fix of the confirming run (inside the 60 m boundary) to
    # the last fix inside the 150 m one, so it is the 3 minutes parked plus the drive
    # in and out within those radii. With 10 m of jitter the run starts when the true
    # position is 50..70 m away, and the last near fix is 140..160 m away: those bound it.
    lo = truth.last_within("P1", OUTER_M - 10) - truth.first_within("P1", INNER_M - 10)
    hi = truth.last_within("P1", OUTER_M + 10) - truth.first_within("P1", INNER_M + 10)
    assert 180 <= lo <= departed["x"] <= hi, (lo, departed["x"], hi)
    assert hi - lo <= 8  # the tolerance the jitter allows, in seconds
    # The timers: arrived confirm_s after the run's first fix, departed hold_s after the
    # first fix outside, which follows the last near fix by one second.
    assert departed["t"] - arrived["t"] == departed["x"] - CONFIRM_S + 1 + HOLD_S


def test_van_passing_a_stop_at_speed_approaches_without_arriving(van, gateway):
    truth = Truth("pass-by-stop", stop_time_s=0, speed_kmh=50)
    closest = min(d for _, d in truth.dist("Q1"))
    assert INNER_M < closest < OUTER_M  # 100 m: near, never inside
    ev, _ = drive(
        van, gateway, "pass-by-stop", "--speed-kmh", "50", "--faults", "jitter=10", "--seed", "12"
    )
    assert kinds(ev) == [(APPROACHING, 1)]
    # Approaching is decided by the first fix inside the outer boundary.
    assert abs(ev[0]["t"] - truth.first_within("Q1", OUTER_M)) <= 2


def test_stops_served_out_of_order_report_the_skipped_stop_once(van, gateway):
    # Route order R1 R2 R3; the van serves R1, R3, then R2.
    truth = Truth("out-of-order", stop_time_s=40)
    ev, _ = drive(van, gateway, "out-of-order", "--stop-time", "40", "--seed", "13")
    for n in (1, 2, 3):
        assert [t for t, m in kinds(ev) if m == n and t != OUT_OF_SEQ] == [
            APPROACHING, ARRIVED, DEPARTED,
        ], (n, ev)  # fmt: skip
    assert [e["n"] for e in ev if e["type"] == ARRIVED] == [1, 3, 2]
    # Arriving at 3 when 2 was expected: out_of_sequence right after that arrival, naming
    # 2; R2 is then the only stop left, hence expected, and its arrival is in sequence.
    oos = the(ev, OUT_OF_SEQ, 3)
    assert oos["x"] == 2
    i = ev.index(oos)
    assert kinds(ev[i - 1 : i]) == [(ARRIVED, 3)] and ev[i - 1]["t"] == oos["t"]
    assert [e for e in ev if e["type"] == OUT_OF_SEQ] == [oos]
    r3 = truth.first_within("R3", INNER_M)
    assert abs(oos["t"] - (r3 + CONFIRM_S)) <= 1


def test_losing_the_fix_while_parked_at_a_stop_does_not_break_the_dwell(van, gateway):
    truth = Truth("nofix-at-stop", stop_time_s=180)
    (park,) = truth.parked()
    # 60 s without a fix (longer than hold_s) from 40 s into the stop, when the van has
    # arrived: a van that took "no fix" for "gone" would depart there.
    outage = (park[0] + 40, 60)
    ev, console = drive(
        van,
        gateway,
        "nofix-at-stop",
        "--stop-time",
        "180",
        "--seed",
        "14",
        "--faults",
        f"nofix={outage[1]}@{outage[0]}",
    )
    # The outage reached the van: the fixes it read during it were not valid.
    stats = [ln for ln in console if ln.startswith("I gps stats")][-1]
    fixes, valid = (int(re.search(rf" {k}=(\d+)", stats).group(1)) for k in ("fixes", "valid"))
    assert fixes - valid >= outage[1], stats
    assert kinds(ev) == [(APPROACHING, 1), (ARRIVED, 1), (DEPARTED, 1)]
    arrived, departed = the(ev, ARRIVED, 1), the(ev, DEPARTED, 1)
    assert arrived["t"] < outage[0] and departed["t"] > park[1] + HOLD_S
    # The gap counts as part of the dwell: first fix inside to last fix near, exactly as
    # the true track has it (no jitter here; 1 s for a fix landing on a boundary).
    want = truth.last_within("N1", OUTER_M) - truth.first_within("N1", INNER_M)
    assert abs(departed["x"] - want) <= 1, (departed["x"], want)
    assert departed["x"] >= 180


def test_a_round_from_the_depot_starts_once_and_finishes_back_there(van, gateway):
    truth = Truth("depot-round", stop_time_s=40)
    ev, _ = drive(van, gateway, "depot-round", "--stop-time", "40", "--seed", "15")
    started, finished = the(ev, STARTED, 0), the(ev, FINISHED, 0)
    assert [k for k in kinds(ev) if k[1] == 1] == [(APPROACHING, 1), (ARRIVED, 1), (DEPARTED, 1)]
    assert len(ev) == 5
    # Started depot_leave_s after the first fix out of the depot's outer boundary.
    left = next(t for t, d in truth.dist("depot") if d > OUTER_M)
    assert started["x"] == DEPOT_LEAVE_S
    assert abs(started["t"] - (left + DEPOT_LEAVE_S)) <= 1
    # Finished once back inside the depot for confirm_s, after the stop was served, last.
    back = truth.first_within("depot", INNER_M, after=left)
    assert finished["x"] == CONFIRM_S
    assert abs(finished["t"] - (back + CONFIRM_S)) <= 1
    assert ev[-1] == finished and the(ev, ARRIVED, 1)["t"] < finished["t"]


def test_a_zone_entered_once_and_left_once_despite_jitter_on_both_boundaries(van, gateway):
    # The van parks 2 min at the zone's centre, then 2 min on its inner (60 m) boundary,
    # then 2 min on its outer (150 m) boundary, with 10 m of jitter, then drives away.
    truth = Truth("zone-boundary", stop_time_s=120)
    centre, inner, outer = truth.parked()
    dist = dict(truth.dist("Z"))
    assert abs(dist[inner[0]] - INNER_M) < 1 and abs(dist[outer[0]] - OUTER_M) < 1
    ev, _ = drive(
        van, gateway, "zone-boundary", "--stop-time", "120", "--faults", "jitter=10", "--seed", "16"
    )
    assert kinds(ev) == [(ENTER, 1), (EXIT, 1)]  # no stops: the zone is fence 1
    enter, leave = ev
    assert enter["x"] == CONFIRM_S and enter["t"] < centre[1]
    # Left only after the van drove off the outer boundary, and the time in the zone
    # covers all three parked periods.
    assert leave["t"] > outer[1] + HOLD_S
    assert leave["x"] >= outer[1] - centre[0]
