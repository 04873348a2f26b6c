"""`vantrack demo`: simulated vans drive sample routes and report into a real gateway.

Everything runs here, no hardware and no server to install: `vantrack gateway` (aiocoap,
SQLite store) on a loopback port, and per van gps-sim on its own pty feeding the
firmware under the MicroPython unix port on the sim board, which decides fixes and sends
CBOR reports over CoAP, exactly as on the ESP32. A live line shows positions arriving in
the store; at the end each van's figures are compared with what the store holds.

Each van gets the day's stops of its route (`<route>.stops.geojson` beside a sample
route, loaded with `vantrack route load`): it fetches them from the gateway, decides
its arrivals and departures itself, and they are printed as they happen.
Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..gateway import route as routemod
from ..gateway import wire
from . import rig

DEFAULT_ROUTES = ["urban-round", "highway-run", "sao-paulo-paulista"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="simulated vans report into a local gateway (no hardware, no server to install)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--route", action="append", metavar="NAME|FILE",
        help="route to drive (sample name or GPX/GeoJSON/NMEA file); repeat for several "
        f"(default: {', '.join(DEFAULT_ROUTES)})",
    )  # fmt: skip
    p.add_argument("--vans", type=int, default=3, help="number of vans (default 3)")
    p.add_argument(
        "--speedup", type=float, default=30.0,
        help="replay speed-up over real time (default 30); 0 = as fast as the firmware reads",
    )  # fmt: skip
    p.add_argument("--rate", type=float, default=1.0, help="GPS output rate in Hz (default 1)")
    p.add_argument(
        "--fixes", type=int, default=0, metavar="N",
        help="also print every Nth fix each van decides (default: only the progress line)",
    )  # fmt: skip
    p.add_argument(
        "--no-stops", action="store_true",
        help="do not give the vans their routes' stops (positions only)",
    )  # fmt: skip
    p.add_argument(
        "--dir", type=Path,
        help="keep the gateway's store and logs here (default: a temporary directory)",
    )  # fmt: skip
    p.set_defaults(func=run)


def _fmt_fix(name: str, fix: dict[str, Any]) -> str:
    time_s = (fix["time"] or "--")[11:19] + "Z"
    if not fix["valid"]:
        return f"{name:<7} {time_s}  no fix (quality {fix['quality']}, sats {fix['sats']})"
    speed, course = fix["speed_mps"], fix["course_deg"]
    return "  ".join([
        f"{name:<7} {time_s}", f"{fix['lat']:10.6f} {fix['lon']:11.6f}",
        "   -- km/h" if speed is None else f"{speed * 3.6:6.1f} km/h",
        "  --" if course is None else f"{course:4.0f}°",
        f"sats {fix['sats'] if fix['sats'] is not None else '-':>2}",
    ])  # fmt: skip


def _load_stops(gateway: rig.GatewayProcess, name: str, route: Path) -> list[str] | None:
    """Load the stops beside `route` for van `name`; the fence ids by fence number."""
    stops = route.with_name(route.stem + ".stops.geojson")
    if not stops.exists():
        return None
    proc = subprocess.run(
        [*rig.CLI, "route", "load", name, str(stops), "--db", str(gateway.db)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"route load {stops.name} for {name} failed: {proc.stderr}")
    with sqlite3.connect(gateway.db) as conn:
        row = conn.execute(
            "SELECT r.cbor FROM routes r JOIN devices d ON d.id = r.device_id WHERE d.name = ?",
            (name,),
        ).fetchone()
    _, r = routemod.decode(bytes(row[0]))
    return [r.depot.id if r.depot else "-"] + [f.id for f in (*r.stops, *r.zones)]


def _fmt_event(name: str, ev: dict[str, Any], ids: list[str] | None) -> str:
    """An event the van logged (rig.parse_event_line) as a line for people."""
    n = ev["n"]
    etype = ev["type"]
    at = (wire.GPS_EPOCH + dt.timedelta(seconds=ev["t"])).strftime("%H:%M:%SZ")
    fence = ids[n] if ids and n < len(ids) else f"#{n}"
    what = {3: f"  dwell {ev['x']} s", 6: f"  expected #{ev['x']}"}.get(etype, "")
    return f"{name:<7} {at}  {wire.event_name(etype):<15} {fence}{what}"


def _store_counts(db: Path) -> dict[int, tuple[int, int | None]]:
    """device id -> (positions stored, latest device time in ms)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            rows = conn.execute(
                "SELECT device_id, count(*), max(time_ms) FROM positions GROUP BY device_id"
            ).fetchall()
    except sqlite3.Error:
        return {}
    return {dev: (n, t) for dev, n, t in rows}


