"""The firmware NMEA parser (under micropython) against pynmea2 and gpsd, on real logs.

Per sentence: every RMC/GGA/GSA/VTG our parser accepts is decoded by pynmea2 too, and
each field agrees (lat/lon to the 1e-6 degree rounding, speed to 1 mm/s, course, alt,
quality, sats, hdop, time of day, date). Per fix: each gpsd TPV (mode 2/3) whose UTC
time matches one of our valid fixes has the same position (gpsd prints 9 decimals, we
round to 6: 1e-6 deg) and speed (gpsd rounds to 1 mm/s: 2 mm/s).
"""

from __future__ import annotations

import datetime as dt
import json
from functools import cache
from pathlib import Path
from typing import Any

import pynmea2
import pytest

from vantrack.tools import nmeadecode

DATA = Path(__file__).parent / "data" / "nmea"
LOGS = sorted(p.name for p in DATA.glob("*.log"))
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

# Logs where gpsd's TPVs cannot be matched one to one, with the reason asserted below.
GPSD_SPECIAL = {
    # gpsd "corrects" the 2014 RMC date by 1024 GPS weeks (to 2033); time of day matches.
    "rst39.log": "week_rollover",
    # gpsd takes positions from GLL sentences (which we ignore) into TPVs stamped
    # with the time of the RMC/GGA epoch before them.
    "humminbird-M37.log": "gll_positions",
}


