# The van's supervisor, run beside the GPS reader and the sender (tracker.py) on boards
# that have work for it: the ESP32 (watchdog, status LED, the loader's trial), the sim
# board with a watchdog (config wdt_s) or on trial. Loaded only then, so its code takes
# no heap on a sim van without either.
import time

import aio
import log
from micropython import const

# It confirms the boot at the first GPS epoch, or after this long with a silent GPS.
_CONFIRM_MS = const(20000)
# A task not run for this long beyond its longest legitimate wait is hung.
_SLACK_MS = const(10000)
# uplink.py's counters in Uplink.v (_REPORTS, _FAILURES): acked reports, failed deliveries.
_UP_REPORTS = const(11)
_UP_FAILURES = const(13)


async def watch(t, reader, sender):
    # The supervisor. At each look (board.status() takes one LED period, 2 s) it tells
    # the board whether the GPS reader and the sender are alive, and only then does
    # the board feed its watchdog: a hung task stops the feeding and the watchdog
    # resets the van (so does a loop blocked for good: this task no longer runs).
    # Also gives the LED its pattern, and ends the loader's trial once the van runs
    # (its first GPS epoch, or _CONFIRM_MS with a silent GPS). `t` is the Tracker.
    board = t.board
    up = t.uplink
    io = aio.core._io_queue
    t0 = time.ticks_ms()  # None once the boot is confirmed
    valid = reps = fails = link = 0
    while True:
        now = time.ticks_ms()
        if t0 is not None and (t.fixes or time.ticks_diff(now, t0) >= _CONFIRM_MS):
            t0 = None  # type: ignore[assignment]
            board.confirm_boot()
        # Alive, as asyncio sees a task: waiting for bytes (data: the I/O queue; the
        # reader on a silent GPS), or queued to run (ph_key: when it last was, or
        # when its sleep ends, ahead) within its longest wait on anything else: a
        # CoAP request's lifetime (the sender waits on aio.Flag for the response).
        limit = _SLACK_MS + (up.client.lifetime_ms if up else 0)
        alive = True
        for task in (reader, sender):
            if task and (task.done() or task.data is not io and
                         time.ticks_diff(now, task.ph_key) > limit):  # fmt: skip
                alive = False
                log.warn("wdt", "not_fed", stalled="gps" if task is reader else "sender")
        # The LED: a valid fix since the last look; the link as the last delivery
        # left it (up when a report was acked, down when one failed; none yet, or no
        # uplink: down).
        fix = t.valid_fixes != valid
        valid = t.valid_fixes
        if up:
            v = up.v
            link = v[_UP_REPORTS] != reps or link and v[_UP_FAILURES] == fails
            reps = v[_UP_REPORTS]
            fails = v[_UP_FAILURES]
        await board.status("fix" if fix and link else "no_link" if fix else "no_fix", alive)
