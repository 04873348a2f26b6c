# Fetching the day's route from the gateway (docs/routes.md), for uplink.py: imported for
# a fetch and unloaded after it, so its code is in the heap only meanwhile.
#
# GET /rt?d=<device>&m=<mac> answers with the route's CBOR, an ETag, block-wise (RFC
# 7959 Block2) as it is larger than a datagram: each block goes to a temporary file,
# renamed over the route file only once the last block came with the ETag of the first
# (rename is atomic on LittleFS and POSIX), so a power cut or a route replaced
# mid-transfer never leaves half a route. A route that did not change costs one 2.03.
import binascii
import os

import coapmsg
import log
from micropython import const

_GET = const(1)
_VALID = const(67)  # 2.03: the route did not change
_NOT_FOUND = const(132)  # 4.04: the gateway has no route for us
_ETAG = const(4)
_URI_QUERY = const(15)
_BLOCK2 = const(23)
_SZX = const(4)  # 256-byte blocks: a block and its header fit the client's rx buffer
_RT = coapmsg.path("/rt")


async def get(up, want):
    # One attempt for the uplink `up` (`want`: the version an ack named, or True at
    # boot). Returns 1 if a new route was written, 2 if the van's is current (2.03), 0
    # if it failed (retried when the next ack names the version again; the uplink
    # catches a MemoryError). A route fetched is the van's
    # from then on (ETag, version), even if the tracker cannot load it now: it is in
    # flash and loads at the next boot.
    try:
        res, changed = await fetch(up)
    except OSError as e:
        log.error("route", "fetch_failed", error=repr(e))
        return 0
    if res.decision == coapmsg.DONE and want is not True:
        up.route_version = want  # fetched, or 2.03: that version is the van's
    if changed:
        up.route_etag = coapmsg.opt(res.options, _ETAG)
        log.info("route", "fetched")
        return 1
    if res.decision == coapmsg.DONE:
        return 2
    if res.code != _NOT_FOUND:
        code = "-" if res.code is None else coapmsg.code_str(res.code)
        log.warn("route", res.decision, code=code, reason=res.reason or "-")
    return 0


async def fetch(up):
    # Fetch the route into up.route_path. Returns (result, changed): the last
    # coapmsg.Result, and whether a new route was written (not on 2.03 or failure).
    b = up.batch
    # The request's proof of identity: the report MAC over "vantrack-route:<id>".
    mac = binascii.hexlify(b._mac.digest(b"vantrack-route:%d" % b.device_id))
    query = [(_URI_QUERY, b"d=%d" % b.device_id), (_URI_QUERY, b"m=" + mac)]
    tmp = up.route_path + ".tmp"
    num = 0
    first = None
    f = None
    try:
        while True:
            opts = query + [(_BLOCK2, coapmsg.uint(num << 4 | _SZX))]
            if up.route_etag and not num:
                opts.append((_ETAG, up.route_etag))
            res = await up.client.request(_GET, _RT, b"", None, opts)
            if res.decision != coapmsg.DONE or res.code == _VALID:
                return res, False
            b2 = coapmsg.opt(res.options, _BLOCK2)
            b2 = 0 if b2 is None else coapmsg.to_uint(b2)
            tag = coapmsg.opt(res.options, _ETAG)
            if num == 0:
                first = tag
                if f:
                    f.close()
                f = open(tmp, "wb")
            elif tag != first or b2 >> 4 != num:
                # The route changed between two blocks: start again from block 0.
                num = 0
                continue
            f.write(res.payload)  # type: ignore[union-attr]
            if not b2 & 8:
                f.close()  # type: ignore[union-attr]
                f = None
                os.rename(tmp, up.route_path)
                return res, True
            num += 1
    finally:
        if f:
            f.close()
