"""`vantrack gps-sim`: a GPS receiver on the test bench, playing a route as NMEA 0183.

It replaces the van's GPS module: it drives a route (GPX track or route, GeoJSON
LineString, see tools/route.py) at a plausible speed, dwells at the stops, and writes what a
u-blox-like receiver sends per epoch (RMC, VTG, GGA, GSA; NMEA 4.1 by default; GN or GP
talker; CRLF; valid checksums) to stdout, a new pty pair, or a real serial port, in real
time, N times faster, or as fast as the reader takes it. A recorded NMEA log is replayed
sentence by sentence instead, paced by its own UTC times. Seeded faults (dropped,
truncated, corrupted sentences, fix outages, position jitter, binary noise) repeat exactly.

Library API (stable; the sim rig imports it):
    load_route(path) -> Route                      (from tools/route.py; raises RouteError)
    epochs(route, rate_hz=1.0, start=None, stop_time_s=60.0, speed_kmh=30.0, seed=0,
           *, alt_default_m=50.0, faults=None) -> Iterator[Epoch]
        Epoch is a NamedTuple (utc, lat, lon, speed_mps, course_deg, alt_m, valid, hdop, sats);
        utc is an aware datetime rounded to 10 ms (the NMEA resolution).
    nmea_lines(epoch, talker="GN", version="4.1") -> list[bytes]   (each ends in CRLF)
    sentence(body) -> bytes                        "$" + body + "*" + checksum + CRLF
    plan_motion(route, stop_time_s, speed_kmh) -> Motion   (distance and speed over time)
    parse_faults(spec) -> Faults;  LineFaults(faults, seed).apply(t_s, lines) -> list[bytes]
    open_output(kind...) / StdoutOutput, PtyOutput, SerialOutput;  play(...)
    build_parser() -> ArgumentParser;  run(args) -> exit code;  main(argv) -> exit code

As a subprocess: `python -m vantrack.tools.cli gps-sim ROUTE --pty` (or
`python -m vantrack.tools.gpssim ROUTE --pty`) prints `pty: /dev/pts/N` as its first stdout
line, then writes NMEA to that pty until the route is done. Exit codes: 0 done, 1 output
could not be opened, 2 bad route file or arguments, 143 terminated (SIGTERM).

It does not simulate satellites (no GSV), RTK, or receiver configuration commands (bytes a
reader writes to the pty are read and discarded).
"""

from __future__ import annotations

import argparse
import bisect
import fcntl
import math
import os
import random
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, NamedTuple, Protocol

from .route import (
    NmeaLog,
    Route,
    RouteError,
    destination,
    load_nmea_log,
    load_route,
    sniff_format,
)

__all__ = [
    "Epoch",
    "Faults",
    "LineFaults",
    "Motion",
    "Route",
    "RouteError",
    "build_parser",
    "epochs",
    "load_nmea_log",
    "load_route",
    "main",
    "nmea_lines",
    "parse_faults",
    "plan_motion",
    "play",
    "register",
    "run",
    "sentence",
]

DEFAULT_SPEED_KMH = 30.0  # urban delivery driving
DEFAULT_STOP_TIME_S = 60.0  # park, hand over a parcel, drive on
DEFAULT_ALT_M = 50.0
ACCEL_MPS2 = 1.0  # a loaded van pulling away
DECEL_MPS2 = 1.5  # comfortable braking
CORNER_MIN_MPS = 3.5  # ~13 km/h through a right-angle turn
MIN_RATE_HZ, MAX_RATE_HZ = 1.0, 10.0
# Sky model: satellites used (all constellations) and HDOP, changing slowly.
SATS_MIN, SATS_MAX = 7, 18
NO_FIX_HDOP = 99.99

# Fixed "sky": the PRNs reported in GSA, in the order satellites are added as the count grows.
GPS_PRNS = (5, 13, 15, 18, 20, 23, 24, 29, 12, 10, 2, 25)
GLONASS_PRNS = (65, 66, 72, 73, 74, 75, 81, 82, 87, 88, 80, 71)


# --- epochs ------------------------------------------------------------------------------


class Epoch(NamedTuple):
    """One receiver solution; `valid` False means no fix (the position is then the truth)."""

    utc: datetime
    lat: float
    lon: float
    speed_mps: float
    course_deg: float
    alt_m: float
    valid: bool
    hdop: float
    sats: int


@dataclass(frozen=True)
class Phase:
    """Constant acceleration from time t0 for dur seconds: d = d0 + v0*tau + a*tau^2/2."""

    t0: float
    dur: float
    d0: float
    v0: float
    a: float

    def at(self, tau: float) -> tuple[float, float]:
        tau = max(0.0, min(tau, self.dur))
        return self.d0 + self.v0 * tau + 0.5 * self.a * tau * tau, self.v0 + self.a * tau

    @property
    def d1(self) -> float:
        return self.at(self.dur)[0]


