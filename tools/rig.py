"""The simulated rig: vans' firmware under MicroPython fed by gps-sim, and a gateway.

A `SimVan` is two processes joined by real serial: `vantrack gps-sim --pty` plays a
route into a fresh pty pair, and the firmware's main.py runs under the `micropython`
binary (heap capped like an ESP32's) on the sim board, reading that pty through its board
layer exactly as the ESP32 reads its UART. A `GatewayProcess` is `vantrack gateway` on a
free loopback port with its own store, where the vans report. Used by the demo, the
benchmarks and hil_tests/.
It does not parse NMEA itself: everything it reports comes out of the firmware's console.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import mpy

ROUTES_DIR = Path(__file__).resolve().parent / "routes"
GPS_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def sample_route(name: str) -> Path:
    """Path of a sample route by name (`urban-round`) or the path itself if it exists."""
    p = Path(name)
    if p.exists():
        return p
    candidate = ROUTES_DIR / f"{name}.gpx"
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(r.stem for r in ROUTES_DIR.glob("*.gpx")))
    raise FileNotFoundError(f"no route {name!r} (sample routes: {known})")


def parse_event_line(line: str) -> dict[str, Any] | None:
    """Decode a firmware console `I fence event t=.. type=.. x=.. n=..` line, else None:
    t GPS seconds since 2000, type the wire event type, n the fence number, x the
    type-specific value or None (firmware/tracker.py Tracker._event)."""
    if not line.startswith("I fence event "):
        return None
    kv = dict(p.split("=", 1) for p in line.split()[3:])
    return {"t": int(kv["t"]), "type": int(kv["type"]), "n": int(kv["n"]),
            "x": None if kv["x"] == "null" else int(kv["x"])}  # fmt: skip


def parse_fix_line(line: str) -> dict[str, Any] | None:
    """Decode a firmware console `F ...` line (echoed fix) into host units, else None.

    The firmware prints integers only (see firmware/tracker.py): GPS seconds since 2000,
    milliseconds, microdegrees, mm/s, centidegrees, centimetres, HDOP*100.
    """
    parts = line.split()
    if len(parts) != 13 or parts[0] != "F":
        return None

    def num(s: str) -> int | None:
        return None if s == "None" else int(s)

    t, ms, lat, lon, speed, course, alt, quality, mode, sats, hdop, valid = map(num, parts[1:])
    time = None
    if t is not None:
        stamp = GPS_EPOCH + dt.timedelta(seconds=t, milliseconds=ms or 0)
        time = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "time": time,
        "lat": None if lat is None else lat / 1e6,
        "lon": None if lon is None else lon / 1e6,
        "speed_mps": None if speed is None else speed / 1000,
        "course_deg": None if course is None else course / 100,
        "alt_m": None if alt is None else alt / 100,
        "quality": quality,
        "mode": mode,
        "sats": sats,
        "hdop": None if hdop is None else hdop / 100,
        "valid": bool(valid),
    }


# The sim board's exit status for "reset me" (firmware/board_sim.py Board.restart).
RESTART_EXIT = 3


class SimVan:
    """One simulated van: gps-sim on a pty feeding the firmware under `micropython`."""

    def __init__(
        self,
        route: os.PathLike[str] | str,
        flash_dir: os.PathLike[str] | str,
        *,
        rate_hz: float = 1.0,
        speedup: float | None = None,
        sim_args: Sequence[str] = (),
        heap: str | None = None,
        echo: bool = True,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.route = Path(route)
        self.flash_dir = Path(flash_dir)
        self.rate_hz = rate_hz
        self.speedup = speedup
        self.sim_args = list(sim_args)
        self.heap = heap or mpy.DEFAULT_HEAP
        self.echo = echo
        self.config = config
        self.sim: subprocess.Popen[bytes] | None = None
        self.fw: subprocess.Popen[bytes] | None = None
        self.restarts = 0  # times the firmware asked for a reset and was started again
        self.kills = 0  # times kill() cut its power and it was started again
        self._killed = False
        self.pty_path: str | None = None
        self._sim_stderr: list[str] = []

    def start(self) -> None:
        pace = ["--fast"] if self.speedup is None else ["--speedup", str(self.speedup)]
        cmd = [
            sys.executable, "-m", "vantrack.tools.cli", "gps-sim", str(self.route), "--pty",
            "--rate", str(self.rate_hz), *pace, *self.sim_args,
        ]  # fmt: skip
        self.sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.sim.stdout is not None
        first = self.sim.stdout.readline().decode().strip()
        if not first.startswith("pty: "):
            self.stop()
            raise RuntimeError(f"gps-sim did not announce a pty: {first!r}")
        self.pty_path = first[5:]
        self._drain(self.sim.stderr, self._sim_stderr)
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        if self.config is not None:
            # What provisioning writes to the van's flash (docs/hardware.md).
            (self.flash_dir / "config.json").write_text(json.dumps(self.config))
        self._start_firmware()

    def _start_firmware(self) -> None:
        assert self.pty_path is not None
        args = ["--gps", self.pty_path, "--flash", str(self.flash_dir), "--exit-on-eof"]
        if self.echo:
            args.append("--echo")
        self.fw = mpy.popen(
            mpy.FIRMWARE_MAIN, args, heap=self.heap,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip

    @staticmethod
    def _drain(stream: IO[bytes] | None, into: list[str]) -> None:
        # gps-sim's progress goes to stderr; read it so the pipe never fills and blocks it.
        if stream is None:
            return

        def pump() -> None:
            for raw in stream:
                into.append(raw.decode(errors="replace").rstrip())

        threading.Thread(target=pump, daemon=True).start()

    def console(self) -> Iterator[str]:
        """The firmware's console lines, until it exits.

        A firmware that exits with RESTART_EXIT asked for a reset (as machine.soft_reset()
        on a van), and one `kill()`ed had its power cut: either is started again on the
        same GPS pty and flash, and its console goes on here."""
        while True:
            assert self.fw is not None and self.fw.stdout is not None
            for raw in self.fw.stdout:
                yield raw.decode(errors="replace").rstrip("\r\n")
            rc = self.fw.wait()
            if rc != RESTART_EXIT and not self._killed:
                return
            self.fw.stdout.close()
            if self._killed:
                self._killed = False
                self.kills += 1
            else:
                self.restarts += 1
            self._start_firmware()

    def kill(self, torn: bytes = b"") -> None:
        """Cut the van's power: SIGKILL the firmware, wherever it is (a flash write
        included). `torn` is appended to the newest queue segment afterwards, as a power
        cut in the middle of writing a record leaves part of it. `console()` starts the
        firmware again (counted in `kills`)."""
        assert self.fw is not None
        self._killed = True
        self.fw.kill()
        self.fw.wait()
        if torn:
            segs = sorted((int(p.name), p) for p in (self.flash_dir / "q").glob("[0-9]*"))
            if segs:
                with open(segs[-1][1], "ab") as f:
                    f.write(torn)

    def flush(self, timeout: float = 120.0) -> list[str]:
        """Boot the firmware on a GPS line that says nothing, on the same flash, so it
        delivers what its queue holds (it exits once the queue is empty or its drain
        timed out). Returns its console lines."""
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            args = ["--gps", "/dev/null", "--flash", str(self.flash_dir), "--exit-on-eof"]
            proc = mpy.popen(mpy.FIRMWARE_MAIN, args, heap=self.heap,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            lines += out.decode(errors="replace").splitlines()
            if queue_state(self.flash_dir).pending == 0:
                break
        return lines

    def fixes(self) -> Iterator[dict[str, Any]]:
        for line in self.console():
            fix = parse_fix_line(line)
            if fix is not None:
                yield fix

    def wait(self, timeout: float | None = None) -> int:
        assert self.fw is not None
        return self.fw.wait(timeout)

    def stop(self) -> None:
        for proc in (self.fw, self.sim):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for proc in (self.fw, self.sim):
            if proc is not None:
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        with contextlib.suppress(OSError):
                            stream.close()

    @property
    def sim_log(self) -> list[str]:
        return list(self._sim_stderr)

    def __enter__(self) -> SimVan:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


CLI = [sys.executable, "-m", "vantrack.tools.cli"]

# The van's flash queue (firmware/queue.py): 36-byte slots, 32 bytes of fields then
# their CRC-32, in segment files q/0, q/1...; q/ack holds the tail (4 bytes LE, last
# complete entry wins).
QUEUE_SLOT = struct.Struct("<IIiiHHBBBBHiHI")


@dataclass
class QueueState:
    next_seq: int  # the number the next record would get: records made so far
    tail: int  # the first record not acknowledged
    records: list[tuple[int, ...]]  # the valid slots still on flash, by segment order

    @property
    def pending(self) -> int:
        return sum(1 for r in self.records if r[0] >= self.tail)


def queue_state(flash_dir: os.PathLike[str] | str) -> QueueState:
    """Read a van's flash queue as the firmware's recovery does (a test oracle)."""
    qdir = Path(flash_dir) / "q"
    tail = 0
    ack = qdir / "ack"
    if ack.exists():
        data = ack.read_bytes()
        n = len(data) // 4 * 4
        if n:
            tail = int.from_bytes(data[n - 4 : n], "little")
    records: list[tuple[int, ...]] = []
    last = 0
    for _, path in sorted((int(p.name), p) for p in qdir.glob("[0-9]*")):
        data = path.read_bytes()
        for off in range(0, len(data) - QUEUE_SLOT.size + 1, QUEUE_SLOT.size):
            rec = QUEUE_SLOT.unpack_from(data, off)
            if zlib.crc32(data[off : off + 32]) != rec[-1]:
                break
            records.append(rec[:-1])
            last = rec[0] + 1
    return QueueState(max(tail, last), tail, records)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of a child's stdout, or what came before `timeout` seconds passed."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace")


class GatewayProcess:
    """`vantrack gateway` on 127.0.0.1 and a free port, with its store in `workdir`.

    Its structured log (stderr) goes to `log_path`; `start()` returns once the gateway
    printed its `gateway listening on` line, and `stop()` always ends it.
    """

    START_TIMEOUT_S = 30.0

    def __init__(
        self, workdir: os.PathLike[str] | str, *extra: str, db: Path | None = None,
        config: str = "",
    ) -> None:  # fmt: skip
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_port()
        self.db = db or self.workdir / "vantrack.db"
        self.log_path = self.workdir / f"gateway-{self.port}.log"
        self.config_path = self.workdir / f"gateway-{self.port}.toml"
        self.config_path.write_text(config)
        self.credentials = self.workdir / "credentials"
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*CLI, "gateway", "--bind", "127.0.0.1", "--port", str(self.port),
                 "--db", str(self.db), "--config", str(self.config_path), *self.extra],
                stdout=subprocess.PIPE, stderr=log,
            )  # fmt: skip
        line = read_line(self.proc, self.START_TIMEOUT_S)
        if line != f"gateway listening on 127.0.0.1:{self.port}\n":
            self.stop()
            raise RuntimeError(f"gateway did not start: {line!r}\n{self.log()[-2000:]}")

    def stop(self) -> int | None:
        return None if self.proc is None else stop_process(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def add_device(self, name: str) -> dict[str, Any]:
        """Register a van (`vantrack devices add`) and return its credentials file's content."""
        proc = subprocess.run(
            [*CLI, "devices", "add", name, "--db", str(self.db),
             "--credentials-dir", str(self.credentials)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"devices add {name} failed: {proc.stderr}")
        creds: dict[str, Any] = json.loads((self.credentials / f"{name}.json").read_text())
        return creds

    def van_config(self, name: str, **settings: Any) -> dict[str, Any]:
        """A provisioned van's config.json for this gateway (device registered now)."""
        creds = self.add_device(name)
        return {
            "device_id": creds["device_id"], "device_name": name, "key": creds["key"],
            "gateway_host": "127.0.0.1", "gateway_port": self.port, **settings,
        }  # fmt: skip

    def __enter__(self) -> GatewayProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
