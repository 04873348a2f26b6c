# Runs under MicroPython: NMEA on stdin -> the firmware's parser -> firmware/report.py
# batches, exactly as the van builds them. One line per sealed report on stdout:
#   R <records> <hex payload>
# and a last line `H <heap bytes allocated per position>` measured with gc.mem_alloc().
# With EVENT_EVERY > 0, every that many fixes an event follows the fix's position: type
# 2 (arrived) decided on that fix, fence = its number k (1, 2, ...), extra = -k, route 7.
# Used by `vantrack bench wire` and the wire tests. Usage:
#   micropython tools/mp/report_encode.py DEVICE_ID KEYHEX MAX_RECORDS [FIRST_SEQ [EVENT_EVERY]]
import binascii
import gc
import sys

import nmea
import report

device_id = int(sys.argv[1])
key = binascii.unhexlify(sys.argv[2])
max_records = int(sys.argv[3])
seq = int(sys.argv[4]) if len(sys.argv) > 4 else 0
event_every = int(sys.argv[5]) if len(sys.argv) > 5 else 0

batch = report.Batch(device_id, key, max_records)
state = {"seq": seq, "open": False, "alloc": 0, "positions": 0, "events": 0}


def emit():
    payload = batch.seal()
    sys.stdout.write("R %d %s\n" % (batch.count, binascii.hexlify(payload).decode()))
    state["seq"] += batch.count
    state["open"] = False


def on_fix(fix):
    if not fix.valid or fix.t is None:
        return
    if not state["open"]:
        batch.start(state["seq"], fix.t)
        state["open"] = True
    gc.disable()
    before = gc.mem_alloc()
    ok = batch.add_position(fix)
    state["alloc"] += gc.mem_alloc() - before
    gc.enable()
    if not ok:
        emit()
        batch.start(state["seq"], fix.t)
        state["open"] = True
        batch.add_position(fix)
    state["positions"] += 1
    if batch.full():
        emit()
    if event_every and state["positions"] % event_every == 0:
        k = state["events"] + 1
        if not state["open"]:
            batch.start(state["seq"], fix.t)
            state["open"] = True
        if not batch.add_event(2, fix, k, -k, 7):
            emit()
            batch.start(state["seq"], fix.t)
            state["open"] = True
            batch.add_event(2, fix, k, -k, 7)
        state["events"] = k
        if batch.full():
            emit()


parser = nmea.Parser(on_fix)
buf = bytearray(512)
stdin = sys.stdin.buffer
while True:
    n = stdin.readinto(buf)
    if not n:
        break
    parser.feed(buf, n)
parser.flush()
if state["open"] and batch.count:
    emit()
sys.stdout.write("H %d %d\n" % (state["alloc"], state["positions"]))
