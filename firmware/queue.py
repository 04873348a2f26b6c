# The flash queue: every record the van decides (positions, events, status) is on flash
# from the moment it is decided until the gateway acknowledged it, so a dead zone, a
# gateway that is down or a power cut loses nothing the van decided.
#
# Layout (in <flash>/q/): segment files named 0, 1, 2... appended to, one 36-byte slot per
# record (32 bytes of fields, then their CRC-32), _SEG slots per segment (one 4 KB flash
# block), and `ack`, to which the first unacknowledged sequence number (the tail) is
# appended after each acknowledgement. Nothing is ever rewritten in place:
# - A record is appended and the file closed (on LittleFS, close commits) before anyone
#   may send it. A power cut mid-write leaves a short or bad last slot: at boot it ends
#   the valid part of its segment and writing goes on in a new segment, so the record
#   being written is all that is lost, and its number is used again (nobody saw it).
# - Sequence numbers are the queue's: one more than the newest valid record, or the tail
#   if that is higher. The newest segment is never deleted, so they never repeat.
# - Acknowledged segments are deleted only after `ack` holds the tail past them. A power
#   cut between the gateway's ack and that write resends the same numbers, which the
#   gateway stores once; no acknowledged record comes back under a new number.
# - Flash wear: one append per record and one 4-byte append per acknowledged report;
#   `ack` is replaced (a temporary file renamed) once it reaches _ACK_MAX bytes.
# - Bounded: at max_segs segments the two oldest are merged into one, keeping every
#   event and status record and every other position (older positions thin out first
#   and most); what went is counted in `dropped` for the next status record.
# Reports carry runs of consecutive sequence numbers (docs/wire-format.md): read() gives
# the oldest run (the backlog) or, with live=True, the newest record alone, which the
# uplink sends between backlog reports so the gateway's live view stays fresh; the
# numbers acknowledged out of order that way are remembered in `done` and skipped.
import os
import struct
import sys
from binascii import crc32

from micropython import const

_FMT = "<IIiiHHBBBBHiH"  # the 32 bytes of a record (tuple indices: report.py)
_SLOT = const(36)
_SEG = const(113)  # slots per segment: 4,068 bytes
_ACK_MAX = const(512)
_DONE_MAX = const(16)
_NONE = const(0xFFFF)  # speed, course or fence unknown
# Byte 22: tenths of the second (low nibble) and which optional fields are there.
_HAS_X = const(16)
_HAS_F = const(32)
_HAS_R = const(64)


