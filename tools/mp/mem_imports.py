# Heap cost of importing the reporting firmware, module by module, under MicroPython.
# ruff: noqa: UP031 (MicroPython: %-formatting is the lean choice there)
#
# Run by `vantrack bench memory` (tools/membench.py) with the compiled firmware on
# MICROPYPATH and a heap large enough for all of it:
#   micropython -X heapsize=256K tools/mp/mem_imports.py
# A module's .mpy is loaded into the heap (bytecode, raw-code structures, its qstrs,
# constants), then run (functions, classes, module globals). Modules are imported leaf
# first, in the order the firmware needs them, so each figure is that module's own cost
# (live bytes after gc.collect(), in whole GC blocks). stdout:
#   qstr pool: n_pool=.., n_qstr=.., ...   (micropython.qstr_info(): before, after each M)
#   M <module> <bytes>
#   P <bytes of the GPS parser alone: nmea + one Parser>  (reference)
#   T <total bytes>
# Arguments: module names, to measure those instead (in that order).
import gc
import sys

import micropython

# Leaf first: a module's own imports come before it.
ORDER = (
    "asyncio",
    "aio",
    "log",
    "config",
    "nmea",
    "tracker",
    "board_sim",
    "coapmsg",
    "coap",
    "cbor",
    "report",
    "queue",
    "uplink",
    "fence",
)


def main(names):
    gc.collect()
    base = gc.mem_alloc()
    micropython.qstr_info()
    prev = base
    parser = 0
    for name in names:
        if name not in sys.modules:
            __import__(name)
        gc.collect()
        a = gc.mem_alloc()
        print("M %s %d" % (name, a - prev))
        micropython.qstr_info()
        if name == "nmea":
            parser += a - prev
        prev = a
    if "nmea" in sys.modules:
        # The parser as the van runs it: its modules plus one Parser and its buffers.
        gc.collect()
        a = gc.mem_alloc()
        keep = sys.modules["nmea"].Parser(lambda f: None)
        gc.collect()
        parser += gc.mem_alloc() - a
        print("P %d" % parser)
        del keep
    print("T %d" % (prev - base))


main(sys.argv[1:] or ORDER)
