# The report builder under MicroPython: layout, deltas, events and status records,
# sealing, no allocation per record. Records are made as the van makes them: packed by
# the flash queue (queue.Queue.pack, which converts to wire units) and read back as the
# tuple queue.Queue.record() gives report.Batch.add().
# (The gateway decodes and verifies the firmware's reports in tests/test_report_wire.py.)
import gc
import os
from queue import Queue

import mptest
import report


class Fix:
    def __init__(self, t, ms, lat, lon, speed=8330, course=4510, hdop=90, sats=9):
        self.t, self.ms, self.lat, self.lon = t, ms, lat, lon
        self.speed, self.course, self.hdop, self.sats = speed, course, hdop, sats
        self.valid = True


T0 = 850000000
KEY = b"0123456789abcdef"
HEAD_MAX = 25  # report._HEAD_MAX: records are written after room for the report's head
STATUS = 16  # event type of a status record
DIR = "/tmp/vantrack-mpy-report-" + "".join("%02x" % b for b in os.urandom(4))
os.mkdir(DIR)
Q = Queue(DIR, 4)  # only its pack() and record() are used: nothing is written


def rec(fix, etype=0, fence=None, extra=None, route=None, seq=0):
    # The record tuple of `fix` as the queue stores it.
    Q.pack(seq, fix, etype, fence, extra, route)
    return Q.record()


def records(b):
    # The records written so far (white box: the batch's buffer after the head room).
    return bytes(b._recs.getvalue())[HEAD_MAX:]


def test_positions_are_delta_encoded_after_an_absolute_first():
    b = report.Batch(7, KEY, 10)
    b.start(100, T0)
    mptest.true(b.add(rec(Fix(T0, 0, 41404925, 2199582))))
    mptest.true(b.add(rec(Fix(T0 + 1, 0, 41404955, 2199562))))
    body = records(b)
    # [0, 41404925, 2199582, 83, 45, 9, 9] then [10, 30, -20, 83, 45]
    first = bytes([0x87, 0x00, 0x1A]) + (41404925).to_bytes(4, "big")
    mptest.true(body.startswith(first), body)
    mptest.true(body.endswith(bytes([0x85, 0x0A, 0x18, 0x1E, 0x33, 0x18, 0x53, 0x18, 0x2D])))


def test_units_are_rounded_as_the_wire_format_says():
    b = report.Batch(7, KEY, 10)
    b.start(0, T0)
    b.add(rec(Fix(T0, 250, 1, 2, speed=8250, course=35960, hdop=85, sats=12)))
    # dt 2 ds (250 ms floored), speed 83 dm/s (8250 mm/s rounded half up), course 0
    # (359.6 deg rounds to 360 = 0), hdop 9 (0.85 rounded), sats 12.
    mptest.eq(records(b), bytes([0x87, 0x02, 0x01, 0x02, 0x18, 0x53, 0x00, 0x09, 0x0C]))


def test_unknown_speed_and_course_are_null():
    b = report.Batch(7, KEY, 10)
    b.start(0, T0)
    b.add(rec(Fix(T0, 0, 1, 2, speed=None, course=None, hdop=None, sats=None)))
    mptest.eq(records(b), bytes([0x87, 0x00, 0x01, 0x02, 0xF6, 0xF6, 0x00, 0x00]))


def test_a_full_report_refuses_more_and_a_fix_from_the_past_too():
    b = report.Batch(7, KEY, 2)
    b.start(0, T0)
    mptest.true(b.add(rec(Fix(T0 + 5, 0, 1, 2))))
    mptest.true(not b.add(rec(Fix(T0 + 4, 0, 1, 2))))  # time went backwards
    mptest.true(b.add(rec(Fix(T0 + 6, 0, 1, 2))))
    mptest.true(b.full())
    mptest.true(not b.add(rec(Fix(T0 + 7, 0, 1, 2))))
    mptest.eq(b.count, 2)


def test_a_sealed_report_is_a_six_entry_map_ending_with_the_mac():
    b = report.Batch(7, KEY, 10)
    b.start(100, T0)
    b.add(rec(Fix(T0, 0, 41404925, 2199582)))
    out = bytes(b.seal())
    mptest.eq(out[0], 0xA6)
    mptest.eq(out[1:5], bytes([0x00, 0x01, 0x01, 0x07]))  # version 1, device 7
    mptest.eq(out[-10:-8], bytes([0x05, 0x48]))
    mptest.eq(out[-8:], report.Mac(KEY).digest(out[:-10]))


def test_hmac_matches_rfc_4231_test_case_2():
    mac = report.Mac(b"Jefe").digest(b"what do ya want for nothing?")
    mptest.eq(mac, bytes.fromhex("5bdcc146bf60754e"))


def test_appending_a_position_allocates_nothing():
    b = report.Batch(7, KEY, 10)
    recs = [rec(Fix(T0 + i, 0, 41404925 + 30 * i, 2199582 - 20 * i)) for i in range(10)]
    b.start(0, T0)
    b.add(recs[0])
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for i in range(1, 10):
            b.add(recs[i])
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    mptest.eq(b.count, 10)
    mptest.eq(used, 0)


