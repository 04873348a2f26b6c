"""The firmware CBOR encoder (firmware/cbor.py) against RFC 8949 and cbor2.

The firmware never runs under CPython: values are encoded by tools/mp/cbor_cases.py under
the `micropython` binary (64 KB heap). One process per module serves every example, one
line per value, so hundreds of hypothesis examples cost one start-up. Its output is
checked against the hex of RFC 8949 Appendix A and decoded with cbor2, the gateway's
decoder.
"""

from __future__ import annotations

import math
import select
import struct
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vantrack.tools import mpy

DRIVER = mpy.REPO_ROOT / "tools" / "mp" / "cbor_cases.py"
REPLY_TIMEOUT = 20.0  # s; a reply takes well under a millisecond


class Head(NamedTuple):
    """A bare head written with Writer.head(): a tag number or a simple value."""

    major: int
    arg: int


def tokens(v: Any, out: list[str]) -> list[str]:
    """`v` in the driver's prefix notation (see tools/mp/cbor_cases.py)."""
    if isinstance(v, Head):
        out.append(f"h{v.major}.{v.arg}")
    elif v is None:
        out.append("n")
    elif isinstance(v, bool):
        out.append("t" if v else "f")
    elif isinstance(v, int):
        out.append(f"i{v}")
    elif isinstance(v, float):
        out.append("d" + struct.pack(">d", v).hex())  # exact: no decimal round trip
    elif isinstance(v, str):
        out.append("s" + v.encode().hex())
    elif isinstance(v, bytes):
        out.append("b" + v.hex())
    elif isinstance(v, list):
        out.append(f"l{len(v)}")
        for x in v:
            tokens(x, out)
    elif isinstance(v, dict):
        out.append(f"m{len(v)}")
        for k, x in v.items():
            tokens(k, out)
            tokens(x, out)
    else:
        raise TypeError(type(v))
    return out


class Firmware:
    """A running cbor_cases.py: encode() sends one case and returns its reply."""

    def __init__(self, args: Sequence[str] = ()) -> None:
        self.proc = mpy.popen(
            DRIVER,
            list(args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def encode(self, *items: Any) -> str:
        """Hex of what the firmware writes for `items` (a CBOR sequence), or !Error."""
        line = " ".join(t for item in items for t in tokens(item, []))
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], REPLY_TIMEOUT)
        reply = proc.stdout.readline().decode().strip() if ready else ""
        if not reply:
            proc.kill()
            raise AssertionError(
                f"micropython gave no reply to {line[:200]!r}: {proc.stderr.read().decode()}"
            )
        return reply

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture(scope="module")
def firmware() -> Iterator[Firmware]:
    fw = Firmware()
    yield fw
    fw.close()


@pytest.fixture(scope="module")
def firmware_single() -> Iterator[Firmware]:
    # Floats through the ESP32 build's branch (its `float` is a single).
    fw = Firmware(["--single"])
    yield fw
    fw.close()