class _Progress:
    """One live status line on a terminal; a line every few seconds otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()
        elif force or now - self.last >= 5:
            print(text, file=sys.stderr, flush=True)
            self.last = now

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def run(args: argparse.Namespace) -> int:
    routes = args.route or DEFAULT_ROUTES
    try:
        paths = [rig.sample_route(r) for r in routes]
    except FileNotFoundError as e:
        print(f"vantrack demo: {e}", file=sys.stderr)
        return 2
    n = max(args.vans, 1)
    speedup = None if args.speedup == 0 else args.speedup
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="vantrack-demo-"))
    vans: list[tuple[str, rig.SimVan, dict[str, Any]]] = []
    ids: dict[str, list[str] | None] = {}
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    gateway = rig.GatewayProcess(workdir / "gateway")
    pace = "as fast as the firmware reads" if speedup is None else f"x{speedup:g} real time"
    print(f"vantrack demo: gateway + {n} van(s), {pace}. Ctrl-C stops.", file=sys.stderr)
    progress = _Progress()

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the demo like Ctrl-C does

    signal.signal(signal.SIGTERM, terminate)
    try:
        gateway.start()
        print(f"gateway on coap://127.0.0.1:{gateway.port}/r, store {gateway.db}",
              file=sys.stderr)  # fmt: skip
        for i in range(n):
            name = f"van-{i + 1}"
            route = paths[i % len(paths)]
            cfg = gateway.van_config(name)
            ids[name] = None if args.no_stops else _load_stops(gateway, name, route)
            van = rig.SimVan(
                route, workdir / name, rate_hz=args.rate, speedup=speedup, config=cfg,
                echo=True, sim_args=["--seed", str(i + 1)],
            )  # fmt: skip
            van.start()
            fences = ids[name]
            stops = "" if fences is None else f", {len(fences) - 1} fences to serve"
            print(f"{name}: id {cfg['device_id']}, route {route.name}{stops}, GPS on"
                  f" {van.pty_path}, firmware under micropython -X heapsize={van.heap}",
                  file=sys.stderr)  # fmt: skip
            vans.append((name, van, cfg))

            def pump(name: str = name, van: rig.SimVan = van) -> None:
                for line in van.console():
                    lines.put((name, line))
                lines.put((name, None))

            threading.Thread(target=pump, daemon=True).start()

        running = n
        decided = {name: 0 for name, _, _ in vans}
        events = {name: 0 for name, _, _ in vans}
        stats: dict[str, list[str]] = {name: [] for name, _, _ in vans}
        started = time.monotonic()
        next_poll = 0.0
        while running:
            try:
                name, line = lines.get(timeout=0.25)
            except queue.Empty:
                name, line = "", ""
            if line is None:
                running -= 1
            elif line:
                fix = rig.parse_fix_line(line)
                ev = None if fix else rig.parse_event_line(line)
                if fix is None:
                    if ev is not None:
                        events[name] += 1
                        progress.show(_fmt_event(name, ev, ids[name]), force=True)
                        progress.done()
                    elif line.startswith("I ") and " stats " in line:
                        stats[name].append(line)
                    elif line.startswith(("E ", "W ")) or "Error" in line:
                        progress.show(f"{name:<7} {line}", force=True)
                        progress.done()
                elif fix["valid"] and fix["time"]:  # reported: a fix with a date
                    decided[name] += 1
                    if args.fixes and decided[name] % args.fixes == 0:
                        progress.show(_fmt_fix(name, fix), force=True)
                        progress.done()
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + 0.5
                counts = _store_counts(gateway.db)
                total = sum(c for c, _ in counts.values())
                per_van = "  ".join(
                    f"{name} {counts.get(cfg['device_id'], (0, None))[0]} of {decided[name]}"
                    for name, _, cfg in vans
                )
                elapsed = time.monotonic() - started
                progress.show(f"[{elapsed:6.1f}s] stored {total} positions (of fixes)  |  "
                              f"{per_van}")  # fmt: skip
        progress.done()
        counts = _store_counts(gateway.db)
        with sqlite3.connect(gateway.db) as conn:
            q = "SELECT device_id, count(*) FROM events GROUP BY device_id"
            stored_events = dict(conn.execute(q).fetchall())
        print(f"\ndone in {time.monotonic() - started:.1f} s", file=sys.stderr)
        # records: what the van numbered (its flash queue: positions smart reporting
        # kept, events, status records); every one must be in the store.
        print(f"{'van':<8}{'fixes':>7}{'records':>9}{'stored':>8}{'events':>8}  firmware",
              file=sys.stderr)  # fmt: skip
        lost = 0
        for name, van, cfg in vans:
            made = rig.queue_state(van.flash_dir).next_seq
            got = counts.get(cfg["device_id"], (0, None))[0]
            got += stored_events.get(cfg["device_id"], 0)
            lost += max(made - got, 0)
            last = stats[name][-1] if stats[name] else ""
            print(f"{name:<8}{decided[name]:>7}{made:>9}{got:>8}{events[name]:>8}  {last}",
                  file=sys.stderr)  # fmt: skip
        print(
            f"\nthe store: vantrack positions --db {gateway.db} --limit 5; vantrack events"
            f" --db {gateway.db}" + ("" if args.dir else "  (temporary: use --dir to keep it)"),
            file=sys.stderr,
        )
        return 1 if lost else 0
    except KeyboardInterrupt:
        progress.done()
        print("\nstopping vans and gateway...", file=sys.stderr)
        return 130
    finally:
        for _, van, _ in vans:
            van.stop()
        gateway.stop()
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
