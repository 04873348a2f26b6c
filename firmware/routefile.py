# The day's route on the van, read back fence by fence from the flash file the uplink
# fetched it into (rtfetch.fetch; the format: gateway/route.cddl, docs/routes.md).
#
# Reading never holds the file or its decoded form in the heap: open() returns the
# header (format, version, params, depot) and two sequences, stops then zones, whose
# fences are decoded one at a time from the file as they are iterated (stops first).
# Fence ids (text) are not kept: events carry fence numbers (depot 0, stops 1..n, zones
# after), which the gateway maps back with the route version, and each fence comes with
# a 30-bit hash of its id instead, so a route replaced mid-day can be matched stop by
# stop with the one it replaces.
#
# load() builds the geofence (fence.Geofence) from the file and carries the progress
# over: from the state file the tracker saves if it belongs to this very route (a
# reboot), else from the geofence being replaced, stop by stop (matched by id hash).
#
# It does not decide anything about fences (fence.py does) nor fetch the route
# (uplink). The tracker imports it only while it builds a geofence.
import gc
import hashlib
import sys

import log
from micropython import const

_FORMAT = const(1)


class Reader:
    # CBOR items from a file, read as they come (no indefinite lengths, no tags, no
    # floats: the route has none). Raises ValueError on anything else or a short file.
    def __init__(self, f):
        self.f = f
        self.buf = bytearray(8)

    def read(self, n):
        mv = memoryview(self.buf)[:n]
        if self.f.readinto(mv) != n:
            raise ValueError("route file cut short")
        return mv

    def head(self):
        ib = self.read(1)[0]
        ai = ib & 31
        if ai < 24:
            return ib >> 5, ai
        if ai > 27:
            raise ValueError("route: unsupported CBOR item %d" % ib)
        v = 0
        for c in self.read(1 << (ai - 24)):
            v = v << 8 | c
        return ib >> 5, v

    def value(self):
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
            return [self.value() for _ in range(v)]
        if major == 5:
            d = {}
            for _ in range(v):
                k = self.value()
                d[k] = self.value()
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
            for c in self.read(k):
                h = ((h & 0x1FFFFFF) << 5) ^ (h >> 25) ^ c
            ln -= k
        out = [h, self.value(), self.value(), self.value(), self.value()]
        for _ in range(n - 5):
            self.value()
        return out


class Fences:
    # The stops or the zones: a sequence decoded from the file while iterated. Its
    # length is read with its array header, when it is first asked for; iterate the
    # stops to the end before the zones. index: an array the id hashes are appended to.
    def __init__(self, src, index):
        self.src = src
        self.n = -1
        self.index = index

    def __len__(self):
        if self.n < 0:
            major, self.n = self.src.head()
            if major != 4:
                raise ValueError("route: fences must be an array")
        return self.n

    def __iter__(self):
        for _ in range(len(self)):
            f = self.src.fence()
            if self.index is not None:
                self.index.append(f[0])
            yield f


def open_route(f, index=None):
    # [format, version, params, depot, stops, zones] read from the open file f; the
    # stops and zones are Fences (read on iteration). With index (an array('i')), the id
    # hash of every fence is appended to it as the fences are read, by fence number
    # (0 for a route without a depot). Raises ValueError.
    r = Reader(f)
    major, n = r.head()
    if major != 4 or n < 6:
        raise ValueError("route: not a route array")
    fmt = r.value()
    if fmt != _FORMAT:
        raise ValueError("route: format %r, this firmware reads %d" % (fmt, _FORMAT))
    version = r.value()
    params = r.value()
    if not isinstance(params, dict):
        raise ValueError("route: params must be a map")
    depot = r.fence()
    if index is not None:
        index.append(0 if depot is None else depot[0])
    return [fmt, version, params, depot, Fences(r, index), Fences(r, index)]


def file_etag(path):
    # The route file's ETag as the gateway computes it: sha256 of the route, 8 bytes.
    h = hashlib.sha256()
    buf = bytearray(128)
    with open(path, "rb") as f:
        n = f.readinto(buf)
        while n:
            h.update(memoryview(buf)[:n])
            n = f.readinto(buf)
    return h.digest()[:8]


def load(path, cb):
    # The geofence for the route file at path: (geofence, version, fence id hashes by
    # number, ETag, number of stops), or None without a route file. Its progress comes
    # from the state file the tracker keeps (Tracker._save: ETag, id hashes, state): as
    # it is if that belongs to this very route (a reboot), else stop by stop, matched by
    # id hash, from the route it replaces.
    # cb: the geofence's emit callback. Raises ValueError, OSError.
    try:
        f = open(path, "rb")
    except OSError:
        return None
    from array import array

    import fence

    ids = array("i")
    with f:
        r = open_route(f, ids)
        g = fence.Geofence(r, cb)
        stops = len(r[4])
    etag = file_etag(path)
    try:
        with open(path + ".state", "rb") as f:
            b = f.read()
        k = 10 + 4 * (b[8] | b[9] << 8)
        if b[:8] == etag:
            g.load_state(memoryview(b)[k:])
        else:
            new = {}
            for i in range(len(ids)):
                new[ids[i]] = i
            old = array("i", b[10:k])
            g.load_state(memoryview(b)[k:], [new.get(i, -1) for i in old])
    except (OSError, ValueError, IndexError):
        pass  # no progress yet, or unreadable: start afresh
    return g, r[1], ids, etag, stops


def install(t):
    # Builds the tracker t's geofence from its route file, at boot (start.boot), first
    # thing after the configuration: the fences need the heap before anything cuts it
    # up. A route too large for the heap, or a bad file, is left out: the van then
    # tracks and reports without fences, and says so. Either way the uplink gets the
    # file's ETag, so it fetches only a new route.
    try:
        got = load(t._path, t._event)
        if got is None:
            return  # no route yet
        t.geo, t.route, t._ids, t._etag, stops = got
        log.info("route", "loaded", version=t.route, stops=stops, fences=len(t._ids))
        return
    except MemoryError:
        got = t.geo = None
        sys.modules.pop("fence", None)
        gc.collect()
        log.error("route", "too_large_for_heap", mem_free=gc.mem_free())
    except (ValueError, OSError) as e:
        log.error("route", "unreadable", error=repr(e))
    try:
        t._etag = file_etag(t._path)
    except Exception:
        pass
