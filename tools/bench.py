"""`vantrack bench ...`: speed and memory figures, each beside a reference in the same run.

Benchmarks print figures; tests never assert timings. Each benchmark is a sub-subcommand
registered in BENCHMARKS (nmea, wire, memory, gateway, geofence, soak).

  nmea  the firmware NMEA parser under `micropython -X heapsize=64K`: sentences/s and
        heap bytes allocated per sentence (gc.mem_alloc() around the loop, gc disabled),
        against pynmea2 under CPython on the same input (tracemalloc for its bytes).
  wire  bytes per position of the firmware's reports against JSON and Teltonika Codec 8
        for the same fixes of the sample routes (tools/wirebench.py).
  memory  the firmware's heap under micropython: import cost per module, then the least
        free heap of a reporting van driving a route, beside a tracking-only van at 64K.
  gateway  `vantrack gateway` in its own process under load from many virtual vans
        (tools/loadgen.py): reports/s committed, p50/p99 latency, loss, against a bare
        aiocoap resource that stores nothing.
  geofence  the firmware's geofence engine under `micropython -X heapsize=64K`: us and heap
        bytes per fix with 10, 100 and 500 stops, against a naive check-every-fence
        version in the same run; heap bytes per fence (tools/fencebench.py).
  soak  a whole day (8 GPS hours, a 2-hour dead zone) on one van at 64K: free heap,
        records and flash writes per hour, errors, and every record stored once at the
        gateway, against the same day without dead zone (tools/soakbench.py).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from . import fencebench, loadgen, membench, mpy, soakbench, wirebench
from .nmeadecode import strip_comments

REPO = Path(__file__).resolve().parent.parent
NMEA_DATA = REPO / "tests" / "data" / "nmea"
BENCH_NMEA = Path(__file__).parent / "mp" / "bench_nmea.py"
# Receivers whose logs are clean RMC/GGA/GSA/VTG epochs, the mix a van's module sends.
NMEA_LOGS = ("bu353s4.log", "bn-9015.log", "haicom-305N.log", "nd-1005.log", "quectel.log")
KINDS = (b"RMC", b"GGA", b"GSA", b"VTG")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmarks (speed, memory) against a reference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for name, (setup, _) in BENCHMARKS.items():
        setup(sub, name)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- nmea ------------------------------------------------------------------------------
def _setup_nmea(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    p = sub.add_parser(
        name,
        help="firmware NMEA parser (micropython, 64K heap) vs pynmea2 (CPython)",
        description="Sentences per second and heap bytes per sentence of firmware/nmea.py "
        "under micropython, with pynmea2 on the same RMC/GGA/GSA/VTG input as reference.",
    )
    p.add_argument("--rounds", type=int, default=5, help="passes over the input (default 5)")
    p.add_argument(
        "--input",
        type=Path,
        help="NMEA file to use (default: RMC/GGA/GSA/VTG lines of several tests/data logs)",
    )
    p.set_defaults(func=bench_nmea)


def nmea_input(path: Path | None) -> bytes:
    if path is not None:
        return strip_comments(path.read_bytes())
    lines = []
    for name in NMEA_LOGS:
        for line in strip_comments((NMEA_DATA / name).read_bytes()).splitlines(keepends=True):
            if line[3:6] in KINDS:
                lines.append(line.rstrip(b"\r\n") + b"\r\n")
    return b"".join(lines)


# What the firmware turns into numbers for each sentence; pynmea2 converts fields lazily
# on attribute access, so the reference reads the same ones to do the same work.
_FIELDS = (
    "timestamp", "datestamp", "status", "latitude", "longitude", "spd_over_grnd",
    "true_course", "altitude", "gps_qual", "num_sats", "horizontal_dil", "mode_fix_type",
    "spd_over_grnd_kts",
)  # fmt: skip


def _decode_fields(msg: object) -> None:
    for name in _FIELDS:
        getattr(msg, name, None)


def _bench_pynmea2(data: bytes, rounds: int) -> tuple[int, float, float]:
    import pynmea2

    lines = data.decode("ascii", errors="replace").splitlines()
    n = 0
    seconds = 0.0
    for r in range(rounds):
        t0 = time.perf_counter()
        for line in lines:
            try:
                _decode_fields(pynmea2.parse(line, check=True))
                n += 1
            except pynmea2.ParseError:
                pass
        seconds += time.perf_counter() - t0
        _progress(f"  pynmea2 round {r + 1}/{rounds}")
    # Bytes allocated per sentence, one pass (tracemalloc slows it: timed separately).
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    allocated = 0
    for line in lines:
        snap = tracemalloc.get_traced_memory()[0]
        try:
            _decode_fields(pynmea2.parse(line, check=True))
        except pynmea2.ParseError:
            pass
        allocated += max(tracemalloc.get_traced_memory()[1] - snap, 0)
        tracemalloc.reset_peak()
    del before
    tracemalloc.stop()
    return n, seconds, allocated / max(len(lines), 1)


def bench_nmea(args: argparse.Namespace) -> int:
    data = nmea_input(args.input)
    n_lines = len(data.splitlines())
    _progress(f"bench nmea: {n_lines} sentences x {args.rounds} rounds")
    with tempfile.NamedTemporaryFile(suffix=".nmea") as tmp:
        tmp.write(data)
        tmp.flush()
        _progress("  firmware parser under micropython -X heapsize=64K ...")
        proc = mpy.run(BENCH_NMEA, [tmp.name, str(args.rounds)], heap="64K", timeout=600)
    sys.stderr.write(proc.stderr.decode(errors="replace"))
    m = re.search(
        rb"RESULT sentences=(\d+) seconds=([\d.]+) alloc_bytes=(-?\d+) fixes=(\d+)", proc.stdout
    )
    if proc.returncode != 0 or not m:
        print("bench nmea: micropython run failed", file=sys.stderr)
        return 1
    mp_n, mp_s, mp_alloc = int(m[1]), float(m[2]), int(m[3])
    _progress("  pynmea2 under CPython ...")
    py_n, py_s, py_alloc = _bench_pynmea2(data, args.rounds)
    rows = [
        ("firmware nmea.py (micropython 64K)", mp_n, mp_n / mp_s, mp_alloc / max(mp_n, 1)),
        (
            f"pynmea2 (CPython {sys.version_info[0]}.{sys.version_info[1]})",
            py_n,
            py_n / py_s,
            py_alloc,
        ),
    ]
    print(f"\n{'parser':40} {'sentences':>10} {'sentences/s':>12} {'bytes/sentence':>15}")
    for name, n, rate, per in rows:
        print(f"{name:40} {n:>10} {rate:>12,.0f} {per:>15.1f}")
    print(
        "\nfirmware bytes/sentence: gc.mem_alloc() delta with gc disabled over the measured "
        "loop (steady state, after one warm-up pass).\npynmea2 bytes/sentence: tracemalloc "
        "peak growth while parsing one sentence (objects it builds, mostly freed at once)."
    )
    return 0


BENCHMARKS: dict[
    str,
    tuple[
        Callable[[argparse._SubParsersAction[argparse.ArgumentParser], str], None],
        Callable[[argparse.Namespace], int],
    ],
] = {
    "nmea": (_setup_nmea, bench_nmea),
    "wire": (wirebench.setup_bench, wirebench.run),
    "memory": (membench.setup_bench, membench.run),
    "gateway": (loadgen.setup_bench, loadgen.bench_gateway),
    "geofence": (fencebench.setup_bench, fencebench.run),
    "soak": (soakbench.setup_bench, soakbench.run),
}
