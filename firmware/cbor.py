# CBOR (RFC 8949) encoder core for the van's reports: items into a preallocated buffer.
#
# A Writer owns one bytearray and appends data items to it with the preferred (shortest)
# serialization of RFC 8949 section 4.2.1: every argument in its shortest form and
# definite lengths. A write that does not fit raises OverflowError (BufferFull) and leaves
# the buffer as it was, so a sender can ship what it has and go on; mark()/rewind() undo a
# record that was only partly written.
#
# Hot path: ints, heads, array/map headers, null and bytes go straight into the buffer
# with integer maths and struct.pack_into, and allocate nothing while the ints are small
# (31-bit on the ESP32). Long ints work too: pack_into takes them as they are, and only a
# negative one allocates (for -1 - v).
#
# Text, booleans, raw CBOR, floats, encoding any Python value and dumps() are in
# cborx.py: the van's reports use none of them, and every function the device imports
# costs heap (its bytecode lives there unless frozen). It does not decode, sort map
# keys, or write tags, bignums (beyond 64 bits raises ValueError) or indefinite lengths.
# The wire format lives in report.py.
import struct

from micropython import const

# Major types (RFC 8949 3.1) this module writes; cborx.py names all eight.
_UINT = const(0)
_NINT = const(1)
_BYTES = const(2)
_ARRAY = const(4)
_MAP = const(5)

_NULL = const(0xF6)


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


class Writer:
    def __init__(self, size):
        self.buf = bytearray(size)
        self.n = 0  # bytes written
        self.size = size
        self._mv = memoryview(self.buf)

    def reset(self):
        self.n = 0

    def mark(self):
        return self.n

    def rewind(self, mark):
        # Drop everything written after mark() returned `mark`.
        if mark < 0 or mark > self.n:
            raise ValueError("mark")  # not one mark() returned
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
            if n >= self.size:
                raise BufferFull()
            b[n] = m | value
            self.n = n + 1
        elif value < 0x100:
            if n + 2 > self.size:
                raise BufferFull()
            b[n] = m | 24
            b[n + 1] = value
            self.n = n + 2
        elif value < 0x10000:
            if n + 3 > self.size:
                raise BufferFull()
            b[n] = m | 25
            b[n + 1] = value >> 8
            b[n + 2] = value & 0xFF
            self.n = n + 3
        elif value < 0x100000000:
            if n + 5 > self.size:
                raise BufferFull()
            b[n] = m | 26
            # pack_into takes a long int as it is: no shifted copies on the ESP32.
            struct.pack_into(">I", b, n + 1, value)
            self.n = n + 5
        elif value < 0x10000000000000000:
            if n + 9 > self.size:
                raise BufferFull()
            b[n] = m | 27
            struct.pack_into(">Q", b, n + 1, value)
            self.n = n + 9
        else:
            raise ValueError("CBOR int beyond 64 bits")

    def uint(self, v):
        if v < 0:
            raise ValueError("negative uint")
        self.head(_UINT, v)

    def int(self, v):
        if v < 0:
            self.head(_NINT, -1 - v)
        else:
            self.head(_UINT, v)

    # ---- strings ------------------------------------------------------------------------
    def bytes(self, b):
        # b: bytes, bytearray or memoryview of bytes.
        if isinstance(b, str):
            raise TypeError("bytes() takes bytes, not str")
        self._string(_BYTES, b)

    def _string(self, major, data):
        k = len(data)
        n = self.n
        h = _hlen(k)
        if n + h + k > self.size:
            raise BufferFull()
        self.head(major, k)
        n += h
        self.buf[n : n + k] = data
        self.n = n + k

    # ---- containers (the caller writes the n items, or n key/value pairs) ---------------
    def array(self, n):
        self.head(_ARRAY, n)

    def map(self, n):
        self.head(_MAP, n)

    # ---- simple values (booleans, text, raw CBOR and floats: cborx.Writer) ---------------
    def null(self):
        self._byte(_NULL)

    def _byte(self, v):
        n = self.n
        if n >= self.size:
            raise BufferFull()
        self.buf[n] = v
        self.n = n + 1
