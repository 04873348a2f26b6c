# Record sequence numbers that survive reboots and never repeat, with little flash wear.
#
# The flash file holds the first number *not yet reserved*. At boot the device reserves a
# block of BLOCK numbers by writing start + BLOCK before using any of them, and reserves
# the next block when it runs out; a reboot skips what was left of the block. So a day of
# 1 Hz driving (~86 400 records) costs ~90 small writes, and a power cut at any time can
# only waste numbers, never reuse one. The write is atomic: a temporary file renamed over
# the old one (rename is atomic on LittleFS and on POSIX).
import os

import log
from micropython import const

_BLOCK = const(1000)


class SeqNo:
    def __init__(self, flash_dir, block=_BLOCK):
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
            nxt = 1 << 30
        self._next = nxt
        self._limit = nxt  # nothing reserved yet: the first take() reserves

    def take(self, n=1):
        # The first of n consecutive fresh numbers; reserves a new block on flash first
        # when the current one cannot hold them.
        if self._next + n > self._limit:
            self._limit = self._next + max(self._block, n)
            tmp = self._path + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(self._limit))
            os.rename(tmp, self._path)
        first = self._next
        self._next += n
        return first

    def peek(self):
        return self._next