@dataclass
class Motion:
    """Distance along the route and speed as functions of time since the start."""

    phases: list[Phase]
    length_m: float
    _t0s: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._t0s = [p.t0 for p in self.phases]

    @property
    def duration_s(self) -> float:
        last = self.phases[-1]
        return last.t0 + last.dur

    def at(self, t: float) -> tuple[float, float]:
        """(distance along the route in m, speed in m/s) at t seconds."""
        if t >= self.duration_s:
            return self.length_m, 0.0
        i = max(0, bisect.bisect_right(self._t0s, t) - 1)
        d, v = self.phases[i].at(t - self.phases[i].t0)
        return min(d, self.length_m), max(0.0, v)


def _retime(phases: Iterable[Phase]) -> list[Phase]:
    out: list[Phase] = []
    t = 0.0
    for p in phases:
        if p.dur > 1e-9:
            out.append(Phase(t, p.dur, p.d0, p.v0, p.a))
            t += p.dur
    return out


def _split_for_stops(phases: list[Phase], stops: Sequence[float], dwell_s: float) -> list[Phase]:
    """Insert a dwell of `dwell_s` where the van passes each along-distance in `stops`."""
    if dwell_s <= 0 or not stops:
        return phases
    pending = sorted(stops)
    out: list[Phase] = []
    for p in phases:
        cur = p
        while pending and cur.d0 - 1e-6 <= pending[0] <= cur.d1 + 1e-6:
            s = pending.pop(0)
            # time into the phase at which distance s is reached
            ds = max(0.0, s - cur.d0)
            root = math.sqrt(max(0.0, cur.v0 * cur.v0 + 2 * cur.a * ds))
            tau = 0.0 if ds == 0 else min(cur.dur, 2 * ds / (cur.v0 + root) if cur.v0 + root else 0)
            if tau > 0:
                out.append(Phase(0, tau, cur.d0, cur.v0, cur.a))
            out.append(Phase(0, dwell_s, s, 0.0, 0.0))
            d, v = cur.at(tau)
            cur = Phase(0, cur.dur - tau, d, v, cur.a)
        out.append(cur)
    for s in pending:  # beyond the last phase: at the very end
        out.append(Phase(0, dwell_s, s, 0.0, 0.0))
    return _retime(out)


def plan_motion(
    route: Route,
    stop_time_s: float = DEFAULT_STOP_TIME_S,
    speed_kmh: float = DEFAULT_SPEED_KMH,
) -> Motion:
    """How the van moves along `route`: recorded timing if every point has a time, else
    `speed_kmh` with braking to 0 at stops, slowing for corners and pulling away again.
    Either way it dwells `stop_time_s` at each stop."""
    stops = [s.along_m for s in route.stops]
    if route.timed:
        phases = []
        for k in range(1, len(route.points)):
            t0, t1 = route.points[k - 1].time, route.points[k].time
            assert t0 is not None and t1 is not None
            dt = (t1 - t0).total_seconds()
            d0, d1 = route.point_along_m[k - 1], route.point_along_m[k]
            if dt > 0:
                phases.append(Phase(0, dt, d0, (d1 - d0) / dt, 0.0))
        return Motion(_split_for_stops(_retime(phases), stops, stop_time_s), route.length_m)

    if not speed_kmh > 0:
        raise ValueError("speed_kmh must be positive")
    vmax = speed_kmh / 3.6
    # Breakpoints along the route with the highest speed allowed there.
    limits: dict[float, float] = {0.0: 0.0, route.length_m: 0.0}
    for i in range(1, len(route.vertices) - 1):
        turn = route.turn_deg(i)
        if turn > 15.0:
            lim = vmax * (1.0 - (turn - 15.0) / 90.0)
            lim = max(CORNER_MIN_MPS if turn < 150 else 1.5, lim)
            d = route.cum_m[i]
            limits[d] = min(limits.get(d, vmax), lim, vmax)
    for s in stops:
        limits[s] = 0.0
    ds = sorted(limits)
    v = [limits[d] for d in ds]
    for k in range(1, len(ds)):  # can't accelerate faster than ACCEL
        v[k] = min(v[k], math.sqrt(v[k - 1] ** 2 + 2 * ACCEL_MPS2 * (ds[k] - ds[k - 1])))
    for k in range(len(ds) - 2, -1, -1):  # nor brake harder than DECEL
        v[k] = min(v[k], math.sqrt(v[k + 1] ** 2 + 2 * DECEL_MPS2 * (ds[k + 1] - ds[k])))
    phases = []
    a, b = ACCEL_MPS2, DECEL_MPS2
    for k in range(len(ds) - 1):
        length = ds[k + 1] - ds[k]
        if length <= 1e-9:
            continue
        v0, v1 = v[k], v[k + 1]
        vp = math.sqrt((2 * a * b * length + b * v0 * v0 + a * v1 * v1) / (a + b))
        vp = max(v0, v1, min(vmax, vp))
        x1 = (vp * vp - v0 * v0) / (2 * a)
        x2 = (vp * vp - v1 * v1) / (2 * b)
        xc = max(0.0, length - x1 - x2)
        d = ds[k]
        phases.append(Phase(0, (vp - v0) / a, d, v0, a))
        d += x1
        if xc > 0:
            phases.append(Phase(0, xc / vp, d, vp, 0.0))
            d += xc
        phases.append(Phase(0, (vp - v1) / b, d, vp, -b))
    return Motion(_split_for_stops(_retime(phases), stops, stop_time_s), route.length_m)


