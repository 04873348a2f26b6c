# CBOR (RFC 8949) encoder for the van's reports: values in, bytes in a preallocated buffer.
#
# A Writer owns one bytearray and appends data items to it with the preferred (shortest)
# serialization of RFC 8949 section 4.2.1: every argument in its shortest form, definite
# lengths, and each float in the shortest of half/single/double that holds it exactly
# (NaN is always f97e00, as in RFC 8949 Appendix A and cbor2). A write that does not fit
# raises OverflowError (BufferFull) and leaves the buffer as it was, so a sender can ship
# what it has and go on; mark()/rewind() undo a record that was only partly written.
#
# Hot path: ints, heads, array/map headers, bools, null, floats and bytes go straight into
# the buffer with integer maths and struct.pack_into, and allocate nothing while the ints
# are small (31-bit on the ESP32). Long ints work too: pack_into takes them as they are,
# and only a negative one allocates (for -1 - v). text() allocates one memoryview to see a
# str's UTF-8 bytes.
#
# Floats: the ESP32 build has single-precision floats (MICROPY_FLOAT_IMPL_FLOAT), so there
# a float is packed as a single and is written as half or single, never double; the unix
# port has doubles and may write all three widths. The width is chosen from the packed
# bits with integer maths (exact on both ports; no struct 'e', no float arithmetic).
#
# It does not decode, does not sort map keys (value() writes a dict in its iteration
# order, which MicroPython's plain dict does not tie to insertion; an OrderedDict keeps
# it), so this is not RFC 8949 4.2.2 deterministic encoding; and it does not write
# tags, bignums (beyond 64 bits raises ValueError), indefinite lengths, undefined or NaN
# payloads. The wire format (field keys, record layout) lives elsewhere, not here.
import struct

from micropython import const

UINT = const(0)
NINT = const(1)
BYTES = const(2)
TEXT = const(3)
ARRAY = const(4)
MAP = const(5)
TAG = const(6)
SIMPLE = const(7)

_FALSE = const(0xF4)
_TRUE = const(0xF5)
_NULL = const(0xF6)
_F16 = const(0xF9)
_F32 = const(0xFA)
_F64 = const(0xFB)

# True where `float` is a C double (unix port), False on single-precision builds (ESP32):
# 1 + 2**-30 is exact in a double and rounds to 1.0 in a single.
_DOUBLE = 1.0 + 2.0**-30 != 1.0


# Built once: a tuple written in an isinstance() call is built on every call.
_BYTESLIKE = (bytes, bytearray, memoryview)
_SEQUENCE = (list, tuple)


class BufferFull(OverflowError):
    # The item does not fit in the Writer's buffer; nothing of it was written.
    pass


def _hlen(v):
    # Bytes of a head whose argument is v (0 <= v < 2**64).
    if v < 24:
        return 1
    if v < 0x100:
        return 2
    if v < 0x10000:
        return 3
    if v < 0x100000000:
        return 5
    return 9


def _tz(s, last, mask, fbits):
    # Trailing zero bits of an IEEE fraction packed big-endian in s[1..last], whose bits
    # in s[1] are `mask`; fbits (its width) when the fraction is zero.
    tz = 0
    i = last
    while i > 1:
        c = s[i]
        if c:
            break
        tz += 8
        i -= 1
    else:
        c = s[1] & mask
        if not c:
            return fbits
    while not c & 1:
        c >>= 1
        tz += 1
    return tz


