# GPS reader task: moves bytes from the board's GPS stream into the NMEA parser.
#
# One preallocated buffer is reused for every read, so reading allocates nothing; the
# parser calls back once per completed epoch. The stream is whatever the board hands
# over (machine.UART on the ESP32, a pty on the sim board): this module never knows.
import asyncio
import gc

import log
from micropython import const

_READ_CHUNK = const(256)


async def run(stream, parser, exit_on_eof=False, gate=None):
    # gate: optional object with a `blocked` flag and a `space` Event; while blocked the
    # reader waits (the bytes stay in the UART/pty buffer) instead of deciding records
    # nobody can keep.
    buf = bytearray(_READ_CHUNK)
    oom = 0
    mv = memoryview(buf)
    while True:
        try:
            n = await stream.readinto(mv)
        except OSError as e:
            # A pty whose writer went away reports EIO; a UART never does.
            n = 0
            err = e.errno if hasattr(e, "errno") else e.args[0]
            if not exit_on_eof:
                log.warn("gps", "read_error", errno=err)
        if n:
            try:
                parser.feed(buf, n)
            except MemoryError:
                # Whatever ran out of heap in a fix's handling (a log line, a report),
                # the van keeps reading its GPS: this chunk's fix may be lost, not the van.
                oom += 1
                gc.collect()
            if gate is not None and gate.blocked:
                await gate.space.wait()
            continue
        if exit_on_eof:
            parser.flush()
            log.info("gps", "end_of_stream", out_of_memory=oom)
            return
        # No data: a silent receiver. Don't spin; the next byte wakes us normally.
        await asyncio.sleep_ms(100)
