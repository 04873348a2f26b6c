"""A real `vantrack gateway` process on loopback for tests, and helpers to talk to it.

`running_gateway()` starts `python -m vantrack.tools.cli gateway --bind 127.0.0.1 --port P
--db ...` on a free UDP port, waits for its `gateway listening on` line and always stops
it (SIGTERM, then SIGKILL). Its stderr (the structured log) goes to a file the test can
read. `post()` sends one report with an aiocoap client. Importable by any test module:
`from gateway_fixture import running_gateway, post, ...`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiocoap

from vantrack.gateway import wire
from vantrack.tools import rig
from vantrack.tools.rig import free_udp_port, stop_process

__all__ = ["free_udp_port", "stop_process"]

CLI = [sys.executable, "-m", "vantrack.tools.cli"]
START_TIMEOUT_S = 20.0
T0 = 800_000_000  # GPS seconds: 2025-05-08


T = TypeVar("T")


class Client:
    """An aiocoap client context on its own event loop, usable from sync tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ctx = self.run(aiocoap.Context.create_client_context())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.ctx.shutdown())
        self.loop.close()


def vantrack(*args: str, cwd: Path | None = None, stdin: bytes | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "VANTRACK_DB"}
    return subprocess.run(
        [*CLI, *args], cwd=cwd, input=stdin.decode("latin-1") if stdin is not None else None,
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def vantrack_bytes(*args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, timeout=60)


@dataclass
class Device:
    id: int
    name: str
    key: bytes


def add_device(db: Path, name: str, creds: Path, *extra: str) -> Device:
    out = vantrack("devices", "add", name, "--db", str(db), "--credentials-dir", str(creds),
                   *extra)  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads((creds / f"{name}.json").read_text())
    return Device(data["device_id"], name, bytes.fromhex(data["key"]))


@dataclass
class Gateway:
    port: int
    db: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    uri: str = field(init=False)

    def __post_init__(self) -> None:
        self.uri = f"coap://127.0.0.1:{self.port}/r"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, event: str) -> list[dict[str, str]]:
        """Parsed key=value log lines of one event type."""
        out = []
        for line in self.log().splitlines():
            if f" event={event}" in line:
                out.append(dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)))
        return out

    def counters(self, timeout: float = 5.0) -> dict[str, int]:
        """The counters of a `stats` line logged after this call (stats_interval_s small)."""
        seen = len(self.events("stats"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.events("stats")
            if len(lines) > seen:
                return {
                    k: int(v) for k, v in lines[-1].items() if k not in ("ts", "level", "event")
                }
            time.sleep(0.05)
        raise AssertionError("no stats line from the gateway")

    def alive(self) -> bool:
        return self.proc.poll() is None


@contextlib.contextmanager
def running_gateway(tmp: Path, *extra: str, db: Path | None = None) -> Iterator[Gateway]:
    proc = rig.GatewayProcess(
        tmp, *extra, db=db or tmp / "gw.db", config="[gateway]\nstats_interval_s = 0.2\n"
    )
    proc.start()
    assert proc.proc is not None
    try:
        yield Gateway(proc.port, proc.db, proc.log_path, proc.proc)
    finally:
        proc.stop()


def positions(device: int, seq: int, n: int, t0: int = T0) -> list[wire.Record]:
    """n plausible positions (Barcelona, 1 Hz, moving) starting at seq."""
    return [
        wire.Position(
            seq + i, wire.gps_time(t0 + i), 41_390_000 + 37 * i, 2_170_000 - 21 * i,
            50 + i % 7, (90 + i) % 360, 9 if i == 0 else None, 8 if i == 0 else None,
        )
        for i in range(n)
    ]  # fmt: skip


def report(dev: Device, seq: int, n: int = 10, t0: int = T0) -> bytes:
    return wire.encode(dev.id, seq, t0, positions(dev.id, seq, n, t0), dev.key)


@dataclass
class Answer:
    code: str  # "2.04"
    payload: bytes
    max_age: int | None
    content_format: int | None


async def post(
    ctx: aiocoap.Context, uri: str, payload: bytes, content_format: int | None = 60,
    method: aiocoap.numbers.codes.Code = aiocoap.POST, timeout: float = 10.0,
) -> Answer:  # fmt: skip
    msg = aiocoap.Message(code=method, uri=uri, payload=payload)
    if content_format is not None:
        msg.opt.content_format = content_format
    resp = await asyncio.wait_for(ctx.request(msg).response, timeout)
    cf = resp.opt.content_format
    return Answer(
        str(resp.code).split(" ")[0], resp.payload, resp.opt.max_age,
        None if cf is None else int(cf),
    )  # fmt: skip
