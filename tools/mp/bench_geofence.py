# Benchmark of the geofence engine (firmware/fence.py) under MicroPython, run by
# `vantrack bench geofence` (tools/fencebench.py), beside a naive version that checks
# every fence on every fix in floats (it lives here, not in the firmware).
# ruff: noqa: UP031 (MicroPython: %-formatting is the lean choice there)
#
# argv: FILE ROUNDS [engine|naive|both]. FILE (little-endian int32 words, written by
# fencebench.py): n_stops, n_zones, n_fixes, then the depot and each stop and zone as
#   kind, inner_m, outer_m, n_coords, coords...     (kind -1: no depot)
# then each fix as t, lat, lon, hdop x100, sats. Fences are read one at a time while the
# engine is built (as routefile hands them over); fixes are streamed in chunks into one
# preallocated array, so the heap holds no more than the van would.
# stdout, one line each:
#   IMPORT bytes=B                          heap the fence module costs once imported
#   FIXED bytes=B                           heap an engine holds for an empty route
#   RESULT impl=I fences=N fixes=F us_per_fix=X alloc_per_fix=Y req_per_fix=Z
#          bytes_stored=S events=E          (one line)
# alloc_per_fix: gc.mem_alloc() around each fix with gc disabled (-1 when one fix's
# garbage does not fit the heap that way); req_per_fix: micropython.mem_total() over a
# pass with gc running (bytes requested, before rounding to GC blocks). Progress on stderr.
import gc
import math
import sys
import time
from array import array

import micropython

gc.collect()
_a = gc.mem_alloc()
import fence  # noqa: E402  (imported after the baseline to measure its cost)

gc.collect()
print("IMPORT bytes=%d" % (gc.mem_alloc() - _a))
_g = None
_r = [1, 1, {}, None, [], []]  # made first: only the engine is measured
gc.collect()
_a = gc.mem_alloc()
_g = fence.Geofence(_r, None)
gc.collect()
print("FIXED bytes=%d" % (gc.mem_alloc() - _a))
_g = _r = None

PATH = sys.argv[1]
ROUNDS = int(sys.argv[2])
WHICH = sys.argv[3] if len(sys.argv) > 3 else "both"
CHUNK = 64
word = bytearray(4)


def rd(f):
    f.readinto(word)
    v = word[0] | word[1] << 8 | word[2] << 16 | word[3] << 24
    return v - (1 << 32) if v & 0x80000000 else v


class Fences:
    # n fences read from the file as they are iterated: [None, kind, inner, outer, coords]
    def __init__(self, f, n):
        self.f = f
        self.n = n

    def __len__(self):
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield one(self.f)


def one(f):
    kind = rd(f)
    inner = rd(f)
    outer = rd(f)
    coords = [rd(f) for _ in range(rd(f))]
    return None if kind < 0 else [None, kind, inner, outer, coords]


class Fix:
    def __init__(self):
        self.t = None
        self.ms = 0
        self.lat = None
        self.lon = None
        self.hdop = None
        self.sats = None
        self.valid = True


class Naive:
    # What a first version would do: every fence on every fix, metres in floats in the
    # same equirectangular frame, a crossing number and edge distances for polygons. It
    # keeps what each fence decided on the last fix (the event logic would come on top).
    def __init__(self, depot, stops, zones):
        self.la = array("i")
        self.lo = array("i")
        self.kx = array("f")  # metres per microdegree of longitude there
        self.r2 = array("f")  # inner radius squared
        self.o2 = array("f")  # outer radius (polygons: buffer) squared
        self.pi = array("h")  # index in self.poly, -1 for a circle
        self.poly = []  # per polygon: array("f") of x, y vertices in metres
        self.where = bytearray()
        for seq in ([depot] if depot else [], stops, zones):
            for fc in seq:
                self.add(fc)

    def add(self, fc):
        c = fc[4]
        self.la.append(c[0])
        self.lo.append(c[1])
        kx = 0.11119508 * math.cos(c[0] * 1.7453293e-8)
        self.kx.append(kx)
        self.r2.append(float(fc[2] * fc[2]))
        self.o2.append(float(fc[3] * fc[3]))
        self.where.append(0)
        if fc[1] == 0:
            self.pi.append(-1)
            return
        v = array("f")
        for i in range(0, len(c), 2):
            v.append((c[i + 1] - c[1]) * kx)
            v.append((c[i] - c[0]) * 0.11119508)
        self.pi.append(len(self.poly))
        self.poly.append(v)

    def check(self, fix):
        for i in range(len(self.la)):
            dy = (fix.lat - self.la[i]) * 0.11119508
            e = fix.lon - self.lo[i]
            if e >= 180000000:
                e -= 360000000
            elif e < -180000000:
                e += 360000000
            dx = e * self.kx[i]
            p = self.pi[i]
            if p >= 0:
                w = self.polygon(self.poly[p], dx, dy, self.o2[i])
            else:
                d = dx * dx + dy * dy
                w = 2 if d <= self.r2[i] else 1 if d <= self.o2[i] else 0
            self.where[i] = w

    def polygon(self, v, x, y, b2):
        n = len(v)
        inside = False
        near = False
        ax = v[n - 2]
        ay = v[n - 1]
        for i in range(0, n, 2):
            bx = v[i]
            by = v[i + 1]
            if (ay > y) != (by > y) and x < ax + (y - ay) * (bx - ax) / (by - ay):
                inside = not inside
            ex = bx - ax
            ey = by - ay
            t = ((x - ax) * ex + (y - ay) * ey) / (ex * ex + ey * ey or 1.0)
            t = 0.0 if t < 0 else 1.0 if t > 1 else t
            dx = ax + t * ex - x
            dy = ay + t * ey - y
            if dx * dx + dy * dy <= b2:
                near = True
            ax = bx
            ay = by
        return 2 if inside else 1 if near else 0


