"""`vantrack bench wire`: bytes on the wire, ours against JSON and Codec 8, and what the
recording policy costs per hour and in track accuracy.

For each sample route, gps-sim's NMEA goes through the *firmware's* parser and report
builder under `micropython` (tools/mp/report_encode.py), in batches of 10 and singly. The
same positions are then encoded as a JSON batch (what a phone app or a simple tracker
posts) and as Teltonika Codec 8 AVL packets, built byte by byte from Teltonika's published
layout, so the three columns carry the same fixes.

Then the same NMEA goes through the firmware's own recording policy and sender
(uplink.Uplink under `micropython`, tools/mp/wire_policy.py, over a link that is always
up) with three settings: "smart" (the firmware's defaults: a record every 30 s, 300 s
stopped, or after 100 m, 15 degrees or 10 km/h of change), "1 Hz" (every fix) and "10 s"
(a record every 10 s, nothing else). Reports go out when the uplink says one is due, as
its sender decides on the van (its 5 s idle rule on GPS time). For each: reports and
bytes per hour of GPS time (payload, and with CoAP header and options), and the largest
distance between the full track (every valid fix) and the track the gateway gets (its
positions joined linearly in time), with smart compared to 1 Hz and to 10 s in the same
run. Figures are measured, not asserted.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from vantrack.gateway import wire

from . import mpy, rig

ROUTES = ["urban-round", "highway-run", "sao-paulo-paulista"]
BENCH_KEY = bytes(range(16))
# CoAP around a report: 4-byte header, 4-byte token, Uri-Path "r" (2), Content-Format 60
# (2), payload marker (1). UDP/IP headers (28 bytes) come on top for every protocol.
COAP_OVERHEAD = 13
BENCH_DEVICE = 7
# Recording policies (firmware/config.py keys over its DEFAULTS). "smart" is the defaults
# as they are; "10 s" turns distance, angle and speed change off with values no van
# reaches (an angle over 180 degrees never happens).
POLICIES: dict[str, dict[str, int]] = {
    "smart": {},
    "1 Hz": {"report_period_s": 1, "report_stopped_period_s": 1},
    "10 s": {"report_period_s": 10, "report_stopped_period_s": 10,
             "report_distance_m": 100_000, "report_angle_deg": 360,
             "report_speed_delta_kmh": 200},
}  # fmt: skip
EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _nmea(route: str, rate: float) -> bytes:
    cmd = [sys.executable, "-m", "vantrack.tools.cli", "gps-sim", str(rig.sample_route(route)),
           "--fast", "--rate", str(rate), "--seed", "1",
           "--start", "2026-11-26T08:00:00Z"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, check=True, timeout=300).stdout


def firmware_reports(
    nmea: bytes, max_records: int, event_every: int = 0
) -> tuple[list[bytes], float]:
    """Reports as the firmware builds them, and heap bytes allocated per position.

    With event_every, an `arrived` event follows every that many positions (see
    tools/mp/report_encode.py)."""
    proc = mpy.run(
        mpy.REPO_ROOT / "tools" / "mp" / "report_encode.py",
        ["7", BENCH_KEY.hex(), str(max_records), "0", str(event_every)],
        input=nmea,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode() + proc.stdout.decode()[-2000:])
    reports, alloc = [], 0.0
    for line in proc.stdout.decode().splitlines():
        kind, *rest = line.split()
        if kind == "R":
            reports.append(bytes.fromhex(rest[1]))
        elif kind == "H":
            alloc = int(rest[0]) / max(int(rest[1]), 1)
    return reports, alloc


def json_batch(positions: Sequence[wire.Position], device: str = "van-7") -> bytes:
    """A compact JSON batch as a typical HTTP tracker API would take it."""
    items = [
        {
            "device": device,
            "seq": p.seq,
            "time": p.time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "lat": round(p.lat, 6),
            "lon": round(p.lon, 6),
            "speed": p.speed_mps,
            "course": p.course_deg,
        }
        for p in positions
    ]
    return json.dumps(items, separators=(",", ":")).encode()


def _crc16_ibm(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def codec8_packet(positions: Sequence[wire.Position]) -> bytes:
    """A Teltonika Codec 8 AVL data packet (TCP framing) carrying these positions.

    Layout: preamble 0x00000000, data field length (4), codec id 0x08, record count (1),
    records, record count (1), CRC-16/IBM (4). Each AVL record: timestamp ms (8),
    priority (1), GPS element (longitude 4, latitude 4 in 1e-7 deg, altitude 2, angle 2,
    satellites 1, speed km/h 2) and an IO element with no IO values (event id 1, total 1,
    and four zero counts for 1/2/4/8-byte values). The device's IMEI login is not counted.
    """
    records = b""
    for p in positions:
        ts_ms = round(p.time.timestamp() * 1000)
        speed_kmh = round((p.speed_mps or 0) * 3.6)
        gps = struct.pack(">iihHBH", p.lon_e6 * 10, p.lat_e6 * 10, 0, p.course_deg or 0,
                          p.sats or 0, speed_kmh)  # fmt: skip
        io = bytes([0, 0, 0, 0, 0, 0])
        records += struct.pack(">QB", ts_ms, 0) + gps + io
    n = len(positions)
    data = bytes([0x08, n]) + records + bytes([n])
    return struct.pack(">II", 0, len(data)) + data + struct.pack(">I", _crc16_ibm(data))


# ---- recording policies ------------------------------------------------------------------
# A point of a track: GPS seconds since 2000, latitude and longitude in microdegrees.
TrackPoint = tuple[float, int, int]


@dataclass
class PolicyRun:
    """What the firmware's uplink made of one NMEA stream with one policy."""

    fixes: list[TrackPoint]  # every valid fix handed to Uplink.add()
    recorded: list[TrackPoint]  # the fixes it recorded as positions
    reports: list[bytes]  # the reports it sent, in order
    records: int  # records it made (positions and status records)
    config: dict[str, int]  # the thresholds in force (firmware/config.py keys)


