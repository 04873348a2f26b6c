# The flash queue (firmware/queue.py) past a segment number that was never written: a
# failed first write of a new segment leaves one (put() moves on to the next number), and
# delivery must go on past it, now and after a reboot. Apart from test_queue.py, which
# fills the 64 KB heap.
import os
from queue import Queue

import mptest

DIR = "/tmp/vantrack-mpy-qg-" + "".join("%02x" % b for b in os.urandom(4))
SEG = 113  # queue._SEG: records per segment
T0 = 850000000


class Fix:
    def __init__(self, t):
        self.t, self.ms, self.lat, self.lon = t, 0, 41404925, 2199582
        self.speed, self.course, self.hdop, self.sats = 8330, 4510, 90, 9


def deliver(q):
    # Reports of up to 10 records, acknowledged, until nothing is left: records sent.
    sent = 0
    got = []

    def add(r):
        if len(got) >= 10:
            return False
        got.append(r[0])
        return True

    while True:
        got.clear()
        first, n = q.read(add)
        if not n:
            return sent
        q.ack(first, n)
        sent += n


def test_a_segment_number_a_failed_write_left_unused_does_not_stop_delivery():
    os.mkdir(DIR)
    q = Queue(DIR, 64)
    for i in range(SEG):  # segment 0 is full
        q.put(Fix(T0 + i))
    q.hi += 1  # as put() does when the flash refused a new segment's first write
    for i in range(5):  # into segment 2: segment 1 was never created
        last = q.put(Fix(T0 + SEG + i))
    mptest.eq(deliver(q), SEG + 5)
    mptest.eq((last, q.count, q.tail), (SEG + 4, 0, SEG + 5))
    # A reboot on the same flash: nothing to send again, numbering goes on.
    q = Queue(DIR, 64)
    mptest.eq((q.count, deliver(q), q.put(Fix(T0 + 200))), (0, 0, SEG + 5))


def test_cleanup():
    for name in os.listdir(DIR + "/q"):
        os.remove(DIR + "/q/" + name)
    os.rmdir(DIR + "/q")
    os.rmdir(DIR)


mptest.main(globals())
