"""The sim rig as an mpremote target (tools/mprig.py): the real `mpremote` against the
MicroPython unix port on a pty, as against an ESP32 on its USB serial port."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from vantrack.tools import mpy
from vantrack.tools.mprig import SimRig
from vantrack.tools.rig import sample_route

MPREMOTE = str(Path(sys.executable).parent / "mpremote")


def mpremote(port: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [MPREMOTE, "connect", port, "resume", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"mpremote {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
    return proc


def wait_console(rig: SimRig, pattern: str, count: int = 1, timeout: float = 15.0) -> str:
    """The console log once `pattern` occurs `count` times in it."""
    deadline = time.monotonic() + timeout
    while True:
        text = rig.console()
        if len(re.findall(pattern, text)) >= count:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} x{count} not on the console:\n{text[-3000:]}")
        time.sleep(0.05)


def wait_for(pred: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[SimRig]:
    with SimRig(tmp_path / "rig") as r:
        yield r
    assert r.proc is not None and r.proc.poll() is not None


def test_exec_and_file_transfer_round_trip_through_the_port(rig: SimRig, tmp_path: Path) -> None:
    assert mpremote(rig.port, "exec", "print(6 * 7)").stdout == "42\n"
    # The flash is the device's "/", its cwd, and the host's "/" is out of reach.
    out = mpremote(rig.port, "exec", "import os; print(os.getcwd(), os.listdir('/'))").stdout
    assert out == "/ []\n"
    payload = bytes(range(256)) * 40 + b"\r\n\x03\x04end"  # control bytes survive
    local = tmp_path / "blob.bin"
    local.write_bytes(payload)
    mpremote(rig.port, "fs", "mkdir", ":lib")
    mpremote(rig.port, "fs", "cp", str(local), ":lib/blob.bin")
    assert (rig.flash_dir / "lib" / "blob.bin").read_bytes() == payload
    assert "blob.bin" in mpremote(rig.port, "fs", "ls", ":lib").stdout
    digest = mpremote(rig.port, "fs", "sha256sum", ":lib/blob.bin").stdout.split()[-1]
    assert digest == hashlib.sha256(payload).hexdigest()
    back = tmp_path / "back.bin"
    mpremote(rig.port, "fs", "cp", ":lib/blob.bin", str(back))
    assert back.read_bytes() == payload
    # Several files to ":" (the root) at once, as a deployment does.
    (tmp_path / "a.py").write_text("A = 1\n")
    (tmp_path / "b.py").write_text("B = 2\n")
    mpremote(rig.port, "fs", "cp", str(tmp_path / "a.py"), str(tmp_path / "b.py"), ":")
    assert mpremote(rig.port, "exec", "import a, b; print(a.A + b.B)").stdout == "3\n"
    mpremote(rig.port, "fs", "rm", ":lib/blob.bin")
    assert not (rig.flash_dir / "lib" / "blob.bin").exists()
    assert "blob.bin" not in mpremote(rig.port, "fs", "ls", ":lib").stdout


def test_script_renaming_directories_runs_on_flash(rig: SimRig, tmp_path: Path) -> None:
    # What a firmware update does: build app.new/, then swap directories by renaming.
    script = (
        "import os\n"
        "for d in ('app', 'app.new'):\n"
        "    os.mkdir(d)\n"
        "    with open(d + '/v', 'w') as f:\n"
        "        f.write(d)\n"
        "os.rename('app', 'app.old')\n"
        "os.rename('app.new', 'app')\n"
        "print(sorted(os.listdir()), open('app/v').read(), open('app.old/v').read())\n"
    )
    out = mpremote(rig.port, "exec", script).stdout
    assert out == "['app', 'app.old'] app.new app\n"
    assert (rig.flash_dir / "app" / "v").read_text() == "app.new"
    assert (rig.flash_dir / "app.old" / "v").read_text() == "app"
    # `mpremote run` sends a local script file the same way.
    (tmp_path / "undo.py").write_text("import os\nos.rename('app', 'app.x')\nprint('done')\n")
    assert mpremote(rig.port, "run", str(tmp_path / "undo.py")).stdout == "done\n"
    assert sorted(p.name for p in rig.flash_dir.iterdir()) == ["app.old", "app.x"]


def test_boot_and_main_run_at_power_on_with_the_sim_board_options(tmp_path: Path) -> None:
    d = tmp_path / "rig"
    (d / "flash").mkdir(parents=True)
    (d / "flash" / "boot.py").write_text("print('BOOT-BANNER')\n")
    with SimRig(d) as rig:
        text = wait_console(rig, "BOOT-BANNER")
        assert "MAIN-BANNER" not in text
        main = tmp_path / "main.py"
        main.write_text(
            "import os, sys\n"
            "print('MAIN-BANNER', sys.argv, os.getcwd(), sys.path)\n"
            "print('GPS', open(sys.argv[2], 'rb') is not None)\n"
        )
        mpremote(rig.port, "fs", "cp", str(main), ":main.py")
        rig.reset()  # hard reset: power off and on
        text = wait_console(rig, "GPS True")
        assert rig.resets == 1 and rig.restarts == 0 and rig.boots == 2
        assert text.count("BOOT-BANNER") == 2
        argv = "['main.py', '--gps', '/../gps', '--flash', 'data']"
        assert f"MAIN-BANNER {argv} / ['', '.frozen', '/lib']" in text
        assert text.index("BOOT-BANNER", text.index("BOOT-BANNER") + 1) < text.index("MAIN-BANNER")
        assert os.readlink(d / "gps") == rig.gps_port


def test_ctrl_c_interrupts_a_running_main_into_the_repl(tmp_path: Path) -> None:
    d = tmp_path / "rig"
    (d / "flash").mkdir(parents=True)
    (d / "flash" / "main.py").write_text(
        "import time\nn = 0\nwhile True:\n    n += 1\n    print('tick', n)\n    time.sleep(0.05)\n"
    )
    with SimRig(d) as rig:
        wait_console(rig, r"tick \d+", count=3)
        # mpremote's Ctrl-C stops main.py; the REPL then runs in main.py's globals.
        out = mpremote(rig.port, "exec", "print('ran', n > 2)").stdout
        assert out == "ran True\n"
        assert "KeyboardInterrupt" in rig.console()
        assert rig.boots == 1 and rig.restarts == 0  # interrupted, not restarted
        # A terminal on the port (no mpremote): the friendly REPL answers.
        with serial.Serial(rig.port, timeout=0.2) as ser:
            ser.write(b"\x03")
            ser.write(b"print(40 + 2)\r")
            got = b""
            deadline = time.monotonic() + 10
            while b"42" not in got and time.monotonic() < deadline:
                got += ser.read(256)
        assert b"42" in got
        # Code left running from the raw REPL (`exec --no-follow`) is interrupted likewise.
        mpremote(rig.port, "exec", "--no-follow", "while True: n += 1")
        assert mpremote(rig.port, "exec", "print('again')").stdout == "again\n"
        assert rig.boots == 1 and rig.restarts == 0


def test_input_right_behind_a_ctrl_c_reaches_the_repl_it_opened(tmp_path: Path) -> None:
    # What follows a Ctrl-C in the same write reaches the REPL that the Ctrl-C opened.
    d = tmp_path / "rig"
    (d / "flash").mkdir(parents=True)
    (d / "flash" / "main.py").write_text("import time\nwhile True:\n    time.sleep(0.01)\n")
    with SimRig(d) as rig, serial.Serial(rig.port, timeout=0.2) as ser:
        for _ in range(3):
            ser.write(b"\r\x03\r\x01")  # in one write: interrupt, enter the raw REPL
            got = b""
            deadline = time.monotonic() + 10
            while b"raw REPL; CTRL-B to exit\r\n>" not in got and time.monotonic() < deadline:
                got += ser.read(256)
            assert b"raw REPL; CTRL-B to exit\r\n>" in got, got
            ser.write(b"import time\x04")  # OK, then back to running code
            ser.write(b"\x02while True: time.sleep(0.01)\r\r\r")
            time.sleep(0.3)
            ser.reset_input_buffer()


def test_a_device_printing_with_no_host_on_the_port_never_stalls(tmp_path: Path) -> None:
    # A UART with nobody listening drops what it sends; the firmware goes on.
    d = tmp_path / "rig"
    (d / "flash").mkdir(parents=True)
    (d / "flash" / "main.py").write_text(
        "for i in range(3000):\n    print('x' * 70, i)\nprint('ALL-PRINTED')\n"
    )
    with SimRig(d) as rig:
        text = wait_console(rig, "ALL-PRINTED", timeout=20)
        assert "x 2999" in text  # console.log has it all, though no host read the port
        assert mpremote(rig.port, "exec", "print('fresh')").stdout == "fresh\n"


def test_soft_resets_restart_the_interpreter_on_the_same_port(tmp_path: Path) -> None:
    d = tmp_path / "rig"
    (d / "flash").mkdir(parents=True)
    (d / "flash" / "boot.py").write_text("print('BOOT-BANNER')\n")
    (d / "flash" / "main.py").write_text("print('MAIN-BANNER')\n")
    with SimRig(d) as rig:
        wait_console(rig, "MAIN-BANNER")
        # From the raw REPL a board comes back in the raw REPL: boot.py runs, main.py not.
        mpremote(rig.port, "soft-reset")
        wait_for(lambda: rig.restarts == 1)
        assert mpremote(rig.port, "exec", "print('after soft-reset')").stdout.endswith("reset\n")
        mpremote(rig.port, "exec", "import sys; sys.exit()")
        wait_for(lambda: rig.restarts == 2)
        assert mpremote(rig.port, "exec", "print(1)").stdout == "1\n"
        text = wait_console(rig, "BOOT-BANNER", count=3)
        assert text.count("MAIN-BANNER") == 1
        assert text.count("MPY: soft reboot") == 2
        # Ctrl-D at the friendly REPL (what `vantrack flash` sends): main.py runs again.
        with serial.Serial(rig.port, timeout=0.2) as ser:
            ser.write(b"\r\x02")
            ser.write(b"\x03\x04")
            wait_console(rig, "MAIN-BANNER", count=2)
        assert rig.restarts == 3
        # The firmware's own restart (exit status 3, firmware/board_sim.py) likewise.
        mpremote(rig.port, "exec", "import machine; machine.soft_reset()")
        wait_for(lambda: rig.restarts == 4)
        assert mpremote(rig.port, "exec", "print(2)").stdout == "2\n"


def test_deployed_firmware_reads_the_gps_sim_pty(tmp_path: Path) -> None:
    # The real deployment path: compiled firmware copied with mpremote, then a reset.
    mpys = [str(p) for p in sorted(mpy.compiled_firmware().glob("*.mpy")) if p.stem != "main"]
    route = sample_route("urban-round")
    with SimRig(tmp_path / "rig", route=route, speedup=20) as rig:
        mpremote(rig.port, "fs", "cp", *mpys, str(mpy.FIRMWARE_DIR / "main.py"), ":")
        rig.reset()
        text = wait_console(rig, r"I gps stats .*\bfixes=[1-9]", timeout=30)
        assert "I boot start board=sim gps=/../gps" in text
        assert mpremote(rig.port, "exec", "print('stopped')").stdout == "stopped\n"
        assert "KeyboardInterrupt" in rig.console()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except OSError:
        return False


def test_cli_starts_a_background_rig_and_stop_leaves_nothing(tmp_path: Path) -> None:
    d = tmp_path / "rig"
    cli = [sys.executable, "-m", "vantrack.tools.mprig"]
    started = subprocess.run([*cli, "start", "--dir", str(d)], capture_output=True, text=True,
                             timeout=60, check=False)  # fmt: skip
    state = json.loads((d / "rig.json").read_text()) if (d / "rig.json").exists() else {}
    try:
        assert started.returncode == 0, started.stderr
        port = re.search(r"^port: (\S+)  \(mpremote connect", started.stdout, re.M)
        assert port is not None and port.group(1) == state["port"]
        assert os.readlink(d / "port") == state["port"]
        # Through the stable link, as a user would script it.
        assert mpremote(str(d / "port"), "exec", "print('via link')").stdout == "via link\n"
        status = subprocess.run([*cli, "status", "--dir", str(d)], capture_output=True,
                                text=True, timeout=30, check=False)  # fmt: skip
        assert status.returncode == 0 and state["port"] in status.stdout
        reset = subprocess.run([*cli, "reset", "--dir", str(d)], capture_output=True,
                               text=True, timeout=60, check=False)  # fmt: skip
        assert reset.returncode == 0, reset.stderr
        assert mpremote(str(d / "port"), "exec", "print(5)").stdout == "5\n"
        now = json.loads((d / "rig.json").read_text())
        assert now["resets"] == 1 and now["micropython_pid"] != state["micropython_pid"]
        pids = [state["pid"], state["micropython_pid"], now["micropython_pid"]]
        assert all(_alive(p) for p in pids[:1] + pids[2:])
    finally:
        stopped = subprocess.run([*cli, "stop", "--dir", str(d)], capture_output=True,
                                 text=True, timeout=60, check=False)  # fmt: skip
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=10)
    assert not (d / "rig.json").exists() and not (d / "port").is_symlink()
