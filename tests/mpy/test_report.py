# The report builder under MicroPython: layout, deltas, sealing, no allocation per fix.
# (The gateway decodes and verifies the firmware's reports in tests/test_report_wire.py.)
import gc

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


def records(b):
    # The records written so far (white box: the batch's buffer after the head room).
    return bytes(b._recs.getvalue())[HEAD_MAX:]


def test_positions_are_delta_encoded_after_an_absolute_first():
    b = report.Batch(7, KEY, 10)
    b.start(100, T0)
    mptest.true(b.add_position(Fix(T0, 0, 41404925, 2199582)))
    mptest.true(b.add_position(Fix(T0 + 1, 0, 41404955, 2199562)))
    body = records(b)
    # [0, 41404925, 2199582, 83, 45, 9, 9] then [10, 30, -20, 83, 45]
    first = bytes([0x87, 0x00, 0x1A]) + (41404925).to_bytes(4, "big")
    mptest.true(body.startswith(first), body)
    mptest.true(body.endswith(bytes([0x85, 0x0A, 0x18, 0x1E, 0x33, 0x18, 0x53, 0x18, 0x2D])))


def test_units_are_rounded_as_the_wire_format_says():
    b = report.Batch(7, KEY, 10)
    b.start(0, T0)
    b.add_position(Fix(T0, 250, 1, 2, speed=8250, course=35960, hdop=85, sats=12))
    # dt 2 ds (250 ms floored), speed 83 dm/s (8250 mm/s rounded half up), course 0
    # (359.6 deg rounds to 360 = 0), hdop 9 (0.85 rounded), sats 12.
    mptest.eq(records(b), bytes([0x87, 0x02, 0x01, 0x02, 0x18, 0x53, 0x00, 0x09, 0x0C]))


def test_unknown_speed_and_course_are_null():
    b = report.Batch(7, KEY, 10)
    b.start(0, T0)
    b.add_position(Fix(T0, 0, 1, 2, speed=None, course=None, hdop=None, sats=None))
    mptest.eq(records(b), bytes([0x87, 0x00, 0x01, 0x02, 0xF6, 0xF6, 0x00, 0x00]))


def test_a_full_report_refuses_more_and_a_fix_from_the_past_too():
    b = report.Batch(7, KEY, 2)
    b.start(0, T0)
    mptest.true(b.add_position(Fix(T0 + 5, 0, 1, 2)))
    mptest.true(not b.add_position(Fix(T0 + 4, 0, 1, 2)))  # time went backwards
    mptest.true(b.add_position(Fix(T0 + 6, 0, 1, 2)))
    mptest.true(b.full())
    mptest.true(not b.add_position(Fix(T0 + 7, 0, 1, 2)))
    mptest.eq(b.count, 2)


def test_a_sealed_report_is_a_six_entry_map_ending_with_the_mac():
    b = report.Batch(7, KEY, 10)
    b.start(100, T0)
    b.add_position(Fix(T0, 0, 41404925, 2199582))
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
    fixes = [Fix(T0 + i, 0, 41404925 + 30 * i, 2199582 - 20 * i) for i in range(10)]
    b.start(0, T0)
    b.add_position(fixes[0])
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for i in range(1, 10):
            b.add_position(fixes[i])
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    mptest.eq(b.count, 10)
    mptest.eq(used, 0)


def test_an_event_that_does_not_fit_changes_nothing_and_events_allocate_nothing():
    b = report.Batch(7, KEY, 2)
    b.start(0, T0)
    f = Fix(T0, 0, -33868820, 151209290)
    mptest.true(b.add_position(f))
    before = records(b)
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    ok = b.add_event(3, f, 12, 1800, 3)
    alloc = gc.mem_alloc() - a
    gc.enable()
    mptest.true(ok)
    mptest.eq(alloc, 0)
    mptest.true(not b.add_event(3, f, 12, 1800, 3))  # the report is full (2 records)
    mptest.true(records(b).startswith(before))
    mptest.eq(b.count, 2)
    # An event from before the last record is refused too.
    b.start(2, T0)
    mptest.true(b.add_position(Fix(T0 + 5, 0, 1, 2)))
    mptest.true(not b.add_event(2, Fix(T0 + 4, 0, 1, 2)))


def test_sealing_twice_gives_the_same_report():
    b = report.Batch(7, KEY, 10)
    b.start(0, T0)
    b.add_position(Fix(T0, 0, 1, 2))
    first = bytes(b.seal())
    mptest.eq(bytes(b.seal()), first)


mptest.main(globals())
