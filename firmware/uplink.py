# Uplink: decides which fixes become records, keeps them in the flash queue and delivers
# them to the gateway.
#
# Recording (smart reporting, as Teltonika's data acquisition does it): a valid fix
# becomes a position record when the period has passed since the last one (a longer one
# when the van is stopped), or the van moved the distance, turned by the angle or changed
# speed by the delta since the last record; every event decided on a fix (fence.py) is
# recorded after its fix's position, which is then always recorded too. All of it runs on
# GPS time (fix.t), so a replayed day decides the same records as the van did. The
# thresholds come from the configuration and can be changed per device by the gateway in
# its acks (keys 2-6, docs/wire-format.md); a key it stops sending reverts to the default.
#
# Every record goes to the flash queue (queue.py) before anything else, with the queue's
# next sequence number; nothing is kept in RAM. Delivering (its own task) POSTs reports
# read back from the queue, one at a time, oldest first: when a record waits longer than
# report_max_age_s of GPS time behind the last one sent, comes with an event, fills a
# report, or the GPS went quiet. A backlog (more than a report's worth after an outage)
# goes out in reports of consecutive records, paced, alternating with the newest record
# on its own so the gateway's live position is never more than a report behind. What
# happens after a POST follows the CoAP decision: done -> acknowledged in the queue,
# drop -> the same (the gateway will never take it; counted), backoff/retry -> the same
# records again later (the gateway's (device, seq) dedup makes a resend harmless).
# Status records (event 16) tell the gateway how much waits and what was thinned out: at
# boot, when the link comes back after an outage, when the queue thinned, and when a
# backlog was delivered.
#
# The day's route comes through here too: the same task fetches it (rtfetch.py) at boot
# and whenever an ack names a route version other than the van's, telling the tracker
# (on_route) before and after.
# so the tracker rebuilds its fences.
import asyncio
import binascii
import gc
import math
import sys
import time
from array import array
from queue import Queue

import coapmsg
import log
import report
from micropython import const

_PATH = coapmsg.path("/r")
_IDLE_MS = const(5000)  # send what waits once no record came for this long
_POLL_MS = const(250)  # how often the sender looks for a report due
_RETRY_MS = const(5000)  # first wait after a failed delivery; doubles up to _RETRY_MAX_MS
_RETRY_MAX_MS = const(300000)
_BACKOFF_MS = const(600000)  # the gateway does not know us: ask again in 10 minutes
_SEG_BYTES = const(4068)  # a queue segment (queue.py)
# Smart reporting: below this speed (mm/s, 5 km/h) the van counts as stopped, and its
# course as noise.
_STOP_MMS = const(1389)
# The uplink's numbers, in one int array (Uplink.v): an attribute each would cost the
# instance a dict that has to grow in one piece.
_MAX_AGE = const(0)  # report_max_age_s
_PACE = const(1)  # backlog_pace_ms
_PUT_MS = const(2)  # ticks_ms() of the last record
_SENT_T = const(3)  # GPS time at which a report was last asked for
_LIVE = const(4)  # the last report was the newest record alone
_STATUS = const(5)  # a status record is due, for this cause (0: none)
_BACKLOG = const(6)  # a backlog is being delivered
_READY = const(7)  # a report is due
_RECORDS = const(8)  # records made since boot
_LOST = const(9)  # records the flash would not take
_ACKED = const(10)  # records the gateway acknowledged
_REPORTS = const(11)  # reports the gateway acknowledged
_DROPPED = const(12)  # records in reports the gateway refused for good
_FAILURES = const(13)  # deliveries that failed (retried)
_TH = const(14)  # 5 thresholds in ack key order 2..6: period moving (s), period
# stopped (s), distance (m), heading change (degrees), speed change (dm/s)
_DTH = const(19)  # the same from the configuration: where an ack says nothing
_LT = const(24)  # the last recorded position: GPS time (-1: none yet),
_LLAT = const(25)  # latitude, longitude, speed (mm/s),
_LLON = const(26)
_LSPD = const(27)
_LCRS = const(28)  # course (centidegrees, -1: unknown)
_LCOS = const(29)  # and cos(latitude) x 1024
_ACK = const(30)  # the last ack's keys 0..6 (-1: absent)
_PROBED = const(37)  # q.next when the queue was last found empty
_NV = const(38)
_EVENT_STATUS = const(16)  # the event type of a status record
# Status causes (docs/wire-format.md).
_BOOT = const(1)
_LINK = const(2)
_THINNED = const(3)
_DRAINED = const(4)


