"""`GET /rt` on a real gateway process: the van's route over CoAP, and the report ack
that tells the van a new route is waiting.

Peers: aiocoap's client (reassembles Block2 itself), libcoap's coap-client, and a plain
UDP socket speaking CoAP bytes built and parsed in this file (an independent codec), so
that every Block2 block is seen as it is on the wire: 256-byte blocks when the van asks
for szx 4, any block in any order (the gateway keeps no transfer state), the ETag on
each one, 4.00 past the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import gateway_fixture
import pytest
from gateway_fixture import Device, Gateway, add_device, report, running_gateway, vantrack

from vantrack.gateway import route

DATA = Path(__file__).resolve().parent / "data" / "routes"
VALID = DATA / "valid.geojson"

# CoAP option numbers (RFC 7252, 7959).
ETAG, URI_PATH, CONTENT_FORMAT, URI_QUERY, ACCEPT, BLOCK2, SIZE2 = 4, 11, 12, 15, 17, 23, 28


class Client(gateway_fixture.Client):
    def get(self, uri: str, *, etags: tuple[bytes, ...] = (), accept: int | None = None,
            method: aiocoap.numbers.codes.Code = aiocoap.GET) -> aiocoap.Message:  # fmt: skip
        msg = aiocoap.Message(code=method, uri=uri)
        msg.opt.etags = etags
        if accept is not None:
            msg.opt.accept = accept
        return self.run(asyncio.wait_for(self.ctx.request(msg).response, 20))


@dataclass
class Env:
    gw: Gateway
    client: Client
    creds: Path
    tmp: Path
    names: Iterator[int] = field(default_factory=lambda: iter(range(1000)))

    def device(self) -> Device:
        return add_device(self.gw.db, f"van-r{next(self.names)}", self.creds)

    def load(self, dev: Device, path: Path) -> bytes:
        """`vantrack route load` while the gateway runs; the CBOR it stored."""
        out = vantrack("route", "load", dev.name, str(path), "--db", str(self.gw.db))
        assert out.returncode == 0, out.stderr
        with sqlite3.connect(self.gw.db) as conn:
            row = conn.execute("SELECT cbor FROM routes WHERE device_id = ?", (dev.id,))
            return bytes(row.fetchone()[0])

    def uri(self, dev: Device, key: bytes | None = None, device_id: int | None = None) -> str:
        d = dev.id if device_id is None else device_id
        mac = route.request_mac(dev.key if key is None else key, d).hex()
        return f"coap://127.0.0.1:{self.gw.port}/rt?d={d}&m={mac}"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("rt")
    creds = tmp / "creds"
    add_device(tmp / "gw.db", "van-0", creds)
    with running_gateway(tmp) as gw:
        client = Client()
        try:
            yield Env(gw, client, creds, tmp)
        finally:
            client.close()


def big_route(path: Path, n: int) -> Path:
    """A route file of n circle stops (about 25 bytes each as CBOR)."""
    feats = [{"type": "Feature", "properties": {"stop_id": f"S-{i:03d}", "seq": i + 1},
              "geometry": {"type": "Point", "coordinates": [2.15 + (i // 25) * 0.0017,
                                                            41.38 + (i % 25) * 0.0013]}}
             for i in range(n)]  # fmt: skip
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def code(msg: aiocoap.Message) -> str:
    return str(msg.code).split(" ")[0]


# ---- aiocoap client ------------------------------------------------------------------


def test_route_is_served_with_its_etag_and_logged(env: Env) -> None:
    dev = env.device()
    payload = env.load(dev, VALID)
    resp = env.client.get(env.uri(dev))
    assert code(resp) == "2.05"
    assert resp.payload == payload
    assert int(resp.opt.content_format) == 60
    assert resp.opt.etag == route.etag(payload)
    assert route.decode(resp.payload) == (1, route.load_file(VALID).route)
    line = env.gw.events("route_served")[-1]
    assert (line["device"], line["version"], line["bytes"], line["not_modified"]) == (
        str(dev.id), "1", str(len(payload)), "False")  # fmt: skip


def test_the_etag_the_van_holds_gets_2_03_valid_and_no_payload(env: Env) -> None:
    dev = env.device()
    payload = env.load(dev, VALID)
    tag = route.etag(payload)
    resp = env.client.get(env.uri(dev), etags=(b"\x00" * 8, tag))
    assert (code(resp), resp.payload, resp.opt.etag) == ("2.03", b"", tag)
    assert env.gw.events("route_served")[-1]["not_modified"] == "True"
    assert env.gw.counters()["routes_not_modified"] >= 1


def test_a_route_loaded_while_the_gateway_runs_is_served_on_the_next_request(env: Env) -> None:
    dev = env.device()
    first = env.load(dev, VALID)
    second = env.load(dev, DATA / "antimeridian.geojson")
    resp = env.client.get(env.uri(dev), etags=(route.etag(first),))
    assert code(resp) == "2.05" and resp.payload == second
    assert route.decode(resp.payload)[0] == 2


@pytest.mark.parametrize(
    ("case", "want", "diag", "counter"),
    [
        ("unknown device", "4.01", b"unknown device", "route_rejected_unknown_device"),
        ("wrong mac", "4.01", b"bad mac", "route_rejected_bad_mac"),
        ("another device's mac", "4.01", b"bad mac", "route_rejected_bad_mac"),
        ("no mac", "4.01", b"bad mac", "route_rejected_bad_mac"),
        ("mac not hex", "4.01", b"bad mac", "route_rejected_bad_mac"),
        ("no device", "4.00", b"query: no d=<device id>", "route_rejected_query"),
        ("device not a number", "4.00", b"query: d='van' is not a device id",
         "route_rejected_query"),
        ("device in other digits", "4.00", "query: d='²' is not a device id".encode(),
         "route_rejected_query"),
        ("no route", "4.04", b"no route for this device", "route_not_found"),
        ("POST", "4.05", b"method: POST (GET only)", "route_rejected_method"),
        ("accept text", "4.06", b"accept: accept 0, have 60 (application/cbor)",
         "route_rejected_accept"),
    ],
)  # fmt: skip
def test_refusals(env: Env, case: str, want: str, diag: bytes, counter: str) -> None:
    dev, other = env.device(), env.device()
    env.load(dev, VALID)
    base = f"coap://127.0.0.1:{env.gw.port}/rt"
    kw: dict[str, Any] = {}
    uri = {
        "unknown device": env.uri(dev, device_id=999_999),
        "wrong mac": env.uri(dev, key=bytes(16)),
        "another device's mac": f"{base}?d={dev.id}&m={env.uri(other).split('&m=')[1]}",
        "no mac": f"{base}?d={dev.id}",
        "mac not hex": f"{base}?d={dev.id}&m=zz",
        "no device": f"{base}?m=00",
        "device not a number": f"{base}?d=van&m=00",
        "device in other digits": f"{base}?d=%C2%B2&m=00",  # str.isdigit() says yes
        "no route": env.uri(other),
    }.get(case, env.uri(dev))  # fmt: skip
    if case == "POST":
        kw["method"] = aiocoap.POST
    if case == "accept text":
        kw["accept"] = 0
    before = env.gw.counters().get(counter, 0)
    resp = env.client.get(uri, **kw)
    assert (code(resp), resp.payload) == (want, diag)
    assert env.gw.counters()[counter] == before + 1
    if want != "4.04":
        assert env.gw.events("route_rejected")[-1]["code"] == want
    # And the van with the right MAC still gets its route.
    assert code(env.client.get(env.uri(dev))) == "2.05"


def test_aiocoap_client_reassembles_a_large_route(env: Env) -> None:
    dev = env.device()
    payload = env.load(dev, big_route(env.tmp / "big.geojson", 200))
    assert len(payload) > 4096
    # Without Block2 the gateway starts block-wise itself (1024-byte blocks)...
    resp = env.client.get(env.uri(dev))
    assert resp.payload == payload and resp.opt.etag == route.etag(payload)
    # ...and a van asking for 256-byte blocks gets them (logged at the last block).
    msg = aiocoap.Message(code=aiocoap.GET, uri=env.uri(dev))
    msg.opt.block2 = (0, False, 4)
    resp = env.client.run(env.client.ctx.request(msg).response)
    assert resp.payload == payload
    line = env.gw.events("route_served")[-1]
    assert (line["block_size"], line["blocks"]) == ("256", str(-(-len(payload) // 256)))


# ---- raw UDP: every block as it is on the wire --------------------------------------


def _opt_ext(v: int) -> tuple[int, bytes]:
    if v < 13:
        return v, b""
    if v < 269:
        return 13, bytes([v - 13])
    return 14, (v - 269).to_bytes(2, "big")


def _uint(v: int) -> bytes:
    return v.to_bytes((v.bit_length() + 7) // 8, "big")


def coap_get(
    mid: int, token: bytes, path: str, query: list[str],
    block2: tuple[int, int] | None = None, etag: bytes | None = None,
) -> bytes:  # fmt: skip
    """A confirmable GET, RFC 7252 section 3, options in ascending order."""
    opts: list[tuple[int, bytes]] = []
    if etag is not None:
        opts.append((ETAG, etag))
    opts.append((URI_PATH, path.encode()))
    opts += [(URI_QUERY, q.encode()) for q in query]
    if block2 is not None:
        num, szx = block2
        opts.append((BLOCK2, _uint(num << 4 | szx)))
    out = bytearray([0x40 | len(token), 0x01]) + mid.to_bytes(2, "big") + token
    last = 0
    for number, value in opts:
        d, dx = _opt_ext(number - last)
        n, nx = _opt_ext(len(value))
        out += bytes([d << 4 | n]) + dx + nx + value
        last = number
    return bytes(out)


@dataclass
class Reply:
    type: int
    code: str
    mid: int
    token: bytes
    options: list[tuple[int, bytes]]
    payload: bytes

    def opt(self, number: int) -> list[bytes]:
        return [v for n, v in self.options if n == number]

    @property
    def block2(self) -> tuple[int, bool, int]:
        [raw] = self.opt(BLOCK2)
        v = int.from_bytes(raw, "big")
        return v >> 4, bool(v & 8), v & 7


def coap_parse(data: bytes) -> Reply:
    assert data[0] >> 6 == 1, "CoAP version 1"
    tkl = data[0] & 0x0F
    c = data[1]
    i = 4 + tkl
    options, number = [], 0
    while i < len(data) and data[i] != 0xFF:
        d, n = data[i] >> 4, data[i] & 0x0F
        i += 1
        ext = []
        for nib in (d, n):
            if nib == 13:
                ext.append(data[i] + 13)
                i += 1
            elif nib == 14:
                ext.append(int.from_bytes(data[i : i + 2], "big") + 269)
                i += 2
            else:
                ext.append(nib)
        number += ext[0]
        options.append((number, data[i : i + ext[1]]))
        i += ext[1]
    payload = data[i + 1 :] if i < len(data) else b""
    return Reply((data[0] >> 4) & 3, f"{c >> 5}.{c & 31:02d}", int.from_bytes(data[2:4], "big"),
                 data[4 : 4 + tkl], options, payload)  # fmt: skip


class RawPeer:
    """A UDP socket that sends one CON request at a time and returns its response."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(10)
        self.mid = int.from_bytes(os.urandom(2), "big")

    def close(self) -> None:
        self.sock.close()

    def get(self, query: list[str], block2: tuple[int, int] | None = None,
            etag: bytes | None = None) -> Reply:  # fmt: skip
        self.mid = (self.mid + 1) & 0xFFFF
        token = os.urandom(4)
        self.sock.sendto(coap_get(self.mid, token, "rt", query, block2, etag),
                         ("127.0.0.1", self.port))  # fmt: skip
        while True:
            reply = coap_parse(self.sock.recv(2048))
            if reply.type == 2 and reply.code == "0.00":
                continue  # an empty ACK: the response follows separately
            if reply.token != token:
                continue
            if reply.type == 0:  # a separate CON response: acknowledge it
                self.sock.sendto(bytes([0x60, 0, *reply.mid.to_bytes(2, "big")]),
                                 ("127.0.0.1", self.port))  # fmt: skip
            return reply


