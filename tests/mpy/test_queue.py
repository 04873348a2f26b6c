# The flash queue (firmware/queue.py, qmaint.py) under MicroPython: numbering, runs,
# acknowledgements kept across reboots, power cuts mid-write, live reads, the ack file's
# rotation, deleting delivered segments and thinning a full queue. A reboot is a new Queue
# on the same directory.
import os
from queue import Queue

import mptest

DIR = "/tmp/vantrack-mpy-q-" + "".join("%02x" % b for b in os.urandom(4))
QD = DIR + "/q/"
SLOT = 36  # queue._SLOT
SEG = 113  # queue._SEG: records per segment
MASK = 4 * SEG + 20  # more numbers than any test uses
T0 = 850000000
STATUS = 16
os.mkdir(DIR)


class Fix:
    def __init__(self, t, lat=41404925, lon=2199582):
        self.t, self.ms, self.lat, self.lon = t, 0, lat, lon
        self.speed, self.course, self.hdop, self.sats = 8330, 4510, 90, 9


def fresh(max_segs=64):
    # An empty queue in an empty directory.
    Queue(DIR, 4)  # makes q/ if need be
    for name in os.listdir(QD):
        os.remove(QD + name)
    return Queue(DIR, max_segs)


def reboot(q):
    return Queue(DIR, q.max)


def put(q, n, etype_of=None):
    # n positions (or, with etype_of(i), events and status records too): their seqs, as
    # a list for a few (a long list would fragment the 64 KB heap), else the last one.
    seqs = []
    s = None
    for i in range(n):
        t = T0 + q.next
        e = etype_of(i) if etype_of else 0
        if e:
            s = q.put(Fix(t), e, i, -i, 3)
        else:
            s = q.put(Fix(t, 41404925 + i, 2199582 - i))
        if n <= 16:
            seqs.append(s)
    return seqs if n <= 16 else s


def read(q, limit=1000, live=False):
    # One report's worth: (first, n, the seqs add() was given and took).
    got = []

    def add(r):
        if len(got) >= limit:
            return False
        got.append(r[0])
        return True

    first, n = q.read(add, live)
    return first, n, got


def reads(q, first, n, limit=1000):
    # read() gives the run first..first+n-1.
    mptest.eq(read(q, limit), (first, n, list(range(first, first + n))))


def mask(seqs):
    # How many times each number in 0..q.next-1 was seen (lists of a few hundred ints
    # would fragment the 64 KB heap).
    m = bytearray(MASK)
    for s in seqs:
        m[s] += 1
    return m


def same(a, b):
    # Two masks are equal, else where they first differ (short: the repr of two long
    # bytearrays would not fit the heap).
    if a != b:
        i = 0
        while i < min(len(a), len(b)) and a[i] == b[i]:
            i += 1
        raise mptest.Fail("masks differ from number %d on" % i)


def drain(q, per=10):
    # Read and acknowledge run after run, as the uplink does after each 2.04, until
    # nothing is left to read (bounded, so a queue that never advances fails, not hangs):
    # mask() of what was delivered.
    m = bytearray(MASK)
    for _ in range(q.count + 5):  # a thinned queue takes up to a report per record
        first, n, got = read(q, per)
        if not n:
            break
        for s in got:
            m[s] += 1
        q.ack(first, n)
    return m


def drains(q, seqs, per=10):
    # drain() delivers these, once each.
    same(drain(q, per), mask(seqs))


def segs():
    return sorted(int(n) for n in os.listdir(QD) if n.isdigit())


def size(name):
    try:
        return os.stat(QD + name)[6]
    except OSError:
        return -1


def stored(q):
    # mask() of the valid records on flash (white box: the queue's own slot reader over
    # every segment file).
    m = bytearray(MASK)
    for s in segs():
        f = q._open(s)
        while q._slot(f):
            m[q.seq()] += 1
        f.close()
    return m


def append(name, data):
    with open(QD + name, "ab") as f:
        f.write(data)


def bad_slot(q, seq):
    # A whole slot whose CRC does not match: a write the flash did not finish.
    q.pack(seq, Fix(T0 + seq))
    b = bytearray(q.buf)
    b[33] ^= 0x40
    return b


def test_records_get_consecutive_sequence_numbers_from_zero():
    q = fresh()
    mptest.eq(put(q, 5), [0, 1, 2, 3, 4])
    mptest.eq(q.count, 5)
    recs = []
    first, n = q.read(lambda r: recs.append(r) or True)
    mptest.eq((first, n), (0, 5))
    mptest.eq([r[0] for r in recs], [0, 1, 2, 3, 4])
    # What was put comes back in wire units: time, position, speed dm/s, course degrees.
    mptest.eq(recs[3][:9], (3, T0 + 3, 41404928, 2199579, 83, 45, 9, 9, 0))


