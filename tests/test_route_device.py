"""The van's side of routes, under `micropython -X heapsize=64K` against a real gateway.

tools/mp/route_fetch.py runs the firmware's own CoAP client and `rtfetch.fetch()`
(block by block, 256-byte Block2, ETag) and reads the file back with `routefile`, as the
van does after a fetch. What it reads must be what the gateway encoded, fence by fence;
a second fetch with the ETag costs one 2.03; a wrong key or no route leaves no file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_fixture import Device, Gateway, add_device, running_gateway, vantrack

from vantrack.gateway import route
from vantrack.tools import mpy

FETCH = mpy.REPO_ROOT / "tools" / "mp" / "route_fetch.py"
SAMPLE = mpy.REPO_ROOT / "tools" / "routes" / "urban-round.stops.geojson"


def id_hash(s: str) -> int:
    """firmware/routefile.py's 30-bit rotate-xor hash of a fence id."""
    h = 0
    for c in s.encode():
        h = ((h & 0x1FFFFFF) << 5) ^ (h >> 25) ^ c
    return h


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("rtdev")
    add_device(tmp / "gw.db", "van-0", tmp / "creds")
    with running_gateway(tmp) as g:
        yield g


def device(gw: Gateway, name: str) -> Device:
    return add_device(gw.db, name, gw.db.parent / "creds")


def load(gw: Gateway, dev: Device, path: Path) -> bytes:
    out = vantrack("route", "load", dev.name, str(path), "--db", str(gw.db))
    assert out.returncode == 0, out.stderr
    with sqlite3.connect(gw.db) as conn:
        return bytes(conn.execute("SELECT cbor FROM routes WHERE device_id = ?",
                                  (dev.id,)).fetchone()[0])  # fmt: skip


def fetch(gw: Gateway, dev: Device, flash: Path, *, key: bytes | None = None,
          repeat: int = 1) -> tuple[list[dict[str, Any]], Any]:  # fmt: skip
    flash.mkdir(parents=True, exist_ok=True)
    proc = mpy.run(FETCH, ["127.0.0.1", str(gw.port), str(dev.id), (key or dev.key).hex(),
                           str(flash / "route.cbor"), "-", str(repeat)], timeout=120)  # fmt: skip
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    lines = [json.loads(ln) for ln in out.splitlines()]
    return lines[:-1], lines[-1]


def fence(f: route.Fence) -> list[Any]:
    return [id_hash(f.id), int(f.kind), f.inner_m, f.outer_m, list(f.coords)]


def test_the_van_fetches_its_route_block_by_block_and_reads_what_the_gateway_encoded(
    gw: Gateway, tmp_path: Path
) -> None:
    dev = device(gw, "van-a")
    cbor = load(gw, dev, SAMPLE)
    assert len(cbor) > 256  # more than one block
    fetches, got = fetch(gw, dev, tmp_path, repeat=2)
    first, again = fetches
    assert (first["decision"], first["code"], first["changed"]) == ("done", "2.05", True)
    assert first["sent"] == -(-len(cbor) // 256)  # one request per 256-byte block
    assert first["etag"] == route.etag(cbor).hex()
    assert (tmp_path / "route.cbor").read_bytes() == cbor
    # With the ETag it holds, the van is told its route is current: one datagram.
    assert (again["code"], again["changed"], again["sent"]) == ("2.03", False, 1)
    version, want = route.decode(cbor)
    assert got["version"] == version
    assert got["depot"] == (None if want.depot is None else fence(want.depot))
    assert got["stops"] == [fence(s) for s in want.stops]
    assert got["zones"] == [fence(z) for z in want.zones]
    assert dict(got["params"]) == {int(k): v for k, v in want.params.items()}


def test_a_wrong_key_or_no_route_leaves_no_route_file(gw: Gateway, tmp_path: Path) -> None:
    dev = device(gw, "van-b")
    [res], got = fetch(gw, dev, tmp_path / "none")
    assert (res["code"], res["decision"], res["changed"], got) == ("4.04", "backoff", False, None)
    load(gw, dev, SAMPLE)
    [res], got = fetch(gw, dev, tmp_path / "badkey", key=bytes(16))
    assert (res["code"], res["decision"], res["changed"], got) == ("4.01", "backoff", False, None)
    assert not (tmp_path / "badkey" / "route.cbor.tmp").exists()