@cache
def decoded(name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    data = nmeadecode.strip_comments((DATA / name).read_bytes())
    return nmeadecode.decode(data, sentences=True)


def micro(deg: float | None) -> float | None:
    return None if deg is None else deg * 1e6


def close(ours: int | None, theirs: float | None, tol: float) -> bool:
    if ours is None or theirs is None:
        return ours is None and theirs is None
    return abs(ours - theirs) <= tol


def num(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def check_sentence(rec: dict[str, Any]) -> list[str]:
    msg = pynmea2.parse(rec["sentence"], check=True)
    errors = []

    def want(field: str, theirs: Any, tol: float = 0) -> None:
        if not close(rec[field], theirs, tol):
            errors.append(f"{field}: ours {rec[field]} pynmea2 {theirs}")

    kind = rec["kind"]
    assert type(msg).__name__ == kind, rec
    if kind in ("RMC", "GGA"):
        has_pos = bool(msg.lat and msg.lon)
        want("lat", micro(msg.latitude) if has_pos else None, 0.5 + 1e-6)
        want("lon", micro(msg.longitude) if has_pos else None, 0.5 + 1e-6)
        ts = msg.timestamp
        tod = None
        if ts is not None:
            tod = ((ts.hour * 60 + ts.minute) * 60 + ts.second) * 1000 + ts.microsecond // 1000
        want("tod", tod, 1)
    if kind == "RMC":
        kn = num(msg.spd_over_grnd)
        # Knots are read to 1e-4 then rounded to mm/s: exact up to 4 decimals, and
        # within 1 mm/s when a receiver sends more.
        want("speed", None if kn is None else kn * 1852 / 3.6, 1)
        crs = num(msg.true_course)
        want("course", None if crs is None else (crs * 100) % 36000, 0.5 + 1e-6)
        day = None
        if msg.datestamp:  # pynmea2 maps yy 00..68 to 20yy, as we do up to 79
            day = (dt.datetime.combine(msg.datestamp, dt.time(), dt.UTC) - EPOCH).days
        want("day", day)
    if kind == "GGA":
        want("quality", int(msg.gps_qual) if msg.gps_qual not in (None, "") else None)
        want("sats", int(msg.num_sats) if msg.num_sats else None)
        hdop = num(msg.horizontal_dil)
        want("hdop", None if hdop is None else hdop * 100, 0.5 + 1e-6)
        alt = num(msg.altitude) if msg.altitude != "" else None
        want("alt", None if alt is None else alt * 100, 0.5 + 1e-6)
    if kind == "GSA":
        want("mode", int(msg.mode_fix_type) if msg.mode_fix_type else None)
        hdop = num(msg.hdop)
        want("hdop", None if hdop is None else hdop * 100, 0.5 + 1e-6)
        prns = [getattr(msg, f"sv_id{i:02d}") for i in range(1, 13)]
        want("sats", sum(1 for p in prns if p))
    if kind == "VTG":
        crs = num(msg.true_track)
        want("course", None if crs is None else (crs * 100) % 36000, 0.5 + 1e-6)
        kn = num(msg.spd_over_grnd_kts)
        kmh = num(msg.spd_over_grnd_kmph)
        speed = kn * 1852 / 3.6 if kn is not None else (kmh / 3.6 * 1000 if kmh else None)
        want("speed", speed, 1)
    return errors


def pynmea2_accepts(line: str) -> bool:
    try:
        msg = pynmea2.parse(line, check=True)
    except (pynmea2.ParseError, ValueError, AttributeError):
        return False
    return type(msg).__name__ in ("RMC", "GGA", "GSA", "VTG") and "*" in line


@pytest.mark.parametrize("name", LOGS)
def test_each_sentence_agrees_with_pynmea2(name: str) -> None:
    out, summary = decoded(name)
    records = [r for r in out if "sentence" in r]
    assert len(records) == summary["sentences"] > 0 or summary["sentences"] == 0
    errors = {r["sentence"]: e for r in records if (e := check_sentence(r))}
    assert not errors, errors
    # Nothing pynmea2 reads as a checksummed RMC/GGA/GSA/VTG is lost, except lines our
    # stricter field checks refuse (counted as malformed) or that come late.
    ours = {r["sentence"] for r in records}
    text = nmeadecode.strip_comments((DATA / name).read_bytes()).decode("latin-1")
    missed = [ln for ln in text.splitlines() if pynmea2_accepts(ln) and ln not in ours]
    refused = summary["drops"]["malformed"] + summary["drops"]["late"]
    assert len(missed) <= refused, missed


def gpsd_tpvs(name: str) -> list[dict[str, Any]]:
    tpvs = []
    for line in (DATA / (name + ".chk")).read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        obj = json.loads(line)
        if obj.get("class") == "TPV" and obj.get("mode", 0) >= 2 and "time" in obj:
            if "lat" in obj:
                tpvs.append(obj)
    # gpsd reports a TPV after each sentence of an epoch, the first ones with the
    # previous epoch's speed; the last TPV of a time is the complete epoch, like our fix.
    last = {t["time"]: t for t in tpvs}
    return list(last.values())


def agrees(fix: dict[str, Any], tpv: dict[str, Any]) -> bool:
    pos = (
        abs(fix["lat"] - tpv["lat"]) <= 1e-6 + 1e-9 and abs(fix["lon"] - tpv["lon"]) <= 1.000001e-6
    )
    speed = (
        "speed" not in tpv
        or fix["speed_mps"] is None
        or abs(fix["speed_mps"] - tpv["speed"]) <= 0.002
    )
    return pos and speed


@pytest.mark.parametrize("name", LOGS)
def test_fixes_agree_with_gpsd(name: str) -> None:
    out, _ = decoded(name)
    fixes = {f["time"]: f for f in out if "time" in f and f["valid"] and f["time"]}
    tpvs = gpsd_tpvs(name)
    assert fixes and tpvs, "every log here has timed fixes for both decoders"
    special = GPSD_SPECIAL.get(name)
    if special == "week_rollover":
        assert not any(t["time"] in fixes for t in tpvs)
        by_tod = {t[11:]: f for t, f in fixes.items()}
        for tpv in tpvs:
            fix = by_tod[tpv["time"][11:]]
            days = (
                dt.date.fromisoformat(tpv["time"][:10]) - dt.date.fromisoformat(fix["time"][:10])
            ).days
            assert days == 1024 * 7, (tpv, fix)
            assert agrees(fix, tpv), (tpv, fix)
        return
    matched = [(fixes[t["time"]], t) for t in tpvs if t["time"] in fixes]
    assert matched, "no gpsd TPV at the time of one of our fixes"
    wrong = [(f, t) for f, t in matched if not agrees(f, t)]
    if special == "gll_positions":
        gll = [ln for ln in (DATA / name).read_text().splitlines() if ln[3:6] == "GLL"]
        assert len(wrong) <= len(gll) and len(wrong) < len(matched)
        return
    assert not wrong, wrong[:3]
    # Epoch merging: gpsd reports several TPVs per epoch; we report one per time.
    assert len(fixes) >= len({t["time"] for t in tpvs}) * 0.6


def make_stream(seconds: int = 200) -> bytes:
    """A simulator-like drive: 1 Hz GGA/GSA/RMC/VTG epochs, S/W hemisphere, midnight."""
    lines = []
    t0 = dt.datetime(2026, 11, 26, 23, 58, 0, tzinfo=dt.UTC)
    lat, lon = -33.8688, -70.6693
    for i in range(seconds):
        t = t0 + dt.timedelta(seconds=i, milliseconds=200)
        lat += 0.00011 * (1 + (i % 7) / 10)
        lon -= 0.00007
        hms = t.strftime("%H%M%S.") + f"{t.microsecond // 10000:02d}"

        def dm(v: float, width: int) -> str:
            v = abs(v)
            d = int(v)
            return f"{d:0{width}d}{(v - d) * 60:010.7f}"

        ll = [dm(lat, 2), "S", dm(lon, 3), "W"]
        kn = "%.3f" % (5 + (i % 13))
        crs = "%.2f" % ((i * 7.3) % 360)
        q = "0" if i % 50 == 49 else "1"
        gga = ["GPGGA", hms, *ll, q, "09", "0.9", "%.1f" % (12 + i / 10), "M", "", "M", "", ""]
        rmc = ["GNRMC", hms, "A", *ll, kn, crs, t.strftime("%d%m%y"), "", "", "A"]
        gsa = [
            "GNGSA",
            "A",
            "3",
            "01",
            "02",
            "03",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "1.5",
            "0.9",
            "1.2",
        ]
        vtg = ["GPVTG", crs, "T", "", "M", kn, "N", "%.3f" % (float(kn) * 1.852), "K", "A"]
        for fields in (gga, gsa, rmc, vtg) if i % 30 else (gga, gsa):
            body = ",".join(fields)
            cs = 0
            for c in body.encode():
                cs ^= c
            lines.append(f"${body}*{cs:02X}\r\n")
    return "".join(lines).encode()


def test_generated_stream_agrees_with_pynmea2_and_rolls_over_midnight() -> None:
    data = make_stream()
    out, summary = nmeadecode.decode(data, sentences=True, chunk=13)
    records = [r for r in out if "sentence" in r]
    fixes = [r for r in out if "time" in r]
    assert summary["sentences"] == len(data.splitlines()) == len(records)
    assert not {r["sentence"]: e for r in records if (e := check_sentence(r))}
    assert len(fixes) == 200
    assert fixes[0]["time"] is None  # GGA/GSA only: no date seen yet
    assert [f["time"][:10] for f in fixes[1:3]] == ["2026-11-26"] * 2
    assert fixes[-1]["time"] == "2026-11-27T00:01:19.200Z"
    # Quality 0 epochs are never a position.
    invalid = [f for f in fixes if not f["valid"]]
    assert len(invalid) == 4 and all(f["lat"] is None for f in invalid)
    # GGA+GSA-only epochs (every 30 s) still get the date carried from the last RMC.
    assert all(f["time"] for f in fixes[1:])


def test_gpssim_drive_agrees_with_pynmea2() -> None:
    """The team's simulator (tools/gpssim.py) as a source: what the sim rig feeds a van."""
    from itertools import islice

    from vantrack.tools import gpssim, route

    r = route.load_route(Path(__file__).parent.parent / "tools" / "routes" / "urban-round.gpx")
    start = dt.datetime(2026, 11, 26, 23, 55, tzinfo=dt.UTC)
    eps = list(islice(gpssim.epochs(r, start=start), 600))
    data = b"".join(b"".join(gpssim.nmea_lines(e)) for e in eps)
    out, summary = nmeadecode.decode(data, sentences=True, chunk=61)
    records = [r for r in out if "sentence" in r]
    fixes = [r for r in out if "time" in r]
    assert records and not {r["sentence"]: e for r in records if (e := check_sentence(r))}
    assert sum(summary["drops"].values()) == 0
    assert len(fixes) == len(eps)
    assert fixes[-1]["time"] is not None and fixes[-1]["time"] > "2026-11-27"
