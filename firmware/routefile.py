# The day's route on the van: fetched from the gateway into a flash file, read back from
# it fence by fence.
#
# The gateway serves the route as CBOR (gateway/route.cddl, docs/routes.md) on
# GET /rt?d=<device>&m=<mac>, with an ETag and block-wise (RFC 7959 Block2) when it is
# larger than one datagram. fetch() asks for it block by block and writes each block to
# a temporary file, renamed over the route file only once the last block came with the
# same ETag as the first (rename is atomic on LittleFS and POSIX): a power cut or a
# route replaced mid-transfer never leaves half a route. A route that did not change
# costs one 2.03 Valid.
#
# Reading never holds the file or its decoded form in the heap: open() returns the
# header (format, version, params, depot) and two sequences, stops then zones, whose
# fences are decoded one at a time from the file as they are iterated (stops first).
# Fence ids (text) are not kept: events carry fence numbers (depot 0, stops 1..n, zones
# after), which the gateway maps back with the route version, and each fence comes with
# a 30-bit hash of its id instead, so a route replaced mid-day can be matched stop by
# stop with the one it replaces.
#
# It does not decide anything about fences (fence.py does) nor when to fetch (uplink).
import binascii
import os

import coapmsg
from micropython import const

_GET = const(1)
_VALID = const(67)  # 2.03
_ETAG = const(4)
_URI_QUERY = const(15)
_BLOCK2 = const(23)
_SZX = const(4)  # 256-byte blocks: a block and its header fit the client's rx buffer
_FORMAT = const(1)
_RT = (b"rt",)


def mac_query(mac, device_id):
    # The route request's proof of identity (report.Mac: HMAC-SHA256/64 with the device
    # key) over "vantrack-route:<id>", as a Uri-Query value "m=<16 hex digits>".
    return b"m=" + binascii.hexlify(mac.digest(b"vantrack-route:%d" % device_id))


async def fetch(client, device_id, mac_q, path, etag=None):
    # Fetch the route into `path`. Returns (result, changed): result is the last
    # coapmsg.Result (its decision says what to do when it is not "done"), changed
    # whether a new route was written (False on 2.03 Valid or failure).
    query = [(_URI_QUERY, b"d=%d" % device_id), (_URI_QUERY, mac_q)]
    tmp = path + ".tmp"
    num = 0
    first = None
    f = None
    try:
        while True:
            opts = query + [(_BLOCK2, coapmsg.uint(num << 4 | _SZX))]
            if etag and not num:
                opts.append((_ETAG, etag))
            res = await client.request(_GET, _RT, b"", None, opts)
            if res.decision != "done" or res.code == _VALID:
                return res, False
            b2 = coapmsg.opt(res.options, _BLOCK2)
            tag = coapmsg.opt(res.options, _ETAG)
            if num == 0:
                first = tag
                f = open(tmp, "wb")
            elif tag != first:
                # The route changed between two blocks: start again from block 0.
                f.close()  # type: ignore[union-attr]
                f = None
                num = 0
                continue
            f.write(res.payload)  # type: ignore[union-attr]
            if b2 is None or not coapmsg.to_uint(b2) & 8:
                f.close()  # type: ignore[union-attr]
                f = None
                os.rename(tmp, path)
                return res, True
            num = (coapmsg.to_uint(b2) >> 4) + 1
    finally:
        if f:
            f.close()


class Reader:
    # CBOR items from a file, read as they come (no indefinite lengths, no tags, no
    # floats: the route has none). Raises ValueError on anything else or a short file.
    def __init__(self, f):
        self.f = f
        self._b = bytearray(8)

    def _read(self, n):
        mv = memoryview(self._b)[:n]
        if self.f.readinto(mv) != n:
            raise ValueError("route file cut short")
        return mv

    def head(self):
        ib = self._read(1)[0]
        ai = ib & 31
        if ai < 24:
            return ib >> 5, ai
        if ai > 27:
            raise ValueError("route: unsupported CBOR item %d" % ib)
        v = 0
        for c in self._read(1 << (ai - 24)):
            v = v << 8 | c
        return ib >> 5, v

    def item(self):
        major, v = self.head()
        if major == 0:
            return v
        if major == 1:
            return -1 - v
        if major < 4:
            s = self.f.read(v)
            if len(s) != v:
                raise ValueError("route file cut short")
            return s.decode() if major == 3 else s
        if major == 4:
            return [self.item() for _ in range(v)]
        if major == 5:
            d = {}
            for _ in range(v):
                k = self.item()
                d[k] = self.item()
            return d
        if major == 7 and 20 <= v <= 22:
            return (False, True, None)[v - 20]
        raise ValueError("route: unsupported CBOR major type %d" % major)

    def fence(self):
        # [id, kind, inner_m, outer_m, coords, *extras] -> [hash of id, kind, inner_m,
        # outer_m, coords], the extras dropped; None for a CBOR null.
        major, n = self.head()
        if major == 7 and n == 22:
            return None
        if major != 4 or n < 5:
            raise ValueError("route: a fence is an array of at least 5 items")
        major, ln = self.head()
        if major != 3:
            raise ValueError("route: a fence id is text")
        h = 0  # rotate-xor over the id's bytes, read a few at a time: no string kept
        while ln:
            k = min(ln, 8)
            for c in self._read(k):
                h = ((h & 0x1FFFFFF) << 5) ^ (h >> 25) ^ c
            ln -= k
        out = [h, self.item(), self.item(), self.item(), self.item()]
        for _ in range(n - 5):
            self.item()
        return out


class Fences:
    # The stops or the zones: a sequence decoded from the file while iterated. Its
    # length is read with its array header, when it is first asked for; iterate the
    # stops to the end before the zones.
    def __init__(self, reader):
        self._r = reader
        self._n = -1

    def __len__(self):
        if self._n < 0:
            major, self._n = self._r.head()
            if major != 4:
                raise ValueError("route: fences must be an array")
        return self._n

    def __iter__(self):
        for _ in range(len(self)):
            yield self._r.fence()


def open_route(f):
    # [format, version, params, depot, stops, zones] read from the open file f; the
    # stops and zones are Fences (read on iteration). Raises ValueError.
    r = Reader(f)
    major, n = r.head()
    if major != 4 or n < 6:
        raise ValueError("route: not a route array")
    fmt = r.item()
    if fmt != _FORMAT:
        raise ValueError("route: format %r, this firmware reads %d" % (fmt, _FORMAT))
    version = r.item()
    params = r.item()
    if not isinstance(params, dict):
        raise ValueError("route: params must be a map")
    return [fmt, version, params, r.fence(), Fences(r), Fences(r)]
