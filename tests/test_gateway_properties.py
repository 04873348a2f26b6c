"""Property: no payload crashes the gateway, and nothing is stored unless its MAC verifies.

Random bytes and mutations of valid reports (bit flips, truncation, insertions) go
through one gateway process. Each gets an answer; the gateway is alive at the end; and
every stored record belongs to a payload that decodes and verifies with the device's key
(checked here with gateway/wire.py as the oracle).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from typing import Any

import aiocoap
import pytest
from gateway_fixture import Device, Gateway, add_device, post, report, running_gateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vantrack.gateway import wire

CODES = {"2.04", "4.00", "4.01", "4.13"}


class Env:
    def __init__(self, gw: Gateway, dev: Device) -> None:
        self.gw, self.dev = gw, dev
        self.loop = asyncio.new_event_loop()
        self.ctx = self.loop.run_until_complete(aiocoap.Context.create_client_context())
        self.allowed: set[int] = set()  # seqs of payloads that verify

    def send(self, payload: bytes) -> str:
        try:
            r = wire.decode(payload, max_bytes=1024)
            if r.device_id == self.dev.id and wire.verify(r, self.dev.key):
                self.allowed.update(rec.seq for rec in r.records)
        except wire.WireError:
            pass
        ans = self.loop.run_until_complete(post(self.ctx, self.gw.uri, payload))
        return ans.code

    def close(self) -> None:
        self.loop.run_until_complete(self.ctx.shutdown())
        self.loop.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("gwprop")
    dev = add_device(tmp / "gw.db", "van-p", tmp / "creds")
    with running_gateway(tmp, "--log-level", "error") as gw:
        e = Env(gw, dev)
        try:
            yield e
        finally:
            e.close()
        assert gw.alive()
        with sqlite3.connect(gw.db) as conn:
            seqs = {s for (s,) in conn.execute("SELECT seq FROM positions")}
            seqs |= {s for (s,) in conn.execute("SELECT seq FROM events")}
            others = conn.execute(
                "SELECT count(*) FROM positions WHERE device_id != ?", (dev.id,)
            ).fetchone()[0]
        assert seqs <= e.allowed and others == 0


COMMON: Any = dict(
    deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@settings(max_examples=150, **COMMON)
@given(st.binary(min_size=0, max_size=1100))
def test_random_bytes_never_crash_the_gateway(env: Env, payload: bytes) -> None:
    assert env.send(payload) in CODES
    assert env.gw.alive()


@st.composite
def mutated(draw: st.DrawFn, dev: Device) -> bytes:
    seq = draw(st.integers(0, 10_000))
    good = bytearray(report(dev, seq, draw(st.integers(1, 12))))
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "replace_tail"]))
    i = draw(st.integers(0, len(good) - 1))
    if kind == "flip":
        good[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del good[i:]
    elif kind == "insert":
        good[i:i] = draw(st.binary(min_size=1, max_size=4))
    else:
        good[i:] = draw(st.binary(max_size=20))
    return bytes(good)


@settings(max_examples=200, **COMMON)
@given(st.data())
def test_mutated_reports_are_stored_only_if_the_mac_verifies(env: Env, data: st.DataObject) -> None:
    payload = data.draw(mutated(env.dev))
    code = env.send(payload)
    assert code in CODES
    if code == "2.04":
        r = wire.decode(payload)
        assert wire.verify(r, env.dev.key)


def test_the_gateway_still_stores_after_the_fuzzing(env: Env) -> None:
    assert env.send(report(env.dev, 50_000, 3)) == "2.04"
