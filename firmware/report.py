# Report builder: the van's side of the wire format (docs/wire-format.md, gateway/wire.cddl).
#
# Records (positions now, events later) are appended to a preallocated CBOR buffer as they
# are decided, delta-encoded against the previous position; `seal()` wraps them into one
# report map (version, device, seq, t0, records) and closes it with the HMAC-SHA256/64
# over every byte before the MAC entry. Appending a position allocates nothing.
# It does not decide when to send or keep reports across reboots (uplink/queue do).
import hashlib

import cbor
from micropython import const

_VERSION = const(1)
_K_VERSION = const(0)
_K_DEVICE = const(1)
_K_SEQ = const(2)
_K_T0 = const(3)
_K_RECORDS = const(4)
_K_MAC = const(5)
_MAC_LEN = const(8)

# A position is at most 1 + 1+5 + 5 + 5 + 3 + 3 + 3 + 2 = 28 bytes (first of a report,
# full-size deltas); one CoAP datagram keeps well under 1024 bytes with 30 of them.
# An event takes at most 1 + 2+5 + 2*(1+5) + 1+5 + 1+3 + 1+2 + 1+5 + 1+5 = 45 bytes: the
# caller seals the report and starts the next one when add_event() says it is full.
POSITION_MAX = const(28)
EVENT_MAX = const(45)
# Report head: map header (1), version (2), device, seq and t0 (1+5 each), the records
# key and array header (1+3).
_HEAD_MAX = const(25)
# Report envelope: the head and the MAC entry (10).
ENVELOPE_MAX = const(35)


class Mac:
    # HMAC-SHA256 (RFC 2104) truncated to 64 bits, with the key's pads computed once.
    def __init__(self, key):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        ipad = bytearray(64)
        ipad[: len(key)] = key
        opad = bytearray(ipad)
        for i in range(64):
            ipad[i] ^= 0x36
            opad[i] ^= 0x5C
        self._ipad = ipad
        self._opad = opad

    def digest(self, data):
        h = hashlib.sha256(self._ipad)
        h.update(data)
        inner = h.digest()
        h = hashlib.sha256(self._opad)
        h.update(inner)
        return h.digest()[:_MAC_LEN]


class Batch:
    # One buffer holds the report: records are written from _HEAD_MAX on, and seal()
    # writes the head just before them (right-aligned) and the MAC after them.
    def __init__(self, device_id, key, max_records=10):
        self.device_id = device_id
        self.max_records = max_records
        self._mac = Mac(key)
        self._recs = cbor.Writer(max_records * POSITION_MAX + ENVELOPE_MAX)
        self._head = cbor.Writer(_HEAD_MAX)
        self.count = 0
        self.seq = 0
        self.t0 = 0
        self._ds = 0  # deciseconds since t0 of the last record
        self._end = _HEAD_MAX  # where the records end in the buffer
        self._lat = 0
        self._lon = 0

    def start(self, seq, t0):
        # A new report whose first record gets `seq` and whose time base is `t0`
        # (GPS seconds since 2000).
        self._recs.n = self._end = _HEAD_MAX
        self.count = 0
        self.seq = seq
        self.t0 = t0
        self._ds = 0
        self._lat = 0
        self._lon = 0

    def full(self):
        return self.count >= self.max_records

    def add_position(self, fix):
        # Append a valid fix (see nmea.Fix). Returns False, changing nothing, if the
        # report is full or the fix lies before the last record (the caller seals and
        # starts a new report).
        if self.count >= self.max_records:
            return False
        ds = (fix.t - self.t0) * 10 + fix.ms // 100
        if ds < self._ds:
            return False
        w = self._recs
        mark = w.mark()
        first = self.count == 0
        try:
            w.array(7 if first else 5)
            w.uint(ds - self._ds)
            w.int(fix.lat - self._lat)
            w.int(fix.lon - self._lon)
            speed = fix.speed
            if speed is None:
                w.null()
            else:
                w.uint((speed + 50) // 100)  # mm/s -> dm/s
            course = fix.course
            if course is None:
                w.null()
            else:
                w.uint((course + 50) // 100 % 360)  # centidegrees -> degrees
            if first:
                hdop = fix.hdop
                w.uint(0 if hdop is None else (hdop + 5) // 10)  # x100 -> x10
                sats = fix.sats
                w.uint(0 if sats is None else sats)
        except OverflowError:
            w.rewind(mark)
            return False
        self._ds = ds
        self._lat = fix.lat
        self._lon = fix.lon
        self._end = w.n
        self.count += 1
        return True

    def add_event(self, etype, fix, fence=None, extra=None, route=None):
        # Append an event decided on `fix` (a valid fix with a time): type etype (wire
        # numbers, docs/wire-format.md), its absolute position and quality, the fence
        # number, a type-specific value (key 7: dwell seconds, expected stop...) and the
        # route version the fence number belongs to (key 8). Returns False, changing
        # nothing, if it does not fit or lies before the last record. Events leave the
        # position delta chain alone.
        if self.count >= self.max_records:
            return False
        ds = (fix.t - self.t0) * 10 + fix.ms // 100
        if ds < self._ds:
            return False
        w = self._recs
        mark = w.mark()
        try:
            w.map(6 + (fence is not None) + (extra is not None) + (route is not None))
            w.uint(0)
            w.uint(etype)
            w.uint(1)
            w.uint(ds - self._ds)
            w.uint(2)
            w.int(fix.lat)
            w.uint(3)
            w.int(fix.lon)
            if fence is not None:
                w.uint(4)
                w.uint(fence)
            w.uint(5)
            hdop = fix.hdop
            w.uint(0 if hdop is None else (hdop + 5) // 10)
            w.uint(6)
            w.uint(fix.sats or 0)
            if extra is not None:
                w.uint(7)
                w.int(extra)
            if route is not None:
                w.uint(8)
                w.uint(route)
        except OverflowError:
            w.rewind(mark)
            return False
        self._ds = ds
        self._end = w.n
        self.count += 1
        return True

    def seal(self):
        # The finished report as a memoryview into the batch's own buffer: copy it
        # (bytes(...)) before starting the next report. Sealing again (say, after a
        # MemoryError in the caller's copy) gives the same bytes.
        w = self._head
        w.reset()
        w.map(6)
        w.uint(_K_VERSION)
        w.uint(_VERSION)
        w.uint(_K_DEVICE)
        w.uint(self.device_id)
        w.uint(_K_SEQ)
        w.uint(self.seq)
        w.uint(_K_T0)
        w.uint(self.t0)
        w.uint(_K_RECORDS)
        w.array(self.count)
        r = self._recs
        r.n = self._end
        start = _HEAD_MAX - w.n
        r.buf[start:_HEAD_MAX] = w.getvalue()
        report = r.getvalue()[start:]
        r.uint(_K_MAC)
        r.bytes(self._mac.digest(report))
        return r.getvalue()[start:]
