# CBOR for any value: floats in the shortest exact width, value() for nested Python
# values, and dumps(). Extends cbor.Writer (which the van's reports use alone), re-exports
# BufferFull and names the eight major types, so `import cborx as cbor` is a complete
# encoder.
#
# Floats: the ESP32 build has single-precision floats (MICROPY_FLOAT_IMPL_FLOAT), so there
# a float is packed as a single and is written as half or single, never double; the unix
# port has doubles and may write all three widths. The width is chosen from the packed
# bits with integer maths (exact on both ports; no struct 'e', no float arithmetic); NaN
# is always f97e00, as in RFC 8949 Appendix A and cbor2.
#
# value() writes a dict in its iteration order, which MicroPython's plain dict does not
# tie to insertion (an OrderedDict keeps it), so this is not RFC 8949 4.2.2 deterministic
# encoding.
import struct

import cbor
from cbor import BufferFull  # noqa: F401
from micropython import const

# Major types (RFC 8949 3.1).
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
_F16 = const(0xF9)
_F32 = const(0xFA)
_F64 = const(0xFB)

# True where `float` is a C double (unix port), False on single-precision builds (ESP32):
# 1 + 2**-30 is exact in a double and rounds to 1.0 in a single.
_DOUBLE = 1.0 + 2.0**-30 != 1.0

# Built once: a tuple written in an isinstance() call is built on every call.
_BYTESLIKE = (bytes, bytearray, memoryview)
_SEQUENCE = (list, tuple)


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


class Writer(cbor.Writer):
    def __init__(self, size):
        super().__init__(size)
        self._f = bytearray(8)  # a float's packed bits, before choosing its width
        self._f4 = memoryview(self._f)[:4]  # those of a single (ESP32)

    def text(self, s):
        # Allocates one memoryview to see the str's UTF-8 bytes.
        if not isinstance(s, str):
            raise TypeError("text() takes str")
        # MicroPython's str exposes its UTF-8 bytes as a buffer (the stubs, like CPython,
        # say it has none).
        self._string(TEXT, memoryview(s))  # type: ignore[arg-type]

    def raw(self, data):
        # Append bytes that already are CBOR, e.g. items built in another Writer, as they
        # are. `data` must not be a view of this Writer's own buffer.
        k = len(data)
        n = self.n
        if n + k > self.size:
            raise BufferFull()
        self.buf[n : n + k] = data
        self.n = n + k

    def bool(self, v):
        self._byte(_TRUE if v else _FALSE)

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
                if n + 5 > self.size:
                    raise BufferFull()
                self.buf[n] = _F32
                struct.pack_into(">f", self.buf, n + 1, f)  # exact: no rounding
                self.n = n + 5
                return
            if n + 9 > self.size:
                raise BufferFull()
            self.buf[n] = _F64
            self.buf[n + 1 : n + 9] = s
            self.n = n + 9
        else:
            if n + 5 > self.size:
                raise BufferFull()
            self.buf[n] = _F32
            self.buf[n + 1 : n + 5] = self._f4
            self.n = n + 5

    def _half(self, h):
        n = self.n
        if n + 3 > self.size:
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
