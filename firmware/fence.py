# Geofences on the van: the day's stops, its depot and plain zones, decided fix by fix.
#
# Geofence(route, emit) builds compact arrays from a route as routefile.open_route() reads
# it (gateway/route.cddl: stops and zones may be lists or sequences decoded while iterated)
# and check(fix) decides, from GPS time and good fixes only, the events of
# docs/geofencing.md, calling emit(etype, fence_no, fix, extra) for each as it happens.
# Fences are numbered depot 0, stops 1..n in route order, zones n+1.. (ids are not kept).
# state() and load_state() carry the progress over a reboot or a route replaced mid-day.
#
# Each fence has its own local frame: equirectangular around its centre, in units of
# 2**s decimetres chosen so the whole fence stays within 8191 units. A fix is then tested
# with small-int maths only (every product below 2**30, the ESP32's small-int limit): no
# floats, tuples or slices, so checking a fix allocates nothing. Fences sorted by centre
# latitude are bisected to the band around the fix, a bounding box rejects most of the
# rest, and only what is left gets the exact test. Fences being tracked (inside an outer
# boundary, or waiting out a hold time) live in a small table of slots, not in per-fence
# timers.
#
# The module is written for the heap it lives in: its code, and every method, attribute
# and parameter name, is heap on the van, so helpers called from one place are inlined and
# the engine's scalars share one array with the slots (see _s below).
#
# It does not read the route file (routefile), encode events (report) or keep fence ids.
import math
import struct
from array import array

from micropython import const

# Event types (wire numbers, docs/wire-format.md).
_APPROACHING = const(1)
_ARRIVED = const(2)
_DEPARTED = const(3)
_STARTED = const(4)
_FINISHED = const(5)
_OOS = const(6)
_ENTER = const(7)
_EXIT = const(8)

# A fence's flag byte: progress (what state() keeps), kind, and its unit shift s on top.
_ARR = const(1)  # a stop arrived at
_VIS = const(2)  # a stop departed from: visited, decides nothing more
_PROG = const(3)
_KEEP = const(0xFC)
_POLY = const(4)
_SH = const(5)

# Route progress (_s[_RS]).
_STA = const(1)
_FIN = const(2)
_DEPOT = const(4)

# _s, one array("i"): the engine's scalars, then the slots. One array rather than an
# attribute each: an attribute is an entry in the instance's dict and a name in the
# module's qstrs, both heap.
_HMAX = const(0)  # hdop_max, HDOP x 100 as fix.hdop
_SMIN = const(1)  # sats_min
_CONF = const(2)  # confirm_s
_HOLD = const(3)  # hold_s
_LEAVE = const(4)  # depot_leave_s
_T = const(5)  # time of the last fix used
_LAST = const(6)  # the last stop arrived at (0: none)
_RS = const(7)  # route progress
_NS = const(8)  # stops
_N = const(9)  # fences (the depot's number included)
_NSM = const(10)  # fences in the latitude order that are not big (the first ones of _od)
_BAND = const(11)  # half-width of the latitude band a fix scans, udeg
_END = const(12)  # the end of the slots in use (_S0 + 4 x their number)
# The start of the depot run (outside before the route started, inside after; -1: none),
# just before the slots: check() moves it back with their times if the clock jumps back.
_DT = const(15)
# Slots: fences being tracked, kept in fence order, 4 words each from _S0 (a multiple of
# 4, so a slot's first word is the one with j & 3 == 0):
#   +0  fence number << 4 | where it was at the last fix << 2 | where it is at this one
#       (0 outside, 1 near, 2 inside; "last" 3: the slot was just taken)
#   +1  start of the current run: the first fix of the fence's current "where"
#   +2  dwell start (-1: not arrived / entered yet)
#   +3  the last fix inside the outer boundary
# Whether the van is inside, near or outside has one run at a time, so one start time
# serves as the run inside (confirm_s) and the run outside (hold_s).
_S0 = const(16)
_SLOTS = const(16)

