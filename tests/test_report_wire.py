"""The firmware's reports, as the gateway reads them.

NMEA goes through the firmware's parser and report builder under `micropython` (the
same tools/mp/report_encode.py `vantrack bench wire` uses); every report must decode and
validate against gateway/wire.cddl, carry a MAC that verifies with the device key (and
only with it), number its records consecutively, and hold exactly the fixes the
firmware's parser produced from the same NMEA (`nmea-decode`), at wire resolution.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from vantrack.gateway import wire
from vantrack.tools import nmeadecode, rig, wirebench

DATA = Path(__file__).parent / "data" / "nmea"


def sim_nmea(route: str) -> bytes:
    return subprocess.run(
        [sys.executable, "-m", "vantrack.tools.cli", "gps-sim", str(rig.sample_route(route)),
         "--fast", "--rate", "2", "--seed", "2", "--start", "2026-11-26T23:55:00Z",
         "--duration", "900"],
        capture_output=True, check=True, timeout=120,
    ).stdout  # fmt: skip


def expected(nmea: bytes) -> list[tuple[dt.datetime, int, int, int | None, int | None]]:
    fixes, _ = nmeadecode.decode(nmea)
    out = []
    for f in fixes:
        if not f["valid"] or f["time"] is None:
            continue
        t = dt.datetime.fromisoformat(f["time"].replace("Z", "+00:00"))
        t = t.replace(microsecond=t.microsecond // 100_000 * 100_000)  # 0.1 s, floored
        speed = None if f["speed_mps"] is None else (round(f["speed_mps"] * 1000) + 50) // 100
        course = None if f["course_deg"] is None else (round(f["course_deg"] * 100) + 50) // 100
        out.append((t, round(f["lat"] * 1e6), round(f["lon"] * 1e6), speed,
                    None if course is None else course % 360))  # fmt: skip
    return out


@pytest.mark.parametrize(
    "source", ["urban-round", "sao-paulo-paulista", "ublox-neo-m9n-nmea.log", "quectel.log"]
)
@pytest.mark.parametrize("max_records", [1, 10])
def test_firmware_reports_decode_verify_and_carry_every_fix(source: str, max_records: int):
    nmea = (DATA / source).read_bytes() if source.endswith(".log") else sim_nmea(source)
    nmea = nmeadecode.strip_comments(nmea)
    reports, _ = wirebench.firmware_reports(nmea, max_records)
    decoded = [wire.decode(r, max_bytes=1024) for r in reports]
    assert all(wire.verify(r, wirebench.BENCH_KEY) for r in decoded)
    assert not any(wire.verify(r, bytes(16)) for r in decoded)
    seqs = [p.seq for r in decoded for p in r.records]
    assert seqs == list(range(len(seqs)))
    assert all(len(r.records) <= max_records for r in decoded)
    got = [(p.time, p.lat_e6, p.lon_e6, p.speed_dms, p.course_deg)
           for r in decoded for p in r.records if isinstance(p, wire.Position)]  # fmt: skip
    want = expected(nmea)
    assert len(want) > 10
    assert got == want


def test_events_travel_in_order_with_positions_and_decode_with_their_fix():
    nmea = nmeadecode.strip_comments(sim_nmea("urban-round"))
    reports, _ = wirebench.firmware_reports(nmea, 10, event_every=7)
    decoded = [wire.decode(r, max_bytes=1024) for r in reports]
    assert all(wire.verify(r, wirebench.BENCH_KEY) for r in decoded)
    records = [rec for r in decoded for rec in r.records]
    assert [rec.seq for rec in records] == list(range(len(records)))
    positions = [rec for rec in records if isinstance(rec, wire.Position)]
    events = [rec for rec in records if isinstance(rec, wire.Event)]
    assert len(events) == len(positions) // 7 > 10
    # Each event follows the 7th, 14th... position and carries that fix, absolute.
    for k, ev in enumerate(events, 1):
        p = positions[7 * k - 1]
        assert records[records.index(ev) - 1] is p
        assert (ev.type, ev.fence, ev.extra) == (wire.EventType.ARRIVED, k, {7: -k, 8: 7})
        assert (ev.time, ev.lat_e6, ev.lon_e6) == (p.time, p.lat_e6, p.lon_e6)
        assert ev.hdop_x10 is not None and ev.sats is not None
    # Positions keep their delta chain across events: the same fixes as without events.
    assert [(p.time, p.lat_e6, p.lon_e6) for p in positions] == [
        (t, lat, lon) for t, lat, lon, _, _ in expected(nmea)
    ]