def test_read_gives_the_oldest_run_until_add_refuses_and_consumes_nothing():
    q = fresh()
    put(q, 10)
    reads(q, 0, 4, 4)
    reads(q, 0, 4, 4)  # not acknowledged: the same again
    mptest.eq(read(q, 0), (0, 0, []))
    mptest.eq(q.count, 10)


def test_an_ack_advances_the_tail_and_a_reboot_keeps_it():
    q = fresh()
    put(q, 10)
    q.ack(0, 4)
    mptest.eq((q.tail, q.count), (4, 6))
    reads(q, 4, 6)
    q = reboot(q)
    mptest.eq((q.tail, q.count), (4, 6))
    reads(q, 4, 6)
    mptest.eq(put(q, 1), [10])


def test_acknowledged_records_are_never_read_again_after_a_reboot():
    q = fresh()
    put(q, 30)
    drains(q, range(30))
    mptest.eq(q.count, 0)
    q = reboot(q)
    mptest.eq(q.count, 0)
    reads(q, 0, 0)
    mptest.eq(put(q, 1), [30])
    reads(q, 30, 1)


def test_the_count_after_a_reboot_is_the_records_not_acknowledged():
    q = fresh()
    put(q, 2 * SEG + 20)
    q.ack(*read(q, 150)[:2])
    mptest.eq(q.count, 2 * SEG + 20 - 150)
    q = reboot(q)
    mptest.eq(q.count, 2 * SEG + 20 - 150)
    drains(q, range(150, 2 * SEG + 20))


def test_a_torn_last_slot_is_ignored_and_its_number_used_again_in_a_fresh_segment():
    q = fresh()
    put(q, 5)
    append("0", b"\x05\x00\x00\x00\x99\x42\x17")  # a power cut 7 bytes into record 5
    q = reboot(q)
    mptest.eq(q.count, 5)
    reads(q, 0, 5)
    mptest.eq(put(q, 1), [5])
    mptest.eq(segs(), [0, 1])
    mptest.eq((size("0"), size("1")), (5 * SLOT + 7, SLOT))
    reads(q, 0, 6)
    q = reboot(q)
    reads(q, 0, 6)
    mptest.eq(put(q, 1), [6])


def test_a_slot_with_a_bad_crc_is_ignored_and_its_number_used_again():
    q = fresh()
    put(q, 5)
    append("0", bad_slot(q, 5))
    q = reboot(q)
    reads(q, 0, 5)
    mptest.eq(put(q, 1), [5])
    mptest.eq(segs(), [0, 1])
    mptest.eq(size("1"), SLOT)
    reads(q, 0, 6)


def test_a_bad_slot_is_not_counted_as_a_record_waiting():
    q = fresh()
    put(q, 5)
    append("0", bad_slot(q, 5))
    q = reboot(q)
    mptest.eq(q.count, 5)
    drains(q, range(5))
    mptest.eq(q.count, 0)  # else the uplink waits for a record it can never send


def test_a_torn_first_slot_of_a_new_segment_does_not_reuse_older_numbers():
    q = fresh()
    put(q, SEG)  # segment 0 is full: record SEG is the first of segment 1
    append("1", b"\x71\x00\x00\x00\x99")  # and a power cut tore it
    q = reboot(q)
    mptest.eq(q.count, SEG)
    mptest.eq(put(q, 1), [SEG])
    mptest.eq(read(q, 1000)[:2], (0, SEG + 1))


def test_numbers_never_repeat_across_reboots_even_with_everything_acknowledged():
    q = fresh()
    put(q, SEG + 7)
    drains(q, range(SEG + 7), 50)
    mptest.eq(segs(), [1])  # the delivered segment went; the newest stays
    q = reboot(q)
    mptest.eq(put(q, 1), [SEG + 7])
    drains(q, [SEG + 7])
    q = reboot(q)
    q = reboot(q)
    mptest.eq(put(q, 2), [SEG + 8, SEG + 9])
    # No segment left at all (after a torn write, writing moved to a segment never
    # written; then everything was acknowledged): the tail says where numbering is.
    q = fresh()
    put(q, 5)
    append("0", b"\x05\x00")
    q = reboot(q)
    drains(q, range(5))
    mptest.eq(segs(), [])
    mptest.eq(put(reboot(q), 1), [5])
    # A full newest segment, all of it acknowledged: the next number still follows on.
    q = fresh()
    put(q, SEG)
    drains(q, range(SEG), 50)
    q = reboot(q)
    mptest.eq(put(q, 1), [SEG])