class _Sky:
    """Satellites used and HDOP: a seeded random walk, one step per simulated second, so
    1 Hz and 10 Hz runs with the same seed see the same sky."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"{seed}/sky")
        self._sats = [self._rng.randint(11, 15)]
        self._noise = [0.0]

    def at(self, t: float) -> tuple[float, int]:
        sec = max(0, int(t))
        while len(self._sats) <= sec:
            s = self._sats[-1]
            if self._rng.random() < 0.05:
                s = min(SATS_MAX, max(SATS_MIN, s + self._rng.choice((-1, 1))))
            self._sats.append(s)
            self._noise.append(0.95 * self._noise[-1] + self._rng.gauss(0.0, 0.015))
        sats = self._sats[sec]
        hdop = 0.45 + 5.0 / sats + self._noise[sec]
        return round(min(4.0, max(0.5, hdop)), 2), sats


def default_start() -> datetime:
    """Today 08:00 UTC: the start of a delivery round."""
    now = datetime.now(UTC)
    return now.replace(hour=8, minute=0, second=0, microsecond=0)


def epochs(
    route: Route,
    rate_hz: float = 1.0,
    start: datetime | None = None,
    stop_time_s: float = DEFAULT_STOP_TIME_S,
    speed_kmh: float = DEFAULT_SPEED_KMH,
    seed: int = 0,
    *,
    alt_default_m: float = DEFAULT_ALT_M,
    faults: Faults | None = None,
) -> Iterator[Epoch]:
    """The receiver's solutions along `route` at `rate_hz`, from `start` to the end.

    Positions are interpolated on the great circles between route points; speed is the
    rate of travel along the route and course the great-circle bearing along it; the last
    epoch is at or just after the arrival. `faults` may add fix outages and position jitter.
    """
    if not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:
        raise ValueError(f"rate_hz must be within {MIN_RATE_HZ:g}..{MAX_RATE_HZ:g}")
    motion = plan_motion(route, stop_time_s, speed_kmh)
    t_start = start or default_start()
    if t_start.tzinfo is None:
        t_start = t_start.replace(tzinfo=UTC)
    t_start = t_start.replace(microsecond=(t_start.microsecond // 10_000) * 10_000)
    return _epoch_iter(route, motion, rate_hz, t_start, seed, alt_default_m, faults or Faults())


def _epoch_iter(
    route: Route,
    motion: Motion,
    rate_hz: float,
    t_start: datetime,
    seed: int,
    alt_default_m: float,
    faults: Faults,
) -> Iterator[Epoch]:
    sky = _Sky(seed)
    jitter_rng = random.Random(f"{seed}/jitter")
    outage_rng = random.Random(f"{seed}/outage")
    n = math.ceil(motion.duration_s * rate_hz - 1e-9)
    for k in range(n + 1):
        cs = round(k * 100 / rate_hz)  # NMEA times have 10 ms resolution
        t = cs / 100
        d, v = motion.at(t)
        lat, lon = route.point_at(d)
        hdop, sats = sky.at(t)
        valid = not faults.in_outage(t)
        if not valid:
            hdop, sats = NO_FIX_HDOP, outage_rng.randint(0, 3)
        elif faults.jitter_m > 0:
            r = faults.jitter_m * math.sqrt(jitter_rng.random())  # uniform over the disc
            lat, lon = destination(lat, lon, jitter_rng.uniform(0.0, 360.0), r)
        yield Epoch(
            utc=t_start + timedelta(milliseconds=cs * 10),
            lat=lat,
            lon=lon,
            speed_mps=v,
            course_deg=route.course_at(d),
            alt_m=route.alt_at(d, alt_default_m),
            valid=valid,
            hdop=hdop,
            sats=sats,
        )


# --- NMEA --------------------------------------------------------------------------------


def sentence(body: str) -> bytes:
    """`$body*CS\\r\\n` with the XOR checksum of body."""
    raw = body.encode("ascii")
    cs = 0
    for c in raw:
        cs ^= c
    return b"$" + raw + b"*%02X\r\n" % cs


def _latlon(value: float, deg_digits: int, hemis: str) -> tuple[str, str]:
    # integer units of 1e-5 minute so rounding carries into minutes and degrees
    units = round(abs(value) * 60 * 100_000)
    deg, rem = divmod(units, 60 * 100_000)
    minutes, frac = divmod(rem, 100_000)
    return f"{deg:0{deg_digits}d}{minutes:02d}.{frac:05d}", hemis[0] if value >= 0 else hemis[1]


def nmea_lines(epoch: Epoch, talker: str = "GN", version: str = "4.1") -> list[bytes]:
    """The sentences a receiver sends for one epoch, u-blox order: RMC, VTG, GGA, GSA.

    version "4.1" adds the RMC navigational status and the GSA system id; "2.3" has mode
    indicators but neither. With talker GN, satellites are split between a GPS and a
    GLONASS GSA like a multi-GNSS receiver does; with GP there is one GSA (max 12 PRNs).
    """
    if version not in ("4.1", "2.3"):
        raise ValueError("version must be '4.1' or '2.3'")
    v41 = version == "4.1"
    u = epoch.utc.astimezone(UTC)
    cs = round(u.microsecond / 10_000)
    hms = f"{u.hour:02d}{u.minute:02d}{u.second:02d}.{min(cs, 99):02d}"
    dmy = f"{u.day:02d}{u.month:02d}{u.year % 100:02d}"
    if epoch.valid:
        lat, ns = _latlon(epoch.lat, 2, "NS")
        lon, ew = _latlon(epoch.lon, 3, "EW")
        kn = epoch.speed_mps * 3600 / 1852
        kmh = epoch.speed_mps * 3.6
        cog = f"{epoch.course_deg % 360:.2f}"
        rmc = f"{talker}RMC,{hms},A,{lat},{ns},{lon},{ew},{kn:.3f},{cog},{dmy},,,A"
        vtg = f"{talker}VTG,{cog},T,,M,{kn:.3f},N,{kmh:.3f},K,A"
        gga = (
            f"{talker}GGA,{hms},{lat},{ns},{lon},{ew},1,{epoch.sats:02d},"
            f"{epoch.hdop:.2f},{epoch.alt_m:.1f},M,,M,,"
        )
    else:
        rmc = f"{talker}RMC,{hms},V,,,,,,,{dmy},,,N"
        vtg = f"{talker}VTG,,T,,M,,N,,K,N"
        gga = f"{talker}GGA,{hms},,,,,0,00,{NO_FIX_HDOP:.2f},,,,,,"
    if v41:
        rmc += ",V"
    lines = [sentence(rmc), sentence(vtg), sentence(gga)]

    if epoch.valid:
        hdop = epoch.hdop
        pdop = round(hdop * 1.8, 2)
        vdop = round(math.sqrt(pdop * pdop - hdop * hdop), 2)
        dops = f"{pdop:.2f},{hdop:.2f},{vdop:.2f}"
        if talker == "GN":
            n_gps = min(len(GPS_PRNS), math.ceil(epoch.sats * 0.6))
            n_glo = min(len(GLONASS_PRNS), epoch.sats - n_gps)
            systems = [(GPS_PRNS[:n_gps], 1), (GLONASS_PRNS[:n_glo], 2)]
        else:
            systems = [(GPS_PRNS[: epoch.sats], 1)]
        for prns, sysid in systems:
            ids = ",".join([f"{p:02d}" for p in prns] + [""] * (12 - len(prns)))
            body = f"{talker}GSA,A,3,{ids},{dops}"
            lines.append(sentence(body + (f",{sysid}" if v41 else "")))
    else:
        body = f"{talker}GSA,A,1,{',' * 11},{NO_FIX_HDOP:.2f},{NO_FIX_HDOP:.2f},{NO_FIX_HDOP:.2f}"
        lines.append(sentence(body + (",1" if v41 else "")))
    return lines


# --- faults ------------------------------------------------------------------------------


@dataclass
class Faults:
    """What goes wrong, reproducibly for a given seed.

    drop/truncate/checksum: probability per sentence; outages: (start_s, duration_s) with no
    fix; jitter_m: positions moved up to this many metres; noise: (at_s, n_bytes) bursts of
    random bytes written between sentences. Times are seconds since the first epoch.
    """

    drop: float = 0.0
    truncate: float = 0.0
    checksum: float = 0.0
    outages: list[tuple[float, float]] = field(default_factory=list)
    jitter_m: float = 0.0
    noise: list[tuple[float, int]] = field(default_factory=list)

    def in_outage(self, t: float) -> bool:
        return any(s <= t < s + d for s, d in self.outages)

    @property
    def any(self) -> bool:
        return bool(
            self.drop or self.truncate or self.checksum or self.outages or self.jitter_m
        ) or bool(self.noise)


FAULTS_HELP = """\
comma-separated faults, repeatable: drop=P (drop each sentence with probability P),
truncate=P (cut sentences short), checksum=P (corrupt checksums), nofix=SECONDS@START
(no fix for SECONDS from START seconds into the run: RMC V, GGA quality 0, GSA mode 1; e.g.
a tunnel), jitter=METRES (move each fix up to METRES), noise=BYTES@START (a burst of binary
noise). Example: --faults drop=0.02,nofix=30@120,noise=64@300"""


def parse_faults(spec: str, into: Faults | None = None) -> Faults:
    """Parse a --faults string (see FAULTS_HELP); raises ValueError naming the bad part."""
    f = into or Faults()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        try:
            if not sep:
                raise ValueError
            if key in ("drop", "truncate", "checksum"):
                p = float(value)
                if not 0.0 <= p <= 1.0:
                    raise ValueError
                setattr(f, key, p)
            elif key == "jitter":
                f.jitter_m = float(value)
                if f.jitter_m < 0 or not math.isfinite(f.jitter_m):
                    raise ValueError
            elif key in ("nofix", "noise"):
                amount, at, start = value.partition("@")
                if not at:
                    raise ValueError
                begin = float(start)
                if begin < 0:
                    raise ValueError
                if key == "nofix":
                    dur = float(amount)
                    if dur <= 0:
                        raise ValueError
                    f.outages.append((begin, dur))
                else:
                    n = int(amount)
                    if n <= 0:
                        raise ValueError
                    f.noise.append((begin, n))
            else:
                raise KeyError(key)
        except KeyError:
            raise ValueError(
                f"unknown fault {key!r} (known: drop, truncate, checksum, nofix, jitter, noise)"
            ) from None
        except ValueError:
            forms = {
                "drop": "drop=P with 0<=P<=1",
                "truncate": "truncate=P with 0<=P<=1",
                "checksum": "checksum=P with 0<=P<=1",
                "jitter": "jitter=METRES",
                "nofix": "nofix=SECONDS@START",
                "noise": "noise=BYTES@START",
            }
            raise ValueError(f"bad fault {part!r}: expected {forms[key]}") from None
    return f


@dataclass
class FaultCounts:
    dropped: int = 0
    truncated: int = 0
    bad_checksums: int = 0
    noise_bytes: int = 0


class LineFaults:
    """Sentence-level faults, applied to each epoch's lines just before they are written."""

    def __init__(self, faults: Faults, seed: int = 0) -> None:
        self.faults = faults
        self.counts = FaultCounts()
        self._rng = random.Random(f"{seed}/lines")
        self._noise = sorted(faults.noise)

    def apply(self, t: float, lines: list[bytes]) -> list[bytes]:
        f, rng, out = self.faults, self._rng, []
        while self._noise and self._noise[0][0] <= t:
            _, n = self._noise.pop(0)
            out.append(rng.randbytes(n))
            self.counts.noise_bytes += n
        for line in lines:
            if f.drop and rng.random() < f.drop:
                self.counts.dropped += 1
                continue
            body = line.rstrip(b"\r\n")
            if f.truncate and rng.random() < f.truncate and len(body) > 2:
                # the tail is lost; the line still ends, as after a UART overrun
                line = body[: rng.randint(1, len(body) - 1)] + b"\r\n"
                self.counts.truncated += 1
            elif f.checksum and rng.random() < f.checksum and body[-3:-2] == b"*":
                good = int(body[-2:], 16)
                line = body[:-2] + b"%02X\r\n" % (good ^ rng.randint(1, 255))
                self.counts.bad_checksums += 1
            out.append(line)
        return out


