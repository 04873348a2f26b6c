"""A van from a blank board to a round, the installer's way, on a rig.

`--rig sim` (the default, in CI): the MicroPython unix port behind a serial port
(tools/mprig.py), its flash a directory, its GPS a pty fed by gps-sim. `--rig
serial:PORT --gps-port GPS`: a bench ESP32 on PORT (MicroPython 1.29 written, nothing
else), its GPS UART wired to a USB-serial adapter on GPS (docs/hardware.md, "A bench
rig"). The tests are the same on both: everything goes through the board's serial port
with the real tools (`vantrack flash`, `vantrack provision`, mpremote) and the gateway's
store on the laptop; nothing reads the board's flash from the host.

- a blank board is flashed, provisioned, boots, gets fixes from gps-sim and reports a
  round to the gateway, through a reset in the middle of it, losing no record;
- a second flash of the same build changes nothing;
- a firmware that crashes at start is rolled back by the loader, and the van runs the
  previous one again.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vantrack.tools import fwbuild, rig
from vantrack.tools.mprig import SimRig

START = "2026-11-26T08:00:00Z"
SPEEDUP = "40"


class Bench:
    """The board under test, whichever rig it is on."""

    def __init__(self, spec: str, gps_port: str | None, workdir: Path) -> None:
        self.workdir = workdir
        self.sim: SimRig | None = None
        self.gps_port = gps_port
        self.feeder: subprocess.Popen[bytes] | None = None
        if spec == "sim":
            self.sim = SimRig(workdir / "rig")
            self.sim.start()
            assert self.sim.port is not None
            self.port = self.sim.port
        else:
            self.port = spec.removeprefix("serial:")
            if not gps_port:
                pytest.fail("--rig serial:PORT needs --gps-port (the GPS UART's adapter)")
            self.erase()

    @property
    def target(self) -> str:
        return "unix" if self.sim is not None else "esp32"

    def mpremote(self, *args: str) -> subprocess.CompletedProcess[str]:
        exe = Path(sys.executable).parent / "mpremote"
        return subprocess.run([str(exe), "connect", self.port, "resume", *args],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    def erase(self) -> None:
        """A blank board: no firmware, loader, config or queue (MicroPython stays)."""
        code = ("import os\ndef rm(p):\n try:\n  s=os.stat(p)\n except OSError:\n  return\n"
                " if s[0]&0x4000:\n  [rm(p+'/'+e[0]) for e in os.ilistdir(p)]\n  os.rmdir(p)\n"
                " else:\n  os.remove(p)\n"
                "for p in ('app','app.new','app.old','app.bad','data','boot.py','main.py',"
                "'boot.trial'):\n rm(p)\n")  # fmt: skip
        out = self.mpremote("exec", code)
        assert out.returncode == 0, out.stderr

    def gps(self, route: str, speedup: str) -> None:
        """Start gps-sim on the board's GPS line, from the start of `route`."""
        args = [*rig.CLI, "gps-sim", str(rig.sample_route(route)), "--speedup", speedup,
                "--seed", "3", "--start", START]  # fmt: skip
        if self.sim is None:
            self.feeder = subprocess.Popen(
                [*args, "--serial", str(self.gps_port)], stdout=subprocess.DEVNULL
            )
            return
        # The sim board's GPS UART is <rig>/gps: a pty held open here for the whole test
        # (a GPS module stays wired when it has nothing to say), fed from gps-sim's
        # output; plug it in, then restart the van so it opens it.
        import os
        import threading
        import tty

        master, slave = os.openpty()
        tty.setraw(slave)
        self._fds = [master, slave]
        self.feeder = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        out = self.feeder.stdout
        assert out is not None

        def pump() -> None:
            for chunk in iter(lambda: out.read1(4096), b""):
                os.write(master, chunk)

        threading.Thread(target=pump, daemon=True).start()
        self.sim.gps_link.unlink(missing_ok=True)
        self.sim.gps_link.symlink_to(os.ttyname(slave))
        self.reset()

    def reset(self) -> None:
        """A hard reset, as a power cycle of the van."""
        if self.sim is not None:
            self.sim.reset()
            return
        import serial

        with serial.Serial(self.port, 115200) as s:  # EN through RTS, as esptool does
            s.dtr = False
            s.rts = True
            time.sleep(0.2)
            s.rts = False

    def wait_gps_done(self, timeout: float = 300) -> None:
        assert self.feeder is not None
        self.feeder.wait(timeout)

    def close(self) -> None:
        if self.feeder is not None and self.feeder.poll() is None:
            self.feeder.kill()
            self.feeder.wait()
        if self.sim is not None:
            self.sim.stop()
        import os

        for fd in getattr(self, "_fds", []):
            os.close(fd)


@pytest.fixture
def bench(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bench]:
    bench = Bench(request.config.getoption("--rig"), request.config.getoption("--gps-port"),
                  tmp_path)  # fmt: skip
    try:
        yield bench
    finally:
        bench.close()


def board_hashes(port: str, directory: str) -> dict[str, str]:
    """sha256 of each file in a directory on the board (through its serial port)."""
    from vantrack.tools.flash import Board

    board = Board(port)
    try:
        return board.hashes([directory], [])
    finally:
        board.close()


