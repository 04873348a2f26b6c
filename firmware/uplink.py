# Uplink: turns the van's valid fixes into reports and delivers them to the gateway.
#
# Every valid fix becomes a position record, and every event decided on a fix (fence.py)
# an event record right after it, each with the next sequence number (SeqNo,
# never repeated across reboots) in the open report (report.Batch). A report is sealed when
# it holds report_max_records records, spans report_max_age_s of GPS time, or no fix came
# for _IDLE_SEAL_MS. Sealed reports wait in a small RAM queue and are POSTed one at a time
# (coap.Client), oldest first; what happens next follows the CoAP decision: done -> gone,
# drop -> gone and counted (the gateway will never take it), backoff/retry -> the same bytes
# again later, so the gateway's (device, seq) dedup makes a resend harmless.
# When the queue is full the GPS reader waits (`blocked`), so nothing decided is thrown
# away; keeping reports across power cuts (a flash queue) is not done here.
#
# The day's route comes through here too: the same task fetches it at boot and whenever
# an ack names a route version other than the van's, then calls on_route() so the
# tracker rebuilds its fences. The gateway serves it as CBOR on GET /rt?d=<device>&m=<mac>
# (docs/routes.md) with an ETag, block-wise (RFC 7959 Block2) as it is larger than a
# datagram: each block goes to a temporary file, renamed over the route file only once
# the last block came with the ETag of the first (rename is atomic on LittleFS and
# POSIX), so a power cut or a route replaced mid-transfer never leaves half a route. A
# route that did not change costs one 2.03 Valid.
import asyncio
import binascii
import gc
import os
import time

import coapmsg
import log
import report
from micropython import const

_PATH = coapmsg.path("/r")
_QUEUE_MAX = const(3)
_IDLE_SEAL_MS = const(5000)  # seal a half-full report when the GPS went quiet this long
_RETRY_MS = const(5000)  # first wait after a failed delivery; doubles up to _RETRY_MAX_MS
_RETRY_MAX_MS = const(300000)
_SEQ_BLOCK = const(1000)  # sequence numbers reserved on flash at a time (SeqNo)
_BACKOFF_MS = const(600000)  # the gateway does not know us: ask again in 10 minutes
_GET = const(1)
_VALID = const(67)  # 2.03: the route did not change
_NOT_FOUND = const(132)  # 4.04: the gateway has no route for us
_ETAG = const(4)
_URI_QUERY = const(15)
_BLOCK2 = const(23)
_SZX = const(4)  # 256-byte blocks: a block and its header fit the client's rx buffer
_RT = coapmsg.path("/rt")


def _code(r):
    return "-" if r.code is None else coapmsg.code_str(r.code)


def _ack_route(p):
    # Key 1 (route version) of a 2.04 ack map of small uints {0: seq, 1: version}, or None.
    try:
        if p[0] >> 5 != 5:
            return None
        i = 1
        for _ in range(p[0] & 31):
            ai = p[i + 1] & 31
            if p[i] > 23 or p[i + 1] >> 5 or ai > 27:
                return None  # not a small uint key with a uint value: not ours to read
            n = 0 if ai < 24 else 1 << (ai - 24)
            v = ai
            if n:
                v = int.from_bytes(p[i + 2 : i + 2 + n], "big")
            if p[i] == 1:
                return v
            i += 2 + n
    except IndexError:
        pass
    return None


class SeqNo:
    # Record sequence numbers that survive reboots and never repeat, with little flash
    # wear. The flash file holds the first number *not yet reserved*. At boot the device
    # reserves a block of numbers by writing start + block before using any of them, and
    # reserves the next block when it runs out; a reboot skips what was left of the
    # block. So a day of 1 Hz driving (~86 400 records) costs ~90 small writes, and a
    # power cut at any time can only waste numbers, never reuse one. The write is atomic:
    # a temporary file renamed over the old one (rename is atomic on LittleFS and POSIX).
    def __init__(self, flash_dir, block=_SEQ_BLOCK):
        self._path = flash_dir + "/seq"
        self._block = block
        try:
            with open(self._path) as f:
                nxt = int(f.read().strip())
        except OSError:
            nxt = 0  # a new device
        except ValueError:
            # Unreadable counter (it is never half-written, see take()): don't guess low,
            # jump far ahead so no number already used can come back.
            log.error("seq", "corrupt_counter", path=self._path)
            nxt = 1 << 29  # still a small int on the ESP32
        self._next = nxt
        self._limit = nxt  # nothing reserved yet: the first take() reserves

    def take(self, n=1):
        # The first of n consecutive fresh numbers; reserves a new block on flash first
        # when the current one cannot hold them.
        if self._next + n > self._limit:
            limit = self._next + max(self._block, n)
            tmp = self._path + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(limit))
            os.rename(tmp, self._path)
            self._limit = limit  # only once flash holds it
        first = self._next
        self._next += n
        return first


