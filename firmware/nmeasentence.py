# One checked NMEA sentence (RMC, GGA, GSA, VTG) decoded from the line buffer into ints.
#
# nmea.Parser assembles and checks lines and splits their fields into `fs`; this module
# reads the fields in place (no slices, no str, no float: digits to ints by hand) and
# raises ValueError on bad content. Kept apart from nmea.py so each compiles in a small heap.
from micropython import const

# Below this, v * 10 + 9 stays a small int (< 2**30) on a 32-bit port.
_GROW = const(99999999)
MAXF = const(24)  # fields kept per sentence (GSA needs 19)
_CUM = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


def days_from_civil(y, m, d):
    # Days since 2000-01-01; for 1901..2099, where every fourth year is a leap year.
    return 365 * (y - 2000) + (y - 1997) // 4 + _CUM[m - 1] + (m > 2 and y % 4 == 0) + d - 1


class Sentence:
    # What the last accepted sentence said (scratch, reused); `on_sentence` sees it.
    # tod: ms of the UTC day, day: days since 2000 (RMC date), sats: GGA satellites
    # used or GSA PRNs listed, ok: receiver says valid (RMC A, GGA quality > 0), bad:
    # receiver says invalid (RMC V, quality 0, GSA mode 1, mode indicator N).
    def __init__(self, buf):
        self.buf = buf  # the parser's line buffer, shared
        self.fs = bytearray(2 * MAXF + 2)  # field start offsets, 16-bit little endian
        self.nf = 0  # fields in the line, the address (field 0) included
        self._clear()

    def _clear(self):
        self.tod = None
        self.day = None
        self.lat = None
        self.lon = None
        self.speed = None
        self.course = None
        self.alt = None
        self.quality = None
        self.mode = None
        self.sats = None
        self.hdop = None
        self.ok = False
        self.bad = False

    # ---- sentences: fill self from the checked line, or raise ValueError -----------
    def rmc(self):
        if self.nf < 10:
            raise ValueError
        self.tod = self._time(1)
        c = self._chr(2)
        self.ok = c == 65  # A
        # Status V or mode indicator N (NMEA 2.3+). Not the 4.1 navigational status:
        # u-blox and others always send V there ("not provided").
        self.bad = c == 86 or self._chr(12) == 78
        self._pos(3)
        self.speed = self._knots(7)
        self.course = self._course(8)
        v = self._num(9, 0, 10100, 311299)  # ddmmyy
        if v is not None:
            m = v // 100 % 100
            if self.end(9) - self.start(9) != 6 or m < 1 or m > 12:
                raise ValueError
            y = v % 100  # two digits: 80..99 are 19yy, the rest 20yy
            self.day = days_from_civil(y + (1900 if y >= 80 else 2000), m, v // 10000)

    def gga(self):
        if self.nf < 7:
            raise ValueError
        self.tod = self._time(1)
        self._pos(2)
        q = self.quality = self._num(6, 0, 0, 9)
        self.ok = bool(q)
        self.bad = q == 0
        self.sats = self._num(7, 0, 0, 999)
        self.hdop = self._num(8, 2, 0, 99999)
        self.alt = self._num(9, 2, -10000000, 100000000)

    def gsa(self):
        if self.nf < 3:
            raise ValueError
        m = self.mode = self._num(2, 0, 1, 3)
        self.bad = m == 1
        n = 0
        for k in range(3, 15):
            if k < self.nf and self.end(k) > self.start(k):
                n += 1
        self.sats = n
        self.hdop = self._num(16, 2, 0, 99999)

    def vtg(self):
        if self.nf < 5:
            raise ValueError
        self.course = self._course(1)
        if self._chr(2) == 84 or self.nf >= 9:  # NMEA 2.x+: value,unit pairs
            kn = 5
            self.bad = self._chr(9) == 78
        else:  # NMEA 1.x: course T, course M, knots, km/h
            kn = 3
        self.speed = self._knots(kn)
        if self.speed is None:
            v = self._num(7 if kn == 5 else 4, 3, 0, 4000000)  # km/h * 1000
            if v is not None:
                self.speed = (v * 5 + 9) // 18

    # ---- fields (k = field index, 0 = address); readers raise ValueError if bad ----
    def start(self, k):
        fs = self.fs
        return fs[2 * k] | fs[2 * k + 1] << 8

    def end(self, k):
        # Offset of the comma or '*' after field k.
        fs = self.fs
        return (fs[2 * k + 2] | fs[2 * k + 3] << 8) - 1

    def _chr(self, k):
        # First byte of field k, 0 if empty or absent.
        if k >= self.nf:
            return 0
        a = self.start(k)
        return self.buf[a] if a < self.end(k) else 0

    def _num(self, k, d, lo, hi):
        # Field k, a decimal number, times 10**d rounded half away from zero; None if
        # empty or absent.
        if k >= self.nf:
            return None
        a = self.start(k)
        b = self.end(k)
        if a >= b:
            return None
        buf = self.buf
        c = buf[a]
        neg = c == 45
        if neg or c == 43:  # - +
            a += 1
        v = 0
        frac = -1  # digits after the point so far, -1 before it
        up = False
        n = 0
        while a < b:
            c = buf[a]
            a += 1
            if c == 46 and frac < 0:  # .
                frac = 0
                continue
            c -= 48
            if c < 0 or c > 9 or v > _GROW:
                raise ValueError
            n += 1
            if frac < d:
                v = v * 10 + c
                if frac >= 0:
                    frac += 1
            elif frac == d:
                up = c >= 5
                frac += 1
        if frac < 0:
            frac = 0
        while frac < d:
            if v > _GROW:
                raise ValueError
            v *= 10
            frac += 1
        if up:
            v += 1
        if neg:
            v = -v
        if n == 0 or v < lo or v > hi:
            raise ValueError
        return v

    def _time(self, k):
        # hhmmss[.sss] to ms of the UTC day, None if empty.
        n = self.end(k) - self.start(k)
        if 0 < n < 6:
            raise ValueError
        v = self._num(k, 3, 0, 235960999)
        if v is not None:
            s = v // 1000 % 100
            m = v // 100000 % 100
            if s > 60 or m > 59:
                raise ValueError
            v = ((v // 10000000 * 60 + m) * 60 + s) * 1000 + v % 1000
        return v

    def _knots(self, k):
        # knots * 1e4 to mm/s: * 1852000 / 36e6 = * 463 / 9000, split so that every
        # product stays below 2**30.
        v = self._num(k, 4, 0, 99999999)
        if v is None:
            return None
        return v // 9000 * 463 + (v % 9000 * 463 + 4500) // 9000

    def _course(self, k):
        v = self._num(k, 2, 0, 36000)
        return None if v is None else v % 36000

    def _pos(self, k):
        # Fields k..k+3: lat, N/S, lon, E/W. Both empty is fine (no fix yet).
        lat = self._coord(k, 90)
        lon = self._coord(k + 2, 180)
        if lat is None or lon is None:
            if lat != lon:
                raise ValueError
            return
        h = self._chr(k + 1)
        if h == 83:  # S
            lat = -lat
        elif h != 78:
            raise ValueError
        h = self._chr(k + 3)
        if h == 87:  # W
            lon = -lon
        elif h != 69:
            raise ValueError
        self.lat = lat
        self.lon = lon

    def _coord(self, k, maxdeg):
        # (d)ddmm.mmmm to microdegrees, exactly: minutes are read to 1e-7 (below 6e8,
        # a small int) and divided by 60 with rounding to nearest; later digits cannot
        # change that rounding, so they are only checked.
        if k >= self.nf:
            return None
        a = self.start(k)
        b = self.end(k)
        if a >= b:
            return None
        buf = self.buf
        dot = a
        while dot < b and buf[dot] != 46:
            dot += 1
        if dot - a < 3 or dot - a > 5:
            raise ValueError
        deg = 0
        mins = 0
        for i in range(a, dot + 8):
            if i == dot:
                continue
            c = buf[i] - 48 if i < b else 0
            if c < 0 or c > 9:
                raise ValueError
            if i < dot - 2:
                deg = deg * 10 + c
            else:
                mins = mins * 10 + c
        for i in range(dot + 8, b):
            if buf[i] < 48 or buf[i] > 57:
                raise ValueError
        v = deg * 1000000 + (mins + 300) // 600
        if mins >= 600000000 or v > maxdeg * 1000000:
            raise ValueError
        return v
