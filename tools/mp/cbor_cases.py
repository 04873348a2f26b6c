# Encode values with the firmware CBOR encoder, under the MicroPython binary.
# ruff: noqa: UP031 (MicroPython: %-formatting is the lean choice there)
#
# Run by tests/test_cbor_firmware.py, which owns the format:
#   cbor_cases.py [--single] [--size N]
#   stdin: one case per line: a CBOR sequence of values, as space-separated tokens in
#   prefix order:
#       n  t  f                 None, True, False
#       i<decimal>              int
#       d<16 hex digits>        float, by its IEEE double bits (no decimal rounding)
#       s<hex>  b<hex>          str (its UTF-8), bytes
#       l<count>  m<count>      list of the next count values, dict of the next count
#                               key/value pairs (an OrderedDict: keys keep their order)
#       h<major>.<argument>     a bare head, by Writer.head() (tags, simple values)
#   stdout: one line per case, flushed: the hex of what Writer.head()/value() wrote for
#   its items, or !<ExceptionName>.
#   --single writes floats by the ESP32 (single-precision) branch; --size N sets the
#   Writer's buffer (default 4096), reused for every value.
import struct
import sys
from binascii import hexlify, unhexlify
from collections import OrderedDict

import cborx as cbor


def parse(toks, i):
    t = toks[i]
    c = t[0]
    i += 1
    if c == "n":
        return None, i
    if c == "t":
        return True, i
    if c == "f":
        return False, i
    if c == "i":
        return int(t[1:]), i
    if c == "d":
        return struct.unpack(">d", unhexlify(t[1:]))[0], i
    if c == "s":
        return unhexlify(t[1:]).decode(), i
    if c == "b":
        return unhexlify(t[1:]), i
    if c == "l":
        out = []
        for _ in range(int(t[1:])):
            v, i = parse(toks, i)
            out.append(v)
        return out, i
    if c == "m":
        d = OrderedDict()
        for _ in range(int(t[1:])):
            k, i = parse(toks, i)
            v, i = parse(toks, i)
            d[k] = v
        return d, i
    raise ValueError("bad token %s" % t)


def main(argv):
    size = 4096
    if "--size" in argv:
        size = int(argv[argv.index("--size") + 1])
    if "--single" in argv:
        cbor._DOUBLE = False  # Writer.float reads it at each call
    w = cbor.Writer(size)
    out = sys.stdout
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        w.reset()
        try:
            toks = line.split()
            i = 0
            while i < len(toks):
                t = toks[i]
                if t[0] == "h":
                    major, arg = t[1:].split(".")
                    w.head(int(major), int(arg))
                    i += 1
                else:
                    v, i = parse(toks, i)
                    w.value(v)
        except Exception as e:  # noqa: BLE001 - reported to the test, which decides
            out.write("!%s\n" % type(e).__name__)
        else:
            out.write(hexlify(w.getvalue()).decode() + "\n")
        if hasattr(out, "flush"):
            out.flush()


main(sys.argv[1:])