def test_a_live_read_gives_the_newest_and_the_backlog_skips_it_once_acknowledged():
    q = fresh()
    put(q, 25)
    mptest.eq(read(q, 10, live=True), (24, 1, [24]))
    q.ack(24, 1)  # ahead of the tail (0): remembered, not the tail
    mptest.eq((q.done, q.tail, q.count), ([24], 0, 24))
    mptest.eq(read(q, 10, live=True)[1], 0)  # already delivered
    mptest.eq(put(q, 1), [25])
    mptest.eq(read(q, 10, live=True), (25, 1, [25]))
    q.ack(0, 10)
    q.ack(10, 10)
    reads(q, 20, 4, 10)  # the run stops before 24
    q.ack(20, 4)
    # The tail went past 24, acknowledged out of order, and forgot it.
    mptest.eq((q.tail, q.done, q.count), (25, [], 1))
    reads(q, 25, 1, 10)
    q = reboot(q)
    mptest.eq((q.tail, q.count), (25, 1))
    reads(q, 25, 1, 10)


def test_the_ack_file_is_rewritten_once_it_reaches_512_bytes():
    q = fresh()
    put(q, 140)
    largest = 0
    for i in range(128):
        q.ack(i, 1)
        largest = max(largest, size("ack"))
    mptest.eq(size("ack"), 512)
    q.ack(128, 1)
    mptest.eq(size("ack"), 4)  # replaced, not appended to
    mptest.eq(largest, 512)
    for i in range(129, 135):
        q.ack(i, 1)
    mptest.eq(size("ack"), 28)
    mptest.eq(size("ack.tmp"), -1)
    q = reboot(q)
    mptest.eq((q.tail, q.count), (135, 5))
    reads(q, 135, 5)


def test_delivered_segments_are_deleted_but_never_the_newest():
    q = fresh()
    put(q, 3 * SEG + 5)
    mptest.eq(segs(), [0, 1, 2, 3])
    q.ack(0, SEG - 1)
    mptest.eq(segs(), [0, 1, 2, 3])  # one record of segment 0 still waits
    q.ack(SEG - 1, 1)
    mptest.eq(segs(), [1, 2, 3])
    q.ack(SEG, SEG + 10)
    mptest.eq(segs(), [2, 3])
    q.ack(2 * SEG + 10, SEG + 5 - 10)
    mptest.eq((q.count, segs()), (0, [3]))
    q = reboot(q)
    mptest.eq((q.count, segs()), (0, [3]))
    mptest.eq(put(q, 1), [3 * SEG + 5])


def _etype(i):
    # Every 10th record an event, every 50th a status record.
    return STATUS if i % 50 == 7 else 2 if i % 10 == 3 else 0


def test_thinning_keeps_events_and_status_and_every_other_position_of_the_oldest():
    q = fresh(4)
    total = 4 * SEG + 10  # the 453rd record finds 4 full segments: the two oldest merge
    put(q, total, _etype)
    mptest.eq(segs(), [1, 2, 3, 4])
    m = stored(q)
    # The newer segments are whole.
    same(m[2 * SEG : total], b"\x01" * (total - 2 * SEG))
    # Every event and status record of the two oldest segments is still there, and
    # every other position, the others counted as dropped.
    kept = bytearray()
    for i in range(2 * SEG):
        if _etype(i):
            mptest.eq(m[i], 1, i)
        else:
            kept.append(m[i])
    every_other = (b"\x01\x00" if kept[0] else b"\x00\x01") * len(kept)
    same(kept, every_other[: len(kept)])
    mptest.eq(q.dropped, len(kept) - sum(kept))
    mptest.eq(q.count, sum(m))
    mptest.eq(reboot(q).count, sum(m))


def test_a_thinned_queue_is_delivered_run_by_run_to_the_end():
    q = fresh(4)
    put(q, 4 * SEG + 10, _etype)
    m = stored(q)
    run = bytearray(m)
    i = run.index(1)
    while run[i]:
        i += 1
    run[i:] = bytes(len(run) - i)  # the oldest run of consecutive numbers
    mptest.true(sum(run) < sum(m))
    same(mask(read(q, 1000)[2]), run)  # it stops at the first gap
    same(drain(q), m)
    mptest.eq(q.count, 0)
    mptest.eq(reboot(q).count, 0)


mptest.main(globals())
for name in os.listdir(QD):
    os.remove(QD + name)
os.rmdir(QD)
os.rmdir(DIR)
