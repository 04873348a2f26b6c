# Firmware CBOR encoder (firmware/cbor.py) under MicroPython with a 64 KB heap.
# The cross-check against cbor2 and RFC 8949 Appendix A is tests/test_cbor_firmware.py.
import gc
from binascii import hexlify
from collections import OrderedDict

import cborx as cbor
import mptest
from mptest import eq, raises, true


def enc(fn, *args):
    w = cbor.Writer(32)
    getattr(w, fn)(*args)
    return hexlify(w.getvalue()).decode()


def check(fn, cases):
    for arg, want in cases:
        eq(enc(fn, arg), want, "%s(%r)" % (fn, arg))


# Tables are text parsed when a test runs: big literal lists would not compile in a 64 KB
# heap, and tables kept as globals would fragment it for the tests that follow.
def table(text, conv=int):
    rows = []
    for line in text.split("\n"):
        if line.strip():
            arg, want = line.split()
            rows.append((conv(arg), want))
    return rows


def uints():
    return table(
        """
    0 00
    1 01
    23 17
    24 1818
    255 18ff
    256 190100
    65535 19ffff
    65536 1a00010000
    4294967295 1affffffff
    4294967296 1b0000000100000000
    4611686018427387904 1b4000000000000000
    18446744073709551615 1bffffffffffffffff
    """
    )


def nints():
    return table(
        """
    -1 20
    -24 37
    -25 3818
    -256 38ff
    -257 390100
    -65536 39ffff
    -65537 3a00010000
    -4294967296 3affffffff
    -4294967297 3b0000000100000000
    -18446744073709551616 3bffffffffffffffff
    """
    )


def test_uint_every_width_boundary():
    check("uint", uints())
    check("int", uints())


def test_negative_int_every_width_boundary():
    check("int", nints())


def test_ints_made_by_long_int_arithmetic_encode_the_same():
    # On the ESP32 every value from 2**30 up is a long int; here only from 2**62, but
    # results of long-int arithmetic may stay long ints whatever their size.
    big = 2**70
    for v, want in uints() + nints():
        eq(enc("int", (big + v) - big), want, repr(v))


def test_int_beyond_64_bits_raises_value_error_and_writes_nothing():
    w = cbor.Writer(32)
    w.int(5)
    for v in (2**64, -(2**64) - 1, 2**100, -(2**100)):
        raises(ValueError, w.int, v)
        eq(w.n, 1)
    raises(ValueError, w.uint, -1)
    raises(ValueError, w.uint, 2**64)
    eq(w.n, 1)


def test_head_writes_every_major_type():
    for major in range(8):
        w = cbor.Writer(32)
        w.head(major, 0)
        w.head(major, 23)
        w.head(major, 24)
        w.head(major, 1000)
        w.head(major, 2**40)
        m = major << 5
        want = bytes([m, m | 23, m | 24, 24, m | 25, 3, 0xE8, m | 27, 0, 0, 1, 0, 0, 0, 0, 0])
        eq(bytes(w.getvalue()), want, "major %d" % major)


def test_head_rejects_bad_major_or_argument():
    w = cbor.Writer(16)
    for major, v in ((8, 0), (-1, 0), (0, -1)):
        raises(ValueError, w.head, major, v)
    eq(w.n, 0)


def test_bytes_of_every_buffer_kind():
    check(
        "bytes",
        [
            (b"", "40"),
            (b"\x01\x02\x03\x04", "4401020304"),
            (bytearray(b"\xff\x00"), "42ff00"),
            (memoryview(b"abcdef")[1:3], "426263"),
        ],
    )
    w = cbor.Writer(400)
    for k, head in ((23, b"\x57"), (24, b"\x58\x18"), (256, b"\x59\x01\x00")):
        w.reset()
        w.bytes(bytearray(k))
        eq(bytes(w.getvalue()[: len(head)]), head)
        eq(w.n, len(head) + k)


def test_text_is_utf8_with_byte_length():
    # (RFC 8949 Appendix A's strings are in tests/test_cbor_firmware.py.)
    check("text", [("", "60"), ("\u6c34", "63e6b0b4"), ("\U00010151", "64f0908591")])
    w = cbor.Writer(64)
    w.text("\u00fc" * 12)  # 12 characters, 24 bytes: needs the one-byte length form
    eq(bytes(w.getvalue()[:2]), b"\x78\x18")
    eq(w.n, 26)


def test_text_and_bytes_refuse_each_others_type():
    w = cbor.Writer(16)
    raises(TypeError, w.text, b"abc")
    raises(TypeError, w.bytes, "abc")
    eq(w.n, 0)


