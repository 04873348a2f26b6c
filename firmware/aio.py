# asyncio without asyncio.stream: waiting until a stream can be read.
#
# asyncio.StreamReader does exactly this before each read (it hands the object to the
# event loop's I/O queue, which polls it, and suspends the task), but importing the
# stream module costs ~1.9 KB of heap on the unix port for the one thing the firmware
# needs. Works with whatever select.poll takes: machine.UART, sockets, files, ptys.
# Relies on asyncio.core's I/O queue, as asyncio.stream does (MicroPython >= 1.20).
from asyncio import core  # type: ignore[attr-defined]


def readable(s):
    # Awaitable: resumes once s has bytes to read (or an error or hang-up to report).
    yield core._io_queue.queue_read(s)