# --- outputs -----------------------------------------------------------------------------


class Output(Protocol):
    name: str
    overrun_bytes: int

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class StdoutOutput:
    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self.stream = stream or sys.stdout.buffer
        self.name = "stdout"
        self.overrun_bytes = 0

    def write(self, data: bytes) -> None:
        self.stream.write(data)
        self.stream.flush()

    def close(self) -> None:
        pass


class PtyOutput:
    """A new pty pair: NMEA goes into the controller side, a reader opens `self.path`.

    The follower is raw (no echo, no CR/LF translation) and kept open here so readers
    can come and go. With `drop_when_full` (real-time play) a reader that stops reading
    costs data, as with a real receiver's UART; otherwise writes block until it reads.
    """

    LINGER_S = 2.0  # on close, give a reader this long to take what is still queued
    SETTLE_S = 0.15  # ...and consider it done once the queue stayed empty this long

    def __init__(self, link: str | None = None, drop_when_full: bool = True) -> None:
        self.controller, self.follower = os.openpty()
        # raw: no echo, no line editing, no CR/LF translation in either direction
        tty.setraw(self.follower, termios.TCSANOW)
        self.path = os.ttyname(self.follower)
        self.name = self.path
        self.link = link
        self.overrun_bytes = 0
        self.drop_when_full = drop_when_full
        if drop_when_full:
            os.set_blocking(self.controller, False)
        if link:
            if os.path.islink(link):
                os.unlink(link)
            elif os.path.exists(link):
                self._close_fds()
                raise OSError(f"--pty-link {link} exists and is not a symlink")
            os.symlink(self.path, link)

    def _drain_input(self) -> None:
        # Whatever the reader sends (e.g. receiver configuration) is discarded.
        while select.select([self.controller], [], [], 0)[0]:
            try:
                if not os.read(self.controller, 4096):
                    return
            except (BlockingIOError, OSError):
                return

    def write(self, data: bytes) -> None:
        self._drain_input()
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.controller, view)
            except BlockingIOError:
                self.overrun_bytes += len(view)
                return
            view = view[n:]

    def _queued(self) -> int:
        buf = fcntl.ioctl(self.follower, termios.FIONREAD, b"\0\0\0\0")
        return int.from_bytes(buf, sys.byteorder)

    def close(self) -> None:
        # Closing the controller discards whatever the kernel still holds for the reader,
        # and FIONREAD does not count bytes still in the pty's flip buffer: wait until the
        # follower's queue has stayed empty for a while, not merely once.
        deadline = time.monotonic() + self.LINGER_S
        empty_since = None
        try:
            while time.monotonic() < deadline:
                now = time.monotonic()
                if self._queued():
                    empty_since = None
                elif empty_since is None:
                    empty_since = now
                elif now - empty_since >= self.SETTLE_S:
                    break
                time.sleep(0.01)
        except OSError:
            pass
        self._close_fds()
        if self.link and os.path.islink(self.link) and os.readlink(self.link) == self.path:
            os.unlink(self.link)

    def _close_fds(self) -> None:
        for fd in (self.controller, self.follower):
            try:
                os.close(fd)
            except OSError:
                pass