# --- RFC 8949 Appendix A -----------------------------------------------------------------
# Every example of Table 6 that an encoder with preferred serialization and definite
# lengths can write, with the RFC's hex. Tags, undefined, simple values and the two
# bignums are written as the wire shows them: a head from Writer.head() then the content.
# Left out, because this encoder never writes them:
# - the non-preferred float encodings of Infinity, NaN, -Infinity as single (0xfa7f800000,
#   0xfa7fc00000, 0xfaff800000) and double (0xfb7ff0000000000000, 0xfb7ff8000000000000,
#   0xfbfff0000000000000): preferred serialization writes the half forms, which are in;
# - every indefinite-length item: (_ h'0102', h'030405'), (_ "strea", "ming"), [_ ],
#   [_ 1, [2, 3], [_ 4, 5]], [_ 1, [2, 3], [4, 5]], [1, [2, 3], [_ 4, 5]],
#   [1, [_ 2, 3], [4, 5]], [_ 1, 2, ..., 25], {_ "a": 1, "b": [_ 2, 3]},
#   ["a", {_ "b": "c"}], {_ "Fun": true, "Amt": -2}.
# Integers beyond 64 bits given as Python ints are refused (see the test below), not
# turned into bignums.
BIG = bytes.fromhex("010000000000000000")
APPENDIX_A: list[tuple[str, tuple[Any, ...], str]] = [
    ("0", (0,), "00"),
    ("1", (1,), "01"),
    ("10", (10,), "0a"),
    ("23", (23,), "17"),
    ("24", (24,), "1818"),
    ("25", (25,), "1819"),
    ("100", (100,), "1864"),
    ("1000", (1000,), "1903e8"),
    ("1000000", (1000000,), "1a000f4240"),
    ("1000000000000", (1000000000000,), "1b000000e8d4a51000"),
    ("18446744073709551615", (18446744073709551615,), "1bffffffffffffffff"),
    ("18446744073709551616", (Head(6, 2), BIG), "c249010000000000000000"),
    ("-18446744073709551616", (-18446744073709551616,), "3bffffffffffffffff"),
    ("-18446744073709551617", (Head(6, 3), BIG), "c349010000000000000000"),
    ("-1", (-1,), "20"),
    ("-10", (-10,), "29"),
    ("-100", (-100,), "3863"),
    ("-1000", (-1000,), "3903e7"),
    ("0.0", (0.0,), "f90000"),
    ("-0.0", (-0.0,), "f98000"),
    ("1.0", (1.0,), "f93c00"),
    ("1.1", (1.1,), "fb3ff199999999999a"),
    ("1.5", (1.5,), "f93e00"),
    ("65504.0", (65504.0,), "f97bff"),
    ("100000.0", (100000.0,), "fa47c35000"),
    ("3.4028234663852886e+38", (3.4028234663852886e38,), "fa7f7fffff"),
    ("1.0e+300", (1.0e300,), "fb7e37e43c8800759c"),
    ("5.960464477539063e-8", (5.960464477539063e-8,), "f90001"),
    ("0.00006103515625", (0.00006103515625,), "f90400"),
    ("-4.0", (-4.0,), "f9c400"),
    ("-4.1", (-4.1,), "fbc010666666666666"),
    ("Infinity", (math.inf,), "f97c00"),
    ("NaN", (math.nan,), "f97e00"),
    ("-Infinity", (-math.inf,), "f9fc00"),
    ("false", (False,), "f4"),
    ("true", (True,), "f5"),
    ("null", (None,), "f6"),
    ("undefined", (Head(7, 23),), "f7"),
    ("simple(16)", (Head(7, 16),), "f0"),
    ("simple(255)", (Head(7, 255),), "f8ff"),
    (
        '0("2013-03-21T20:04:00Z")',
        (Head(6, 0), "2013-03-21T20:04:00Z"),
        "c074323031332d30332d32315432303a30343a30305a",
    ),
    ("1(1363896240)", (Head(6, 1), 1363896240), "c11a514b67b0"),
    ("1(1363896240.5)", (Head(6, 1), 1363896240.5), "c1fb41d452d9ec200000"),
    ("23(h'01020304')", (Head(6, 23), bytes.fromhex("01020304")), "d74401020304"),
    ("24(h'6449455446')", (Head(6, 24), bytes.fromhex("6449455446")), "d818456449455446"),
    (
        '32("http://www.example.com")',
        (Head(6, 32), "http://www.example.com"),
        "d82076687474703a2f2f7777772e6578616d706c652e636f6d",
    ),
    ("h''", (b"",), "40"),
    ("h'01020304'", (bytes.fromhex("01020304"),), "4401020304"),
    ('""', ("",), "60"),
    ('"a"', ("a",), "6161"),
    ('"IETF"', ("IETF",), "6449455446"),
    ('"\\"\\\\"', ('"\\',), "62225c"),
    ('"\\u00fc"', ("\u00fc",), "62c3bc"),
    ('"\\u6c34"', ("\u6c34",), "63e6b0b4"),
    ('"\\ud800\\udd51"', ("\U00010151",), "64f0908591"),  # the RFC's UTF-16 escape
    ("[]", ([],), "80"),
    ("[1, 2, 3]", ([1, 2, 3],), "83010203"),
    ("[1, [2, 3], [4, 5]]", ([1, [2, 3], [4, 5]],), "8301820203820405"),
    (
        "[1, 2, ..., 25]",
        (list(range(1, 26)),),
        "98190102030405060708090a0b0c0d0e0f101112131415161718181819",
    ),
    ("{}", ({},), "a0"),
    ("{1: 2, 3: 4}", ({1: 2, 3: 4},), "a201020304"),
    ('{"a": 1, "b": [2, 3]}', ({"a": 1, "b": [2, 3]},), "a26161016162820203"),
    ('["a", {"b": "c"}]', (["a", {"b": "c"}],), "826161a161626163"),
    (
        '{"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}',
        ({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"},),
        "a56161614161626142616361436164614461656145",
    ),
]


@pytest.mark.parametrize(
    ("items", "want"),
    [(items, want) for _, items, want in APPENDIX_A],
    ids=[d for d, *_ in APPENDIX_A],
)
def test_rfc8949_appendix_a_example(firmware: Firmware, items: tuple[Any, ...], want: str) -> None:
    assert firmware.encode(*items) == want


@pytest.mark.parametrize("v", [2**64, -(2**64) - 1, [1, 2**100], {"a": -(2**70)}])
def test_ints_beyond_64_bits_are_refused_not_truncated(firmware: Firmware, v: Any) -> None:
    assert firmware.encode(v) == "!ValueError"


def test_a_bad_head_is_refused_and_the_writer_stays_usable(firmware: Firmware) -> None:
    assert firmware.encode(Head(8, 0)) == "!ValueError"  # major type 8 does not exist
    assert firmware.encode(Head(0, -1)) == "!ValueError"
    assert firmware.encode([1, 2]) == "820102"


# --- cbor2 as the oracle -------------------------------------------------------------------
INT_EDGES = [0, 23, 24, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**64 - 1]
ints = st.one_of(
    st.integers(-(2**64), 2**64 - 1),
    st.sampled_from(INT_EDGES + [-1 - v for v in INT_EDGES]),
)


def exact_bits(bits: int, top: int, fill: int, negative: bool) -> float:
    """A float with exactly `bits` significant bits, its leading one at 2**top."""
    m = 1 << (bits - 1) | (fill & ((1 << (bits - 1)) - 1)) | 1
    x = math.ldexp(m, top - bits + 1)
    return -x if negative else x


# Floats that fit a width exactly or miss it by a bit, at the edges where the width choice
# is made: half subnormals (2**-24..2**-15) and its top binade, single subnormals
# (2**-149..2**-127) and its top, and anywhere else.
def edge_floats(max_bits: int) -> st.SearchStrategy[float]:
    return st.builds(
        exact_bits,
        st.one_of(st.integers(1, 12), st.integers(1, max_bits)),  # half keeps up to 11
        st.one_of(
            st.integers(-25, -14),
            st.integers(-26, 16),
            st.integers(-152, -125),
            st.integers(125, 129),
            st.integers(-180, 130),
        ),
        st.integers(0, 2**26),
        st.booleans(),
    )


near_edges = edge_floats(26)
floats = st.one_of(st.floats(), st.floats(width=32), st.floats(width=16), near_edges)


def to_single(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


singles = st.one_of(
    st.floats(width=32),
    edge_floats(24).filter(lambda x: abs(x) < 2.0**127).map(to_single),
)
texts = st.text(st.characters(codec="utf-8"), max_size=24)
leaves = st.one_of(st.none(), st.booleans(), ints, floats, texts, st.binary(max_size=40))
keys = st.one_of(st.text(st.characters(codec="utf-8"), max_size=8), ints)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(keys, children, max_size=6)
    ),
    max_leaves=30,
)
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types; NaN equals NaN, 0.0 differs from -0.0, key order counts."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    return bool(a == b)


def has_finite_float(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, list):
        return any(has_finite_float(x) for x in v)
    if isinstance(v, dict):
        return any(has_finite_float(k) or has_finite_float(x) for k, x in v.items())
    return False


# The shortest-float oracle is CPython's struct, not cbor2's canonical mode: cbor2 5.9's C
# extension writes 32768.0 <= |x| <= 65504.0 as singles (cbor2.dumps(65504.0,
# canonical=True) is fa477fe000, where RFC 8949 Appendix A has f97bff), and canonical mode
# also sorts map keys. cbor2 writes everything else; each float goes in as raw bytes.
class RawFloat:
    # Not a tuple: cbor2 would write that as an array instead of calling `default`.
    def __init__(self, encoded: bytes) -> None:
        self.encoded = encoded


def shortest_float(x: float) -> bytes:
    if math.isnan(x):
        return b"\xf9\x7e\x00"
    for fmt, ib in ((">e", 0xF9), (">f", 0xFA)):
        try:
            packed = struct.pack(fmt, x)
        except OverflowError:
            continue
        if struct.unpack(fmt, packed)[0] == x:
            return bytes([ib]) + packed
    return b"\xfb" + struct.pack(">d", x)


def raw_floats(v: Any) -> Any:
    if isinstance(v, float):
        return RawFloat(shortest_float(v))
    if isinstance(v, list):
        return [raw_floats(x) for x in v]
    if isinstance(v, dict):
        return {k: raw_floats(x) for k, x in v.items()}
    return v


def write_raw(encoder: cbor2.CBOREncoder, v: RawFloat) -> None:
    encoder.write(v.encoded)


def cbor2_shortest_floats(v: Any) -> str:
    """cbor2's encoding of `v` (maps in insertion order) with each float shortest-exact."""
    return cbor2.dumps(raw_floats(v), default=write_raw).hex()


@SETTINGS
@given(values)
def test_firmware_encoding_decodes_with_cbor2_to_the_same_value(
    firmware: Firmware, value: Any
) -> None:
    got = firmware.encode(value)
    assert same(cbor2.loads(bytes.fromhex(got)), value), got
    if not has_finite_float(value):
        # Non-canonical cbor2 writes finite floats as doubles; everything else (shortest
        # ints and lengths, half-width inf/nan, maps in insertion order) must match.
        assert got == cbor2.dumps(value).hex()


@SETTINGS
@given(values)
def test_firmware_bytes_equal_cbor2_with_shortest_floats(firmware: Firmware, value: Any) -> None:
    assert firmware.encode(value) == cbor2_shortest_floats(value)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(near_edges, st.floats()), min_size=1, max_size=16))
def test_every_float_takes_the_shortest_exact_width(firmware: Firmware, value: list[float]) -> None:
    # Floats alone, many per example, mostly at the width edges: the one-bit-too-many
    # cases are rare among the mixed values above.
    assert firmware.encode(value) == cbor2_shortest_floats(value)


@settings(max_examples=300, deadline=None)
@given(st.lists(singles, min_size=1, max_size=16))
def test_esp32_single_precision_branch_writes_singles_as_cbor2_does(
    firmware_single: Firmware, value: list[float]
) -> None:
    # On the ESP32 every float is a single: its branch must write each one shortest-exact.
    assert firmware_single.encode(value) == cbor2_shortest_floats(value)