class Uplink:
    def __init__(self, cfg, flash_dir, client):
        self.client = client
        self.batch = report.Batch(
            cfg["device_id"], binascii.unhexlify(cfg["key"]), cfg["report_max_records"]
        )
        self.max_age = cfg["report_max_age_s"]
        self.seq = SeqNo(flash_dir)
        self.queue = []  # sealed reports (bytes), oldest first
        self.ready = asyncio.Event()  # the queue has something
        self.space = asyncio.Event()  # the queue has room again
        self.blocked = False
        self.records = 0
        self.acked = 0  # records the gateway acknowledged
        self.reports = 0  # reports the gateway acknowledged
        self.dropped = 0  # records in reports the gateway refused for good
        self.failures = 0
        self._last_fix = time.ticks_ms()
        # Route: where the tracker keeps it, its ETag and version (set by the tracker),
        # and the tracker's callback once a new one was written.
        self.on_route = None
        self.route_path = flash_dir + "/route.cbor"
        self.route_etag = None
        self.route_version = 0
        # At boot, ask (a 2.03 if it did not change); later, the version an ack named.
        self.route_wanted = True

    # ---- building (called from the GPS task, synchronously) ---------------------------
    def add(self, fix, etype=0, fence=None, extra=None, route=None):
        # The record of a valid fix: its position (etype 0), or an event decided on it.
        # Its number is taken first (a flash write once per block, which may fail before
        # anything is written): the open report's records are always consecutive.
        b = self.batch
        self._last_fix = time.ticks_ms()
        seq = self.seq.take()
        for _ in range(2):
            if b.count == 0:
                b.start(seq, fix.t)
            if b.add_event(etype, fix, fence, extra, route) if etype else b.add_position(fix):
                self.records += 1
                if b.full() or fix.t - b.t0 >= self.max_age:
                    self._seal()
                return
            self._seal()  # full, or the fix lies before its last record: a new report
        log.error("uplink", "unrecorded", seq=seq, type=etype)  # a gap, never a repeat

    def _seal(self):
        b = self.batch
        if not b.count:
            return
        self.queue.append((bytes(b.seal()), b.seq, b.count))
        b.count = 0
        self.ready.set()
        if len(self.queue) >= _QUEUE_MAX:
            self.blocked = True
            self.space.clear()

    # ---- delivering (its own task) ------------------------------------------------------
    async def run(self):
        # Delivers the queue, oldest first; a second task seals a report the GPS left open.
        # Nothing may end this task (the GPS reader would wait on a full queue for ever):
        # whatever fails in one round (the heap, the flash) is counted, and it goes on.
        idle = asyncio.create_task(self._idle())
        delay = _RETRY_MS
        try:
            while True:
                try:
                    delay = await self._deliver(delay)
                except Exception as e:
                    self.failures += 1
                    gc.collect()
                    try:
                        log.error("uplink", "round_failed", error=repr(e))
                    except MemoryError:
                        pass
                    await asyncio.sleep_ms(_RETRY_MS)
        finally:
            idle.cancel()

    async def _deliver(self, delay):
        # One round: the route if one is wanted, else the oldest report (or a wait for
        # one). Returns the next retry delay.
        if self.route_wanted and self.on_route:
            await self._fetch_route()
        if not self.queue:
            self.ready.clear()
            await self.ready.wait()
            return delay
        payload, first, count = self.queue[0]
        res = await self.client.post(_PATH, payload)
        d = res.decision
        if d == coapmsg.DONE or d == coapmsg.DROP:
            self.queue.pop(0)
            if self.blocked and len(self.queue) < _QUEUE_MAX:
                self.blocked = False
                self.space.set()
            if d == coapmsg.DONE:
                self.acked += count
                self.reports += 1
                v = _ack_route(res.payload)
                if v is not None and v != self.route_version:
                    self.route_wanted = v
            else:
                self.dropped += count
                try:
                    diag = bytes(res.payload).decode()
                except UnicodeError:
                    diag = "-"
                log.error("uplink", "refused", code=_code(res), seq=first, n=count, diag=diag)
            return _RETRY_MS
        self.failures += 1
        if d == coapmsg.BACKOFF:
            wait = _BACKOFF_MS
        else:
            # Max-Age may say days: the ESP32's ticks wrap at 2**30 ms, so cap it.
            wait = min(res.retry_after * 1000, _RETRY_MAX_MS) if res.retry_after else delay
            delay = min(delay * 2, _RETRY_MAX_MS)
        log.warn("uplink", d, code=_code(res), reason=res.reason or "-", seq=first,
                 wait_ms=wait)  # fmt: skip
        await asyncio.sleep_ms(wait)
        return delay

    async def _fetch_route(self):
        # One attempt; a failed one is retried when the next ack names a newer version.
        # A route fetched is the van's from then on (ETag, version), even if the tracker
        # cannot load it now: it is in flash and loads at the next boot.
        want = self.route_wanted
        self.route_wanted = False
        try:
            res, changed = await self.fetch_route()
        except (MemoryError, OSError) as e:
            log.error("route", "fetch_failed", error=repr(e))
            gc.collect()
            return
        if res.decision == coapmsg.DONE and want is not True:
            self.route_version = want  # fetched, or 2.03: that version is the van's
        if changed:
            self.route_etag = coapmsg.opt(res.options, _ETAG)
            log.info("route", "fetched")
            self.on_route()  # type: ignore[misc]  # run() checked it is set
        elif res.decision != coapmsg.DONE and res.code != _NOT_FOUND:
            log.warn("route", res.decision, code=_code(res), reason=res.reason or "-")

    async def fetch_route(self):
        # Fetch the route into route_path. Returns (result, changed): the last
        # coapmsg.Result, and whether a new route was written (not on 2.03 or failure).
        b = self.batch
        # The request's proof of identity: the report MAC over "vantrack-route:<id>".
        mac = binascii.hexlify(b._mac.digest(b"vantrack-route:%d" % b.device_id))
        query = [(_URI_QUERY, b"d=%d" % b.device_id), (_URI_QUERY, b"m=" + mac)]
        tmp = self.route_path + ".tmp"
        num = 0
        first = None
        f = None
        try:
            while True:
                opts = query + [(_BLOCK2, coapmsg.uint(num << 4 | _SZX))]
                if self.route_etag and not num:
                    opts.append((_ETAG, self.route_etag))
                res = await self.client.request(_GET, _RT, b"", None, opts)
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
                    os.rename(tmp, self.route_path)
                    return res, True
                num += 1
        finally:
            if f:
                f.close()

    async def _idle(self):
        # Seals the open report once no fix came for _IDLE_SEAL_MS.
        while True:
            left = _IDLE_SEAL_MS - time.ticks_diff(time.ticks_ms(), self._last_fix)
            if left <= 0:
                try:
                    self._seal()
                except MemoryError:
                    gc.collect()  # the next fix, or the next round here, seals it
                left = _IDLE_SEAL_MS
            await asyncio.sleep_ms(left)

    async def drain(self, timeout_ms):
        # Seal what is open and wait (bounded) until everything queued was delivered.
        self._seal()
        start = time.ticks_ms()
        while self.queue and time.ticks_diff(time.ticks_ms(), start) < timeout_ms:
            await asyncio.sleep_ms(20)
        return not self.queue

    def stats(self):
        return {"records": self.records, "acked": self.acked, "reports": self.reports,
                "dropped": self.dropped, "failures": self.failures,
                "queued": len(self.queue)}  # fmt: skip
