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

# Route progress (_rs).
_STA = const(1)
_FIN = const(2)
_DEPOT = const(4)

# Slots: fences being tracked. Per slot: fence number (_sf), where the fix is (_sr, with
# _NEW when it just entered), and four times in _st: start of the current run inside the
# inner boundary, start of the current run outside the outer one (-1: none), dwell start
# (-1: not arrived/entered yet), last fix inside the outer boundary.
_SLOTS = const(16)
_NEW = const(4)

# Decimetres per microdegree of latitude, Q13 (0.11119508 m on the mean-radius sphere).
_KY = const(9109)
_Q = const(13)
_MAXU = const(8191)  # the largest half-extent of a fence, in its units
_HALF = const(180000000)
_FULL = const(360000000)
# Fences wider than this (half-extent, m) are checked on every fix rather than widening
# the latitude band of all the others.
_BIG_M = const(1000)
# A fix this much older than the last one used means the clock was wrong, not the fix.
_BACK_S = const(600)
_VERSION = const(1)
_HEAD = const(10)  # struct "<BBHHi"
_REC = const(10)  # struct "<Hii"


class Geofence:
    def __init__(self, route, emit):
        self._emit = emit
        p = route[2]
        self._hmax = p.get(0, 50) * 10  # fix.hdop is HDOP x 100
        self._smin = p.get(1, 4)
        self._conf = p.get(2, 20)
        self._hold = p.get(3, 30)
        self._leave = p.get(4, 120)
        self.overflow = 0  # fences that found no free slot (once per fix each)
        self._t = 0  # time of the last fix used
        self._dt = -1  # start of the depot run (outside before the start, inside after)
        self._last = 0  # the last stop arrived at
        self._na = 0
        self._sf = array("H", bytes(2 * _SLOTS))
        self._sr = bytearray(_SLOTS)
        self._st = array("i", bytes(16 * _SLOTS))
        # Per fence: centre latitude and longitude, longitude half-extent (udeg); cos
        # factor (dm per udeg, Q13), half-extent (m), inner and outer radius (units; a
        # polygon's index in _pv and its buffer); flags. One array per field: no block
        # the heap must find in one piece is bigger than 4 bytes a fence.
        # _pv: per polygon its vertex count, then per vertex x, y and the unit direction
        # (Q14) of the edge ending there.
        # Sized before the zones can be counted (a route file gives their number after
        # the stops) with room for 8; more grow the arrays once. Each item is written
        # before it is read (arrays made from a range() need no temporary buffer).
        d = route[3]
        self._rs = 0 if d is None else _DEPOT
        stops = route[4]
        n = len(stops)
        self._ns = n
        n += 9
        self._la = array("i", range(n))
        self._lo = array("i", range(n))
        self._ex = array("i", range(n))
        self._kx = array("H", range(n))
        self._em = array("H", range(n))
        self._ri = array("H", range(n))
        self._ro = array("H", range(n))
        self._fl = bytearray(n)
        self._pv = array("h")
        if d is not None:
            self._add(0, d)
        f = 1
        for d in stops:
            self._add(f, d)
            f += 1
        stops = route[5]
        d = f + len(stops) - n
        if d > 0:
            p = array("i", range(d))
            for a in (self._la, self._lo, self._ex):
                a.extend(p)
            p = array("H", range(d))
            for a in (self._kx, self._em, self._ri, self._ro):
                a.extend(p)
            self._fl.extend(bytearray(d))
        for d in stops:
            self._add(f, d)
            f += 1
        self._n = f
        # Fences by centre latitude then number, the big ones after them (Shell sort in
        # place: a list of them would cost 8 bytes a fence for a moment).
        la = self._la
        em = self._em
        od = array("H", range(1, f))
        n = f - 1
        p = n >> 1
        while p:
            for i in range(p, n):
                f = od[i]
                k = la[f] + (0 if em[f] <= _BIG_M else 200000000)
                j = i
                while j >= p:
                    d = od[j - p]
                    e = la[d] + (0 if em[d] <= _BIG_M else 200000000)
                    if e < k or e == k and d < f:
                        break
                    od[j] = d
                    j -= p
                od[j] = f
            p >>= 1
        self._od = od
        n = 0
        d = 0
        for f in od:
            if em[f] <= _BIG_M:
                n += 1
                d = max(d, em[f])
        self._nsm = n
        self._band = 9 * d  # udeg: 9 per metre is more than 1/0.11119508

    def _add(self, f, c):
        try:
            kind = c[1]
            b = c[3]
            v = c[4]
            m = len(v) >> 1
            lat = v[0]
            lon = v[1]
            if kind == 0 and 0 < c[2] < b and len(v) == 2:
                e = b
            elif kind == 1 and m > 2 and b >= 0 and not len(v) & 1:
                y0 = y1 = lat
                x0 = x1 = lon
                for k in range(2, 2 * m, 2):
                    y0 = min(y0, v[k])
                    y1 = max(y1, v[k])
                    x0 = min(x0, v[k + 1])
                    x1 = max(x1, v[k + 1])
                lat = (y0 + y1) >> 1
                lon = (x0 + x1) >> 1
                # Half-extent: of the bounding box in metres, then the buffer.
                e = max(y1 - y0, (x1 - x0) * math.cos(lat * 1.7453293e-8)) * 0.0556 + 1 + b
                e = int(e)
            else:
                raise ValueError
            if lon >= _HALF:
                lon -= _FULL
            elif lon < -_HALF:
                lon += _FULL
            if abs(lat) > 90000000 or abs(lon) > _HALF or e > 65535:
                raise ValueError
            s = 0
            while e * 10 > _MAXU << s:
                s += 1
            kx = max(1, round(math.cos(lat * 1.7453293e-8) * 9109.1))
            self._la[f] = lat
            self._lo[f] = lon
            self._ex[f] = min(_FULL, int(e * 81920 / kx) + 1)
            self._kx[f] = kx
            self._em[f] = e
            self._ro[f] = (b * 10 + (1 << s >> 1)) >> s
            if kind == 0:
                self._ri[f] = (c[2] * 10 + (1 << s >> 1)) >> s
                self._fl[f] = s << _SH
                return
            self._fl[f] = s << _SH | _POLY
            pv = self._pv
            i = len(pv)
            if i + 1 + 4 * m > 65535:
                raise ValueError
            self._ri[f] = i
            a = s - 3 if s > 3 else 0
            s += _Q - a
            pv.append(m)
            for k in range(0, 2 * m, 2):
                e = v[k + 1] - lon
                if e >= _HALF:
                    e -= _FULL
                elif e < -_HALF:
                    e += _FULL
                pv.append(((e >> a) * kx) >> s)
                pv.append((((v[k] - lat) >> a) * _KY) >> s)
                pv.append(0)
                pv.append(0)
            j = i + 4 * m - 3  # the last vertex: the start of the first edge
            for k in range(i + 1, i + 1 + 4 * m, 4):
                x = pv[k] - pv[j]
                y = pv[k + 1] - pv[j + 1]
                e = math.sqrt(x * x + y * y)
                if e:
                    pv[k + 2] = round(x * 16384 / e)
                    pv[k + 3] = round(y * 16384 / e)
                j = k
        except (TypeError, ValueError, IndexError, KeyError, AttributeError):
            raise ValueError("fence %d" % f) from None

    def _where(self, f, lat, lon):
        # Where a position is for fence f: 0 outside its outer boundary, 1 inside it, 2
        # inside the inner boundary (circle) or the polygon.
        d = lat - self._la[f]
        if abs(d) > 9 * self._em[f]:
            return 0
        e = lon - self._lo[f]
        if e >= _HALF:
            e -= _FULL
        elif e < -_HALF:
            e += _FULL
        if abs(e) > self._ex[f]:
            return 0
        s = self._fl[f]
        p = s & _POLY
        s >>= _SH
        # Above s=3 the offsets lose a few low bits first, so products stay below 2**29.
        a = s - 3 if s > 3 else 0
        s += _Q - a
        y = ((d >> a) * _KY) >> s
        x = ((e >> a) * self._kx[f]) >> s
        if not p:
            d = x * x + y * y
            e = self._ri[f]
            if d <= e * e:
                return 2
            e = self._ro[f]
            return 1 if d <= e * e else 0
        pv = self._pv
        i = self._ri[f]
        end = i + 1 + 4 * pv[i]
        i += 1
        # Crossing number (pnpoly) in the fence's frame.
        p = 0
        ax = pv[end - 4]
        ay = pv[end - 3]
        j = i
        while j < end:
            bx = pv[j]
            by = pv[j + 1]
            if (ay > y) != (by > y):
                d = (y - ay) * (bx - ax) - (x - ax) * (by - ay)
                if d and (d > 0) == (by > ay):
                    p ^= 1
            ax = bx
            ay = by
            j += 4
        if p:
            return 2
        # Outside: within the buffer of a vertex, or of an edge (its unit direction u
        # gives the distance along it and across it, both scaled by 2**14).
        b = self._ro[f]
        if not b:
            return 0
        bb = b * b
        b <<= 14
        while i < end:
            bx = pv[i]
            by = pv[i + 1]
            x0 = x - ax
            y0 = y - ay
            if x0 * x0 + y0 * y0 <= bb:
                return 1
            e = pv[i + 2]
            k = pv[i + 3]
            d = x0 * e + y0 * k
            if 0 < d < (bx - ax) * e + (by - ay) * k and abs(x0 * k - y0 * e) <= b:
                return 1
            ax = bx
            ay = by
            i += 4
        return 0

    def _mark(self, f, r):
        # Record that the fix is at r for fence f, taking a slot (kept in fence order) if
        # it has none. Returns the slot, -1 if none was free.
        sf = self._sf
        sr = self._sr
        st = self._st
        na = self._na
        i = 0
        while i < na and sf[i] < f:
            i += 1
        if i < na and sf[i] == f:
            sr[i] = r
            return i
        if na == _SLOTS:
            # Full: give up a fence that decided nothing and was already outside.
            k = 0
            while k < na and (st[4 * k + 2] >= 0 or st[4 * k + 1] < 0):
                k += 1
            if k == na:
                self.overflow += 1
                return -1
            self._drop(k)
            na -= 1
            if k < i:
                i -= 1
        k = na
        while k > i:
            sf[k] = sf[k - 1]
            sr[k] = sr[k - 1]
            j = 4 * k
            st[j] = st[j - 4]
            st[j + 1] = st[j - 3]
            st[j + 2] = st[j - 2]
            st[j + 3] = st[j - 1]
            k -= 1
        sf[i] = f
        sr[i] = r | _NEW
        j = 4 * i
        st[j] = -1
        st[j + 1] = -1
        st[j + 2] = -1
        st[j + 3] = self._t
        self._na = na + 1
        return i

    def _drop(self, i):
        sf = self._sf
        sr = self._sr
        st = self._st
        na = self._na - 1
        while i < na:
            sf[i] = sf[i + 1]
            sr[i] = sr[i + 1]
            j = 4 * i
            st[j] = st[j + 4]
            st[j + 1] = st[j + 5]
            st[j + 2] = st[j + 6]
            st[j + 3] = st[j + 7]
            i += 1
        self._na = na

    def check(self, fix):
        # Decide what this fix (nmea.Fix) means for the fences; events go to emit().
        t = fix.t
        if t is None or not fix.valid:
            return
        v = fix.hdop
        if v is not None and v > self._hmax:
            return
        v = fix.sats
        if v is not None and v < self._smin:
            return
        if t < self._t:
            if self._t - t < _BACK_S:
                return  # older than the last fix used: out of order
            # The clock went back for good (a bad date came before): running timers
            # restart from now rather than wait for the bad date to come round.
            st = self._st
            for i in range(4 * self._na):
                if st[i] > t:
                    st[i] = t
            if self._dt > t:
                self._dt = t
        self._t = t
        lat = fix.lat
        lon = fix.lon
        sr = self._sr
        for i in range(self._na):
            sr[i] = 0  # outside, unless the scan finds otherwise
        la = self._la
        od = self._od
        fl = self._fl
        # Bisect the latitude-sorted fences to the band around the fix, then scan it and
        # the big fences. A fence the scan does not reach is outside its outer boundary.
        i = 0
        n = self._nsm
        v = lat - self._band
        while i < n:
            k = (i + n) >> 1
            if la[od[k]] < v:
                i = k + 1
            else:
                n = k
        n = self._nsm
        v = lat + self._band
        end = len(od)
        while i < end:
            f = od[i]
            if i < n and la[f] > v:
                i = n
                continue
            i += 1
            if not fl[f] & _VIS:
                k = self._where(f, lat, lon)
                if k:
                    self._mark(f, k)
        emit = self._emit
        # The depot: out of it for depot_leave_s starts the route; back inside its inner
        # boundary for confirm_s after a stop was arrived at finishes it.
        v = self._rs
        if v & _DEPOT and not v & _FIN:
            k = self._where(0, lat, lon)
            n = self._dt
            f = 0
            if not v & _STA:
                if k:
                    n = -1
                elif n < 0:
                    n = t
                if n >= 0 and t - n >= self._leave:
                    f = _STARTED
            elif k == 2 and (self._last or not self._ns):
                if n < 0:
                    n = t
                if t - n >= self._conf:
                    f = _FINISHED
            else:
                n = -1
            if f:
                self._rs = v | (_STA if f == _STARTED else _FIN)
                self._dt = -1
                emit(f, 0, fix, t - n)
            else:
                self._dt = n
        # Every tracked fence, in fence order.
        sf = self._sf
        st = self._st
        ns = self._ns
        i = 0
        while i < self._na:
            f = sf[i]
            k = sr[i]
            j = 4 * i
            stop = f <= ns
            if k & _NEW:
                k ^= _NEW
                sr[i] = k
                if stop:
                    emit(_APPROACHING, f, fix, None)
            if k == 2:
                if st[j] < 0:
                    st[j] = t
                if st[j + 2] < 0 and t - st[j] >= self._conf:
                    st[j + 2] = st[j]
                    if stop:
                        # Expected: the first stop not arrived at after the last one
                        # arrived at, in route order, wrapping round to the first.
                        n = self._last
                        for _ in range(ns):
                            n = n % ns + 1
                            if not fl[n] & _ARR:
                                break
                        fl[f] |= _ARR
                        self._last = f
                        emit(_ARRIVED, f, fix, t - st[j])
                        if n != f:
                            emit(_OOS, f, fix, n)
                    else:
                        emit(_ENTER, f, fix, t - st[j])
            else:
                st[j] = -1
            if k:
                st[j + 1] = -1
                st[j + 3] = t
            else:
                if st[j + 1] < 0:
                    st[j + 1] = t
                if t - st[j + 1] >= self._hold:
                    n = st[j + 2]
                    v = st[j + 3] - n
                    self._drop(i)
                    if n >= 0:
                        if stop:
                            fl[f] |= _VIS
                        emit(_DEPARTED if stop else _EXIT, f, fix, v)
                    continue
            i += 1

    def state(self):
        # The progress as bytes (docs/geofencing.md): worth keeping in flash after events.
        n = self._n
        na = self._na
        b = bytearray(_HEAD + n + _REC * na)
        struct.pack_into(
            "<BBHHi", b, 0, _VERSION, self._rs & (_STA | _FIN), self._last, n, self._dt
        )
        fl = self._fl
        for f in range(n):
            b[_HEAD + f] = fl[f] & _PROG
        st = self._st
        for i in range(na):
            j = 4 * i
            struct.pack_into("<Hii", b, _HEAD + n + _REC * i, self._sf[i], st[j + 2], st[j + 3])
        return bytes(b)

    def load_state(self, b, remap=None):
        # Restore what state() returned. For a route that replaced the one the state is
        # from, remap[old fence number] is the new number (-1: gone). Raises ValueError
        # for bytes that are not a state of this route.
        v, rs, last, n, dt = struct.unpack_from("<BBHHi", b, 0)
        m = len(b) - _HEAD - n
        if v != _VERSION or m < 0 or m % _REC or n != (self._n if remap is None else len(remap)):
            raise ValueError("fence state")
        fl = self._fl
        for f in range(self._n):
            fl[f] &= _KEEP
        for k in range(n):
            f = k if remap is None else remap[k]
            if 0 < f <= self._ns:  # progress is a stop's
                fl[f] |= b[_HEAD + k] & _PROG
        if remap is not None:
            last = remap[last] if last < n else 0
        self._last = last if 0 < last <= self._ns else 0
        self._rs = self._rs & _DEPOT | rs & (_STA | _FIN)
        self._dt = dt
        self._na = 0
        for k in range(_HEAD + n, len(b), _REC):
            f, v, dt = struct.unpack_from("<Hii", b, k)
            if remap is not None:
                f = remap[f] if f < n else -1
            if 0 < f < self._n and not fl[f] & _VIS:
                i = self._mark(f, 0)
                if i >= 0:
                    self._sr[i] = 0
                    self._st[4 * i + 2] = v
                    self._st[4 * i + 3] = dt