def test_an_event_that_does_not_fit_changes_nothing_and_events_allocate_nothing():
    b = report.Batch(7, KEY, 2)
    b.start(0, T0)
    f = Fix(T0, 0, -33868820, 151209290)
    mptest.true(b.add(rec(f)))
    before = records(b)
    ev = rec(f, 3, 12, 1800, 3)
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    ok = b.add(ev)
    alloc = gc.mem_alloc() - a
    gc.enable()
    mptest.true(ok)
    mptest.eq(alloc, 0)
    mptest.true(not b.add(ev))  # the report is full (2 records)
    mptest.true(records(b).startswith(before))
    mptest.eq(b.count, 2)
    # An event from before the last record is refused too.
    b.start(2, T0)
    mptest.true(b.add(rec(Fix(T0 + 5, 0, 1, 2))))
    mptest.true(not b.add(rec(Fix(T0 + 4, 0, 1, 2), 2)))


def test_an_event_keeps_its_fence_in_key_4_and_its_route_in_key_8():
    b = report.Batch(7, KEY, 10)
    b.start(0, T0)
    mptest.true(b.add(rec(Fix(T0, 500, 1, 2), 3, 12, 1800, 3)))
    # {0: 3, 1: 5, 2: 1, 3: 2, 4: 12, 5: 9, 6: 9, 7: 1800, 8: 3}
    mptest.eq(records(b), bytes([0xA9, 0x00, 0x03, 0x01, 0x05, 0x02, 0x01, 0x03, 0x02,
                                 0x04, 0x0C, 0x05, 0x09, 0x06, 0x09, 0x07, 0x19, 0x07,
                                 0x08, 0x08, 0x03]))  # fmt: skip
    # Fence 0 (the depot) is a fence, and a negative extra stays signed; no route given.
    b.start(1, T0)
    mptest.true(b.add(rec(Fix(T0, 0, -1, -2), 2, 0, -7)))
    # {0: 2, 1: 0, 2: -1, 3: -2, 4: 0, 5: 9, 6: 9, 7: -7}
    mptest.eq(records(b), bytes([0xA8, 0x00, 0x02, 0x01, 0x00, 0x02, 0x20, 0x03, 0x21,
                                 0x04, 0x00, 0x05, 0x09, 0x06, 0x09, 0x07, 0x26]))  # fmt: skip
    # An event with none of them: the six keys every event has.
    b.start(2, T0)
    mptest.true(b.add(rec(Fix(T0, 0, 1, 2), 4)))
    mptest.eq(records(b), bytes([0xA6, 0x00, 0x04, 0x01, 0x00, 0x02, 0x01, 0x03, 0x02,
                                 0x05, 0x09, 0x06, 0x09]))  # fmt: skip


def test_a_status_record_carries_dropped_queued_and_cause_in_keys_7_9_10():
    b = report.Batch(7, KEY, 10)
    b.start(0, T0)
    # queued 300 (in the fence field), dropped 57 (extra), cause 3, thinned (route).
    mptest.true(b.add(rec(Fix(T0 + 1, 200, 41404925, -2199582, hdop=124, sats=7),
                          STATUS, 300, 57, 3)))  # fmt: skip
    lat = (41404925).to_bytes(4, "big")
    lon = (2199582 - 1).to_bytes(4, "big")
    want = (bytes([0xA9, 0x00, 0x10, 0x01, 0x0C, 0x02, 0x1A]) + lat + bytes([0x03, 0x3A])
            + lon + bytes([0x05, 0x0C, 0x06, 0x07, 0x07, 0x18, 0x39, 0x09, 0x19, 0x01,
                           0x2C, 0x0A, 0x03]))  # fmt: skip
    mptest.eq(records(b), want)
    # The keys in order, read back: 0 1 2 3 5 6 7 9 10 (no fence key 4, no route key 8).
    keys = [want[i] for i in (1, 3, 5, 11, 17, 19, 21, 24, 28)]
    mptest.eq(keys, [0, 1, 2, 3, 5, 6, 7, 9, 10])


def test_a_status_record_leaves_the_position_chain_alone():
    b = report.Batch(7, KEY, 10)
    b.start(0, T0)
    mptest.true(b.add(rec(Fix(T0, 0, 1000, 2000))))
    mptest.true(b.add(rec(Fix(T0, 0, 1000, 2000), STATUS, 0, 0, 1)))
    mptest.true(b.add(rec(Fix(T0 + 1, 0, 1010, 1990))))
    body = records(b)
    # The second position is a delta from the first: [10, 10, -10, 83, 45].
    mptest.true(body.endswith(bytes([0x85, 0x0A, 0x0A, 0x29, 0x18, 0x53, 0x18, 0x2D])), body)
    mptest.eq(b.count, 3)


def test_sealing_twice_gives_the_same_report():
    b = report.Batch(7, KEY, 10)
    b.start(0, T0)
    b.add(rec(Fix(T0, 0, 1, 2)))
    first = bytes(b.seal())
    mptest.eq(bytes(b.seal()), first)


mptest.main(globals())
for name in os.listdir(DIR + "/q"):
    os.remove(DIR + "/q/" + name)
os.rmdir(DIR + "/q")
os.rmdir(DIR)
