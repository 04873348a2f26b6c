# NMEA 0183 parser for the van's GPS UART: bytes in, one Fix per navigation epoch out.
#
# Feed it whatever the UART returns (partial lines, several lines, noise); it assembles
# lines in a preallocated buffer, checks them, decodes RMC, GGA, GSA and VTG from any
# talker (NMEA 2.x and 4.1 layouts), merges one epoch's sentences into one Fix and calls
# on_fix(fix). Bad input is counted in `drops` by reason and never raises.
#
# Everything is integer maths on the line buffer (no split, no slices, no floats, no
# str): the ESP32 port has single-precision floats and every boxed float or slice is a
# heap allocation, so the steady state allocates nothing per sentence. Small ints are
# 31-bit on the ESP32, hence microdegrees and seconds since 2000.
#
# It does not read the UART (the board layer does), does not decode GSV/ZDA/GLL or
# proprietary sentences (counted in `ignored`), and does not correct GPS week rollover.
from micropython import const
from nmeasentence import MAXF, Sentence

_HALFDAY = const(43200000)  # ms

# Sentence kinds: bit flags so an epoch can keep a set of what it has seen.
_RMC = const(1)
_GGA = const(2)
_GSA = const(4)
_VTG = const(8)

# Line assembler states.
_IDLE = const(0)
_LINE = const(1)
_SKIP = const(2)


