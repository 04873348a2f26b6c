# Benchmark of the firmware NMEA parser under MicroPython (run by `vantrack bench nmea`).
# ruff: noqa: UP031 (MicroPython: %-formatting is the lean choice there)
# argv: FILE ROUNDS. Streams FILE (NMEA lines) ROUNDS times through the parser in 64-byte
# reads, like a UART, from one preallocated buffer (the input does not fit a 64K heap);
# progress on stderr, one result line on stdout:
#   RESULT sentences=N seconds=S alloc_bytes=B fixes=F
import gc
import sys
import time

import nmea

path = sys.argv[1]
rounds = int(sys.argv[2])
buf = bytearray(64)
p = nmea.Parser(lambda f: None)


def one_pass(f):
    f.seek(0)
    n = f.readinto(buf)
    while n:
        p.feed(buf, n)
        n = f.readinto(buf)


with open(path, "rb") as f:
    one_pass(f)  # warm-up: first epoch, dict slots, cycle-end learning
    s0 = p.sentences
    alloc = 0
    us = 0
    for r in range(rounds):
        gc.collect()
        gc.disable()
        a0 = gc.mem_alloc()
        t0 = time.ticks_us()
        one_pass(f)
        t1 = time.ticks_us()
        alloc += gc.mem_alloc() - a0
        gc.enable()
        us += time.ticks_diff(t1, t0)
        sys.stderr.write("  micropython round %d/%d\n" % (r + 1, rounds))
print(
    "RESULT sentences=%d seconds=%.6f alloc_bytes=%d fixes=%d"
    % (p.sentences - s0, us / 1e6, alloc, p.fixes)
)