def vantrack(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*rig.CLI, *args], capture_output=True, text=True, timeout=timeout)
    print(out.stderr[-3000:])
    return out


def stored(db: Path) -> list[tuple[int, int, int | None]]:
    """(seq, received_ms, event type or None) of every record stored."""
    with sqlite3.connect(db) as conn:
        return sorted(
            conn.execute("SELECT seq, received_ms, NULL FROM positions UNION ALL "
                         "SELECT seq, received_ms, type FROM events").fetchall()
        )  # fmt: skip


def settle(db: Path, quiet_s: float = 8.0, timeout: float = 120) -> list[Any]:
    """The store once nothing new arrived for `quiet_s`."""
    deadline = time.monotonic() + timeout
    last: list[Any] = []
    since = time.monotonic()
    while time.monotonic() < deadline:
        now = stored(db)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > quiet_s:
            return now
        time.sleep(0.5)
    return last


def test_a_blank_board_is_flashed_provisioned_and_reports_a_round_through_a_reset(
    bench: Bench, tmp_path: Path,
) -> None:  # fmt: skip
    gw = rig.GatewayProcess(tmp_path / "gw", config="[gateway]\nstats_interval_s = 0\n")
    gw.start()
    try:
        out = vantrack("flash", "--port", bench.port, "--wait", "40")
        assert out.returncode == 0, out.stderr[-2000:]
        assert "confirmed its boot" in out.stderr
        again = vantrack("flash", "--port", bench.port, "--dry-run")
        assert again.returncode == 0 and "0 to send" in again.stderr
        out = vantrack("provision", "van-hil", "--port", bench.port, "--db", str(gw.db),
                       "--credentials-dir", str(tmp_path / "creds"),
                       "--gateway-host", "127.0.0.1", "--gateway-port", str(gw.port),
                       "--report-period-s", "5", "--wait", "40")  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        key = json.loads((tmp_path / "creds" / "van-hil.json").read_text())["key"]
        assert key not in out.stdout + out.stderr
        # A round of the sample urban route, with a power cut a third of the way in.
        bench.gps("urban-round", SPEEDUP)
        deadline = time.monotonic() + 300
        while len(stored(gw.db)) < 40 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(stored(gw.db)) >= 40, "no reports arrived"
        bench.reset()
        bench.wait_gps_done()
        records = settle(gw.db)
        # Provisioned again (new reporting settings): same id and key, config.json
        # replaced, and the van's queue and numbering (data/q/) untouched.
        queue = board_hashes(bench.port, "data/q")
        out = vantrack("provision", "van-hil", "--port", bench.port, "--db", str(gw.db),
                       "--credentials-dir", str(tmp_path / "creds"),
                       "--report-period-s", "10", "--no-reset")  # fmt: skip
        assert out.returncode == 0 and "reusing its id and key" in out.stderr, out.stderr
        assert json.loads((tmp_path / "creds" / "van-hil.json").read_text())["key"] == key
        assert board_hashes(bench.port, "data/q") == queue and queue
        assert '"report_period_s": 10' in out.stderr
    finally:
        gw.stop()

    seqs = [r[0] for r in records]
    statuses = [r for r in records if r[2] == 16]
    arrivals = [r for r in records if r[2] == 2]
    print(f"\n[van on the {bench.target} rig] {len(records)} records stored, seq "
          f"{seqs[0]}..{seqs[-1]}, {len(statuses)} status records, "
          f"{len(arrivals)} arrivals")  # fmt: skip
    # Every number the van gave out is stored once: none lost through the reset.
    assert seqs == list(range(len(seqs)))
    assert len(statuses) >= 2  # a boot before the round, one after the reset
    assert len(records) > 100


def test_a_firmware_that_crashes_at_start_is_rolled_back_to_the_previous_one(
    bench: Bench, tmp_path: Path,
) -> None:  # fmt: skip
    out = vantrack("flash", "--port", bench.port, "--wait", "40")
    assert out.returncode == 0, out.stderr[-2000:]
    # The same firmware with a bug that kills it at start.
    source = tmp_path / "broken"
    shutil.copytree(fwbuild.FIRMWARE_DIR, source,
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    tracker = source / "tracker.py"
    tracker.write_text(tracker.read_text().replace(
        'VERSION = "', 'raise RuntimeError("broken build")\nVERSION = "9.9.9-', 1))  # fmt: skip
    broken = tmp_path / "build"
    fwbuild.build(broken, bench.target, source=source, check=False, progress=None, table=None)
    out = vantrack("flash", "--port", bench.port, "--build-dir", str(broken), "--wait", "40")
    assert out.returncode == 1
    assert "RuntimeError: broken build" in out.stderr
    assert "rolled back" in out.stderr
    good = fwbuild.firmware_version(fwbuild.FIRMWARE_DIR)
    assert f"running {good}" in out.stderr
    listing = bench.mpremote("fs", "ls", ":")
    assert "app.bad" in listing.stdout and "app.old" not in listing.stdout, listing.stdout


def test_console_shows_what_the_board_prints_after_a_reset(bench: Bench) -> None:
    proc = subprocess.Popen(
        [*rig.CLI, "console", "--port", bench.port, "--until", "MicroPython", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(2)  # listening
    bench.reset()
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert "MicroPython" in out
