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