def _code(r):
    return "-" if r.code is None else coapmsg.code_str(r.code)


def _ack(p, v):
    # Reads a 2.04 ack map of small uint keys and values (wire.cddl `ack`) into
    # v[_ACK + key] for keys 1..6 (-1 where absent). False if it is not such a map: then
    # those are unusable.
    for i in range(_ACK, _NV):
        v[i] = -1
    try:
        if p[0] >> 5 != 5:
            return False
        i = 1
        for _ in range(p[0] & 31):
            ai = p[i + 1] & 31
            if p[i] > 23 or p[i + 1] >> 5 or ai > 27:
                return False  # not a small uint key with a uint value: not ours to read
            k = 0 if ai < 24 else 1 << (ai - 24)
            n = ai
            if k:
                n = int.from_bytes(p[i + 2 : i + 2 + k], "big")
            if 0 < p[i] < _NV - _ACK:  # not key 0 (a seq may not fit the array)
                v[_ACK + p[i]] = min(n, 0x3FFFFFFF)
            i += 2 + k
    except IndexError:
        return False
    return True


class Uplink:
    def __init__(self, cfg, flash_dir, client):
        self.client = client
        self.batch = report.Batch(
            cfg["device_id"], binascii.unhexlify(cfg["key"]), cfg["report_max_records"]
        )
        self.q = Queue(flash_dir, cfg["queue_kb"] * 1024 // _SEG_BYTES)
        v = self.v = array("i", bytes(4 * _NV))
        v[_MAX_AGE] = cfg["report_max_age_s"]
        v[_PACE] = cfg["backlog_pace_ms"]
        v[_PUT_MS] = time.ticks_ms()  # type: ignore[call-overload]  # an int: < 2**30
        v[_STATUS] = _BOOT
        i = _TH
        for k in ("report_period_s", "report_stopped_period_s", "report_distance_m",
                  "report_angle_deg", "report_speed_delta_kmh"):  # fmt: skip
            v[i] = v[i + 5] = cfg[k]
            i += 1
        v[_TH + 4] = v[_DTH + 4] = v[_DTH + 4] * 100 // 36  # km/h -> dm/s
        v[_LT] = v[_LCRS] = -1
        v[_LCOS] = 1024  # until the first position: cos(0), distances east-west overrated
        # Route: where the tracker keeps it, its ETag and version (set by the tracker),
        # and the tracker's callback once a new one was fetched. At boot, ask (a 2.03 if
        # it did not change); later, the version an ack named.
        self.on_route = None
        self.route_path = flash_dir + "/route.cbor"
        self.route_etag = None
        self.route_version = 0
        self.route_wanted = True

    # ---- recording (called from the GPS task, synchronously) --------------------------
    def add(self, fix, etype=0, fence=None, extra=None, route=None):
        # A valid fix (etype 0: recorded if the thresholds say so), or an event decided
        # on it (always recorded, after the fix's position).
        v = self.v
        if etype == 0:
            if not self._wanted(fix):
                return
        elif v[_LT] != fix.t:
            self._put(fix)
        self._put(fix, etype, fence, extra, route)
        q = self.q
        if q.dropped:
            v[_STATUS] = _THINNED
        if v[_STATUS]:
            try:
                self._put(fix, _EVENT_STATUS, q.count, q.dropped, v[_STATUS])
                q.dropped = v[_STATUS] = 0
            except MemoryError:
                pass  # still due: it goes with the next record (what is written stays)
        if etype or q.count >= self.batch.max_records or fix.t - v[_SENT_T] >= v[_MAX_AGE]:
            v[_SENT_T] = fix.t
            v[_READY] = 1

    def _put(self, fix, etype=0, fence=None, extra=None, route=None):
        # One record onto the flash queue. A MemoryError means it was not written (one
        # retry after a collection first); once it is written, nothing here may raise, or
        # the caller's retry would record it again under a new number.
        v = self.v
        try:
            try:
                self.q.put(fix, etype, fence, extra, route)
            except MemoryError:
                gc.collect()
                self.q.put(fix, etype, fence, extra, route)
        except OSError as e:
            # The flash refused it (full, failing): this record is lost, the van goes on.
            v[_LOST] += 1
            try:
                log.error("queue", "write_failed", error=repr(e), type=etype, lost=v[_LOST])
            except MemoryError:
                pass
            return
        v[_RECORDS] += 1
        v[_PUT_MS] = time.ticks_ms()  # type: ignore[call-overload]  # an int: < 2**30
        if etype == 0:
            band = v[_LT] < 0 or v[_LLAT] // 10000 != fix.lat // 10000
            v[_LT] = fix.t
            v[_LLAT] = fix.lat
            v[_LLON] = fix.lon
            v[_LSPD] = fix.speed or 0
            # A course while stopped is noise: a van pulling away is judged by distance.
            c = fix.course
            v[_LCRS] = -1 if c is None or v[_LSPD] < _STOP_MMS else c
            if band:  # ~1 km of latitude: cos(lat) is good enough until the next band
                try:
                    v[_LCOS] = int(1024 * math.cos(math.radians(fix.lat / 1e6)))
                except MemoryError:
                    pass  # floats live on the heap: the last factor does meanwhile

    def _wanted(self, fix):
        # Whether this fix is to be recorded (smart reporting; integer maths, no
        # allocation: this runs for every fix).
        v = self.v
        if v[_LT] < 0:
            return True
        dt = fix.t - v[_LT]
        spd = fix.speed or 0
        moving = spd >= _STOP_MMS
        if dt >= v[_TH if moving else _TH + 1]:
            return True
        if dt <= 0:
            return False
        if abs(spd - v[_LSPD]) >= v[_TH + 4] * 100:
            return True
        if not moving:
            return False
        c = fix.course
        if c is not None and v[_LCRS] >= 0:
            d = abs(c - v[_LCRS]) % 36000
            if min(d, 36000 - d) >= v[_TH + 3] * 100:
                return True
        lim = v[_TH + 2] * 8983 // 1000  # metres -> microdegrees of latitude
        dy = fix.lat - v[_LLAT]
        dx = (fix.lon - v[_LLON]) * v[_LCOS] >> 10
        if abs(dy) >= lim or abs(dx) >= lim:
            return True
        return dx * dx + dy * dy >= lim * lim

    # ---- delivering (its own task) ------------------------------------------------------
    async def run(self):
        # Delivers the queue, oldest first. Nothing may end this task: whatever fails in
        # one round (the heap, the flash) is counted, and it goes on.
        delay = _RETRY_MS
        while True:
            try:
                delay = await self._deliver(delay)
            except Exception as e:
                self.v[_FAILURES] += 1
                gc.collect()
                try:
                    log.error("uplink", "round_failed", error=repr(e))
                except MemoryError:
                    pass
                await asyncio.sleep_ms(_RETRY_MS)

    def _add(self, r):
        b = self.batch
        if not b.count:
            b.start(r[0], r[1])
        return b.add(r)

    def build(self):
        # The next report into the batch (seal() gives its bytes): (first seq, records),
        # 0 records if nothing could be read. With a backlog, it alternates between the
        # oldest records and the newest one alone.
        v = self.v
        q = self.q
        live = v[_LIVE] = not v[_LIVE] and q.count > self.batch.max_records
        self.batch.count = 0
        first, n = q.read(self._add, live)
        if not n:
            first, n = q.read(self._add)
        return first, n

    async def _deliver(self, delay):
        # One round: the route if one is wanted, else one report when one is due (or a
        # wait for that). Returns the next retry delay.
        want = self.route_wanted
        if want and self.on_route:
            # Asked once: a failed fetch is retried when an ack names the version again.
            # The code for it is in the heap only meanwhile (as routefile's), and the
            # tracker makes room for it first (on_route(-1): the fences go, see
            # Tracker.new_route), so that fixes never compete with the fetch for heap.
            self.route_wanted = False
            self.on_route(-1)
            got = 0
            try:
                import rtfetch

                got = await rtfetch.get(self, want)
            except MemoryError as e:
                log.error("route", "fetch_failed", error=repr(e))
            finally:
                sys.modules.pop("rtfetch", None)
                gc.collect()
            self.on_route(got)
        q = self.q
        b = self.batch
        v = self.v
        if not q.count and q.next > q.tail + len(q.done) and v[_PROBED] != q.next:
            # The count can only be low after a thinning overlapped a report in flight:
            # look once per new record whether something is left to send.
            q.count = 1
        if q.count and time.ticks_diff(time.ticks_ms(), v[_PUT_MS]) >= _IDLE_MS:
            v[_READY] = 1  # records wait and the GPS went quiet
        if not q.count or q.count < b.max_records and not v[_READY]:
            if v[_BACKLOG] and not q.count:
                v[_BACKLOG] = 0
                v[_STATUS] = _DRAINED
            # Nothing due: look again shortly (a task waking 4 times a second costs less
            # heap than an event and a timer task).
            await asyncio.sleep_ms(_POLL_MS)
            return delay
        v[_READY] = 0
        first, n = self.build()
        if not n:
            q.count = 0  # nothing left on flash to send
            v[_PROBED] = q.next
            await asyncio.sleep_ms(_POLL_MS)
            return delay
        res = await self.client.post(_PATH, b.seal())
        d = res.decision
        if d == coapmsg.DONE or d == coapmsg.DROP:
            q.ack(first, n)
            if d == coapmsg.DONE:
                v[_ACKED] += n
                v[_REPORTS] += 1
                if delay > _RETRY_MS:
                    v[_STATUS] = _LINK  # back after an outage
                    v[_BACKLOG] = 1
                if _ack(res.payload, v):
                    r = v[_ACK + 1]
                    if r >= 0 and r != self.route_version:
                        self.route_wanted = r  # type: ignore[assignment]  # True or a version
                    for i in range(5):
                        r = v[_ACK + 2 + i]
                        v[_TH + i] = r if r > 0 else v[_DTH + i]
            else:
                v[_DROPPED] += n
                try:
                    diag = bytes(res.payload).decode()
                except UnicodeError:
                    diag = "-"
                log.error("uplink", "refused", code=_code(res), seq=first, n=n, diag=diag)
            if q.count > b.max_records:
                v[_BACKLOG] = 1
                await asyncio.sleep_ms(v[_PACE])
            return _RETRY_MS
        v[_FAILURES] += 1
        if d == coapmsg.BACKOFF:
            wait = _BACKOFF_MS
        else:
            # Max-Age may say days: the ESP32's ticks wrap at 2**30 ms, so cap it.
            wait = min(res.retry_after * 1000, _RETRY_MAX_MS) if res.retry_after else delay
            delay = min(delay * 2, _RETRY_MAX_MS)
        log.warn("uplink", d, code=_code(res), reason=res.reason or "-", seq=first,
                 wait_ms=wait)  # fmt: skip
        await asyncio.sleep_ms(wait)
        v[_READY] = 1  # try again whether or not a new record came
        return delay

    async def drain(self, timeout_ms):
        # Wait (bounded) until the gateway acknowledged everything queued. What is left
        # stays on flash for the next boot.
        start = time.ticks_ms()
        while self.q.count and time.ticks_diff(time.ticks_ms(), start) < timeout_ms:
            self.v[_READY] = 1
            await asyncio.sleep_ms(20)
        return not self.q.count

    def stats(self):
        q = self.q
        v = self.v
        return {"records": v[_RECORDS], "acked": v[_ACKED], "reports": v[_REPORTS],
                "dropped": v[_DROPPED], "failures": v[_FAILURES], "queued": q.count,
                "lost": v[_LOST], "writes": q.writes}  # fmt: skip
