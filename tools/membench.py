"""`vantrack bench memory`: the firmware's heap under `micropython`, import by import.

Two figures, each beside a reference from the same run:

  imports  heap bytes each firmware module costs once imported as .mpy (bytecode, raw-code
           structures, qstrs, module objects; tools/mp/mem_imports.py, in a 256 KB heap so
           nothing fails), and the qstrs it adds. Reference: the GPS parser alone
           (nmea + one Parser), what a tracking-only van must hold.
  running  min and last free heap (after gc.collect(), from the firmware's `stats` lines)
           of the whole reporting firmware while one van plays a sample route to a gateway
           on loopback, with the heap capped as the rig runs it; and how many positions
           reached the store. Reference: the same route on a van that only tracks (not
           provisioned: no CoAP, no reports), in the default heap.

On the 64-bit unix port objects and bytecode structures are up to twice their ESP32 size
and GC blocks are 32 bytes (16 on the ESP32): compare figures with each other, not with a
van's free heap.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import mpy, rig

MEM_IMPORTS = Path(__file__).parent / "mp" / "mem_imports.py"
QSTR_LINE = re.compile(r"n_qstr=(\d+)")
FREE = re.compile(r"\bmem_free=(\d+)")


@dataclass
class ModuleCost:
    name: str
    bytes: int
    qstrs: int


@dataclass
class Imports:
    modules: list[ModuleCost]
    total: int
    parser: int  # reference: nmea + one Parser
    qstrs: int  # dynamic qstrs once everything is imported


def measure_imports() -> Imports:
    """Run tools/mp/mem_imports.py under micropython and parse what it prints."""
    proc = mpy.run(MEM_IMPORTS, heap="256K")
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"mem_imports.py failed:\n{out}\n{proc.stderr.decode()}")
    modules: list[ModuleCost] = []
    total = parser = 0
    qstrs = last_q = 0
    for line in out.splitlines():
        q = QSTR_LINE.search(line)
        if q:
            n = int(q.group(1))
            if modules and modules[-1].qstrs < 0:
                modules[-1].qstrs = n - last_q
            last_q = qstrs = n
            continue
        parts = line.split()
        if parts[:1] == ["M"]:
            modules.append(ModuleCost(parts[1], int(parts[2]), -1))
        elif parts[:1] == ["P"]:
            parser = int(parts[1])
        elif parts[:1] == ["T"]:
            total = int(parts[1])
    return Imports(modules, total, parser, qstrs)


@dataclass
class Running:
    heap: str
    min_free: int | None
    last_free: int | None
    stats_lines: int
    stored: int | None  # positions in the gateway's store (None: not reporting)
    rc: int
    seconds: float
    errors: list[str]


def _free_figures(lines: list[str]) -> tuple[int | None, int | None, int]:
    frees = [int(m.group(1)) for ln in lines if " stats " in ln for m in [FREE.search(ln)] if m]
    if not frees:
        return None, None, 0
    return min(frees), frees[-1], len(frees)


def measure_running(
    route: str, heap: str, *, reporting: bool, workdir: Path, stops: bool = False
) -> Running:
    """Play `route` on one sim van (to a gateway if `reporting`, with the route's stops if
    `stops`: the van then fetches them, restarts once to build its fences and decides
    events); its free-heap figures."""
    t0 = time.monotonic()
    kind = "stops" if stops else "report" if reporting else "track"
    flash = workdir / f"flash-{kind}"
    if reporting:
        with rig.GatewayProcess(workdir / f"gateway-{kind}") as gw:
            cfg = gw.van_config("bench-1")
            if stops:
                file = rig.sample_route(route)
                subprocess.run(
                    [*rig.CLI, "route", "load", "bench-1",
                     str(file.with_name(file.stem + ".stops.geojson")), "--db", str(gw.db)],
                    check=True, capture_output=True, timeout=60,
                )  # fmt: skip
            with rig.SimVan(
                rig.sample_route(route), flash, config=cfg, echo=False, heap=heap
            ) as van:
                lines = list(van.console())
                rc = van.wait(120)
            with contextlib.closing(sqlite3.connect(gw.db)) as db:
                stored: int | None = db.execute("select count(*) from positions").fetchone()[0]
    else:
        with rig.SimVan(rig.sample_route(route), flash, echo=False, heap=heap) as van:
            lines = list(van.console())
            rc = van.wait(120)
        stored = None
    lo, last, n = _free_figures(lines)
    errors = [ln for ln in lines if "Error" in ln or ln.startswith("E ")]
    return Running(heap, lo, last, n, stored, rc, time.monotonic() - t0, errors[-3:])


def setup_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    p = sub.add_parser(
        name,
        help="firmware heap: import cost per module and free heap while reporting",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--route", default="urban-round", help="sample route (default urban-round)")
    p.add_argument(
        "--heap",
        default=mpy.DEFAULT_HEAP,
        help=f"heap of the reporting van (default {mpy.DEFAULT_HEAP}, as the rig runs it)",
    )
    p.add_argument("--imports-only", action="store_true", help="skip the running figures")
    p.set_defaults(func=run)


def _kb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f}"


def run(args: argparse.Namespace) -> int:
    print("measuring import costs under micropython ...", file=sys.stderr, flush=True)
    imp = measure_imports()
    print("\nheap per imported module (.mpy, bytes live after gc.collect())\n")
    print(f"{'module':<14}{'bytes':>8}{'qstrs':>7}")
    for m in imp.modules:
        print(f"{m.name:<14}{m.bytes:>8}{m.qstrs:>7}")
    print(f"{'total':<14}{imp.total:>8}{imp.qstrs:>7}  (dynamic qstrs at the end)")
    print(f"{'reference':<14}{imp.parser:>8}         the GPS parser alone (modules + a Parser)")
    if getattr(args, "imports_only", False):
        return 0
    route = getattr(args, "route", "urban-round")
    heap = getattr(args, "heap", mpy.DEFAULT_HEAP)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vantrack-membench-") as tmp:
        cases = ((False, False, mpy.DEFAULT_HEAP), (True, False, heap), (True, True, heap))
        for reporting, stops, h in cases:
            what = ("reporting + stops" if stops else "reporting to a gateway") if reporting \
                else "tracking only"  # fmt: skip
            print(f"running {route}, {what}, heap {h} ...", file=sys.stderr, flush=True)
            rows.append((what, measure_running(route, h, reporting=reporting, stops=stops,
                                               workdir=Path(tmp))))  # fmt: skip
    print(f"\nfree heap while running {route} (KB, after gc.collect() in each stats line)\n")
    print(f"{'van':<24}{'heap':>6}{'min free':>10}{'last':>7}{'stats':>7}{'stored':>8}{'rc':>4}")
    for what, r in rows:
        stored = "-" if r.stored is None else str(r.stored)
        print(f"{what:<24}{r.heap:>6}{_kb(r.min_free):>10}{_kb(r.last_free):>7}"
              f"{r.stats_lines:>7}{stored:>8}{r.rc:>4}")  # fmt: skip
        for e in r.errors:
            print(f"    {e}")
    print(
        "\nmin free: the least free heap any stats line saw; stored: positions the gateway"
        " committed; rc: the firmware's exit code (0: the replay ended and was delivered);"
        " + stops: the van also fetched the route's stops and decided its events."
    )
    return 0 if all(r.rc == 0 for _, r in rows) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="membench")
    sub = parser.add_subparsers(dest="bench", required=True)
    setup_bench(sub, "memory")
    ns = parser.parse_args(["memory", *sys.argv[1:]])
    sys.exit(ns.func(ns))
