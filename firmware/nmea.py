# NMEA 0183 parser for the van's GPS UART: bytes in, one Fix per navigation epoch out.
#
# Feed it whatever the UART returns (partial lines, several lines, noise); it assembles
# lines in a preallocated buffer, checks them, decodes RMC, GGA, GSA and VTG from any
# talker (NMEA 2.x and 4.1 layouts), merges one epoch's sentences into one Fix and calls
# on_fix(fix). Bad input is counted in `drops` by reason and never raises. What on_fix
# raises does not change what is parsed: feed() raises it after the whole chunk.
#
# Everything is integer maths on the line buffer (no split, no slices, no floats, no
# str): the ESP32 port has single-precision floats and every boxed float or slice is a
# heap allocation, so the steady state allocates nothing per sentence. Small ints are
# 31-bit on the ESP32, hence microdegrees and seconds since 2000.
#
# The module's own size counts too: its bytecode, functions and names live in the same
# 64 KB heap as the van's data. Hence few, larger functions, and the parser's working
# ints in two array('i') indexed by const() (a private const costs nothing, each
# attribute name and each function costs heap).
#
# It does not read the UART (the board layer does), does not decode GSV/ZDA/GLL or
# proprietary sentences (counted in `ignored`), and does not correct GPS week rollover.
from array import array

from micropython import const

_HALFDAY = const(43200000)  # ms
_MAXF = const(24)  # fields kept per sentence (GSA needs 19)
# Below this, v * 10 + 9 stays a small int (< 2**30) on a 32-bit port.
_GROW = const(99999999)
# "No value" in the int arrays: below every value they hold, and still a small int.
_NONE = const(-0x40000000)

# Sentence kinds: bit flags so an epoch can keep a set of what it has seen.
_RMC = const(1)
_GGA = const(2)
_GSA = const(4)
_VTG = const(8)

# Receiver status bits, of a sentence and of an epoch.
_OK = const(1)  # says valid: RMC A, GGA quality > 0
_BAD = const(2)  # says invalid: RMC V, quality 0, GSA mode 1, mode indicator N

# What the last accepted sentence said: Parser.s, an array('i') of these slots, _NONE
# where it said nothing. `on_sentence` gets it (tools/mp/nmea_decode.py reads it).
_TOD = const(0)  # ms of the UTC day
_DAY = const(1)  # days since 2000 (RMC date)
_LAT = const(2)  # 1e-6 degrees, as in Fix
_LON = const(3)
_SPEED = const(4)  # mm/s
_COURSE = const(5)  # centidegrees
_ALT = const(6)  # cm above MSL
_QUAL = const(7)  # GGA fix quality
_MODE = const(8)  # GSA mode 1/2/3
_SATS = const(9)  # GGA satellites used or GSA PRNs listed
_HDOP = const(10)  # HDOP * 100
_STAT = const(11)  # _OK | _BAD bits (0 when it said neither)

# Parser state: Parser._v, an array('i') of these slots.
_ST = const(0)  # line assembler state: _IDLE, _LINE or _SKIP
_LEN = const(1)  # bytes in the line buffer
_JUNK = const(2)  # 1 if bytes came outside any line since the last line end
_NF = const(3)  # fields in the checked line, the address (field 0) included
# The epoch being assembled (its values live in Parser.fix).
_PT = const(4)  # its UTC time of day in ms, -1 while unknown
_MASK = const(5)  # kinds seen in it
_REP = const(6)  # kinds seen more than once in it
_LAST = const(7)  # kind of its last sentence
_EST = const(8)  # _OK | _BAD bits of its sentences
_GSATS = const(9)  # satellites listed by its GSA sentences
_GHDOP = const(10)  # HDOP of its GSA, -1 if none
# Across epochs.
_EDAY = const(11)  # current UTC day (days since 2000), _NONE until an RMC date
_LTOD = const(12)  # last UTC time of day seen, for midnight rollover, -1 before
_CAND = const(13)  # kind that ended the last epoch (cycle-end candidate), -1: gave up
_END = const(14)  # learned cycle-ending kind, 0 while unknown
_ET = const(15)  # time of the epoch just emitted at the learned cycle end, -1 if not
_EMASK = const(16)  # its kinds
_NV = const(17)