class Queue:
    def __init__(self, flash_dir, max_segs):
        d = flash_dir + "/q"
        try:
            os.mkdir(d)
        except OSError:
            pass
        self.d = d + "/"
        self.max = max(max_segs, 4)
        self.buf = bytearray(_SLOT)
        self.writes = 0  # flash writes (records and acks) since boot
        self.dropped = 0  # positions thinned out, not yet told in a status record
        self.done = []
        self.hi = self.lo = self.n = self.next = self.tail = self.count = 0
        self.cs = self.co = 0
        # Recovery (torn writes, where the tail is) is boot-only code: in the heap only
        # meanwhile, as is thinning's.
        import qmaint

        try:
            qmaint.recover(self)
        finally:
            sys.modules.pop("qmaint", None)

    def _open(self, s):
        try:
            return open(self.d + str(s), "rb")
        except OSError:
            return None

    def _size(self, s):
        try:
            return os.stat(self.d + str(s))[6]
        except OSError:
            return 0

    def _slot(self, f):
        # Reads the next slot into buf; False at the end or at a bad slot.
        b = self.buf
        return f.readinto(b) == _SLOT and crc32(memoryview(b)[:32]) == int.from_bytes(
            b[32:], "little"
        )

    def seq(self):
        return int.from_bytes(self.buf[:4], "little")

    def record(self):
        return struct.unpack_from(_FMT, self.buf)

    def pack(self, seq, fix, etype=0, fence=None, extra=None, route=None):
        # The record of a valid fix (nmea.Fix) in buf, in wire units: microdegrees,
        # dm/s, whole degrees, HDOP x 10 (at most 25.5). A status record (etype 16)
        # carries its counters in fence (queued), extra (dropped) and route (cause).
        fl = fix.ms // 100
        if extra is not None:
            fl |= _HAS_X
        else:
            extra = 0
        if fence is not None:
            fl |= _HAS_F
        else:
            fence = _NONE
        if route is not None:
            fl |= _HAS_R
        else:
            route = 0
        s = fix.speed
        c = fix.course
        h = fix.hdop
        b = self.buf
        struct.pack_into(_FMT, b, 0, seq, fix.t, fix.lat, fix.lon,
                         _NONE if s is None else min((s + 50) // 100, 65534),
                         _NONE if c is None else (c + 50) // 100 % 360,
                         0 if h is None else min((h + 5) // 10, 255), min(fix.sats or 0, 255),
                         fl, etype, min(fence, _NONE), extra, route & 0xFFFF)  # fmt: skip
        b[32:] = crc32(memoryview(b)[:32]).to_bytes(4, "little")

    def put(self, fix, etype=0, fence=None, extra=None, route=None):
        # Append the record (pack()) and return its sequence number. Raises OSError if
        # the flash refused it: then it is not in the queue.
        if self.n >= _SEG:
            if self.hi - self.lo + 1 >= self.max:
                import qmaint

                try:
                    qmaint.thin(self)
                finally:
                    sys.modules.pop("qmaint", None)
            self.hi += 1
            self.n = 0
        seq = self.next
        self.pack(seq, fix, etype, fence, extra, route)
        try:
            with open(self.d + str(self.hi), "ab") as f:
                f.write(self.buf)
        except OSError:
            # Part of it may be there: nothing may follow it in that segment.
            self.hi += 1
            self.n = 0
            raise
        self.writes += 1
        self.n += 1
        self.next = seq + 1
        self.count += 1
        return seq

    def read(self, add, live=False):
        # Calls add(record) for the records of the next report: the newest record alone
        # (live), or the oldest run of consecutive sequence numbers, until add() says the
        # report is full. Returns (first seq, count), count 0 if there is nothing to send.
        first = n = 0
        if live:
            if len(self.done) >= _DONE_MAX:
                return 0, 0  # the backlog is to catch up first
            f = self._open(self.hi)
            if f and self.n:
                f.seek((self.n - 1) * _SLOT)
                if self._slot(f) and self.seq() >= self.tail and self.seq() not in self.done:
                    first = self.seq()
                    n = 1 if add(self.record()) else 0
            if f:
                f.close()
            return first, n
        s = self.cs
        f = self._open(s)
        if f:
            f.seek(self.co)
        while True:
            if f is None or not self._slot(f):
                # The segment's end (or a number a failed write left unused): the next.
                if f:
                    f.close()
                    f = None
                if s >= self.hi:
                    break
                s += 1
                f = self._open(s)
                continue
            q = self.seq()
            if n and (q != first + n or q in self.done) or not add(self.record()):
                break
            if not n:
                first = q
            n += 1
        if f:
            f.close()
        return first, n

    def ack(self, first, n):
        # The gateway acknowledged records first..first+n-1.
        t = self.tail
        if first > t:
            # A live record, ahead of the backlog: skipped when the backlog reaches it.
            if first not in self.done:
                self.done.append(first)  # at most _DONE_MAX: see read()
                self.count -= 1
            return
        if first + n <= t:
            return  # a stale ack: a report thinning overtook
        # (count is exact but while thinning overlaps a report in flight; the uplink
        # sets it right when nothing is left to read, and boot recounts it.)
        self.count = max(0, self.count - (first + n - t))
        self.tail = first + n
        self._advance()
        p = self.d + "ack"
        b = self.tail.to_bytes(4, "little")
        if self._size("ack") >= _ACK_MAX:
            with open(p + ".tmp", "wb") as f:
                f.write(b)
            os.rename(p + ".tmp", p)
        else:
            with open(p, "ab") as f:
                f.write(b)
        self.writes += 1
        # Only now that flash holds the tail past them may acknowledged segments go.
        while self.lo < self.cs:
            try:
                os.remove(self.d + str(self.lo))
            except OSError:
                pass
            self.lo += 1

    def _advance(self):
        # Moves the cursor to the oldest record still to send: past acknowledged ones and
        # those acknowledged live (`done`), which also moves the tail past the latter.
        s = self.cs
        at = self.co
        f = self._open(s)
        if f:
            f.seek(at)
        while True:
            if f is not None:
                at = f.tell()
                if not self._slot(f):
                    f.close()
                    f = None
            if f is None:
                # The segment's end (or a number a failed write left unused): the next.
                if s >= self.hi:
                    break
                s += 1
                at = 0
                f = self._open(s)
                continue
            q = self.seq()
            if q < self.tail:
                continue
            if q > self.tail:
                # The numbers in between were thinned out: nothing left to wait for.
                self.tail = q
                self.done = [d for d in self.done if d >= q]
            if q not in self.done:
                break
            self.done.remove(q)
            self.tail = q + 1
        if f:
            f.close()
        self.cs = s
        self.co = at
