# asyncio without asyncio.stream and asyncio.event: waiting until a stream can be read,
# and a flag tasks wait on.
#
# asyncio.StreamReader does what readable() does before each read (it hands the object
# to the event loop's I/O queue, which polls it, and suspends the task), and Flag is
# asyncio.Event with the same rules, but importing those two modules costs ~3 KB of heap
# on the unix port for the little the firmware needs. readable() works with whatever
# select.poll takes: machine.UART, sockets, files, ptys. Both rely on asyncio.core's
# queues as asyncio's own modules do (MicroPython >= 1.20): a task waiting on a Flag
# keeps the Flag in its `data`, so cancelling it calls Flag.remove(); pushing it back on
# the run queue clears `data`.
from asyncio import core  # type: ignore[attr-defined]


def readable(s):
    # Awaitable: resumes once s has bytes to read (or an error or hang-up to report).
    yield core._io_queue.queue_read(s)


class Flag:
    # asyncio.Event's set/clear/is_set/wait, for the few tasks of the firmware.
    def __init__(self):
        self.state = False
        self.waiting = []

    def is_set(self):
        return self.state

    def set(self):
        self.state = True
        w = self.waiting
        while w:
            core._task_queue.push(w.pop())

    def clear(self):
        self.state = False

    def remove(self, task):
        # The waiting task was cancelled (asyncio.core calls this).
        if task in self.waiting:
            self.waiting.remove(task)

    def wait(self):
        # Awaitable: resumes once the flag is set (at once if it is).
        if not self.state:
            t = core.cur_task
            self.waiting.append(t)
            t.data = self
            yield
        return True
