"""`vantrack bench soak`: a whole delivery day on one van, hour by hour, at 64K of heap.

One van (the firmware under `micropython -X heapsize=64K`, rig.SimVan) drives a sample
round again and again for --hours of GPS time (gps-sim --repeat), replayed --speedup
times real time (default 80: an 8-hour day in 6 minutes; GPS time drives the firmware).
It reports to a real gateway (rig.GatewayProcess) through tools/udprelay.UdpRelay, which
drops every datagram both ways while the van's GPS time is inside --dead-zone (the link
is down: a tunnel, a basement, no coverage) and none outside it.

Printed, per simulated hour, from the firmware's own console: the least and last free
heap of its `I gps stats` lines (every 60 GPS seconds, after gc.collect()), the records
made and acknowledged in that hour and queued at its end, and flash writes in that hour
(`I uplink stats`: the counters are cumulative since boot). Then the heap high-water
mark (least free) and the heap in use at the end; every MemoryError, `fix_failed`,
`round_failed` or other error line, verbatim; and what the gateway's store holds for the
van against what the van made: every record stored exactly once, no (device, seq) twice.

Records still queued when the replay's drain (firmware/tracker.py _DRAIN_MS) ends wait
on the van's flash, as on a van switched off in the evening: the van is then booted again
on the same flash with a GPS that sends nothing (/dev/null) until its queue is empty (at
most --max-reboots times), and those boots are printed as such: nothing is hidden.

Reference, in the same run: the same day without a dead zone (the link up all day), and
each run's first hour as the baseline its later hours are compared with.

CoAP's timers run on the wall clock, not in GPS time: the dead zone lasts 7200/F wall
seconds, 90 s at the default, about what one CoAP exchange may take to give up (~93 s
with retransmissions): the van builds a backlog of the whole dead zone and sees at least
one delivery fail; a lower F stretches it into a string of failed deliveries.
With --speedup 0 (as fast as the firmware reads) it lasts a few wall seconds and the
van sees one long unanswered request; the GPS task then also takes most of the CPU from
the sender, records pile up all day whatever the link does, and the drain delivers them.
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import mpy, rig
from .udprelay import UdpRelay

START = "2026-11-26T06:00:00Z"  # the round starts early; the day runs --hours from here
# A stats line's integer fields (`drops={...}` in the gps line is JSON, without `=`).
_INT_FIELD = re.compile(r"(\w+)=(-?\d+)\b")
# What counts as the firmware failing: any error line, a traceback, a MemoryError.
_ERROR = re.compile(r"^E |MemoryError|fix_failed|round_failed|Traceback")
# The least free heap of an hour moves by a GC block or two with where the garbage lay
# when gc.collect() ran (blocks are 32 bytes on the 64-bit unix port): more is growth.
GROWTH_SLACK = 64
# A CoAP request gives up after MAX_TRANSMIT_WAIT (RFC 7252: 93 s with the firmware's
# ACK_TIMEOUT 2 s, factor 1.5, 4 retransmissions), on the wall clock.
COAP_GIVE_UP_S = 93


# ---- reading the console ------------------------------------------------------------------
def parse_hours(text: str) -> tuple[float, float]:
    """`--dead-zone START:END` in hours (`3:5`, `2.5:4`) -> (start, end); `none` or an
    empty zone is (0, 0)."""
    if text.strip().lower() in ("", "none", "0", "0:0"):
        return 0.0, 0.0
    a, sep, b = text.partition(":")
    try:
        if not sep:
            raise ValueError
        start, end = float(a), float(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:END in hours, not {text!r}") from None
    if not 0 <= start <= end:
        raise argparse.ArgumentTypeError(f"dead zone {text!r}: need 0 <= START <= END")
    return start, end


def stats_fields(line: str) -> tuple[str, dict[str, int]] | None:
    """The integer fields of an `I gps stats` / `I uplink stats` line, with which it is."""
    for kind in ("gps", "uplink"):
        if line.startswith(f"I {kind} stats "):
            return kind, {k: int(v) for k, v in _INT_FIELD.findall(line)}
    return None


def fix_time(line: str) -> int | None:
    """GPS seconds since 2000 of an echoed `F <t> ...` line, else None."""
    if not line.startswith("F "):
        return None
    t = line.split(" ", 2)[1]
    return int(t) if t.lstrip("-").isdigit() else None


@dataclass
class Period:
    """One simulated hour (or the drain after the replay, or one redelivery boot)."""

    label: str
    least_free: int | None = None
    last_free: int | None = None
    samples: int = 0
    records: int = 0  # made in this period
    acked: int = 0  # acknowledged in this period
    queued: int | None = None  # at the end of it
    writes: int = 0  # flash writes in this period
    link_down: bool = False


@dataclass
class Boot:
    """The console of one firmware run, split into periods by GPS time (`F` lines)."""

    hours: int = 0
    t0: int | None = None  # GPS time of the first fix
    t: int | None = None  # of the latest
    periods: dict[str, Period] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (period, line)
    ended: bool = False  # end_of_stream seen: what follows is the drain
    last_uplink: dict[str, int] = field(default_factory=dict)
    _prev: dict[str, int] = field(default_factory=dict)
    label: str | None = None  # every line goes to this period (a boot without fixes)
    _traceback: bool = False  # inside a traceback

    def hour(self) -> int | None:
        if self.t is None or self.t0 is None:
            return None
        return min((self.t - self.t0) // 3600, max(self.hours - 1, 0))

    def period(self) -> Period:
        if self.label is not None:
            name = self.label
        elif self.ended:
            name = "drain"
        else:
            h = self.hour()
            name = "boot" if h is None else f"{h + 1}"
        p = self.periods.get(name)
        if p is None:
            p = self.periods[name] = Period(name)
        return p

    def feed(self, line: str) -> None:
        t = fix_time(line)
        if t is not None:
            if self.t0 is None:
                self.t0 = t
            self.t = t
            return
        if line.startswith("I gps end_of_stream"):
            self.ended = True
        if self._traceback:
            # A traceback's frames, then its exception line: all of it is the error.
            self.errors.append((self.period().label, line))
            self._traceback = line.startswith(" ")
            return
        if _ERROR.search(line):
            self.errors.append((self.period().label, line))
            self._traceback = line.startswith("Traceback")
        got = stats_fields(line)
        if got is None:
            return
        kind, f = got
        p = self.period()
        if kind == "gps" and "mem_free" in f:
            free = f["mem_free"]
            p.least_free = free if p.least_free is None else min(p.least_free, free)
            p.last_free = free
            p.samples += 1
        elif kind == "uplink":
            prev = self._prev
            p.records += f.get("records", 0) - prev.get("records", 0)
            p.acked += f.get("acked", 0) - prev.get("acked", 0)
            p.writes += f.get("writes", 0) - prev.get("writes", 0)
            p.queued = f.get("queued")
            self._prev = self.last_uplink = f


def least(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def first_hour_fall(periods: list[Period]) -> int | None:
    """Bytes the least free heap fell from the first hour to the worst later one (<= 0:
    none); None without two hours of figures. The first hour includes boot."""
    frees = [p.least_free for p in periods if p.least_free is not None]
    if len(frees) < 2:
        return None
    return frees[0] - min(frees[1:])


def heap_growth(periods: list[Period]) -> int | None:
    """Bytes the least free heap of the day's last hour is below the least of its first
    half (<= 0: no growth): a leak keeps lowering it to the end of the day, while a dip
    (the boot hour's route fetch, the hours a backlog is delivered after the dead zone)
    comes back. None without two hours of figures."""
    frees = [p.least_free for p in periods if p.least_free is not None]
    if len(frees) < 2:
        return None
    return min(frees[: len(frees) // 2]) - frees[-1]


# ---- running ------------------------------------------------------------------------------
@dataclass
class Day:
    name: str
    dead_zone: tuple[float, float]
    boots: list[Boot]
    rc: list[int]
    stored: int = 0
    distinct_seqs: int = 0
    seq_range: tuple[int | None, int | None] = (None, None)
    wall_s: float = 0.0
    dead_wall_s: float = 0.0
    relay: str = ""

    @property
    def made(self) -> int:
        return sum(b.last_uplink.get("records", 0) for b in self.boots)

    def counter(self, key: str) -> int:
        return sum(b.last_uplink.get(key, 0) for b in self.boots)

    @property
    def queued_left(self) -> int | None:
        return self.boots[-1].last_uplink.get("queued") if self.boots else None

    @property
    def periods(self) -> list[Period]:
        return [p for b in self.boots for p in b.periods.values()]

    @property
    def hours(self) -> list[Period]:
        return [p for p in self.boots[0].periods.values() if p.label.isdigit()]

    @property
    def errors(self) -> list[tuple[str, str]]:
        return [e for b in self.boots for e in b.errors]


def heap_total(heap: str) -> int:
    """gc.mem_free() + gc.mem_alloc() of an empty interpreter with this heap: what
    `mem_free` is out of (the GC's own tables take the rest)."""
    proc = subprocess.run(
        [mpy.micropython_binary(), "-X", f"heapsize={heap}", "-c",
         "import gc; print(gc.mem_free() + gc.mem_alloc())"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return int(proc.stdout.strip())


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _stored(db: Path, device: int) -> tuple[int, int, int | None, int | None]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM ("
            " SELECT seq FROM positions WHERE device_id = ?"
            " UNION ALL SELECT seq FROM events WHERE device_id = ?)",
            (device, device),
        ).fetchone()
    return int(row[0]), int(row[1]), row[2], row[3]


def _redeliver(flash: Path, heap: str, n: int) -> Iterator[str]:
    """Boot the van on its flash with a GPS that sends nothing: it reports at boot, then
    drains its queue for _DRAIN_MS and stops."""
    args = ["--gps", "/dev/null", "--flash", str(flash), "--exit-on-eof"]
    proc = mpy.popen(
        mpy.FIRMWARE_MAIN, args, heap=heap, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            yield raw.decode(errors="replace").rstrip("\r\n")
        rc = proc.wait(120)
    finally:
        rig.stop_process(proc)
    yield f"# exit {rc}"


def run_day(
    name: str,
    args: argparse.Namespace,
    dead_zone: tuple[float, float],
    workdir: Path,
) -> Day:
    route = rig.sample_route(args.route)
    lap_s = rig_lap_seconds(route)
    laps = int(args.hours * 3600 // lap_s) + 1
    sim_args = ["--start", START, "--seed", str(args.seed), "--repeat", str(laps),
                "--duration", str(int(args.hours * 3600))]  # fmt: skip
    day = Day(name, dead_zone, [], [])
    t_wall = time.monotonic()
    with rig.GatewayProcess(workdir / f"gateway-{name}") as gw:
        with UdpRelay(gw.port, seed=args.seed) as relay:
            cfg = gw.van_config(f"soak-{name}", gateway_port=relay.port)
            flash = workdir / f"flash-{name}"
            boot = Boot(hours=max(1, int(-(-args.hours // 1))))
            day.boots.append(boot)
            down_since: float | None = None
            reached = -1
            speedup = None if args.speedup == 0 else args.speedup
            with rig.SimVan(
                route, flash, config=cfg, echo=True, sim_args=sim_args, heap=args.heap,
                speedup=speedup,
            ) as van:  # fmt: skip
                for line in van.console():
                    boot.feed(line)
                    if boot.t is None or boot.t0 is None or boot.ended:
                        continue
                    h = (boot.t - boot.t0) / 3600
                    down = dead_zone[0] <= h < dead_zone[1]
                    if down != (down_since is not None):
                        relay.drop_up = relay.drop_down = 1.0 if down else 0.0
                        if down:
                            down_since = time.monotonic()
                        else:
                            assert down_since is not None
                            day.dead_wall_s += time.monotonic() - down_since
                            down_since = None
                        _progress(f"  {name}: GPS hour {h:.2f}: link {'down' if down else 'up'}"
                                  f" ({relay.summary()})")  # fmt: skip
                    boot.period().link_down |= down
                    if int(h) > reached and int(h) < boot.hours:
                        reached = int(h)
                        _progress(f"  {name}: simulated hour {reached + 1}/{boot.hours} "
                                  f"reached after {time.monotonic() - t_wall:.1f} s")  # fmt: skip
                if down_since is not None:  # the day ended inside the dead zone
                    day.dead_wall_s += time.monotonic() - down_since
                    relay.drop_up = relay.drop_down = 0.0
                day.rc.append(van.wait(120))
            # What the drain left on flash, delivered by booting the van again.
            while boot.last_uplink.get("queued", 0) and len(day.boots) <= args.max_reboots:
                n = len(day.boots)
                left = boot.last_uplink.get("queued")
                _progress(f"  {name}: {left} records still queued on flash: reboot {n} "
                          f"(GPS silent) to deliver them")  # fmt: skip
                boot = Boot(label=f"reboot {n}")
                day.boots.append(boot)
                rc = 0
                for line in _redeliver(flash, args.heap, n):
                    if line.startswith("# exit "):
                        rc = int(line.split()[2])
                    else:
                        boot.feed(line)
                day.rc.append(rc)
            day.relay = relay.summary()
        day.stored, day.distinct_seqs, lo, hi = _stored(gw.db, cfg["device_id"])
        day.seq_range = (lo, hi)
    day.wall_s = time.monotonic() - t_wall
    return day


def rig_lap_seconds(route: Path) -> float:
    """How long gps-sim takes to drive `route` once at its defaults."""
    from .gpssim import load_route, plan_motion

    return plan_motion(load_route(route)).duration_s


# ---- printing -----------------------------------------------------------------------------
def _n(v: int | None) -> str:
    return "-" if v is None else str(v)


def print_day(day: Day, total: int) -> None:
    zone = "none" if day.dead_zone[0] == day.dead_zone[1] else \
        f"hours {day.dead_zone[0]:g}-{day.dead_zone[1]:g} (link down both ways)"  # fmt: skip
    print(f"\n{day.name}: dead zone {zone}; wall {day.wall_s:.1f} s"
          + (f", link down {day.dead_wall_s:.1f} wall s" if day.dead_wall_s else ""))  # fmt: skip
    if 0 < day.dead_wall_s < COAP_GIVE_UP_S:
        print(f"  (the link was down {day.dead_wall_s:.1f} wall seconds, less than a CoAP "
              f"request takes to give up (~{COAP_GIVE_UP_S} s): one in flight is resent, "
              f"not failed; --speedup F stretches the dead zone to 7200/F s)")  # fmt: skip
    print(f"{'hour':<10}{'least free':>11}{'last free':>10}{'stats':>6}{'made':>6}"
          f"{'acked':>7}{'queued':>7}{'writes':>7}  link")  # fmt: skip
    for p in day.periods:
        link = "down" if p.link_down else "up"
        print(f"{p.label:<10}{_n(p.least_free):>11}{_n(p.last_free):>10}{p.samples:>6}"
              f"{p.records:>6}{p.acked:>7}{_n(p.queued):>7}{p.writes:>7}  {link}")  # fmt: skip
    hw = least(p.least_free for p in day.periods)
    # The day's last figure: its drain's final stats line (before any redelivery boot).
    end_free = next((p.last_free for p in reversed(day.boots[0].periods.values())
                     if p.last_free is not None), None)  # fmt: skip
    used = "-" if end_free is None else f"{total - end_free} of {total}"
    peak = "-" if hw is None else str(total - hw)
    print(f"heap high-water mark: least free {_n(hw)} B (used {peak} B);"
          f" heap used at the end of the day: {used} B")  # fmt: skip
    g, f = heap_growth(day.hours), first_hour_fall(day.hours)
    print(f"heap growth (least free, the first half of the day's least -> the last hour): "
          f"{'-' if g is None else f'{g:+d} B'}; hour 1 -> worst later hour: "
          f"{'-' if f is None else f'{f:+d} B'}")  # fmt: skip
    counts = {k: day.counter(k) for k in ("lost", "dropped", "failures", "reports")}
    print(f"van: made {day.made} records over {len(day.boots)} boot(s); acked "
          f"{day.counter('acked')}; left queued {_n(day.queued_left)}; lost (flash) "
          f"{counts['lost']}; refused by gateway {counts['dropped']}; failed deliveries "
          f"{counts['failures']}; reports {counts['reports']}; exit codes {day.rc}")  # fmt: skip
    lo, hi = day.seq_range
    span = "-" if lo is None or hi is None else f"{lo}..{hi} ({hi - lo + 1} seqs)"
    print(f"gateway store: {day.stored} records (positions + events), {day.distinct_seqs} "
          f"distinct seqs, seq {span}; relay {day.relay}")  # fmt: skip
    kinds = ("MemoryError", "fix_failed", "round_failed")
    seen = {k: sum(k in ln for _, ln in day.errors) for k in kinds}
    print("firmware errors: " + ", ".join(f"{k} {v}" for k, v in seen.items())
          + f", error lines in all {len(day.errors)}")  # fmt: skip
    for where, ln in day.errors[:12]:
        print(f"    [{where}] {ln}")
    if len(day.errors) > 12:
        print(f"    ... {len(day.errors) - 12} more")


def verdict(day: Day) -> list[str]:
    """What is wrong with a day (empty: nothing)."""
    out = []
    if day.made != day.stored:
        out.append(f"{day.name}: the van made {day.made} records, the store holds {day.stored}")
    if day.distinct_seqs != day.stored:
        out.append(f"{day.name}: {day.stored - day.distinct_seqs} seqs stored twice")
    lo, hi = day.seq_range
    if lo is not None and hi is not None and hi - lo + 1 != day.distinct_seqs:
        out.append(f"{day.name}: {hi - lo + 1 - day.distinct_seqs} seqs missing in {lo}..{hi}")
    if day.queued_left:
        out.append(f"{day.name}: {day.queued_left} records never delivered")
    if day.errors:
        out.append(f"{day.name}: {len(day.errors)} firmware error lines")
    if any(day.rc):
        out.append(f"{day.name}: firmware exit codes {day.rc}")
    g = heap_growth(day.hours)
    if g is not None and g > GROWTH_SLACK:
        out.append(f"{day.name}: least free heap {g} B lower in the second half of the day")
    return out


# ---- command line -------------------------------------------------------------------------
def setup_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    p = sub.add_parser(
        name,
        help="a whole day (8 h, 2 h dead zone) on one van at 64K: heap and records per hour",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--hours", type=float, default=8.0, help="GPS hours to drive (default 8)")
    p.add_argument(
        "--dead-zone", type=parse_hours, default=(3.0, 5.0), metavar="START:END",
        help="hours of the day with the link down both ways (default 3:5; `none`: no dead "
        "zone)",
    )  # fmt: skip
    p.add_argument(
        "--route", default="urban-round",
        help="sample route (or GPX/GeoJSON file) driven in a loop (default urban-round)",
    )  # fmt: skip
    p.add_argument(
        "--heap", default=mpy.DEFAULT_HEAP,
        help=f"the firmware's heap (default {mpy.DEFAULT_HEAP}, as the rig runs it)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=1, help="gps-sim and relay seed (default 1)")
    p.add_argument(
        "--speedup", type=float, default=80.0, metavar="F",
        help="replay F times real time (default 80: the dead zone lasts 90 wall s, about "
        "what CoAP gives one exchange; 60 makes it 120 s; 0: as fast as the firmware reads)",
    )  # fmt: skip
    p.add_argument(
        "--max-reboots", type=int, default=10, metavar="N",
        help="boots (GPS silent) to deliver what the drain left queued (default 10)",
    )  # fmt: skip
    p.add_argument(
        "--no-reference", action="store_true", help="skip the reference day without dead zone"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.hours <= 0:
        print("bench soak: --hours must be positive", file=sys.stderr)
        return 2
    total = heap_total(args.heap)
    days: list[Day] = []
    with tempfile.TemporaryDirectory(prefix="vantrack-soak-") as tmp:
        plan = [("soak", args.dead_zone)]
        if not args.no_reference and args.dead_zone[0] != args.dead_zone[1]:
            plan.append(("reference", (0.0, 0.0)))
        for name, zone in plan:
            _progress(f"bench soak: {name}: {args.hours:g} h of {args.route} at heap "
                      f"{args.heap}, dead zone {zone[0]:g}-{zone[1]:g} h ...")  # fmt: skip
            days.append(run_day(name, args, zone, Path(tmp)))
    sys.stderr.flush()
    print(f"\nbench soak: {args.hours:g} GPS hours of {args.route}, heap {args.heap} "
          f"({total} B for the GC), seed {args.seed}; "
          "free heap in bytes after gc.collect()")  # fmt: skip
    for day in days:
        print_day(day, total)
    if len(days) == 2:
        soak, ref = days
        a = least(p.least_free for p in soak.periods)
        b = least(p.least_free for p in ref.periods)
        diff = "-" if a is None or b is None else f"{a - b:+d} B"
        print(f"\ncomparison: least free heap, soak {_n(a)} vs reference {_n(b)} ({diff}); "
              f"records made {soak.made} vs {ref.made}, stored {soak.stored} vs {ref.stored}; "
              f"boots {len(soak.boots)} vs {len(ref.boots)}; wall {soak.wall_s:.1f} s vs "
              f"{ref.wall_s:.1f} s")  # fmt: skip
    problems = [msg for d in days for msg in verdict(d)]
    ok = f"OK: no error, no heap growth (over {GROWTH_SLACK} B), every record stored once"
    print("\nresult: " + ("; ".join(problems) or ok), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="soakbench")
    sub = parser.add_subparsers(dest="bench", required=True)
    setup_bench(sub, "soak")
    ns = parser.parse_args(["soak", *sys.argv[1:]])
    sys.exit(ns.func(ns))