class Fix:
    # One object, reused for every epoch: consumers copy what they keep.
    # t: s since 2000-01-01T00:00:00Z (None if the date is unknown), ms: 0..999,
    # lat/lon: 1e-6 degrees, speed: mm/s, course: centidegrees, alt: cm above MSL,
    # quality: GGA fix quality, mode: GSA mode 1/2/3, sats: used, hdop: HDOP * 100.
    def __init__(self):
        self._clear()

    def _clear(self):
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
        # Debug hook: called with the Sentence after each accepted one (its line is
        # _buf[:_n]).
        self.on_sentence = None
        self.fix = Fix()
        self._buf = bytearray(maxline)
        self.s = Sentence(self._buf)
        self.sentences = 0
        self.fixes = 0
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
        self._max = maxline
        self._st = _IDLE
        self._n = 0
        self._junk = False
        # The epoch being assembled (its values live in self.fix).
        self._pt = -1  # its UTC time of day in ms, -1 while unknown
        self._mask = 0  # kinds seen in it
        self._rep = 0  # kinds seen more than once in it
        self._last = 0  # kind of its last sentence
        self._ok = False
        self._bad = False
        self._gsats = 0  # satellites listed by its GSA sentences
        self._ghdop = -1  # HDOP of its GSA
        # Across epochs.
        self._day = None  # current UTC day (days since 2000), None until an RMC date
        self._ltod = -1  # last UTC time of day seen, for midnight rollover
        self._cand = 0  # kind that ended the last epoch (cycle-end candidate)
        self._end = 0  # learned cycle-ending kind, 0 while unknown
        self._et = -1  # time of the epoch just emitted at the learned cycle end
        self._emask = 0  # its kinds

    # ---- bytes to lines -------------------------------------------------------------
    def feed(self, data, n=-1):
        if n < 0:
            n = len(data)
        buf = self._buf
        st = self._st
        ln = self._n
        mx = self._max
        d = self.drops
        for i in range(n):
            c = data[i]
            if c == 36:  # $
                if st == _LINE:
                    d["truncated"] += 1
                elif self._junk:
                    d["garbage"] += 1
                    self._junk = False
                buf[0] = 36
                ln = 1
                st = _LINE
            elif c == 13 or c == 10:
                if st == _LINE:
                    self._n = ln  # for on_sentence, which may look at the line
                    self._line(ln)
                elif self._junk:
                    d["garbage"] += 1
                    self._junk = False
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
                self._junk = True
        self._st = st
        self._n = ln

    def flush(self):
        # End of input: a last line without its line end still counts, then the epoch.
        if self._st == _LINE:
            self._line(self._n)
        elif self._junk:
            self.drops["garbage"] += 1
        self._junk = False
        self._st = _IDLE
        if self._mask:
            self._emit()

    # ---- one line -------------------------------------------------------------------
    def _line(self, ln):
        buf = self._buf
        s = self.s
        fs = s.fs
        x = 0
        nf = 0
        star = ln
        fs[0] = 1
        fs[1] = 0
        for i in range(1, ln):
            c = buf[i]
            if c == 42:  # *
                star = i
                break
            x ^= c
            if c == 44 and nf < MAXF - 1:  # ,
                nf += 1
                fs[2 * nf] = (i + 1) & 0xFF
                fs[2 * nf + 1] = (i + 1) >> 8
        if star == ln:
            self.drops["no_checksum"] += 1
            return
        if star + 3 != ln or _hex(buf[star + 1]) << 4 | _hex(buf[star + 2]) != x:
            self.drops["checksum"] += 1
            return
        nf += 1
        fs[2 * nf] = (star + 1) & 0xFF
        fs[2 * nf + 1] = (star + 1) >> 8
        s.nf = nf
        # Address: two-letter talker + three-letter type; proprietary ($P...) is ignored.
        k = buf[3] << 16 | buf[4] << 8 | buf[5]
        if s.end(0) != 6 or buf[1] == 80:
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
        s._clear()
        try:
            if kind == _RMC:
                s.rmc()
            elif kind == _GGA:
                s.gga()
            elif kind == _GSA:
                s.gsa()
            else:
                s.vtg()
        except ValueError:  # from a field reader: bad input
            self.drops["malformed"] += 1
            return
        self._epoch(kind, s)

    # ---- epochs ---------------------------------------------------------------------
    def _epoch(self, kind, s):
        t = s.tod
        if t is not None:
            if self._pt >= 0 and t != self._pt:
                self._boundary()
            elif not self._mask and t == self._et:
                # Same time as the epoch just emitted at the learned cycle end: that
                # guess was wrong for this receiver. Unlearn; the fix is already out.
                self._late(s)
                return
        elif kind & self._mask & (_RMC | _GGA) and self._pt < 0:
            self._emit()  # no time at all (no fix yet): a repeated RMC/GGA starts an epoch
        elif not self._mask and self._et >= 0 and not (self._emask & kind):
            # A time-less sentence right after a cycle-end emission, of a kind that
            # epoch did not have: it trails that epoch, so the learned end is wrong.
            self._late(s)
            return
        self._et = -1
        if t is not None:
            if self._ltod >= 0 and t < self._ltod - _HALFDAY and self._day is not None:
                self._day += 1  # midnight passed since the last date we were told
            self._ltod = t
            self._pt = t
        if s.day is not None:
            self._day = s.day
        f = self.fix
        if s.lat is not None:
            f.lat = s.lat
            f.lon = s.lon
        if s.speed is not None:
            f.speed = s.speed
        if s.course is not None:
            f.course = s.course
        if s.alt is not None:
            f.alt = s.alt
        if s.quality is not None:
            f.quality = s.quality
        if s.hdop is not None:
            if kind == _GSA:
                self._ghdop = s.hdop
            else:
                f.hdop = s.hdop
        if s.sats is not None:
            if kind == _GSA:
                self._gsats += s.sats
            else:
                f.sats = s.sats
        if s.mode is not None and (f.mode is None or s.mode > f.mode):
            f.mode = s.mode
        if s.ok:
            self._ok = True
        if s.bad:
            self._bad = True
        if self._mask & kind:
            self._rep |= kind
        self._mask |= kind
        self._last = kind
        self.sentences += 1
        if self.on_sentence is not None:
            self.on_sentence(s)
        if kind == self._end and self._pt >= 0:
            self._et = self._pt
            self._emask = self._mask
            self._emit()

    def _late(self, s):
        # The learned cycle end was wrong for this receiver (e.g. 10 Hz GGA with 1 Hz
        # RMC): stop learning for good and fall back to time-change boundaries. Keep
        # the date, which belongs to no epoch in particular.
        self.drops["late"] += 1
        self._end = 0
        self._cand = -1
        self._et = -1
        if s.day is not None:
            self._day = s.day

    def _boundary(self):
        # The time changed: the pending epoch is complete. Learn which kind ends a
        # cycle (gpsd's cycle-end detection): the same unrepeated kind twice in a row.
        last = self._last if not (self._rep & self._last) else 0
        if self._end:
            self._end = 0  # the learned end did not come this time
            self._cand = last
        elif self._cand < 0:
            pass  # learning gave up (see _late)
        elif last and last == self._cand:
            self._end = last
        else:
            self._cand = last
        self._emit()

    def _emit(self):
        f = self.fix
        pt = self._pt
        if pt >= 0:
            f.ms = pt % 1000
            if self._day is not None:
                f.t = self._day * 86400 + pt // 1000
        if f.sats is None and self._mask & _GSA:
            f.sats = self._gsats
        if f.hdop is None and self._ghdop >= 0:
            f.hdop = self._ghdop
        f.valid = self._ok and not self._bad and f.lat is not None
        if not f.valid:
            f.lat = None
            f.lon = None
        self.fixes += 1
        self._pt = -1
        self._mask = 0
        self._rep = 0
        self._last = 0
        self._ok = False
        self._bad = False
        self._gsats = 0
        self._ghdop = -1
        self.on_fix(f)
        f._clear()


def _hex(c):
    if 48 <= c <= 57:
        return c - 48
    if 65 <= c <= 70:
        return c - 55
    if 97 <= c <= 102:
        return c - 87
    return 999