@pytest.fixture
def raw(env: Env) -> Iterator[RawPeer]:
    peer = RawPeer(env.gw.port)
    try:
        yield peer
    finally:
        peer.close()


def test_block2_over_raw_udp_gives_256_byte_blocks_with_the_etag_on_each(
    env: Env, raw: RawPeer
) -> None:
    dev = env.device()
    payload = env.load(dev, big_route(env.tmp / "b100.geojson", 100))
    query = [f"d={dev.id}", f"m={route.request_mac(dev.key, dev.id).hex()}"]
    nblocks = -(-len(payload) // 256)
    assert nblocks >= 8
    got = b""
    for num in range(nblocks):
        r = raw.get(query, block2=(num, 4))
        assert r.code == "2.05"
        assert r.block2 == (num, num < nblocks - 1, 4)
        assert len(r.payload) == (256 if num < nblocks - 1 else len(payload) - 256 * num)
        assert r.opt(ETAG) == [route.etag(payload)]
        assert r.opt(CONTENT_FORMAT) == [b"\x3c"]
        assert r.opt(SIZE2) == ([_uint(len(payload))] if num == 0 else [])
        got += r.payload
    assert got == payload
    # Past the end: 4.00 and a diagnostic, not a stray block.
    past = raw.get(query, block2=(nblocks, 4))
    assert (past.code, past.payload) == ("4.00", b"block out of range")


def test_any_block_from_any_socket_at_any_time(env: Env) -> None:
    """No transfer state: a van that rebooted (new source port) resumes where it was."""
    dev = env.device()
    payload = env.load(dev, big_route(env.tmp / "b60.geojson", 60))
    query = [f"d={dev.id}", f"m={route.request_mac(dev.key, dev.id).hex()}"]
    for num in (3, 1, 5):
        peer = RawPeer(env.gw.port)
        try:
            r = peer.get(query, block2=(num, 4))
        finally:
            peer.close()
        assert r.code == "2.05" and r.payload == payload[num * 256 : (num + 1) * 256]


def test_a_route_replaced_mid_transfer_shows_in_the_etag(env: Env, raw: RawPeer) -> None:
    dev = env.device()
    old = env.load(dev, big_route(env.tmp / "b40.geojson", 40))
    query = [f"d={dev.id}", f"m={route.request_mac(dev.key, dev.id).hex()}"]
    first = raw.get(query, block2=(0, 4))
    new = env.load(dev, big_route(env.tmp / "b41.geojson", 41))
    second = raw.get(query, block2=(1, 4))
    assert first.opt(ETAG) == [route.etag(old)]
    assert second.opt(ETAG) == [route.etag(new)] != first.opt(ETAG)  # the van starts again
    assert second.payload == new[256:512]


def test_2_03_over_raw_udp_carries_the_etag_and_no_payload(env: Env, raw: RawPeer) -> None:
    dev = env.device()
    tag = route.etag(env.load(dev, VALID))
    r = raw.get([f"d={dev.id}", f"m={route.request_mac(dev.key, dev.id).hex()}"], etag=tag)
    assert (r.code, r.opt(ETAG), r.payload) == ("2.03", [tag], b"")


# ---- libcoap --------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("coap-client-notls") is None, reason="libcoap3-bin missing")
def test_libcoap_client_fetches_the_route_in_256_byte_blocks(env: Env) -> None:
    dev = env.device()
    payload = env.load(dev, big_route(env.tmp / "lib.geojson", 80))
    out_file = env.tmp / "route.cbor"
    done = len(env.gw.events("route_served"))
    proc = subprocess.run(
        ["coap-client-notls", "-m", "get", "-b", "256", "-B", "20", "-o", str(out_file),
         env.uri(dev)],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out_file.read_bytes() == payload
    assert cbor2.loads(out_file.read_bytes())[1] == 1
    deadline = time.monotonic() + 5
    while len(env.gw.events("route_served")) == done and time.monotonic() < deadline:
        time.sleep(0.05)
    line = env.gw.events("route_served")[-1]
    assert (line["device"], line["block_size"], line["blocks"]) == (
        str(dev.id), "256", str(-(-len(payload) // 256)))  # fmt: skip
    # A wrong MAC: libcoap shows the 4.01, nothing is written.
    bad = subprocess.run(
        ["coap-client-notls", "-m", "get", "-B", "10", env.uri(dev, key=bytes(16))],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert b"4.01" in bad.stdout + bad.stderr


# ---- the report ack carries the route version -----------------------------------------


def post(env: Env, payload: bytes) -> aiocoap.Message:
    msg = aiocoap.Message(code=aiocoap.POST, uri=env.gw.uri, payload=payload)
    msg.opt.content_format = 60
    return env.client.run(asyncio.wait_for(env.client.ctx.request(msg).response, 20))


def test_report_ack_carries_the_route_version_once_the_van_has_a_route(env: Env) -> None:
    dev = env.device()
    ack = post(env, report(dev, 0, 3))
    assert code(ack) == "2.04" and cbor2.loads(ack.payload) == {0: 2}  # no route: no key 1
    env.load(dev, VALID)
    assert cbor2.loads(post(env, report(dev, 3, 3)).payload) == {0: 5, 1: 1}
    env.load(dev, VALID)
    assert cbor2.loads(post(env, report(dev, 6, 3)).payload) == {0: 8, 1: 2}
    # A repeated report is acknowledged again, with the current version.
    assert cbor2.loads(post(env, report(dev, 6, 3)).payload) == {0: 8, 1: 2}
    assert vantrack("route", "rm", dev.name, "--db", str(env.gw.db)).returncode == 0
    assert cbor2.loads(post(env, report(dev, 9, 1)).payload) == {0: 9}
