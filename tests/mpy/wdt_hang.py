# A van whose GPS reader hangs, on the sim board with its watchdog on (run by
# tests/test_device_boot.py, not by the unit runner): booted as main.py boots it, but the
# reader waits on a flag nobody sets instead of reading the GPS line (which has bytes).
# The supervisor stops feeding, and the sim board's watchdog ends the process with the
# rig's restart code (3), as a watchdog reset would restart a van.
#   micropython -X heapsize=64K wdt_hang.py --gps FILE --flash DIR
import sys

import aio
import board_sim

board = board_sim.Board()
t = __import__("start").boot(board)
del sys.modules["start"]


async def hung():
    await aio.Flag().wait()


t._read_gps = hung
t.main()
print("NOT RESET")