# Line assembler states.
_IDLE = const(0)
_LINE = const(1)
_SKIP = const(2)


class Fix:
    # One object, reused for every epoch: consumers copy what they keep.
    # t: s since 2000-01-01T00:00:00Z (None if the date is unknown), ms: 0..999,
    # lat/lon: 1e-6 degrees, speed: mm/s, course: centidegrees, alt: cm above MSL,
    # quality: GGA fix quality, mode: GSA mode 1/2/3, sats: used, hdop: HDOP * 100.
    # The parser calls __init__ again to clear it for the next epoch.
    def __init__(self):
        self.t = None
        self.ms = 0
        self.lat = None
        self.lon = None
        self.speed = None
        self.course = None
        self.alt = None
        self.quality = None
        self.mode = None
        self.sats = None
        self.hdop = None
        self.valid = False


class Parser:
    def __init__(self, on_fix, maxline=120):
        self.on_fix = on_fix
        # Debug hook: called as on_sentence(s, n) after each accepted sentence, with the
        # array of what it said (slots above) and the length of its line in _buf.
        self.on_sentence = None
        self.fix = Fix()
        self._buf = bytearray(maxline)
        self._fs = array("H", bytes(2 * _MAXF + 2))  # where each field starts in _buf
        self.s = array("i", bytes(4 * _STAT + 4))
        v = self._v = array("i", bytes(4 * _NV))
        v[_PT] = v[_GHDOP] = v[_LTOD] = v[_ET] = -1
        v[_EDAY] = _NONE
        self.sentences = 0
        self.fixes = 0
        self._err = None  # the first exception on_fix raised in this feed() (see _emit)
        self.ignored = 0  # well-formed sentences of types we do not decode (GSV, $P...)
        # Dropped lines by reason (written as literals: a module-level name per reason
        # would cost heap on the device).
        self.drops = {
            "checksum": 0,  # checksum present but wrong or unreadable
            "no_checksum": 0,
            "overlong": 0,  # longer than maxline
            "garbage": 0,  # non-printable bytes, or text not starting with $
            "truncated": 0,  # a new $ arrived before the line ended
            "malformed": 0,  # checksum fine, field content not
            "late": 0,  # arrived after its epoch was already emitted
        }

    # ---- bytes to lines -------------------------------------------------------------
    def feed(self, data, n=-1):
        if n < 0:
            n = len(data)
        buf = self._buf
        v = self._v
        st = v[_ST]
        ln = v[_LEN]
        mx = len(buf)
        d = self.drops
        for i in range(n):
            c = data[i]
            if c == 36:  # $
                if st == _LINE:
                    d["truncated"] += 1
                elif v[_JUNK]:
                    d["garbage"] += 1
                    v[_JUNK] = 0
                buf[0] = 36
                ln = 1
                st = _LINE
            elif c == 13 or c == 10:
                if st == _LINE:
                    v[_LEN] = ln  # for on_sentence, which may look at the line
                    self._line(ln)
                elif v[_JUNK]:
                    d["garbage"] += 1
                    v[_JUNK] = 0
                st = _IDLE
            elif st == _LINE:
                if c < 32 or c > 126:
                    d["garbage"] += 1
                    st = _SKIP
                elif ln >= mx:
                    d["overlong"] += 1
                    st = _SKIP
                else:
                    buf[ln] = c
                    ln += 1
            elif st == _IDLE:
                v[_JUNK] = 1
        v[_ST] = st
        v[_LEN] = ln
        self._raise()

    def _raise(self):
        # What on_fix raised, now that the chunk is parsed (see _emit).
        e = self._err
        if e is not None:
            self._err = None
            raise e

    def flush(self):
        # End of input: a last line without its line end still counts, then the epoch.
        v = self._v
        if v[_ST] == _LINE:
            self._line(v[_LEN])
        elif v[_JUNK]:
            self.drops["garbage"] += 1
        v[_JUNK] = 0
        v[_ST] = _IDLE
        if v[_MASK]:
            self._emit()
        self._raise()

    # ---- one line -------------------------------------------------------------------
    def _line(self, ln):
        # Checksum, field offsets (fs[k]: start of field k, fs[k + 1] - 1: the comma or
        # '*' after it), sentence type; then decode and merge it.
        buf = self._buf
        fs = self._fs
        d = self.drops
        x = 0
        nf = 0
        star = ln
        fs[0] = 1
        for i in range(1, ln):
            c = buf[i]
            if c == 42:  # *
                star = i
                break
            x ^= c
            if c == 44 and nf < _MAXF - 1:  # ,
                nf += 1
                fs[nf] = i + 1
        if star == ln:
            d["no_checksum"] += 1
            return
        h = -1  # not a checksum unless exactly two hex digits end the line
        if star + 3 == ln:
            h = 0
            for i in range(star + 1, ln):
                c = buf[i] | 32  # A-F to a-f; digits have that bit already
                if 48 <= c <= 57:
                    c -= 48
                elif 97 <= c <= 102:
                    c -= 87
                else:
                    c = 999
                h = h << 4 | c
        if h != x:
            d["checksum"] += 1
            return
        nf += 1
        fs[nf] = star + 1
        self._v[_NF] = nf
        # Address: two-letter talker + three-letter type; proprietary ($P...) is ignored.
        k = buf[3] << 16 | buf[4] << 8 | buf[5]
        if fs[1] != 7 or buf[1] == 80:
            k = 0
        if k == 0x524D43:
            kind = _RMC
        elif k == 0x474741:
            kind = _GGA
        elif k == 0x475341:
            kind = _GSA
        elif k == 0x565447:
            kind = _VTG
        else:
            self.ignored += 1
            return
        s = self.s
        for i in range(_STAT):
            s[i] = _NONE
        s[_STAT] = 0
        try:
            self._decode(kind, nf)
        except ValueError:  # from a field reader: bad input
            d["malformed"] += 1
            return
        self._epoch(kind)

    def _decode(self, kind, nf):
        # Fill self.s from the checked line's fields, or raise ValueError. Time, position,
        # speed, course and mode indicator are read below the per-type part, from the
        # field numbers it sets (0: not in this sentence). A one-letter field is read as
        # buf[fs[k]], its first byte: that is the ',' or '*' after it when it is empty,
        # which no letter test takes.
        s = self.s
        fs = self._fs
        buf = self._buf
        kn = crs = mi = kmh = 0
        if kind == _RMC:
            if nf < 10:
                raise ValueError
            c = buf[fs[2]]
            # Status V or mode indicator N (NMEA 2.3+, below). Not the 4.1 navigational
            # status: u-blox and others always send V there ("not provided").
            s[_STAT] = _OK if c == 65 else _BAD if c == 86 else 0  # A, V
            kn = 7
            crs = 8
            mi = 12
            v = self._num(9, 0, 10100, 311299)  # ddmmyy
            if v != _NONE:
                m = v // 100 % 100
                if fs[10] - fs[9] != 7 or m < 1 or m > 12:
                    raise ValueError
                y = v % 100
                if y >= 80:  # two digits: 80..99 are 19yy, the rest 20yy
                    y -= 100
                # Days since 2000-01-01 (H. Hinnant's days_from_civil with y in years
                # since 2000; in 1901..2099 every fourth year is a leap year). Years are
                # counted from March, so that the leap day ends one: 2000-03-01 is day 60.
                if m < 3:
                    y -= 1
                    m += 12
                s[_DAY] = 365 * y + y // 4 + (153 * m - 457) // 5 + v // 10000 + 59
        elif kind == _GGA:
            if nf < 7:
                raise ValueError
            q = s[_QUAL] = self._num(6, 0, 0, 9)
            s[_STAT] = _OK if q > 0 else _BAD if q == 0 else 0
            s[_SATS] = self._num(7, 0, 0, 999)
            s[_HDOP] = self._num(8, 2, 0, 99999)
            s[_ALT] = self._num(9, 2, -10000000, 100000000)
        elif kind == _GSA:
            if nf < 3:
                raise ValueError
            m = s[_MODE] = self._num(2, 0, 1, 3)
            if m == 1:
                s[_STAT] = _BAD
            n = 0
            for k in range(3, 15):  # the PRNs of the satellites used
                if k < nf and fs[k + 1] - fs[k] > 1:
                    n += 1
            s[_SATS] = n
            s[_HDOP] = self._num(16, 2, 0, 99999)
        else:  # VTG
            if nf < 5:
                raise ValueError
            crs = 1
            if buf[fs[2]] == 84 or nf >= 9:  # T (NMEA 2.x+: value,unit pairs)
                kn = 5
                kmh = 7
                mi = 9
            else:  # NMEA 1.x: course T, course M, knots, km/h
                kn = 3
                kmh = 4
        if kind & (_RMC | _GGA):
            # hhmmss[.sss] to ms of the UTC day; empty, or at least six digits.
            if 1 < fs[2] - fs[1] < 7:
                raise ValueError
            v = self._num(1, 3, 0, 235960999)
            if v != _NONE:
                sec = v // 1000 % 100
                m = v // 100000 % 100
                if sec > 60 or m > 59:
                    raise ValueError
                v = ((v // 10000000 * 60 + m) * 60 + sec) * 1000 + v % 1000
            s[_TOD] = v
            self._pos(3 if kind == _RMC else 2)
        if kn:
            # knots * 1e4 to mm/s: * 1852000 / 36e6 = * 463 / 9000, split so that every
            # product stays below 2**30.
            v = self._num(kn, 4, 0, 99999999)
            if v != _NONE:
                v = v // 9000 * 463 + (v % 9000 * 463 + 4500) // 9000
            elif kmh:
                v = self._num(kmh, 3, 0, 4000000)  # km/h * 1000
                if v != _NONE:
                    v = (v * 5 + 9) // 18
            s[_SPEED] = v
            v = self._num(crs, 2, 0, 36000)
            s[_COURSE] = v if v == _NONE else v % 36000
        if 0 < mi < nf and buf[fs[mi]] == 78:  # N: not valid
            s[_STAT] |= _BAD

    # ---- fields (k = field index, 0 = address); readers raise ValueError if bad ----
    def _num(self, k, d, lo, hi):
        # Field k, a decimal number, times 10**d rounded half away from zero; _NONE if
        # empty or absent.
        if k >= self._v[_NF]:
            return _NONE
        fs = self._fs
        a = fs[k]
        b = fs[k + 1] - 1
        if a >= b:
            return _NONE
        buf = self._buf
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

    def _pos(self, k):
        # Fields k..k+3: latitude, N/S, longitude, E/W into s[_LAT], s[_LON]. Both empty
        # is fine (no fix yet), one alone is not. (d)ddmm.mmmm to microdegrees, exactly:
        # minutes are read to 1e-7 (below 6e8, a small int) and divided by 60 with
        # rounding to nearest; later digits cannot change that rounding, so they are
        # only checked. The caller checked that the four fields are there.
        s = self.s
        fs = self._fs
        buf = self._buf
        for j in range(2):  # latitude (up to 90 degrees), then longitude (180)
            a = fs[k]
            b = fs[k + 1] - 1
            v = _NONE
            if a < b:
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
                if mins >= 600000000 or v > 90000000 << j:
                    raise ValueError
                h = buf[fs[k + 1]]
                if h == b"SW"[j]:
                    v = -v
                elif h != b"NE"[j]:
                    raise ValueError
            s[_LAT + j] = v
            k += 2
        if (s[_LAT] == _NONE) != (s[_LON] == _NONE):
            raise ValueError

    # ---- epochs ---------------------------------------------------------------------
    def _epoch(self, kind):
        s = self.s
        v = self._v
        t = s[_TOD]
        late = False
        if t != _NONE:
            if v[_PT] >= 0 and t != v[_PT]:
                # The time changed: the pending epoch is complete. Learn which kind ends
                # a cycle (gpsd's cycle-end detection): the same unrepeated kind twice
                # in a row.
                last = v[_LAST] if not (v[_REP] & v[_LAST]) else 0
                if v[_END]:
                    v[_END] = 0  # the learned end did not come this time
                    v[_CAND] = last
                elif v[_CAND] < 0:
                    pass  # learning gave up (see below)
                elif last and last == v[_CAND]:
                    v[_END] = last
                else:
                    v[_CAND] = last
                self._emit()
            elif not v[_MASK] and t == v[_ET]:
                # Same time as the epoch just emitted at the learned cycle end: that
                # guess was wrong for this receiver. The fix is already out.
                late = True
        elif kind & v[_MASK] & (_RMC | _GGA) and v[_PT] < 0:
            self._emit()  # no time at all (no fix yet): a repeated RMC/GGA starts an epoch
        elif not v[_MASK] and v[_ET] >= 0 and not (v[_EMASK] & kind):
            # A time-less sentence right after a cycle-end emission, of a kind that
            # epoch did not have: it trails that epoch, so the learned end is wrong.
            late = True
        if late:
            # The learned cycle end was wrong for this receiver (e.g. 10 Hz GGA with
            # 1 Hz RMC): stop learning for good and fall back to time-change boundaries.
            # Keep the date, which belongs to no epoch in particular.
            self.drops["late"] += 1
            v[_END] = 0
            v[_CAND] = -1
            v[_ET] = -1
            if s[_DAY] != _NONE:
                v[_EDAY] = s[_DAY]
            return
        v[_ET] = -1
        if t != _NONE:
            if v[_LTOD] >= 0 and t < v[_LTOD] - _HALFDAY and v[_EDAY] != _NONE:
                v[_EDAY] += 1  # midnight passed since the last date we were told
            v[_LTOD] = t
            v[_PT] = t
        if s[_DAY] != _NONE:
            v[_EDAY] = s[_DAY]
        f = self.fix
        x = s[_LAT]
        if x != _NONE:
            f.lat = x
            f.lon = s[_LON]
        x = s[_SPEED]
        if x != _NONE:
            f.speed = x
        x = s[_COURSE]
        if x != _NONE:
            f.course = x
        x = s[_ALT]
        if x != _NONE:
            f.alt = x
        x = s[_QUAL]
        if x != _NONE:
            f.quality = x
        # GSA's HDOP and satellites count only where no GGA gave them (see _emit).
        x = s[_HDOP]
        if x != _NONE:
            if kind == _GSA:
                v[_GHDOP] = x
            else:
                f.hdop = x
        x = s[_SATS]
        if x != _NONE:
            if kind == _GSA:
                v[_GSATS] += x
            else:
                f.sats = x
        x = s[_MODE]
        if x != _NONE and (f.mode is None or x > f.mode):
            f.mode = x
        v[_EST] |= s[_STAT]
        if v[_MASK] & kind:
            v[_REP] |= kind
        v[_MASK] |= kind
        v[_LAST] = kind
        self.sentences += 1
        if self.on_sentence is not None:
            self.on_sentence(s, v[_LEN])
        if kind == v[_END] and v[_PT] >= 0:
            v[_ET] = v[_PT]
            v[_EMASK] = v[_MASK]
            self._emit()

    def _emit(self):
        f = self.fix
        v = self._v
        pt = v[_PT]
        if pt >= 0:
            f.ms = pt % 1000
            if v[_EDAY] != _NONE:
                f.t = v[_EDAY] * 86400 + pt // 1000
        if f.sats is None and v[_MASK] & _GSA:
            f.sats = v[_GSATS]
        if f.hdop is None and v[_GHDOP] >= 0:
            f.hdop = v[_GHDOP]
        f.valid = v[_EST] == _OK and f.lat is not None
        if not f.valid:
            f.lat = None
            f.lon = None
        self.fixes += 1
        v[_PT] = -1
        v[_MASK] = 0
        v[_REP] = 0
        v[_LAST] = 0
        v[_EST] = 0
        v[_GSATS] = 0
        v[_GHDOP] = -1
        try:
            self.on_fix(f)
        except Exception as e:
            # The caller's failure (e.g. no heap for its record) is not the parser's: it
            # goes on with the sentence that ended this epoch and the rest of the chunk,
            # which belong to the next fixes, and feed() raises the first such
            # exception once the chunk is parsed.
            if self._err is None:
                self._err = e
        Fix.__init__(f)  # cleared in place: one Fix for the parser's life