def firmware_policy(nmea: bytes, overrides: dict[str, int]) -> PolicyRun:
    """Run the firmware's recording policy and sender (tools/mp/wire_policy.py) on NMEA.

    Fix times are floored to 0.1 s, the wire's resolution, so a recorded fix and its
    position in a report have the same time."""
    cfg = {"device_id": BENCH_DEVICE, "key": BENCH_KEY.hex(), "gateway_host": "bench",
           **overrides}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vantrack-wire-") as flash:
        proc = mpy.run(
            mpy.REPO_ROOT / "tools" / "mp" / "wire_policy.py",
            [flash, json.dumps(cfg)],
            input=nmea,
            timeout=600,
        )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode() + proc.stdout.decode()[-2000:])
    fixes: list[TrackPoint] = []
    recorded: list[TrackPoint] = []
    reports: list[bytes] = []
    records = -1
    config: dict[str, int] = {}
    for line in proc.stdout.decode().splitlines():
        kind, *rest = line.split()
        if kind == "C":
            config = {k: int(v) for k, v in (kv.split("=") for kv in rest)}
        elif kind == "F":
            rec, t, ms, lat, lon = map(int, rest)
            point = (t + ms // 100 / 10, lat, lon)
            fixes.append(point)
            if rec:
                recorded.append(point)
        elif kind == "R":
            payload = bytes.fromhex(rest[2])
            if len(payload) != int(rest[1]):
                raise RuntimeError(f"report of {rest[1]} bytes came as {len(payload)}")
            if len(wire.decode(payload).records) != int(rest[0]):
                raise RuntimeError(f"report of {rest[0]} records decodes otherwise")
            reports.append(payload)
        elif kind == "S":
            records = int(rest[0])
    if records < 0:
        raise RuntimeError(
            "wire_policy.py ended without its counters:\n" + proc.stdout.decode()[-2000:]
        )
    return PolicyRun(fixes, recorded, reports, records, config)


def reported_track(run: PolicyRun) -> list[TrackPoint]:
    """The positions of the reports, decoded as the gateway decodes them, after checking
    that they are exactly the records the uplink made and the fixes it recorded."""
    decoded = [wire.decode(r) for r in run.reports]
    if not all(wire.verify(r, BENCH_KEY) for r in decoded):
        raise RuntimeError("a report's MAC does not verify")
    records = [rec for r in decoded for rec in r.records]
    seqs = [rec.seq for rec in records]
    if seqs != list(range(len(seqs))) or len(records) != run.records:
        raise RuntimeError(f"{run.records} records made, reports carry seqs {seqs[:5]}...")
    track = [
        ((p.time - wire.GPS_EPOCH).total_seconds(), p.lat_e6, p.lon_e6)
        for p in records
        if isinstance(p, wire.Position)
    ]
    if len(track) != len(run.recorded) or any(
        abs(a[0] - b[0]) > 1e-6 or a[1:] != b[1:] for a, b in zip(track, run.recorded, strict=True)
    ):
        raise RuntimeError("the reports' positions are not the fixes the uplink recorded")
    return track


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two points in degrees (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def track_errors(full: Sequence[TrackPoint], reported: Sequence[TrackPoint]) -> list[float]:
    """For every point of the full track, its distance in metres to where the reported
    track puts the van at that time: the reported positions joined linearly in time (before
    the first one or after the last one, that position). Both tracks in time order."""
    if not reported:
        raise ValueError("no reported positions")
    times = [p[0] for p in reported]
    out = []
    for t, lat, lon in full:
        i = bisect.bisect_right(times, t)
        if i == 0:
            at_lat, at_lon = float(reported[0][1]), float(reported[0][2])
        elif i == len(reported):
            at_lat, at_lon = float(reported[-1][1]), float(reported[-1][2])
        else:
            (t0, lat0, lon0), (t1, lat1, lon1) = reported[i - 1], reported[i]
            f = (t - t0) / (t1 - t0)
            at_lat, at_lon = lat0 + f * (lat1 - lat0), lon0 + f * (lon1 - lon0)
        out.append(distance_m(lat / 1e6, lon / 1e6, at_lat / 1e6, at_lon / 1e6))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100)."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


@dataclass
class PolicyRow:
    route: str
    policy: str
    hours: float  # GPS time from the first valid fix to the last
    fixes: int
    positions: int
    records: int
    reports: int
    payload: int  # bytes, all reports
    max_err: float
    p95_err: float
    max_err_inside: float  # the largest error up to the last reported position
    config: dict[str, int]

    @property
    def reports_h(self) -> float:
        return self.reports / self.hours

    @property
    def bytes_h(self) -> float:
        return self.payload / self.hours

    @property
    def coap_bytes_h(self) -> float:
        return (self.payload + COAP_OVERHEAD * self.reports) / self.hours


def measure_policy(route: str, nmea: bytes, policy: str) -> PolicyRow:
    run = firmware_policy(nmea, POLICIES[policy])
    track = reported_track(run)
    errors = track_errors(run.fixes, track)
    hours = (run.fixes[-1][0] - run.fixes[0][0]) / 3600
    if hours <= 0:
        raise RuntimeError(f"{route}: no GPS time elapsed")
    return PolicyRow(
        route=route,
        policy=policy,
        hours=hours,
        fixes=len(run.fixes),
        positions=len(track),
        records=run.records,
        reports=len(run.reports),
        payload=sum(map(len, run.reports)),
        max_err=max(errors),
        p95_err=percentile(errors, 95),
        max_err_inside=max(
            e for e, f in zip(errors, run.fixes, strict=True) if f[0] <= track[-1][0]
        ),
        config=run.config,
    )


def describe(config: dict[str, int]) -> str:
    """A policy's thresholds, as short as a table's footnote wants them."""
    c = config
    return (f"{c['report_period_s']} s ({c['report_stopped_period_s']} s stopped), "
            f"{c['report_distance_m']} m, {c['report_angle_deg']} deg, "
            f"{c['report_speed_delta_kmh']} km/h; reports of <= {c['report_max_records']} "
            f"records, max age {c['report_max_age_s']} s")  # fmt: skip


def _ratio(a: float, b: PolicyRow | None) -> str:
    return "-" if b is None else f"{a / b.coap_bytes_h:.2f}"


def print_policies(rows: Sequence[PolicyRow]) -> None:
    print("\nrecording policies, per hour of GPS time (the firmware's uplink, link always up)")
    for route in dict.fromkeys(r.route for r in rows):
        mine = {r.policy: r for r in rows if r.route == route}
        any_row = next(iter(mine.values()))
        print(f"\n{route}: {any_row.fixes} valid fixes in {any_row.hours * 60:.1f} min")
        print(f"{'policy':<8}{'positions':>10}{'records':>8}{'reports/h':>10}{'payload B/h':>12}"
              f"{'+CoAP B/h':>11}{'B/pos':>7}{'max err m':>10}{'p95 err m':>10}{'B/h vs 1 Hz':>12}"
              f"{'vs 10 s':>9}")  # fmt: skip
        for r in mine.values():
            vs1 = _ratio(r.coap_bytes_h, mine.get("1 Hz"))
            vs10 = _ratio(r.coap_bytes_h, mine.get("10 s"))
            print(f"{r.policy:<8}{r.positions:>10}{r.records:>8}{r.reports_h:>10.0f}"
                  f"{r.bytes_h:>12.0f}{r.coap_bytes_h:>11.0f}{r.payload / r.positions:>7.1f}"
                  f"{r.max_err:>10.1f}{r.p95_err:>10.1f}{vs1:>12}{vs10:>9}")  # fmt: skip
        for r in mine.values():
            if r.max_err > r.max_err_inside + 0.05:
                print(
                    f"  {r.policy}: the largest error is in the fixes after the last report"
                    f" (the route ends at speed); before them: {r.max_err_inside:.1f} m"
                )
    print(
        "\npositions: position records (records: with the status record at boot). B/pos:"
        " payload bytes per position (the status record's share included). B/h vs"
        " 1 Hz, vs 10 s: +CoAP bytes per hour relative to that policy on the same fixes."
        " err: distance from each valid fix to the reported positions joined linearly in time"
        " (after the last report: to it). A record when the period passed, or the van moved,"
        " turned or changed speed by:"
    )
    for policy in dict.fromkeys(r.policy for r in rows):
        print(f"  {policy:<6} {describe(next(r.config for r in rows if r.policy == policy))}")


@dataclass
class Row:
    route: str
    positions: int
    ours10: float
    ours10_dgram: float
    single: float
    json10: float
    codec8_10: float
    alloc: float


def measure(route: str, nmea: bytes) -> Row:
    batches, alloc = firmware_reports(nmea, 10)
    singles, _ = firmware_reports(nmea, 1)
    decoded = [wire.decode(r) for r in batches]
    positions = [p for r in decoded for p in r.records if isinstance(p, wire.Position)]
    n = len(positions)
    ours = sum(map(len, batches))
    groups = [
        [p for p in r.records if isinstance(p, wire.Position)] for r in decoded
    ]  # the same batches of 10 for every format
    return Row(
        route=route,
        positions=n,
        ours10=ours / n,
        ours10_dgram=(ours + COAP_OVERHEAD * len(batches)) / n,
        single=sum(map(len, singles)) / len(singles),
        json10=sum(len(json_batch(g)) for g in groups) / n,
        codec8_10=sum(len(codec8_packet(g)) for g in groups) / n,
        alloc=alloc,
    )


def setup_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    p = sub.add_parser(
        name,
        help="bytes per position: our CBOR reports vs JSON vs Teltonika Codec 8; bytes/h "
        "and track error of the recording policies",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--route", action="append", help=f"routes (default: {', '.join(ROUTES)})")
    p.add_argument("--rate", type=float, default=1.0, help="GPS rate in Hz (default 1)")
    p.add_argument(
        "--policy",
        action="append",
        choices=list(POLICIES),
        help=f"recording policies to compare (default: all: {', '.join(POLICIES)})",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows, policy_rows = [], []
    for route in args.route or ROUTES:
        _progress(f"  {route}: simulating and encoding on the firmware ...")
        nmea = _nmea(route, args.rate)
        rows.append(measure(route, nmea))
        for policy in args.policy or POLICIES:
            _progress(f"  {route}: recording policy {policy!r} on the firmware ...")
            policy_rows.append(measure_policy(route, nmea, policy))
    head = (f"{'route':<20}{'positions':>10}{'ours/10':>9}{'+CoAP':>7}{'single':>8}"
            f"{'JSON/10':>9}{'Codec8/10':>10}{'heap B/pos':>11}")  # fmt: skip
    print(f"\nbytes per position at {args.rate:g} Hz (batches of 10); single = one-position "
          "report payload\n")  # fmt: skip
    print(head)
    for r in rows:
        print(f"{r.route:<20}{r.positions:>10}{r.ours10:>9.1f}{r.ours10_dgram:>7.1f}"
              f"{r.single:>8.1f}{r.json10:>9.1f}{r.codec8_10:>10.1f}{r.alloc:>11.1f}")  # fmt: skip
    print(
        "\nours/10: CBOR payload per position; +CoAP: with the CoAP header, token and options"
        f" ({COAP_OVERHEAD} B per report). Codec 8: TCP packet per 10 records, IMEI login not"
        " counted. heap B/pos: gc.mem_alloc() growth per appended position in the firmware."
    )
    print_policies(policy_rows)
    return 0