# Decimetres per microdegree of latitude, Q13 (0.11119508 m on the mean-radius sphere).
_KY = const(9109)
_Q = const(13)
_MAXU = const(8191)  # the largest half-extent of a fence, in its units
_HALF = const(180000000)
_FULL = const(360000000)
# Fences wider than this (half-extent, m) are checked on every fix rather than widening
# the latitude band of all the others.
_BIG_M = const(1000)
# Room for the depot and 4 zones before they can be counted (see __init__).
_ROOM = const(5)
# A fix this much older than the last one used means the clock was wrong, not the fix.
_BACK_S = const(600)
_VERSION = const(1)
_HEAD = const(10)  # struct "<BBHHi"
_REC = const(10)  # struct "<Hii"


class Geofence:
    def __init__(self, route, emit):
        self._emit = emit
        self.overflow = 0  # fences that found no free slot (once per fix each)
        s = self._s = array("i", bytes(4 * (_S0 + 4 * _SLOTS)))  # zeros
        v = route[2]  # the parameters
        s[_HMAX] = v.get(0, 50) * 10
        s[_SMIN] = v.get(1, 4)
        s[_CONF] = v.get(2, 20)
        s[_HOLD] = v.get(3, 30)
        s[_LEAVE] = v.get(4, 120)
        s[_DT] = -1
        if route[3] is not None:
            s[_RS] = _DEPOT
        s[_END] = _S0
        i = s[_NS] = len(route[4])
        # Per fence, by number: centre latitude and longitude (udeg; the longitude less
        # 180 degrees, see below); cos factor (dm per udeg, Q13) and half-extent (m) in
        # _ke; inner and outer radius in _rr (units; for a polygon the index of its first
        # vertex in _pv, and its buffer); flags. No block the heap must find in one piece
        # is bigger than 4 bytes a fence. The longitude half-extent is worked out when
        # needed (_where) rather than kept.
        # _od: the fences but the depot by centre latitude then number, the big ones
        # after all others; kept in order as they come (bisect, then one move in C).
        # _pv: per polygon its vertex count, then per vertex x, y and the unit direction
        # (Q14) of the edge ending there.
        # Sized before the zones can be counted (a route file gives their number after
        # the stops) with room for the depot and a few zones; more grow the arrays once.
        # Arrays made from a range() need no temporary buffer; each item is written
        # before it is read.
        i += _ROOM
        self._pv = array("h")
        self._od = array("H", range(i))
        self._la = array("i", range(i))
        self._lo = array("i", range(i))
        self._ke = array("H", range(2 * i))
        self._rr = array("H", range(2 * i))
        self._fl = bytearray(i)
        f = 0
        for q in ((route[3],), route[4], route[5]):
            n = f + len(q) - len(self._fl)
            if n > 0:  # more zones than room: 4 bytes a fence, 2 for _od, 1 for _fl
                for v in (self._la, self._lo, self._ke, self._rr):
                    v.extend(bytes(4 * n))
                self._od.extend(bytes(2 * n))
                self._fl.extend(bytes(n))
            for c in q:
                if c is None and not f:
                    f = 1  # no depot: fence 0 stays empty
                    continue
                try:
                    b = c[3]
                    v = c[4]
                    n = len(v)
                    lat = v[0]
                    lon = v[1]
                    if n & 1:
                        raise ValueError
                    n >>= 1
                    if c[1] == 0 and 0 < c[2] < b and n == 1:
                        e = b
                    elif c[1] == 1 and n > 2 and b >= 0:
                        # The bounding box: lat, lon its lowest corner, y, x its highest,
                        # then its centre and sizes.
                        y = lat
                        x = lon
                        for k in range(2, 2 * n, 2):
                            lat = min(lat, v[k])
                            y = max(y, v[k])
                            lon = min(lon, v[k + 1])
                            x = max(x, v[k + 1])
                        y -= lat
                        x -= lon
                        lat += y >> 1
                        lon += x >> 1
                    else:
                        raise ValueError
                    if abs(lat) > 90000000 or abs(lon) > 3 * _HALF:
                        raise ValueError
                    # Kept 180 degrees west of the centre (in [-360, 0) degrees), so that a
                    # longitude's offset from it, wrapped into +-180, is one modulo.
                    lon = (lon + _HALF) % _FULL - _FULL
                    kx = math.cos(math.radians(lat / 1000000))
                    if c[1]:
                        # A polygon's half-extent: half the box's larger side in metres
                        # (0.0556 m per udeg, half of 0.11119508), then the buffer.
                        e = int(max(y, x * kx) * 556 / 10000) + 1 + b
                    if e > 65535:
                        raise ValueError
                    kx = max(1, round(kx * 91091 / 10))  # Q13 x 0.11119508 m per udeg
                    self._la[f] = lat
                    self._lo[f] = lon
                    k = 2 * f
                    self._ke[k] = kx
                    self._ke[k + 1] = e
                    if f:
                        # Into the latitude order, after the fences of the same key (they
                        # have lower numbers).
                        y = lat + ((e > _BIG_M) << 28)
                        od = self._od
                        i = 0
                        j = f - 1
                        while i < j:
                            x = (i + j) >> 1
                            a = od[x]
                            if self._la[a] + ((self._ke[2 * a + 1] > _BIG_M) << 28) > y:
                                j = x
                            else:
                                i = x + 1
                        od[i + 1 : f] = od[i : f - 1]
                        od[i] = f
                        if e <= _BIG_M:
                            s[_NSM] += 1
                            s[_BAND] = max(s[_BAND], 9 * e)  # udeg: 9 a metre > 1/0.11119508
                    i = 0  # the unit: 2**i dm
                    while e * 10 > _MAXU << i:
                        i += 1
                    self._rr[k + 1] = (b * 10 + (1 << i >> 1)) >> i
                    if not c[1]:
                        self._rr[k] = (c[2] * 10 + (1 << i >> 1)) >> i
                        self._fl[f] = i << _SH
                    else:
                        self._fl[f] = i << _SH | _POLY
                        # Above 2**3 dm the offsets lose a few low bits first (_where).
                        a = max(i - 3, 0)
                        b = i + _Q - a
                        pv = self._pv
                        i = len(pv) + 1  # its first vertex, after its vertex count
                        if i + 4 * n > 65535:
                            raise ValueError
                        self._rr[k] = i
                        pv.append(n)
                        # Each vertex in the fence's frame, then the unit direction of the
                        # edge ending there (from i, j: the vertex before, the last one
                        # for the first).
                        for k in range(-2, 2 * n, 2):
                            x = ((((v[k + 1] - lon) % _FULL - _HALF) >> a) * kx) >> b
                            y = (((v[k] - lat) >> a) * _KY) >> b
                            if k >= 0:
                                pv.append(x)
                                pv.append(y)
                                e = math.sqrt((x - i) ** 2 + (y - j) ** 2) or 1  # 0: twice
                                pv.append(round((x - i) * 16384 / e))  # the same vertex
                                pv.append(round((y - j) * 16384 / e))
                            i = x
                            j = y
                except (TypeError, ValueError, IndexError, KeyError, AttributeError):
                    raise ValueError("fence %d" % f) from None
                f += 1
        s[_N] = f

    def _where(self, f, lat, lon):
        # Where a position is for fence f: 0 outside its outer boundary, 1 inside it, 2
        # inside the inner boundary (circle) or the polygon.
        y = lat - self._la[f]  # offsets from the centre: udeg, then units
        x = (lon - self._lo[f]) % _FULL - _HALF
        p = self._fl[f]
        f += f  # its pair in _ke and _rr
        e = self._ke[f + 1]  # half-extent, m
        if abs(y) > 9 * e:
            return 0
        k = self._ke[f]  # cos factor
        # The longitude half-extent, 81920 * e / k udeg, rounded up; in two steps so the
        # product stays below 2**30 for a half-extent up to 65,535 m.
        if abs(x) > (e * 10240 // k + 1) << 3:
            return 0
        s = p >> _SH
        # Above s=3 the offsets lose a few low bits first, so products stay below 2**29.
        a = (s > 3) * (s - 3)
        s += _Q - a
        y = ((y >> a) * _KY) >> s
        x = ((x >> a) * k) >> s
        if not p & _POLY:
            a = x * x + y * y
            e = self._rr[f]
            k = self._rr[f + 1]
            return (a <= e * e) + (a <= k * k)  # within inner < outer radius: 2
        pv = self._pv
        i = self._rr[f]
        e = i + 4 * pv[i - 1]  # the end of its vertices
        # Crossing number (pnpoly) in the fence's frame. lat, lon are free now: they
        # hold the x, y of each edge's start (the last vertex for the first edge), a, k
        # those of its end.
        p = 0
        lat = pv[e - 4]
        lon = pv[e - 3]
        j = i
        while j < e:
            a = pv[j]
            k = pv[j + 1]
            if (lon > y) != (k > y):
                s = (y - lon) * (a - lat) - (x - lat) * (k - lon)
                if s and (s > 0) == (k > lon):
                    p ^= 1
            lat = a
            lon = k
            j += 4
        if p:
            return 2
        # Outside: within the buffer b of a vertex, or of an edge (its unit direction
        # (ux, uy) gives the distance along it and across it, both scaled by 2**14).
        b = self._rr[f + 1]
        if not b:
            return 0
        while i < e:
            a = x - lat  # from the start of the edge
            k = y - lon
            if a * a + k * k <= b * b:
                return 1
            ux = pv[i + 2]
            uy = pv[i + 3]
            s = a * ux + k * uy  # along the edge
            if (
                0 < s < (pv[i] - lat) * ux + (pv[i + 1] - lon) * uy
                and abs(a * uy - k * ux) <= b << 14
            ):
                return 1
            lat = pv[i]
            lon = pv[i + 1]
            i += 4
        return 0

    def check(self, fix):
        # Decide what this fix (nmea.Fix) means for the fences; events go to emit().
        s = self._s
        t = fix.t
        if t is None or not fix.valid or (fix.hdop or 0) > s[_HMAX]:
            return  # no time, not valid, or a poor HDOP (none reported: not filtered)
        v = fix.sats
        if v is not None and v < s[_SMIN]:
            return  # too few satellites (no count reported: not filtered)
        if t < s[_T]:
            if s[_T] - t < _BACK_S:
                return  # older than the last fix used: out of order
            # The clock went back for good (a bad date came before): running timers
            # restart from now rather than wait for the bad date to come round: the depot
            # run's start and the slots' times (a slot's first word is not a time).
            for j in range(_DT, s[_END]):
                if j & 3 and s[j] > t:
                    s[j] = t
        s[_T] = t
        la = self._la
        od = self._od
        fl = self._fl
        # Bisect the latitude-sorted fences to the band around the fix, then scan it and
        # the big fences. A fence the scan does not reach is outside its outer boundary.
        i = 0
        n = s[_NSM]
        v = fix.lat - s[_BAND]
        while i < n:
            k = (i + n) >> 1
            if la[od[k]] < v:
                i = k + 1
            else:
                n = k
        n = s[_NSM]
        v = fix.lat + s[_BAND]
        e = s[_N] - 1
        while i < e:
            f = od[i]
            if i < n and la[f] > v:
                i = n
                continue
            i += 1
            if fl[f] & _VIS:
                continue
            k = self._where(f, fix.lat, fix.lon)
            if not k:
                continue
            # Near or inside: its slot (they are kept in fence order), or a new one.
            m = s[_END]
            j = _S0
            while j < m and s[j] >> 4 < f:
                j += 4
            if j < m and s[j] >> 4 == f:
                s[j] |= k
                continue
            if m == _S0 + 4 * _SLOTS:
                # Full: give up a fence that decided nothing and was outside at the
                # last fix and this one.
                x = _S0
                while x < m and (s[x + 2] >= 0 or s[x] & 15):
                    x += 4
                if x == m:
                    self.overflow += 1
                    continue
                if x < j:
                    j -= 4
                m -= 4
                while x < m:
                    s[x] = s[x + 4]
                    x += 1
            x = m + 3
            while x > j + 3:
                s[x] = s[x - 4]
                x -= 1
            s[j] = f << 4 | 12 | k  # its times are set below, on this fix
            s[j + 2] = -1
            s[_END] = m + 4
        # The depot: out of it for depot_leave_s starts the route; back inside its inner
        # boundary for confirm_s after a stop was arrived at (if any) finishes it.
        v = s[_RS]
        if v & (_DEPOT | _FIN) == _DEPOT:
            k = self._where(0, fix.lat, fix.lon)
            if v & _STA:
                k = k == 2 and (s[_LAST] or not s[_NS])
                f = _FINISHED
                x = s[_CONF]
            else:
                k = not k
                f = _STARTED
                x = s[_LEAVE]
            n = s[_DT]  # the start of the run that counts (-1: none)
            if not k:
                n = -1
            elif n < 0:
                n = t
            if n < 0 or t - n < x:
                s[_DT] = n
            else:
                s[_RS] = v | f - 3  # _STA or _FIN
                s[_DT] = -1
                self._emit(f, 0, fix, t - n)
        # Every tracked fence, in fence order.
        j = _S0
        while j < s[_END]:
            v = s[j]
            f = v >> 4
            k = v & 3
            e = f <= s[_NS]  # a stop, not a zone
            s[j] = f << 4 | k << 2  # where it is now is where it was, at the next fix
            if k != (v >> 2) & 3:
                s[j + 1] = t  # a run inside, near or outside starts
            if v & 12 == 12 and e:
                self._emit(_APPROACHING, f, fix, None)
            if k:
                s[j + 3] = t
                if k == 2 and s[j + 2] < 0 and t - s[j + 1] >= s[_CONF]:
                    v = s[j + 1]
                    s[j + 2] = v
                    if e:
                        # Expected: the first stop not arrived at after the last one
                        # arrived at, in route order, wrapping round to the first.
                        for x in range(s[_LAST], s[_LAST] + s[_NS]):
                            n = x % s[_NS] + 1
                            if not fl[n] & _ARR:
                                break
                        fl[f] |= _ARR
                        s[_LAST] = f
                        self._emit(_ARRIVED, f, fix, t - v)
                        if n != f:
                            self._emit(_OOS, f, fix, n)
                    else:
                        self._emit(_ENTER, f, fix, t - v)
            elif t - s[j + 1] >= s[_HOLD]:
                # Outside for hold_s: the slot is given up (the later ones move down).
                n = s[j + 2]
                v = s[j + 3] - n
                x = j
                m = s[_END] - 4
                while x < m:
                    s[x] = s[x + 4]
                    x += 1
                s[_END] = m
                if n >= 0:
                    if e:
                        fl[f] |= _VIS
                    self._emit(_DEPARTED if e else _EXIT, f, fix, v)
                continue
            j += 4

    def state(self):
        # The progress as bytes (docs/geofencing.md): worth keeping in flash after events.
        s = self._s
        n = s[_N]
        b = bytearray(_HEAD + n)
        struct.pack_into("<BBHHi", b, 0, _VERSION, s[_RS] & (_STA | _FIN), s[_LAST], n, s[_DT])
        for f in range(n):
            b[_HEAD + f] = self._fl[f] & _PROG
        for j in range(_S0, s[_END], 4):
            b.extend(struct.pack("<Hii", s[j] >> 4, s[j + 2], s[j + 3]))
        return b

    def load_state(self, b, remap=None):
        # Restore what state() returned. For a route that replaced the one the state is
        # from, remap[old fence number] is the new number (-1: gone). Raises ValueError
        # for bytes that are not a state of this route.
        s = self._s
        fl = self._fl
        if remap is None:
            remap = range(s[_N])  # the same route: every fence keeps its number
        v, k, j, n, f = struct.unpack_from("<BBHHi", b)
        e = len(b) - _HEAD - n
        if v != _VERSION or e < 0 or e % _REC or n != len(remap):
            raise ValueError("state")
        s[_RS] = s[_RS] & _DEPOT | k & (_STA | _FIN)
        s[_DT] = f
        j = remap[j] if j < n else 0
        s[_LAST] = j if 0 < j <= s[_NS] else 0
        for f in range(s[_N]):
            fl[f] &= _KEEP
        for k in range(n):
            f = remap[k]
            if 0 < f <= s[_NS]:  # progress is a stop's
                fl[f] |= b[_HEAD + k] & _PROG
        # The fences being tracked, by their new numbers (slots are kept in fence order).
        # Each is near at the "last fix": a run inside or outside starts again at the
        # next one, and the slot is not new (no second approaching).
        j = _S0
        for f in range(1, s[_N]):
            if fl[f] & _VIS:
                continue
            for k in range(_HEAD + n, len(b), _REC):
                v = b[k] | b[k + 1] << 8
                if v < n and remap[v] == f and j < _S0 + 4 * _SLOTS:
                    s[j] = f << 4 | 4
                    v, s[j + 2], s[j + 3] = struct.unpack_from("<Hii", b, k)
                    j += 4
                    break
        s[_END] = j