class SerialOutput:
    """A real serial port (a USB-UART wired to the van's GPS input) through pyserial."""

    def __init__(self, port: str, baud: int) -> None:
        import serial  # pyserial; imported here so stdout/pty use needs no serial port

        try:
            self.port = serial.Serial(port, baudrate=baud, write_timeout=None)
        except (serial.SerialException, ValueError) as e:
            raise OSError(f"cannot open serial port {port}: {e}") from None
        self.name = f"{port} @ {baud} baud"
        self.overrun_bytes = 0

    def write(self, data: bytes) -> None:
        self.port.write(data)

    def close(self) -> None:
        try:
            self.port.flush()
        finally:
            self.port.close()


# --- playing -----------------------------------------------------------------------------


@dataclass
class PlayStats:
    epochs: int = 0
    sentences: int = 0
    bytes: int = 0
    sim_s: float = 0.0


class Progress:
    """A status line on stderr while writing to a pty or serial port (never for stdout)."""

    def __init__(self, total_s: float, enabled: bool, stream: IO[str] | None = None) -> None:
        self.total_s = total_s
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = 1.0 if self.tty else 15.0
        self._next = time.monotonic() + self.every
        self._shown = False

    def update(self, stats: PlayStats, label: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.every
        pct = 100.0 * stats.sim_s / self.total_s if self.total_s > 0 else 100.0
        text = (
            f"gps-sim: {label}  {_hms(stats.sim_s)}/{_hms(self.total_s)} ({pct:3.0f}%)  "
            f"{stats.epochs} epochs  {stats.bytes / 1000:.1f} kB"
        )
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self.enabled and self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


def play(
    items: Iterable[tuple[float, list[bytes], str]],
    out: Output,
    *,
    speedup: float = 1.0,
    fast: bool = False,
    line_faults: LineFaults | None = None,
    progress: Progress | None = None,
    duration_s: float | None = None,
) -> PlayStats:
    """Write each (offset_s, lines, label) at wall time offset/speedup (or at once if fast)."""
    stats = PlayStats()
    wall0 = time.monotonic()
    for offset, lines, label in items:
        if duration_s is not None and offset > duration_s + 1e-9:
            break
        if not fast:
            delay = wall0 + offset / speedup - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if line_faults is not None:
            lines = line_faults.apply(offset, lines)
        data = b"".join(lines)
        out.write(data)
        stats.epochs += 1
        stats.sentences += len(lines)
        stats.bytes += len(data)
        stats.sim_s = offset
        if progress is not None:
            progress.update(stats, label)
    return stats


# --- command line ------------------------------------------------------------------------


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not MIN_RATE_HZ <= value <= MAX_RATE_HZ:
        raise argparse.ArgumentTypeError(f"{text} Hz: the rate must be 1 to 10 Hz")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text} must be zero or more")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be 1 or more")
    return value


