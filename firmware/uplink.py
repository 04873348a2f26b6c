# Uplink: turns the van's valid fixes into reports and delivers them to the gateway.
#
# Every valid fix becomes a position record with the next sequence number (seqno.SeqNo,
# never repeated across reboots) in the open report (report.Batch). A report is sealed when
# it holds report_max_records records, spans report_max_age_s of GPS time, or no fix came
# for _IDLE_SEAL_MS. Sealed reports wait in a small RAM queue and are POSTed one at a time
# (coap.Client), oldest first; what happens next follows the CoAP decision: done -> gone,
# drop -> gone and counted (the gateway will never take it), backoff/retry -> the same bytes
# again later, so the gateway's (device, seq) dedup makes a resend harmless.
# When the queue is full the GPS reader waits (`blocked`), so nothing decided is thrown
# away; keeping reports across power cuts (a flash queue) is not done here.
import asyncio
import binascii
import gc
import time

import coapmsg
import log
import report
import seqno
from micropython import const

_PATH = coapmsg.path("/r")
_QUEUE_MAX = const(4)
_IDLE_SEAL_MS = const(5000)  # seal a half-full report when the GPS went quiet this long
_RETRY_MS = const(5000)  # first wait after a failed delivery; doubles up to _RETRY_MAX_MS
_RETRY_MAX_MS = const(300000)
_BACKOFF_MS = const(600000)  # the gateway does not know us: ask again in 10 minutes


def _code(res):
    return "-" if res.code is None else coapmsg.code_str(res.code)


class Uplink:
    def __init__(self, cfg, flash_dir, client):
        self.client = client
        self.batch = report.Batch(
            cfg["device_id"], binascii.unhexlify(cfg["key"]), cfg["report_max_records"]
        )
        self.max_age = cfg["report_max_age_s"]
        self.seq = seqno.SeqNo(flash_dir)
        self.queue = []  # sealed reports (bytes), oldest first
        self.ready = asyncio.Event()  # the queue has something
        self.space = asyncio.Event()  # the queue has room again
        self.blocked = False
        self.records = 0
        self.acked = 0  # records the gateway acknowledged
        self.reports_acked = 0
        self.dropped = 0  # records in reports the gateway refused for good
        self.failures = 0
        self._last_fix = time.ticks_ms()

    # ---- building (called from the GPS task, synchronously, once per valid fix) -------
    def add_fix(self, fix):
        b = self.batch
        self._last_fix = time.ticks_ms()
        if b.count == 0:
            b.start(self.seq.peek(), fix.t)
        elif not b.add_position(fix):
            self._seal()
            b.start(self.seq.peek(), fix.t)
        else:
            self._took(fix)
            return
        if b.add_position(fix):
            self._took(fix)

    def _took(self, fix):
        self.seq.take()
        self.records += 1
        b = self.batch
        if b.full() or fix.t - b.t0 >= self.max_age:
            self._seal()

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
        idle = asyncio.create_task(self._idle())
        delay = _RETRY_MS
        try:
            while True:
                if not self.queue:
                    self.ready.clear()
                    await self.ready.wait()
                    continue
                payload, first, count = self.queue[0]
                try:
                    res = await self.client.post(_PATH, payload)
                except MemoryError:
                    # The report stays queued; try again once the heap has recovered.
                    self.failures += 1
                    gc.collect()
                    await asyncio.sleep_ms(_RETRY_MS)
                    continue
                d = res.decision
                if d == coapmsg.DONE or d == coapmsg.DROP:
                    self.queue.pop(0)
                    if self.blocked and len(self.queue) < _QUEUE_MAX:
                        self.blocked = False
                        self.space.set()
                    delay = _RETRY_MS
                    if d == coapmsg.DONE:
                        self.acked += count
                        self.reports_acked += 1
                    else:
                        self.dropped += count
                        log.error("uplink", "refused", code=_code(res), seq=first, n=count,
                                  diag=bytes(res.payload).decode())  # fmt: skip
                    continue
                self.failures += 1
                if d == coapmsg.BACKOFF:
                    wait = _BACKOFF_MS
                else:
                    wait = res.retry_after * 1000 if res.retry_after else delay
                    delay = min(delay * 2, _RETRY_MAX_MS)
                log.warn("uplink", d, code=_code(res), reason=res.reason or "-", seq=first,
                         wait_ms=wait)  # fmt: skip
                await asyncio.sleep_ms(wait)
        finally:
            idle.cancel()

    async def _idle(self):
        # Seals the open report once no fix came for _IDLE_SEAL_MS.
        while True:
            left = _IDLE_SEAL_MS - time.ticks_diff(time.ticks_ms(), self._last_fix)
            if left <= 0:
                self._seal()
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
        return {"records": self.records, "acked": self.acked, "reports": self.reports_acked,
                "dropped": self.dropped, "failures": self.failures,
                "queued": len(self.queue)}  # fmt: skip