class Writer:
    def __init__(self, size):
        self.buf = bytearray(size)
        self.n = 0  # bytes written
        self._size = size
        self._mv = memoryview(self.buf)
        self._f = bytearray(8)  # a float's packed bits, before choosing its width
        self._f4 = memoryview(self._f)[:4]  # those of a single (ESP32)

    def reset(self):
        self.n = 0

    def mark(self):
        return self.n

    def rewind(self, mark):
        # Drop everything written after mark() returned `mark`.
        if mark < 0 or mark > self.n:
            raise ValueError("bad mark")
        self.n = mark

    def getvalue(self):
        # The bytes written so far, without a copy: valid until the next write or reset.
        return self._mv[: self.n]

    # ---- heads and integers -------------------------------------------------------------
    def head(self, major, value):
        # Major type 0..7 with argument 0 <= value < 2**64 in its shortest form. For major
        # 7 only simple values 0..23 and 32..255 are meaningful (float() writes floats).
        if value < 0 or major & -8:
            raise ValueError("bad CBOR head")
        b = self.buf
        n = self.n
        m = major << 5
        if value < 24:
            if n >= self._size:
                raise BufferFull()
            b[n] = m | value
            self.n = n + 1
        elif value < 0x100:
            if n + 2 > self._size:
                raise BufferFull()
            b[n] = m | 24
            b[n + 1] = value
            self.n = n + 2
        elif value < 0x10000:
            if n + 3 > self._size:
                raise BufferFull()
            b[n] = m | 25
            b[n + 1] = value >> 8
            b[n + 2] = value & 0xFF
            self.n = n + 3
        elif value < 0x100000000:
            if n + 5 > self._size:
                raise BufferFull()
            b[n] = m | 26
            # pack_into takes a long int as it is: no shifted copies on the ESP32.
            struct.pack_into(">I", b, n + 1, value)
            self.n = n + 5
        elif value < 0x10000000000000000:
            if n + 9 > self._size:
                raise BufferFull()
            b[n] = m | 27
            struct.pack_into(">Q", b, n + 1, value)
            self.n = n + 9
        else:
            raise ValueError("CBOR int beyond 64 bits")

    def uint(self, v):
        if v < 0:
            raise ValueError("negative uint")
        self.head(UINT, v)

    def int(self, v):
        if v < 0:
            self.head(NINT, -1 - v)
        else:
            self.head(UINT, v)

    # ---- strings ------------------------------------------------------------------------
    def bytes(self, b):
        # b: bytes, bytearray or memoryview of bytes.
        if isinstance(b, str):
            raise TypeError("bytes() takes bytes, not str")
        self._string(BYTES, b)

    def text(self, s):
        if not isinstance(s, str):
            raise TypeError("text() takes str")
        # MicroPython's str exposes its UTF-8 bytes as a buffer (the stubs, like CPython,
        # say it has none).
        self._string(TEXT, memoryview(s))  # type: ignore[arg-type]

    def _string(self, major, data):
        k = len(data)
        n = self.n
        h = _hlen(k)
        if n + h + k > self._size:
            raise BufferFull()
        self.head(major, k)
        n += h
        self.buf[n : n + k] = data
        self.n = n + k

    def raw(self, data):
        # Append bytes that already are CBOR, e.g. records built in another Writer, as they
        # are. `data` must not be a view of this Writer's own buffer.
        k = len(data)
        n = self.n
        if n + k > self._size:
            raise BufferFull()
        self.buf[n : n + k] = data
        self.n = n + k

    # ---- containers (the caller writes the n items, or n key/value pairs) ---------------
    def array(self, n):
        self.head(ARRAY, n)

    def map(self, n):
        self.head(MAP, n)

    # ---- simple values and floats -------------------------------------------------------
    def bool(self, v):
        self._byte(_TRUE if v else _FALSE)

    def null(self):
        self._byte(_NULL)

    def _byte(self, c):
        n = self.n
        if n >= self._size:
            raise BufferFull()
        self.buf[n] = c
        self.n = n + 1

    def float(self, f):
        self._float(f, _DOUBLE)

    def _float(self, f, double):
        # `double` says what the port's float is; the tests also run the ESP32 (single)
        # branch on the unix port by passing False.
        s = self._f
        # Sign, biased exponent, top 10 fraction bits and the fraction's trailing zeros of
        # f as the port holds it: a double on the unix port, a single on the ESP32.
        if double:
            struct.pack_into(">d", s, 0, f)
            e = (s[0] & 0x7F) << 4 | s[1] >> 4
            top = (s[1] & 0x0F) << 6 | s[2] >> 2
            tz = _tz(s, 7, 0x0F, 52)
            emax = 0x7FF
            bias = 1023
            fbits = 52
        else:
            struct.pack_into(">f", s, 0, f)
            e = (s[0] & 0x7F) << 1 | s[1] >> 7
            top = (s[1] & 0x7F) << 3 | s[2] >> 5
            tz = _tz(s, 3, 0x7F, 23)
            emax = 0xFF
            bias = 127
            fbits = 23
        sign = s[0] & 0x80
        if e == emax:
            if tz < fbits:
                self._half(0x7E00)  # NaN: one quiet NaN, sign and payload dropped
            else:
                self._half(sign << 8 | 0x7C00)  # +-inf
            return
        if e == 0:
            if tz == fbits:
                self._half(sign << 8)  # +-0.0
                return
            e = -1000  # a subnormal of the port's own width: not exact in a narrower one
        else:
            e -= bias  # unbiased exponent
        # Half: exponent -14..15 normal, down to -24 subnormal; exact when every fraction
        # bit below the 10 it keeps (and below the subnormal shift) is zero.
        if -24 <= e <= 15:
            if e >= -14:
                if tz >= fbits - 10:
                    self._half(sign << 8 | (e + 15) << 10 | top)
                    return
            elif tz >= fbits - 10 - 14 - e:
                self._half(sign << 8 | (0x400 | top) >> (-14 - e))
                return
        n = self.n
        if double:
            # Single: exponent -126..127 normal, down to -149 subnormal, 23 fraction bits.
            if -149 <= e <= 127 and tz >= (29 if e >= -126 else 29 - 126 - e):
                if n + 5 > self._size:
                    raise BufferFull()
                self.buf[n] = _F32
                struct.pack_into(">f", self.buf, n + 1, f)  # exact: no rounding
                self.n = n + 5
                return
            if n + 9 > self._size:
                raise BufferFull()
            self.buf[n] = _F64
            self.buf[n + 1 : n + 9] = s
            self.n = n + 9
        else:
            if n + 5 > self._size:
                raise BufferFull()
            self.buf[n] = _F32
            self.buf[n + 1 : n + 5] = self._f4
            self.n = n + 5

    def _half(self, h):
        n = self.n
        if n + 3 > self._size:
            raise BufferFull()
        b = self.buf
        b[n] = _F16
        b[n + 1] = h >> 8
        b[n + 2] = h & 0xFF
        self.n = n + 3

    # ---- any value ----------------------------------------------------------------------
    def value(self, obj):
        # None, bool, int, float, str, bytes/bytearray/memoryview, list/tuple, dict, nested.
        # Map keys go in the dict's iteration order: insertion order for an OrderedDict,
        # but MicroPython's plain dict keeps none (build a fixed layout with map() and
        # explicit keys, or use an OrderedDict). All or nothing: on error n is as before.
        # Allocates only for text (one memoryview per str) and long ints.
        n = self.n
        try:
            self._value(obj)
        except BaseException:
            self.n = n
            raise

    def _value(self, obj):
        if obj is None:
            self.null()
        elif isinstance(obj, bool):
            self.bool(obj)
        elif isinstance(obj, int):
            self.int(obj)
        elif isinstance(obj, float):
            self.float(obj)
        elif isinstance(obj, str):
            self.text(obj)
        elif isinstance(obj, _BYTESLIKE):
            self._string(BYTES, obj)
        elif isinstance(obj, _SEQUENCE):
            self.head(ARRAY, len(obj))
            for x in obj:
                self._value(x)
        elif isinstance(obj, dict):
            self.head(MAP, len(obj))
            for k in obj:  # not items(): that makes a tuple per pair
                self._value(k)
                self._value(obj[k])
        else:
            raise TypeError("cannot encode %s as CBOR" % type(obj))


def dumps(obj):
    # bytes of obj, growing a scratch Writer until it fits (allocates; not for hot paths).
    size = 64
    while True:
        w = Writer(size)
        try:
            w.value(obj)
        except BufferFull:
            size *= 4
            continue
        return bytes(w.getvalue())
