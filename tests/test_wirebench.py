"""`vantrack bench wire`'s recording-policy figures: the host-side track error on tracks
whose answer is known, and the firmware's own uplink (tools/mp/wire_policy.py under
`micropython`) recording recorded NMEA logs with the bench's policies.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from vantrack.tools import nmeadecode, wirebench
from vantrack.tools.wirebench import POLICIES, TrackPoint, track_errors

DATA = Path(__file__).parent / "data" / "nmea"
LAT0 = 48.0
# Metres per microdegree of latitude, and of longitude at LAT0, on the bench's sphere.
M_PER_UDEG = wirebench.EARTH_RADIUS_M * math.pi / 180 / 1e6
M_PER_UDEG_LON = M_PER_UDEG * math.cos(math.radians(LAT0))
TOL_M = 0.15  # positions are whole microdegrees: up to 0.11 m off where they were meant


def at(t: float, east_m: float, north_m: float) -> TrackPoint:
    """A track point this many metres east and north of (LAT0, 11.0)."""
    return (t, round(LAT0 * 1e6 + north_m / M_PER_UDEG), round(11e6 + east_m / M_PER_UDEG_LON))


def test_distance_of_one_degree_of_latitude_is_its_arc():
    assert wirebench.distance_m(48.0, 11.0, 49.0, 11.0) == pytest.approx(111_195.08, abs=0.01)
    assert wirebench.distance_m(48.0, 11.0, 48.0, 11.0) == 0.0


def test_straight_line_at_constant_speed_reported_every_10_s_has_no_error():
    full = [at(t, 20.0 * t, 5.0 * t) for t in range(121)]
    reported = full[::10]
    errors = track_errors(full, reported)
    assert len(errors) == len(full)
    assert max(errors) < TOL_M


def test_l_shaped_track_without_its_corner_is_off_by_half_the_diagonal_at_the_corner():
    # 10 m/s east for 10 s, then north for 10 s; only the ends reported: at the corner's
    # time the reported track is halfway along the diagonal, (50, 50) from (100, 0).
    full = [at(t, 10.0 * t, 0.0) for t in range(11)] + [
        at(t, 100.0, 10.0 * (t - 10)) for t in range(11, 21)
    ]
    errors = track_errors(full, [full[0], full[-1]])
    corner = max(range(len(errors)), key=errors.__getitem__)
    assert corner == 10
    assert errors[corner] == pytest.approx(50 * math.sqrt(2), abs=0.3)
    assert errors[0] == errors[-1] == 0.0
    # With the corner reported, the reported track is the full one.
    assert max(track_errors(full, [full[0], full[10], full[-1]])) < TOL_M


def test_a_stop_between_reports_is_an_error_in_time_though_the_van_stayed_on_the_line():
    # 100 m east in 10 s, 10 s standing, 100 m more in 10 s; only the ends reported: the
    # reported van moves on at 6.7 m/s, a third of the way off while the real one stands.
    full = (
        [at(t, 10.0 * t, 0.0) for t in range(11)]
        + [at(t, 100.0, 0.0) for t in range(11, 20)]
        + [at(t, 100.0 + 10.0 * (t - 20), 0.0) for t in range(20, 31)]
    )
    errors = track_errors(full, [full[0], full[-1]])
    assert max(errors) == pytest.approx(100 / 3, abs=TOL_M)
    assert errors[10] == pytest.approx(errors[20], abs=TOL_M)


def test_before_the_first_and_after_the_last_report_the_error_is_the_distance_to_it():
    full = [at(t, 10.0 * t, 0.0) for t in range(11)]
    errors = track_errors(full, [full[3], full[6]])
    assert errors[:3] == pytest.approx([30.0, 20.0, 10.0], abs=TOL_M)
    assert errors[7:] == pytest.approx([10.0, 20.0, 30.0, 40.0], abs=TOL_M)


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(100, 0, -1)]
    assert wirebench.percentile(values, 95) == 95.0
    assert wirebench.percentile(values, 100) == 100.0
    assert wirebench.percentile([7.0], 95) == 7.0


def run_log(name: str, policy: str) -> wirebench.PolicyRun:
    nmea = nmeadecode.strip_comments((DATA / name).read_bytes())
    return wirebench.firmware_policy(nmea, POLICIES[policy])


@pytest.mark.parametrize("log", ["haicom-305N.log", "skytraq-dgps.log"])
def test_firmware_uplink_records_every_fix_at_1_hz_and_fewer_when_smart(log: str):
    every = run_log(log, "1 Hz")
    smart = run_log(log, "smart")
    assert every.fixes == smart.fixes and len(every.fixes) > 60
    assert every.recorded == every.fixes
    assert every.records == len(every.fixes) + 1  # and the status record at boot
    # The reports carry exactly the recorded fixes (checked against the gateway's decoder),
    # at most report_max_records (10) records each.
    assert wirebench.reported_track(every) == every.recorded
    assert all(1 <= len(r.records) <= 10 for r in map(wirebench.wire.decode, every.reports))
    assert max(track_errors(every.fixes, every.recorded)) == 0.0
    assert 1 <= len(smart.recorded) < len(every.recorded) // 10
    assert smart.recorded[0] == smart.fixes[0]
    assert wirebench.reported_track(smart) == smart.recorded
    assert len(smart.reports) < len(every.reports)


def test_firmware_uplink_10_s_policy_records_every_10_s_of_gps_time():
    # skytraq-dgps.log: 96 fixes at 1 Hz of a receiver standing still.
    run = run_log("skytraq-dgps.log", "10 s")
    times = [p[0] for p in run.recorded]
    assert times[0] == run.fixes[0][0]
    assert [b - a for a, b in itertools.pairwise(times)] == [10.0] * (len(times) - 1)
    assert len(times) == 10
    assert wirebench.reported_track(run) == run.recorded