def build(impl, f):
    # The fences of FILE as impl keeps them. Returns (checker, event counts, fences, heap
    # bytes they hold, offset of the first fix).
    f.seek(0)
    n_stops = rd(f)
    n_zones = rd(f)
    rd(f)
    events = array("H", bytes(18))
    gc.collect()
    a = gc.mem_alloc()
    depot = one(f)
    if impl == "engine":

        def emit(etype, no, fix, extra):
            events[etype] += 1

        g = fence.Geofence([1, 1, {}, depot, Fences(f, n_stops), Fences(f, n_zones)], emit)
    else:
        g = Naive(depot, Fences(f, n_stops), Fences(f, n_zones))
    gc.collect()
    n = n_stops + n_zones + (depot is not None)
    return g, events, n, gc.mem_alloc() - a, f.tell()


def play(f, start, check, fix, buf, alloc=False):
    # check() over every fix of FILE, read in chunks. Returns (microseconds in the
    # loops, fixes); with alloc, instead of the time the heap bytes allocated, measured
    # fix by fix with gc disabled (raises MemoryError when one fix's garbage does not fit).
    f.seek(start)
    n_fixes = 0
    total = 0
    while True:
        k = f.readinto(buf) // 20
        if not k:
            break
        t0 = time.ticks_us()
        for i in range(k):
            j = 5 * i
            fix.t = buf[j]
            fix.lat = buf[j + 1]
            fix.lon = buf[j + 2]
            fix.hdop = buf[j + 3]
            fix.sats = buf[j + 4]
            if alloc:
                gc.collect()
                gc.disable()
                a = gc.mem_alloc()
                try:
                    check(fix)
                finally:
                    gc.enable()
                total += gc.mem_alloc() - a
            else:
                check(fix)
        if not alloc:
            total += time.ticks_diff(time.ticks_us(), t0)
        n_fixes += k
    return total, n_fixes


def nothing(fix):
    pass


def main():
    f = open(PATH, "rb")
    buf = array("i", range(5 * CHUNK))
    fix = Fix()
    for impl in ("engine", "naive"):
        if WHICH not in (impl, "both"):
            continue
        g, events, n_fences, stored, start = build(impl, f)
        del g
        base, n_fixes = play(f, start, nothing, fix, buf)  # the loop alone, to subtract
        us = 0
        for r in range(ROUNDS):
            g, events, _, _, _ = build(impl, f)  # a fresh start: the same events each round
            us += play(f, start, g.check, fix, buf)[0]
            sys.stderr.write("  %s, %d fences: round %d/%d\n" % (impl, n_fences, r + 1, ROUNDS))
        g, _, _, _, _ = build(impl, f)
        m = micropython.mem_total()
        play(f, start, g.check, fix, buf)
        req = micropython.mem_total() - m
        g, _, _, _, _ = build(impl, f)
        try:
            alloc = play(f, start, g.check, fix, buf, True)[0] / n_fixes
        except MemoryError:
            alloc = -1
        us = (us / ROUNDS - base) / n_fixes
        print("RESULT impl=%s fences=%d fixes=%d" % (impl, n_fences, n_fixes), end=" ")
        print(
            "us_per_fix=%.2f alloc_per_fix=%.1f req_per_fix=%.1f" % (us, alloc, req / n_fixes),
            end=" ",
        )
        print("bytes_stored=%d events=%d" % (stored, sum(events)))
        del g
        gc.collect()


main()
