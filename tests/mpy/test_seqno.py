# Sequence numbers (uplink.SeqNo) under MicroPython: never repeated across reboots, few
# flash writes.
import os

import mptest
from uplink import SeqNo

DIR = "/tmp/vantrack-mpy-seq-" + "".join("%02x" % b for b in os.urandom(4))


def _fresh():
    try:
        os.mkdir(DIR)
    except OSError:
        pass
    for name in ("seq", "seq.tmp"):
        try:
            os.remove(DIR + "/" + name)
        except OSError:
            pass


def _stored():
    with open(DIR + "/seq") as f:
        return int(f.read())


def test_a_new_device_starts_at_zero_and_counts_up():
    _fresh()
    s = SeqNo(DIR, block=10)
    mptest.eq([s.take() for _ in range(5)], [0, 1, 2, 3, 4])
    mptest.eq(s.take(3), 5)
    mptest.eq(s._next, 8)  # the next number to take


def test_a_reboot_never_reuses_a_number():
    _fresh()
    s = SeqNo(DIR, block=10)
    used = [s.take() for _ in range(13)]
    # Power cut here: the next boot starts past everything reserved so far.
    s2 = SeqNo(DIR, block=10)
    after = [s2.take() for _ in range(3)]
    mptest.true(min(after) > max(used), (used, after))
    mptest.eq(len(set(used + after)), 16)


def test_the_flash_is_written_once_per_block():
    _fresh()
    s = SeqNo(DIR, block=100)
    s.take()
    mptest.eq(_stored(), 100)
    for _ in range(98):
        s.take()
    mptest.eq(_stored(), 100)  # 99 numbers used, still within the first block
    s.take()
    s.take()
    mptest.eq(_stored(), 200)


def test_a_corrupt_counter_jumps_far_ahead_instead_of_guessing_low():
    _fresh()
    with open(DIR + "/seq", "w") as f:
        f.write("12x")
    s = SeqNo(DIR, block=10)
    mptest.eq(s.take(), 1 << 29)  # far ahead, and still a small int on the ESP32


def test_a_leftover_temporary_file_is_harmless():
    _fresh()
    s = SeqNo(DIR, block=10)
    s.take()
    with open(DIR + "/seq.tmp", "w") as f:
        f.write("3")  # a write that was cut before its rename
    mptest.eq(SeqNo(DIR, block=10).take(), 10)


mptest.main(globals())
_fresh()
os.rmdir(DIR)
