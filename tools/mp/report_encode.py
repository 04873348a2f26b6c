# Runs under MicroPython: NMEA on stdin -> the firmware's parser -> records packed as the
# flash queue stores them (queue.Queue.pack/record, which convert to wire units) ->
# firmware/report.py batches, exactly as the van builds them. One line per sealed report
# on stdout:
#   R <records> <hex payload>
# and a last line `H <heap bytes allocated by Batch.add for positions> <positions>`,
# measured with gc.mem_alloc() around Batch.add alone (the record tuple is made before).
# With EVENT_EVERY > 0, every that many fixes an event follows the fix's position: type
# 2 (arrived) decided on that fix, fence = its number k (1, 2, ...), extra = -k, route 7.
# Nothing is written to flash: the queue (in a temporary directory, removed at the end)
# only packs records. Used by `vantrack bench wire` and the wire tests. Usage:
#   micropython tools/mp/report_encode.py DEVICE_ID KEYHEX MAX_RECORDS [FIRST_SEQ [EVENT_EVERY]]
import binascii
import gc
import os
import sys
from queue import Queue

import nmea
import report

device_id = int(sys.argv[1])
key = binascii.unhexlify(sys.argv[2])
max_records = int(sys.argv[3])
seq = int(sys.argv[4]) if len(sys.argv) > 4 else 0
event_every = int(sys.argv[5]) if len(sys.argv) > 5 else 0

tmp = "/tmp/vantrack-mp-report-" + binascii.hexlify(os.urandom(4)).decode()
os.mkdir(tmp)
q = Queue(tmp, 4)
batch = report.Batch(device_id, key, max_records)
# seq: the next record's number; first: that of the open report's first record.
state = {"seq": seq, "first": seq, "open": False, "alloc": 0, "positions": 0, "events": 0}


def emit():
    payload = batch.seal()
    sys.stdout.write("R %d %s\n" % (batch.count, binascii.hexlify(payload).decode()))
    state["first"] += batch.count
    state["open"] = False


def measured_add(r):
    # Batch.add(r), and the heap it allocated (collection off meanwhile).
    gc.disable()
    before = gc.mem_alloc()
    ok = batch.add(r)
    used = gc.mem_alloc() - before
    gc.enable()
    return ok, used


def add(fix, etype=0, fence=None, extra=None, route=None):
    # The record of `fix` (an event with etype) appended to the open report, sealing it
    # and starting the next one when it is full or the record does not fit.
    q.pack(state["seq"], fix, etype, fence, extra, route)
    r = q.record()
    if not state["open"]:
        batch.start(state["first"], r[1])
        state["open"] = True
    ok, used = measured_add(r)
    if not ok:
        emit()
        batch.start(state["first"], r[1])
        state["open"] = True
        used += measured_add(r)[1]
    if not etype:
        state["alloc"] += used
    state["seq"] += 1
    if batch.full():
        emit()


def on_fix(fix):
    if not fix.valid or fix.t is None:
        return
    add(fix)
    state["positions"] += 1
    if event_every and state["positions"] % event_every == 0:
        k = state["events"] + 1
        add(fix, 2, k, -k, 7)
        state["events"] = k


parser = nmea.Parser(on_fix)
buf = bytearray(512)
stdin = sys.stdin.buffer
try:
    while True:
        n = stdin.readinto(buf)
        if not n:
            break
        parser.feed(buf, n)
    parser.flush()
    if state["open"] and batch.count:
        emit()
finally:
    for name in os.listdir(tmp + "/q"):
        os.remove(tmp + "/q/" + name)
    os.rmdir(tmp + "/q")
    os.rmdir(tmp)
sys.stdout.write("H %d %d\n" % (state["alloc"], state["positions"]))