def _start(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time such as 2026-11-26T08:00:00Z"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC)


def _faults(text: str) -> str:
    try:
        parse_faults(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


DESCRIPTION = """\
Play a route as NMEA 0183, like the GPS module in a van: to stdout (default), a new pty
(--pty) or a serial port (--serial). ROUTE is a GPX track or route (wpt = stops), a GeoJSON
LineString (Point features = stops), or a recorded NMEA log (replayed as recorded, paced by
its UTC times). Each epoch: RMC, VTG, GGA, GSA (NMEA 4.1, CRLF, valid checksums)."""

EPILOG = """\
examples:
  vantrack gps-sim tools/routes/urban-round.gpx --fast | head
  vantrack gps-sim tools/routes/urban-round.gpx --pty --rate 5 --speedup 10
  vantrack gps-sim tools/routes/highway-run.gpx --serial /dev/ttyUSB0 --baud 38400
  vantrack gps-sim tools/routes/urban-round.gpx --pty --faults drop=0.01,nofix=30@300 --seed 7
  vantrack gps-sim tools/routes/urban-round.gpx --pty --fast --repeat 12 --duration 28800
With --pty the first stdout line is `pty: /dev/pts/N`: open that path to read the NMEA.
Exit codes: 0 done, 1 output not available, 2 bad route or arguments, 143 terminated."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("route", metavar="ROUTE", help="GPX, GeoJSON or NMEA log file")
    timing = p.add_argument_group("timing")
    timing.add_argument(
        "--rate", type=_rate, default=1.0, metavar="HZ", help="epochs per second, 1-10 (default 1)"
    )
    pace = timing.add_mutually_exclusive_group()
    pace.add_argument(
        "--speedup",
        type=_positive,
        default=1.0,
        metavar="FACTOR",
        help="play FACTOR times faster than real time (default 1: real time)",
    )
    pace.add_argument(
        "--fast",
        action="store_true",
        help="no pacing: write as fast as the reader takes it (blocking writes)",
    )
    timing.add_argument(
        "--start",
        type=_start,
        default=None,
        metavar="TIME",
        help="UTC time of the first epoch, e.g. 2026-11-26T08:00:00Z (default: today 08:00Z)",
    )
    timing.add_argument(
        "--duration",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="stop after SECONDS of simulated time (default: the whole route)",
    )
    timing.add_argument(
        "--repeat",
        type=_count,
        default=1,
        metavar="N",
        help="drive a GPX/GeoJSON route N times back to back, the clock running on (a "
        "round that ends where it starts makes a whole day: --repeat 12 --duration 28800); "
        "lap i has sky and jitter seed SEED+i, nofix times count from the first epoch "
        "(default 1)",
    )
    drive = p.add_argument_group("driving (GPX/GeoJSON routes)")
    drive.add_argument(
        "--speed-kmh",
        type=_positive,
        default=DEFAULT_SPEED_KMH,
        metavar="KMH",
        help="cruising speed when the route has no timestamps (timed GPX/GeoJSON drives "
        "at the recorded speeds, with its clock moved to --start) "
        f"(default {DEFAULT_SPEED_KMH:g}; slows for corners and stops)",
    )
    drive.add_argument(
        "--stop-time",
        type=_non_negative,
        default=DEFAULT_STOP_TIME_S,
        metavar="SECONDS",
        help="dwell at each stop (GPX wpt, points with <type>stop</type>, GeoJSON Points) "
        f"(default {DEFAULT_STOP_TIME_S:g})",
    )
    drive.add_argument(
        "--altitude",
        type=float,
        default=DEFAULT_ALT_M,
        metavar="METRES",
        help=f"altitude when the route has no elevation (default {DEFAULT_ALT_M:g})",
    )
    nmea = p.add_argument_group("receiver")
    nmea.add_argument(
        "--talker", choices=("GN", "GP"), default="GN", help="talker ID (default GN: multi-GNSS)"
    )
    nmea.add_argument(
        "--nmea-version",
        choices=("4.1", "2.3"),
        default="4.1",
        help="sentence layout (default 4.1)",
    )
    nmea.add_argument("--faults", type=_faults, action="append", default=[], help=FAULTS_HELP)
    nmea.add_argument(
        "--seed", type=int, default=0, help="seed for the sky and the faults (default 0)"
    )
    out = p.add_argument_group("output (default: stdout)")
    where = out.add_mutually_exclusive_group()
    where.add_argument(
        "--pty",
        action="store_true",
        help="create a pty pair and print `pty: PATH` (the device to open) as the first line",
    )
    where.add_argument("--serial", metavar="PORT", help="write to a serial port via pyserial")
    out.add_argument(
        "--baud", type=int, default=9600, help="serial baud rate (default 9600, as GPS modules)"
    )
    out.add_argument("--pty-link", metavar="PATH", help="with --pty, also make symlink PATH")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "gps-sim",
        help="play a route (GPX/GeoJSON/NMEA log) as NMEA to stdout, a pty or a serial port",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vantrack gps-sim",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


class _Terminated(Exception):
    pass


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def _warn(text: str) -> None:
    print(f"gps-sim: warning: {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the simulator for parsed arguments (see build_parser); returns the exit code."""
    if args.pty_link and not args.pty:
        print("vantrack gps-sim: error: --pty-link needs --pty", file=sys.stderr)
        return 2
    faults = Faults()
    try:
        for spec in args.faults:
            parse_faults(spec, faults)
        items, total_s = _load_items(args, faults)
    except (RouteError, ValueError) as e:
        print(f"vantrack gps-sim: error: {e}", file=sys.stderr)
        return 2

    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    else:
        previous = None
    out: Output | None = None
    progress = Progress(total_s, enabled=not args.quiet and (args.pty or bool(args.serial)))
    line_faults = LineFaults(faults, args.seed) if faults.any else None
    try:
        try:
            if args.pty:
                pty_out = PtyOutput(args.pty_link, drop_when_full=not args.fast)
                out = pty_out
                print(f"pty: {pty_out.path}", flush=True)
                if args.pty_link:
                    print(f"gps-sim: {args.pty_link} -> {pty_out.path}", file=sys.stderr)
            elif args.serial:
                out = SerialOutput(args.serial, args.baud)
                _check_baud(args)
            else:
                out = StdoutOutput()
        except OSError as e:
            print(f"vantrack gps-sim: error: {e}", file=sys.stderr)
            return 1
        stats = play(
            items,
            out,
            speedup=args.speedup,
            fast=args.fast,
            line_faults=line_faults,
            progress=progress,
            duration_s=args.duration,
        )
        progress.update(stats, "done", force=True)
        progress.finish()
        if progress.enabled:
            _summary(stats, out, line_faults)
        return 0
    except _Terminated:
        progress.finish()
        return 143
    finally:
        if out is not None:
            out.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _load_items(
    args: argparse.Namespace, faults: Faults
) -> tuple[Iterator[tuple[float, list[bytes], str]], float]:
    repeat = getattr(args, "repeat", 1)
    if sniff_format(args.route) == "nmea":
        if repeat != 1:
            raise ValueError("--repeat applies to GPX/GeoJSON routes, not to a recorded NMEA log")
        log: NmeaLog = load_nmea_log(args.route)
        if faults.outages or faults.jitter_m:
            _warn("nofix and jitter faults do not apply to a replayed NMEA log")
        items = (
            (offset, [line + b"\r\n" for line in lines], f"line {i + 1}")
            for i, (offset, lines) in enumerate(log.epochs)
        )
        return items, log.duration_s
    route = load_route(args.route)
    for w in route.warnings:
        _warn(w)
    lap_s = plan_motion(route, args.stop_time, args.speed_kmh).duration_s
    if repeat == 1:
        gen = epochs(
            route,
            rate_hz=args.rate,
            start=args.start,
            stop_time_s=args.stop_time,
            speed_kmh=args.speed_kmh,
            seed=args.seed,
            alt_default_m=args.altitude,
            faults=faults,
        )
        total = lap_s
    else:
        gen = _laps(route, args, faults, repeat)
        # A lap ends at its last epoch, at or just after the arrival; the next one starts
        # an epoch later.
        lap_epochs = math.ceil(lap_s * args.rate - 1e-9) + 1
        total = repeat * lap_epochs / args.rate - 1 / args.rate
    epoch_items = (
        (
            (e.utc - first).total_seconds(),
            nmea_lines(e, args.talker, args.nmea_version),
            e.utc.strftime("%H:%M:%SZ"),
        )
        for first, e in _with_first(gen)
    )
    return epoch_items, total


def _laps(route: Route, args: argparse.Namespace, faults: Faults, repeat: int) -> Iterator[Epoch]:
    """`repeat` laps of `route` back to back: each starts one epoch after the last one
    ended, with seed + lap for its sky and jitter, and the nofix outages that fall in it."""
    start = args.start or default_start()
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    lap_start = start
    for lap in range(repeat):
        offset_s = (lap_start - start).total_seconds()
        lap_faults = Faults(
            jitter_m=faults.jitter_m,
            outages=[(s - offset_s, d) for s, d in faults.outages if s + d > offset_s],
        )
        last = None
        for e in epochs(
            route,
            rate_hz=args.rate,
            start=lap_start,
            stop_time_s=args.stop_time,
            speed_kmh=args.speed_kmh,
            seed=args.seed + lap,
            alt_default_m=args.altitude,
            faults=lap_faults,
        ):
            last = e
            yield e
        assert last is not None
        lap_start = last.utc + timedelta(milliseconds=round(1000 / args.rate / 10) * 10)


def _with_first(gen: Iterator[Epoch]) -> Iterator[tuple[datetime, Epoch]]:
    first: datetime | None = None
    for e in gen:
        first = first or e.utc
        yield first, e


def _check_baud(args: argparse.Namespace) -> None:
    # ~330 bytes per epoch (RMC, VTG, GGA, 2 GSA); 10 bits per byte on the wire
    need = 330 * args.rate * 10
    if need > args.baud:
        _warn(
            f"{args.baud} baud carries {args.baud // 10} bytes/s but {args.rate:g} Hz needs "
            f"about {need // 10:.0f}: sentences will queue up; raise --baud or lower --rate"
        )


def _summary(stats: PlayStats, out: Output, faults: LineFaults | None) -> None:
    parts = [f"{stats.epochs} epochs", f"{stats.sentences} sentences", f"{stats.bytes} bytes"]
    if faults is not None:
        c = faults.counts
        parts.append(
            f"faults: {c.dropped} dropped, {c.truncated} truncated, "
            f"{c.bad_checksums} bad checksums, {c.noise_bytes} noise bytes"
        )
    if out.overrun_bytes:
        parts.append(f"{out.overrun_bytes} bytes lost (nobody reading)")
    print(f"gps-sim: done to {out.name}: " + ", ".join(parts), file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `... | head` closed our stdout: not an error; silence the flush at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