def test_array_and_map_headers():
    check("array", [(0, "80"), (3, "83"), (25, "9819"), (1000, "9903e8")])
    check("map", [(0, "a0"), (2, "a2"), (24, "b818"), (70000, "ba00011170")])


def test_bool_and_null():
    w = cbor.Writer(8)
    w.bool(False)
    w.bool(True)
    w.null()
    w.bool(0)
    w.bool(1)
    eq(bytes(w.getvalue()), b"\xf4\xf5\xf6\xf4\xf5")


# value (a MicroPython expression), expected encoding, and why the row is there.
def floats():
    return table(
        """
    0.0 f90000
    -0.0 f98000
    1.0 f93c00
    1.5 f93e00
    -4.0 f9c400
    65504.0 f97bff
    65520.0 fa477ff000
    2.0**-14 f90400
    2.0**-24 f90001
    3*2.0**-24 f90003
    2.0**-25 fa33000000
    3*2.0**-25 fa33c00000
    1+2.0**-10 f93c01
    1+2.0**-11 fa3f801000
    100000.0 fa47c35000
    3.4028234663852886e38 fa7f7fffff
    2.0**-126 fa00800000
    2.0**-149 fa00000001
    1+2.0**-23 fa3f800001
    1+2.0**-24 fb3ff0000010000000
    2.0**-150 fb3690000000000000
    2.0**128 fb47f0000000000000
    1.1 fb3ff199999999999a
    -4.1 fbc010666666666666
    1.0e300 fb7e37e43c8800759c
    5e-324 fb0000000000000001
    float('inf') f97c00
    float('-inf') f9fc00
    float('nan') f97e00
    -float('nan') f97e00
    """,
        eval,
    )


# Rows in order: zeros; halves up to the largest (65504) and the first value past it;
# smallest normal and subnormal halves and values just outside half's range or
# precision; the same for singles; doubles; and the non-finite values (one NaN, f97e00,
# whatever its sign or payload).


def test_float_takes_the_shortest_exact_width():
    check("float", floats())


def f32(x):
    # x rounded to a single, as the ESP32 would hold it.
    import struct

    return struct.unpack(">f", struct.pack(">f", x))[0]


def test_esp32_single_precision_branch_picks_half_or_single():
    # The ESP32 build's float is a single; its branch of Writer.float runs here too.
    # Every value a single can hold must come out as on the double branch, and values a
    # single cannot hold are written as the single the device would have.
    for x, want in floats():
        w = cbor.Writer(16)
        w._float(x, False)
        got = hexlify(w.getvalue()).decode()
        if f32(x) == x or x != x:
            eq(got, want, "single branch %r" % x)
        else:
            w2 = cbor.Writer(16)
            w2.float(f32(x))
            eq(got, hexlify(w2.getvalue()).decode(), "single branch rounds %r" % x)
            true(got[:2] in ("f9", "fa"), "single branch never writes a double")


def test_value_encodes_nested_values_and_tuples():
    eq(
        hexlify(cbor.dumps([1, (2, 3), {"a": None, 1: [True, False]}, b"\x00", 1.5])),
        b"85" + b"01" + b"820203" + b"a2" + b"6161f6" + b"0182f5f4" + b"4100" + b"f93e00",
    )


def test_maps_follow_the_dicts_iteration_order():
    # MicroPython's dict keeps no insertion order (an OrderedDict does): value() writes
    # keys in iteration order, which for an OrderedDict is the order they were added.
    d = OrderedDict()
    d["b"] = 1
    d["a"] = 2
    d[3] = None
    eq(hexlify(cbor.dumps(d)), b"a3616201616102" + b"03f6")
    plain = {"b": 1, "a": 2}
    want = b"\xa2" + b"".join(cbor.dumps(k) + cbor.dumps(v) for k, v in plain.items())
    eq(cbor.dumps(plain), want)


def test_value_rejects_unsupported_type_and_writes_nothing():
    w = cbor.Writer(32)
    w.int(7)
    raises(TypeError, w.value, {1, 2})
    raises(TypeError, w.value, [1, 2, object()])
    raises(ValueError, w.value, [1, 2**64])
    eq(w.n, 1)
    eq(bytes(w.getvalue()), b"\x07")


