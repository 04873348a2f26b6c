"""Property tests for the firmware NMEA parser, run under micropython in batches.

Each hypothesis example is a batch of cases run through one micropython process
(tools/mp/nmea_decode.py --cases), so hundreds of inputs cost a few process starts.
"""

from __future__ import annotations

import re
from functools import reduce

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vantrack.tools import nmeadecode

GOOD = [
    "GPGGA,101503.20,4807.0380,N,01131.0001,E,1,08,0.9,545.4,M,46.9,M,,",
    "GNRMC,101503.20,A,3344.1234,S,07011.5678,W,10.0,84.4,261126,,,A,V",
    "GNGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1,1",
    "GPVTG,84.4,T,,M,10.0,N,18.5,K,A",
    "GPGGA,101504.20,4807.0381,N,01131.0002,E,1,08,0.9,545.5,M,46.9,M,,",
    "GNRMC,101504.20,A,3344.1235,S,07011.5679,W,10.1,84.5,261126,,,A,V",
]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def nm(body: str) -> bytes:
    cs = reduce(lambda a, c: a ^ c, body.encode(), 0)
    return b"$%s*%02X\r\n" % (body.encode(), cs)


def checksum_ok(line: bytes) -> bool:
    m = re.fullmatch(rb"\$([^*\r\n]*)\*([0-9A-Fa-f]{2})[\r\n]*", line)
    return bool(m) and reduce(lambda a, c: a ^ c, m.group(1), 0) == int(m.group(2), 16)


def run(cases: list[tuple[bytes, int]]) -> list[dict]:
    out = nmeadecode.decode_cases(cases)
    assert [r["case"] for r in out] == list(range(len(cases))), "micropython stopped early"
    return out


@SETTINGS
@given(st.lists(st.tuples(st.binary(max_size=400), st.integers(1, 64)), min_size=40, max_size=80))
def test_random_bytes_never_crash_or_fix(cases: list[tuple[bytes, int]]) -> None:
    for (data, _), res in zip(cases, run(cases), strict=True):
        if b"$" not in data:
            assert res["sentences"] == 0 and res["fix_list"] == []


mutation = st.tuples(
    st.sampled_from(GOOD), st.integers(0, 200), st.integers(0, 255), st.integers(1, 32)
)


@SETTINGS
@given(st.lists(mutation, min_size=60, max_size=120))
def test_a_line_with_a_bad_checksum_never_makes_a_sentence_or_fix(cases: list) -> None:
    inputs = []
    for body, pos, byte, chunk in cases:
        line = bytearray(nm(body))
        line[pos % (len(line) - 2)] = byte  # keep the CRLF
        inputs.append((bytes(line), chunk))
    for (line, _), res in zip(inputs, run(inputs), strict=True):
        if not checksum_ok(line):
            assert res["sentences"] == 0, line
            assert all(not f["valid"] for f in res["fix_list"]), line
        total = res["sentences"] + res["ignored"] + sum(res["drops"].values())
        assert total >= 1, (line, res)  # every line is accounted for


@SETTINGS
@given(
    st.lists(st.sampled_from(GOOD), min_size=2, max_size=12),
    st.lists(st.integers(1, 40), min_size=10, max_size=10),
    st.sampled_from([b"\r\n", b"\n", b"\r"]),
)
def test_splitting_and_line_ends_do_not_change_the_fixes(
    bodies: list[str], chunks: list[int], end: bytes
) -> None:
    data = b"".join(nm(b).replace(b"\r\n", end) for b in bodies)
    out = run([(data, len(data))] + [(data, c) for c in chunks])
    # Random order can make a sentence arrive after its epoch was emitted: "late".
    assert out[0]["sentences"] + out[0]["drops"]["late"] == len(bodies)
    for res in out[1:]:
        assert res["fix_list"] == out[0]["fix_list"]
        assert res["sentences"] == out[0]["sentences"]
