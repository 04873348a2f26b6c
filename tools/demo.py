"""`vantrack demo`: simulated vans drive sample routes through the real firmware.

Each van is a SimVan (tools/rig.py): gps-sim on its own pty, the firmware under
`micropython -X heapsize=64K` on the sim board. The fixes the firmware decodes scroll by;
at the end each van's parser statistics are printed. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import queue
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import rig

DEFAULT_ROUTES = ["urban-round", "highway-run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="simulated vans drive sample routes through the firmware (no hardware needed)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--route", action="append", metavar="NAME|FILE",
        help="route to drive (sample name or GPX/GeoJSON/NMEA file); repeat for several vans "
        f"(default: {' and '.join(DEFAULT_ROUTES[:1])})",
    )  # fmt: skip
    p.add_argument("--vans", type=int, default=1, help="number of vans (default 1)")
    p.add_argument(
        "--speedup", type=float, default=30.0,
        help="replay speed-up over real time (default 30); 0 = as fast as the firmware reads",
    )  # fmt: skip
    p.add_argument("--rate", type=float, default=1.0, help="GPS output rate in Hz (default 1)")
    p.add_argument("--every", type=int, default=1, help="print every Nth fix (default 1)")
    p.set_defaults(func=run)


def _fmt_fix(name: str, fix: dict[str, Any]) -> str:
    time_s = (fix["time"] or "--")[11:19] + "Z"
    if not fix["valid"]:
        return f"{name:<7} {time_s}  no fix (quality {fix['quality']}, sats {fix['sats']})"
    speed = fix["speed_mps"]
    course = fix["course_deg"]
    parts = [
        f"{name:<7} {time_s}",
        f"{fix['lat']:10.6f} {fix['lon']:11.6f}",
        "   -- km/h" if speed is None else f"{speed * 3.6:6.1f} km/h",
        "  --" if course is None else f"{course:4.0f}°",
        f"sats {fix['sats'] if fix['sats'] is not None else '-':>2}",
        f"hdop {fix['hdop'] if fix['hdop'] is not None else '-'}",
    ]
    return "  ".join(parts)


def run(args: argparse.Namespace) -> int:
    routes = args.route or DEFAULT_ROUTES[:1]
    try:
        paths = [rig.sample_route(r) for r in routes]
    except FileNotFoundError as e:
        print(f"vantrack demo: {e}", file=sys.stderr)
        return 2
    n = max(args.vans, len(paths))
    speedup = None if args.speedup == 0 else args.speedup
    workdir = Path(tempfile.mkdtemp(prefix="vantrack-demo-"))
    vans = []
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    print(
        f"vantrack demo: {n} van(s), firmware under micropython -X heapsize=64K, "
        f"GPS from gps-sim over a pty, x{args.speedup:g} real time. Ctrl-C stops.",
        file=sys.stderr,
    )
    try:
        for i in range(n):
            name = f"van-{i + 1}"
            route = paths[i % len(paths)]
            van = rig.SimVan(
                route, workdir / name, rate_hz=args.rate, speedup=speedup,
                sim_args=["--seed", str(i + 1)],
            )  # fmt: skip
            van.start()
            print(f"{name}: route {route.name}, GPS on {van.pty_path}", file=sys.stderr)
            vans.append((name, van))

            def pump(name: str = name, van: rig.SimVan = van) -> None:
                for line in van.console():
                    lines.put((name, line))
                lines.put((name, None))

            threading.Thread(target=pump, daemon=True).start()

        running = n
        counts = {name: 0 for name, _ in vans}
        stats: dict[str, str] = {}
        started = time.monotonic()
        while running:
            name, line = lines.get()
            if line is None:
                running -= 1
                continue
            fix = rig.parse_fix_line(line)
            if fix is None:
                if " gps stats " in f" {line} ":
                    stats[name] = line
                elif line.startswith(("E ", "W ")) or "Traceback" in line:
                    print(f"{name:<7} {line}", file=sys.stderr)
                continue
            counts[name] += 1
            if counts[name] % args.every == 0:
                print(_fmt_fix(name, fix), flush=True)
        elapsed = time.monotonic() - started
        print(f"\ndone in {elapsed:.1f} s", file=sys.stderr)
        for name, _ in vans:
            print(f"{name}: {counts[name]} fixes; {stats.get(name, '')}", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        print("\nstopping vans...", file=sys.stderr)
        return 130
    finally:
        for _, van in vans:
            van.stop()
        shutil.rmtree(workdir, ignore_errors=True)
