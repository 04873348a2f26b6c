"""`vantrack bench wire`: bytes per position on the wire, ours against JSON and Codec 8.

For each sample route, gps-sim's NMEA goes through the *firmware's* parser and report
builder under `micropython` (tools/mp/report_encode.py), in batches of 10 and singly. The
same positions are then encoded as a JSON batch (what a phone app or a simple tracker
posts) and as Teltonika Codec 8 AVL packets, built byte by byte from Teltonika's published
layout, so the three columns carry the same fixes. Figures are measured, not asserted.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from vantrack.gateway import wire

from . import mpy, rig

ROUTES = ["urban-round", "highway-run", "sao-paulo-paulista"]
BENCH_KEY = bytes(range(16))
# CoAP around a report: 4-byte header, 4-byte token, Uri-Path "r" (2), Content-Format 60
# (2), payload marker (1). UDP/IP headers (28 bytes) come on top for every protocol.
COAP_OVERHEAD = 13


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


def measure(route: str, rate: float) -> Row:
    _progress(f"  {route}: simulating and encoding on the firmware ...")
    nmea = _nmea(route, rate)
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
        help="bytes per position: our CBOR reports vs JSON vs Teltonika Codec 8",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--route", action="append", help=f"routes (default: {', '.join(ROUTES)})")
    p.add_argument("--rate", type=float, default=1.0, help="GPS rate in Hz (default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = [measure(r, args.rate) for r in (args.route or ROUTES)]
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
    return 0
