# Report builder: the van's side of the wire format (docs/wire-format.md, gateway/wire.cddl).
#
# Records (positions, events, status) are read from the flash queue and appended to a
# preallocated CBOR buffer, positions delta-encoded against the previous position;
# `seal()` wraps them into one report map (version, device, seq, t0, records) and closes
# it with the HMAC-SHA256/64 over every byte before the MAC entry. The report's buffer is
# allocated once. It does not decide what to record or when to send (uplink.py), nor
# keep records (queue.py).
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
_MAC_ENTRY = const(10)  # key 5 and the 8 bytes of the MAC
_STATUS = const(16)  # event type of a status record
# A record as queue.Queue.record() gives it (the flash layout lives in queue.py).
_T = const(1)
_LAT = const(2)
_LON = const(3)
_SPEED = const(4)
_COURSE = const(5)
_HDOP = const(6)
_SATS = const(7)
_FLAGS = const(8)
_ETYPE = const(9)
_FENCE = const(10)
_EXTRA = const(11)
_ROUTE = const(12)
_NONE = const(0xFFFF)
_HAS_X = const(16)
_HAS_F = const(32)
_HAS_R = const(64)

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

    def add(self, r):
        # Append a record as the flash queue holds it (queue.Queue.record(): a tuple in
        # wire units). Returns False, changing nothing, if the report is full, the record
        # does not fit or it lies before the last record (the caller sends what it has).
        # Positions are delta-encoded against the previous position; events carry their
        # absolute position and leave that chain alone.
        if self.count >= self.max_records:
            return False
        fl = r[_FLAGS]
        ds = (r[_T] - self.t0) * 10 + (fl & 15)
        if ds < self._ds:
            return False
        w = self._recs
        mark = w.mark()
        et = r[_ETYPE]
        try:
            if et:
                st = et == _STATUS
                w.map(6 + (fl & _HAS_F > 0) + (fl & _HAS_X > 0) + (fl & _HAS_R > 0))
                w.uint(0)
                w.uint(et)
                w.uint(1)
                w.uint(ds - self._ds)
                w.uint(2)
                w.int(r[_LAT])
                w.uint(3)
                w.int(r[_LON])
                if fl & _HAS_F and not st:
                    w.uint(4)
                    w.uint(r[_FENCE])
                w.uint(5)
                w.uint(r[_HDOP])
                w.uint(6)
                w.uint(r[_SATS])
                if fl & _HAS_X:
                    w.uint(7)
                    w.int(r[_EXTRA])
                if fl & _HAS_R:
                    # A status record's counters (docs/wire-format.md): queued and cause.
                    w.uint(9 if st else 8)
                    w.uint(r[_FENCE] if st else r[_ROUTE])
                    if st:
                        w.uint(10)
                        w.uint(r[_ROUTE])
            else:
                first = self.count == 0
                w.array(7 if first else 5)
                w.uint(ds - self._ds)
                w.int(r[_LAT] - self._lat)
                w.int(r[_LON] - self._lon)
                if r[_SPEED] == _NONE:
                    w.null()
                else:
                    w.uint(r[_SPEED])
                if r[_COURSE] == _NONE:
                    w.null()
                else:
                    w.uint(r[_COURSE])
                if first:
                    w.uint(r[_HDOP])
                    w.uint(r[_SATS])
                self._lat = r[_LAT]
                self._lon = r[_LON]
            if w.n > w.size - _MAC_ENTRY:
                raise OverflowError  # no room left for the MAC: the report is full
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