def test_overflow_raises_and_leaves_n_and_bytes_unchanged():
    items = [
        ("int", 5),
        ("int", 500),
        ("int", -70000),
        ("int", 2**40),
        ("head", 6, 2**33),
        ("bytes", b"abcdef"),
        ("bytes", bytes(30)),
        ("text", "\u6c34\u6c34"),
        ("array", 30),
        ("map", 300),
        ("bool", True),
        ("null",),
        ("float", 1.5),
        ("float", 100000.0),
        ("float", 1.1),
        ("float", float("nan")),
        ("value", [1, [2, "three"], {"four": 4.5}]),
        ("raw", b"\x83\x01\x02\x03"),
    ]
    for item in items:
        ref = cbor.Writer(64)
        getattr(ref, item[0])(*item[1:])
        size = ref.n
        for room in range(size):
            w = cbor.Writer(3 + room)
            w.int(1000)  # 3 bytes already there
            try:
                getattr(w, item[0])(*item[1:])
            except OverflowError:
                pass
            else:
                raise mptest.Fail("%r fitted in %d bytes, needs %d" % (item, room, size))
            eq(w.n, 3, repr(item))
            eq(bytes(w.getvalue()), b"\x19\x03\xe8", repr(item))
        w = cbor.Writer(3 + size)
        w.int(1000)
        getattr(w, item[0])(*item[1:])
        eq(bytes(w.getvalue()[3:]), bytes(ref.getvalue()), "exact fit %r" % (item,))


def test_raw_splices_cbor_from_another_writer():
    recs = cbor.Writer(16)
    recs.int(1)
    recs.text("a")
    w = cbor.Writer(16)
    w.array(2)
    w.raw(recs.getvalue())
    eq(bytes(w.getvalue()), cbor.dumps([1, "a"]))


def test_overflow_is_buffer_full_an_overflow_error():
    w = cbor.Writer(0)
    raises(cbor.BufferFull, w.null)
    true(issubclass(cbor.BufferFull, OverflowError))


def test_mark_and_rewind_drop_a_partly_written_record():
    # Batch building: write records until one does not fit, undo that one, send.
    w = cbor.Writer(40)
    w.array(0)  # placeholder count, patched below (fits the one-byte form)
    records = 0
    for i in range(20):
        m = w.mark()
        try:
            w.array(3)
            w.int(i * 1000)
            w.text("stop-%d" % i)
            w.float(i + 0.5)
        except OverflowError:
            w.rewind(m)
            break
        records += 1
    true(0 < records < 20)
    w.buf[0] = 0x80 | records
    want = cbor.dumps([[i * 1000, "stop-%d" % i, i + 0.5] for i in range(records)])
    eq(bytes(w.getvalue()), want)


def test_rewind_rejects_a_mark_past_the_end():
    w = cbor.Writer(8)
    w.int(1)
    raises(ValueError, w.rewind, 2)
    raises(ValueError, w.rewind, -1)
    w.rewind(0)
    eq(w.n, 0)


def test_reset_reuses_the_buffer_and_getvalue_is_a_view():
    w = cbor.Writer(8)
    buf = w.buf
    w.int(1)
    w.reset()
    w.int(2)
    v = w.getvalue()
    true(w.buf is buf)
    eq(bytes(v), b"\x02")
    w.buf[0] = 3
    eq(bytes(v), b"\x03")  # no copy


def test_dumps_grows_past_its_first_guess():
    # The first Writer holds 64 bytes; this needs 178. (The 64 KB heap is fragmented by
    # this file's own bytecode, so the test keeps its allocations small.)
    out = cbor.dumps(list(range(100)))
    eq(bytes(out[:2]), b"\x98\x64")
    eq(len(out), 2 + 24 + 2 * 76)
    eq(cbor.dumps(None), b"\xf6")


def _hot_loop(w, blob, f, rec):
    for i in range(50):
        w.reset()
        w.map(3)
        w.uint(1)
        w.int(i * 1234567)
        w.uint(2)
        w.array(4)
        w.int(-i)
        w.int(-100000 - i)
        w.head(6, 1000 + i)
        w.bool(i & 1)
        w.uint(3)
        w.bytes(blob)
        w.null()
        w.float(f)
        w.raw(rec)


def test_hot_path_allocates_nothing():
    w = cbor.Writer(128)
    blob = bytearray(b"abcdefghijklmnop")
    f = 48.1173  # a boxed float made once, as a fix's value would be
    rec = memoryview(bytearray(b"\x82\x01\x02"))
    _hot_loop(w, blob, f, rec)  # warm up (method caches, etc.)
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        _hot_loop(w, blob, f, rec)
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    eq(used, 0, "bytes allocated by 50 records")
    eq(hexlify(w.getvalue()[:2]).decode(), "a3" + "01")


mptest.main(globals())
