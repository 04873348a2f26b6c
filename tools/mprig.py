"""The sim rig as an mpremote target: the MicroPython unix port made to look like an ESP32
on a serial port, so `mpremote connect PORT resume ...` deploys to it as to a van.

The interpreter (`micropython -X heapsize=64K -i tools/mp/rigboot.py`) runs with its cwd
in `<rig dir>/flash`, the device's "/", and its stdin/stdout/stderr on the slave of a raw
pty (A). A bridge thread joins A's master to a second pty (B), whose slave path is the
"serial port" given to mpremote (`<rig dir>/port` links to it); everything the device
writes is also appended to `<rig dir>/console.log`. rigboot.py does what the ESP32 port
does at reset: boot.py, then main.py, tracebacks printed, then the REPL. When the
interpreter ends (Ctrl-D at the friendly REPL, sys.exit(), the firmware's restart) the rig
starts it again on the same port and flash, as a board soft-resets: after a soft reset in
the raw REPL it comes back in the raw REPL without running main.py, as the ESP32 does.

Where the unix port is not a board, the bridge makes up the difference:
- Ctrl-C: the unix port only takes Ctrl-C as SIGINT while it runs code (its REPL reads
  the byte itself, and SIGINT there would kill it). The bridge turns a Ctrl-C byte into
  SIGINT while the interpreter has its SIGINT handler installed (/proc/PID/status), and
  passes it through as a byte otherwise.
- Input while the interpreter (re)starts is held until it is up (a Ctrl-C then interrupts
  boot.py/main.py as it would on a board, rather than reaching the REPL late as a byte).
- Nobody listening: a UART with no host drops what it sends; the bridge drops the oldest
  output once the port's buffer is full, so a firmware never blocks on its console.

It does not emulate machine, network or the ESP32's flash filesystem: paths are a host
directory, the network is the host's loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from . import mpy
from .rig import sample_route

RIGBOOT = Path(__file__).resolve().parent / "mp" / "rigboot.py"
DEFAULT_DIR = ".vantrack-rig"
STATE_FILE = "rig.json"
# The prompts after which the REPL is reading (and has flushed its input): friendly,
# raw after its banner, raw after a command's output.
_PROMPTS = (b">>> ", b"\r\n>", b"\x04>")
_RAW_BANNER = b"raw REPL; CTRL-B to exit"
_FRIENDLY_BANNER = b'Type "help()" for more information.'
_SOFT_REBOOT = b"MPY: soft reboot\r\n"
# After a soft reset in the raw REPL, how long host input waits for the raw REPL's prompt.
_HOLD_FOR_RAW_S = 5.0
BOOT_TIMEOUT_S = 30.0


def _sigint_caught(pid: int) -> bool:
    """Whether `pid` has a SIGINT handler installed (the unix port installs one while it
    runs code, and resets SIGINT to its default while its REPL waits for input)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except OSError:
        pass
    return False


def _open_raw_pty() -> tuple[int, int, str]:
    """(master, slave, slave path) of a new pty in raw mode: bytes pass as they are."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


class SimRig:
    """One simulated board: the unix port on a pty, flash in `dir/flash`, GPS optional.

    `route` (a GPX/GeoJSON/NMEA file) starts `vantrack gps-sim ROUTE --pty` for the GPS
    at real time or `speedup` times faster (extra options in `sim_args`); without one, the
    GPS is a pty nobody writes to, as a GPS module without a fix, so the firmware waits.
    """

    def __init__(
        self,
        dir: os.PathLike[str] | str,
        route: os.PathLike[str] | str | None = None,
        speedup: float | None = None,
        sim_args: Sequence[str] = (),
        heap: str = mpy.DEFAULT_HEAP,
    ) -> None:
        self.dir = Path(dir).resolve()
        self.flash_dir = self.dir / "flash"
        self.console_log = self.dir / "console.log"
        self.port_link = self.dir / "port"
        self.gps_link = self.dir / "gps"
        self.route = None if route is None else Path(route)
        self.speedup = speedup
        self.sim_args = list(sim_args)
        self.heap = heap
        self.port: str | None = None  # the device path for mpremote (slave of pty B)
        self.gps_port: str | None = None
        self.restarts = 0  # the interpreter ended (soft reset) and was started again
        self.resets = 0  # hard resets by reset()
        self.boots = 0  # times the interpreter came up
        # Called in the bridge thread after each boot (the daemon updates rig.json).
        self.on_boot: Callable[[SimRig], None] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.sim: subprocess.Popen[bytes] | None = None
        self._fds: list[int] = []
        self._gps_fds: list[int] = []
        self._log: IO[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._reset_requested = False
        # Bridge state (bridge thread only, once started).
        self._ready_r: int | None = None
        self._up = False  # the current interpreter signalled it is running
        self._hold = True  # host input waits (interpreter not up, raw REPL not back yet)
        self._hold_until = 0.0
        self._inject_raw = False  # enter the raw REPL at the first prompt (soft reset)
        self._raw = False  # the device's REPL is in raw mode
        self._tail = b""  # the device's last output, for prompts and banners
        self._from_host = b""
        self._failures = 0  # boots in a row that ended before the interpreter came up

    # -- life cycle ---------------------------------------------------------------------

    def start(self, timeout: float = BOOT_TIMEOUT_S) -> None:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.console_log, "ab", buffering=0)
        self._start_gps()
        # The sim board opens the GPS as "/../gps" (rigboot.py): this link, beside flash/.
        assert self.gps_port is not None
        self.gps_link.unlink(missing_ok=True)
        self.gps_link.symlink_to(self.gps_port)
        self._ma, self._sa, _ = _open_raw_pty()
        self._mb, self._sb, self.port = _open_raw_pty()
        # The bridge keeps B's slave open so that the port outlives each host that opens
        # and closes it; it reads from it only to drop what no host took.
        os.set_blocking(self._sb, False)
        self._fds += [self._ma, self._sa, self._mb, self._sb]
        self.port_link.unlink(missing_ok=True)
        self.port_link.symlink_to(self.port)
        self._spawn(raw=False)
        self._thread = threading.Thread(target=self._bridge, name="mprig-bridge", daemon=True)
        self._thread.start()
        self.wait_boot(1, timeout)

    def _start_gps(self) -> None:
        if self.route is None:
            # A GPS without a fix: a pty nobody writes to (the firmware waits for fixes).
            master, slave, self.gps_port = _open_raw_pty()
            self._gps_fds += [master, slave]
            return
        pace = [] if self.speedup is None else ["--speedup", str(self.speedup)]
        cmd = [sys.executable, "-m", "vantrack.tools.cli", "gps-sim", str(self.route),
               "--pty", *pace, *self.sim_args]  # fmt: skip
        with open(self.dir / "gps-sim.log", "ab") as err:
            self.sim = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, start_new_session=True
            )
        assert self.sim.stdout is not None
        first = self.sim.stdout.readline().decode().strip()
        if not first.startswith("pty: "):
            raise RuntimeError(f"gps-sim did not announce a pty: {first!r} (see gps-sim.log)")
        self.gps_port = first[5:]
        out = self.sim.stdout

        def drain() -> None:  # nothing more is expected on stdout; never let it fill
            with contextlib.suppress(OSError, ValueError):  # closed by stop()
                for _ in out:
                    pass

        threading.Thread(target=drain, daemon=True).start()

    def _spawn(self, raw: bool) -> None:
        """Start the interpreter on pty A; `raw`: after a soft reset in the raw REPL."""
        ready_r, ready_w = os.pipe()
        env = dict(os.environ)
        # What tools/mpy.py gives the firmware (the frozen asyncio) and the ESP32's /lib
        # (the flash's, once rigboot.py mounted it as "/"), but not the repository's
        # firmware: on the rig the firmware is what was copied to flash.
        env["MICROPYPATH"] = os.pathsep.join([".frozen", "/lib"])
        env["VANTRACK_RIG_READY_FD"] = str(ready_w)
        env["VANTRACK_RIG_RAW"] = "1" if raw else "0"
        cmd = [mpy.micropython_binary(), "-X", f"heapsize={self.heap}", "-i", str(RIGBOOT)]
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=self._sa, stdout=self._sa, stderr=self._sa, cwd=self.flash_dir,
                env=env, pass_fds=(ready_w,), start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(ready_w)
        self._ready_r = ready_r
        self._up = False
        self._hold = True
        self._hold_until = 0.0
        self._inject_raw = raw
        self._tail = b""

    def wait_boot(self, n: int, timeout: float = BOOT_TIMEOUT_S) -> None:
        """Wait until the interpreter came up `n` times in all."""
        with self._cond:
            done = self._cond.wait_for(
                lambda: self.boots >= n or self._stopping or self._failures >= 3, timeout
            )
            if not done or self._failures >= 3:
                raise RuntimeError(f"the rig's interpreter did not boot (see {self.console_log})")

    def reset(self, timeout: float = BOOT_TIMEOUT_S) -> None:
        """Hard reset: power the interpreter off and on (main.py runs again)."""
        with self._cond:
            n = self.boots + 1
            self._reset_requested = True
            proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.wait_boot(n, timeout)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)
        for proc in (self.proc, self.sim):
            if proc is None:
                continue
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            if proc.stdout is not None:
                with contextlib.suppress(OSError):
                    proc.stdout.close()
        for fd in [*self._fds, *self._gps_fds] + ([self._ready_r] if self._ready_r else []):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds, self._gps_fds, self._ready_r = [], [], None
        for link in (self.port_link, self.gps_link):
            if link.is_symlink():
                link.unlink()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> SimRig:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def console(self) -> str:
        """Everything the device printed so far (console.log)."""
        return self.console_log.read_bytes().decode(errors="replace")

    # -- the bridge ---------------------------------------------------------------------

    def _note(self, msg: str) -> None:
        # The rig's own notes go to console.log only, never to the port.
        if self._log is not None:
            self._log.write(f"\r\nrig: {msg}\r\n".encode())

    def _bridge(self) -> None:
        try:
            while not self._stopping:
                self._step()
        except Exception as e:  # noqa: BLE001 - report it where the user looks
            self._note(f"bridge failed: {e!r}")
            raise

    def _step(self) -> None:
        rl = [self._ma, self._mb]
        if self._ready_r is not None:
            rl.append(self._ready_r)
        r, _, _ = select.select(rl, [], [], 0.05)
        # The ready byte first: it was written before anything the device printed.
        if self._ready_r is not None and self._ready_r in r:
            if os.read(self._ready_r, 16):
                self._up = True
                self._hold = self._inject_raw
                self._hold_until = time.monotonic() + _HOLD_FOR_RAW_S
                with self._cond:
                    self.boots += 1
                    self._failures = 0
                    self._cond.notify_all()
                if self.on_boot is not None:
                    try:
                        self.on_boot(self)
                    except Exception as e:  # noqa: BLE001 - the device goes on regardless
                        self._note(f"on_boot failed: {e!r}")
            else:
                os.close(self._ready_r)
                self._ready_r = None
        if self._ma in r:
            self._read_device()
        if self._mb in r:
            with contextlib.suppress(BlockingIOError):
                data = os.read(self._mb, 4096)
                self._from_host += data
        if self._hold and self._up and time.monotonic() > self._hold_until:
            self._hold = False
        self._pump_input()
        assert self.proc is not None
        if self.proc.poll() is not None:
            self._restart()

    def _read_device(self) -> None:
        while True:
            try:
                data = os.read(self._ma, 4096)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self._device_output(data)

    def _device_output(self, data: bytes) -> None:
        if self._log is not None:
            self._log.write(data)
        self._to_host(data)
        seen = self._tail + data
        raw_at, friendly_at = seen.rfind(_RAW_BANNER), seen.rfind(_FRIENDLY_BANNER)
        if raw_at != friendly_at:  # one of them seen: the later one says the mode
            self._raw = raw_at > friendly_at
        self._tail = seen[-64:]
        if self._up and self._tail.endswith(_PROMPTS):
            if self._inject_raw:
                # Soft reset in the raw REPL: a board comes back in the raw REPL, before
                # it reads anything the host sent meanwhile.
                self._inject_raw = False
                self._tail = b""
                self._write_device(b"\x01")
            else:
                self._hold = False

    def _to_host(self, data: bytes) -> None:
        # A UART sends whether or not a host listens: when the port's buffer is full (no
        # host reading), drop its oldest bytes rather than stall the device.
        while data:
            try:
                n = os.write(self._mb, data)
            except BlockingIOError:
                n = 0
            except OSError:
                return
            data = data[n:]
            if data:
                try:
                    os.read(self._sb, 4096)
                except OSError:
                    return

    def _write_device(self, data: bytes) -> int:
        try:
            return os.write(self._ma, data)
        except BlockingIOError:
            return 0

    def _pump_input(self) -> None:
        assert self.proc is not None
        if not self._up or self._hold:
            return
        while self._from_host:
            if self._from_host[0] == 3:  # Ctrl-C
                if _sigint_caught(self.proc.pid):
                    # Running code: interrupt it, as a board's UART interrupt char does
                    # (the byte is consumed).
                    self._from_host = self._from_host[1:]
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.proc.pid, signal.SIGINT)
                    continue
                if self._write_device(b"\x03") == 0:
                    return
                self._from_host = self._from_host[1:]
                continue
            end = self._from_host.find(b"\x03")
            chunk = self._from_host if end < 0 else self._from_host[:end]
            n = self._write_device(chunk)
            self._from_host = self._from_host[n:]
            if n < len(chunk):
                return

    def _restart(self) -> None:
        assert self.proc is not None
        self._read_device()  # what it printed last
        with self._cond:
            if self._stopping:
                return
            hard = self._reset_requested
            self._reset_requested = False
        if self._ready_r is not None:
            os.close(self._ready_r)
            self._ready_r = None
        if hard:
            self.resets += 1
        else:
            self.restarts += 1
            if not self._up:
                # It ended before coming up (a bad interpreter option, a crash): back off
                # rather than spin; wait_boot() gives up after three in a row.
                with self._cond:
                    self._failures += 1
                    self._cond.notify_all()
                self._note(f"the interpreter ended before it booted (exit {self.proc.returncode})")
                time.sleep(min(5.0, 0.2 * self._failures))
            else:
                self._device_output(_SOFT_REBOOT)  # as the ESP32 says it
        self._spawn(raw=self._raw and not hard)


# -- the daemon and its command line --------------------------------------------------


_STATE_LOCK = threading.Lock()


def _state_path(d: Path) -> Path:
    return d / STATE_FILE


def _write_state(rig: SimRig, pid: int) -> None:
    state = {
        "pid": pid,
        "micropython_pid": rig.proc.pid if rig.proc else None,
        "gps_sim_pid": rig.sim.pid if rig.sim else None,
        "port": rig.port,
        "port_link": str(rig.port_link),
        "gps": rig.gps_port,
        "flash": str(rig.flash_dir),
        "console_log": str(rig.console_log),
        "heap": rig.heap,
        "route": None if rig.route is None else str(rig.route),
        "boots": rig.boots,
        "restarts": rig.restarts,
        "resets": rig.resets,
    }
    path = _state_path(rig.dir)
    with _STATE_LOCK:  # the daemon's main thread and the bridge (on_boot) both write it
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, path)


def serve(args: argparse.Namespace) -> int:
    """The daemon: run a rig until SIGTERM/SIGINT, keeping rig.json up to date."""
    stop = threading.Event()
    reset = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: reset.set())  # `vantrack rig reset`
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    rig = SimRig(args.dir, route=args.route, speedup=args.speedup, heap=args.heap)
    pid = os.getpid()
    rig.on_boot = lambda r: _write_state(r, pid)
    try:
        rig.start()
        _write_state(rig, pid)
        while not stop.wait(0.1):
            if reset.is_set():
                reset.clear()
                rig.reset()
                _write_state(rig, pid)
    finally:
        rig.stop()
        _state_path(rig.dir).unlink(missing_ok=True)
    return 0


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except OSError:
        return False


def _read_state(d: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(_state_path(d).read_text())
    except (OSError, ValueError):
        return None
    return state


def cmd_start(args: argparse.Namespace) -> int:
    d = Path(args.dir).resolve()
    state = _read_state(d)
    if state is not None and _alive(state.get("pid")):
        print(f"a rig is already running in {d} (port {state['port']}); "
              "`vantrack rig stop` first", file=sys.stderr)  # fmt: skip
        return 1
    route = None
    if args.route is not None:
        try:
            route = sample_route(args.route).resolve()
        except FileNotFoundError as e:
            print(e, file=sys.stderr)
            return 2
    d.mkdir(parents=True, exist_ok=True)
    _state_path(d).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "vantrack.tools.mprig", "_serve", "--dir", str(d),
           "--heap", args.heap]  # fmt: skip
    if route is not None:
        cmd += ["--route", str(route)]
    if args.speedup is not None:
        cmd += ["--speedup", str(args.speedup)]
    with open(d / "rig.log", "ab") as log:
        daemon = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + BOOT_TIMEOUT_S + 10
    while (state := _read_state(d)) is None:
        if daemon.poll() is not None or time.monotonic() > deadline:
            if daemon.poll() is None:
                daemon.kill()
            tail = (d / "rig.log").read_text(errors="replace")[-2000:]
            print(f"the rig did not start:\n{tail}", file=sys.stderr)
            return 1
        time.sleep(0.05)
    _print_state(state)
    return 0


def _print_state(state: dict[str, Any]) -> None:
    print(f"port: {state['port']}  (mpremote connect {state['port']} resume ...)")
    print(f"gps: {state['gps']}" + (f"  (gps-sim {state['route']})" if state["route"] else ""))
    print(f"flash: {state['flash']}")
    print(f"console: {state['console_log']}")


def cmd_stop(args: argparse.Namespace) -> int:
    d = Path(args.dir).resolve()
    state = _read_state(d)
    if state is None:
        print(f"no rig running in {d}", file=sys.stderr)
        return 1
    pid = state.get("pid")
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    # Whatever the daemon left (it was killed, say): its children, each in its own group.
    for key in ("pid", "micropython_pid", "gps_sim_pid"):
        child = state.get(key)
        if child and _alive(child):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child, signal.SIGKILL)
    _state_path(d).unlink(missing_ok=True)
    link = d / "port"
    if link.is_symlink():
        link.unlink()
    print(f"rig in {d} stopped")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    d = Path(args.dir).resolve()
    state = _read_state(d)
    if state is None or not _alive(state.get("pid")):
        print(f"no rig running in {d}", file=sys.stderr)
        return 1
    os.kill(state["pid"], signal.SIGUSR1)
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while time.monotonic() < deadline:
        now = _read_state(d)
        if now is not None and now["resets"] > state["resets"]:
            print(f"rig in {d} reset (boot {now['boots']})")
            return 0
        time.sleep(0.05)
    print("the rig did not come back from the reset (see its console.log)", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    d = Path(args.dir).resolve()
    state = _read_state(d)
    if state is None or not _alive(state.get("pid")):
        print(f"no rig running in {d}")
        return 1
    _print_state(state)
    print(f"boots: {state['boots']}  restarts: {state['restarts']}  resets: {state['resets']}")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir", default=DEFAULT_DIR, help=f"the rig's directory (default {DEFAULT_DIR})"
    )


def _add_start_options(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument(
        "--route",
        help="play this route on the GPS pty with `vantrack gps-sim` (a file or a sample "
        "route's name, e.g. urban-round); default: a GPS without a fix",
    )
    p.add_argument("--speedup", type=float, help="gps-sim pace (default: real time)")
    p.add_argument("--heap", default=mpy.DEFAULT_HEAP, help="MicroPython heap (default 64K)")


EPILOG = """\
examples:
  vantrack rig start --route urban-round.gpx --speedup 10
  mpremote connect .vantrack-rig/port resume fs cp firmware/main.py :main.py
  mpremote connect .vantrack-rig/port resume exec "import os; print(os.listdir())"
  vantrack rig stop
See docs/rig.md.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "rig",
        help="a simulated board on a serial port, for mpremote (MicroPython unix port)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="rig_command", metavar="ACTION", required=True)
    start = sub.add_parser("start", help="start a rig in the background and print its port")
    _add_start_options(start)
    start.set_defaults(func=cmd_start)
    stop = sub.add_parser("stop", help="stop the rig and everything it started")
    _add_common(stop)
    stop.set_defaults(func=cmd_stop)
    reset = sub.add_parser("reset", help="hard-reset the device (power off and on)")
    _add_common(reset)
    reset.set_defaults(func=cmd_reset)
    status = sub.add_parser("status", help="the running rig's ports and counts")
    _add_common(status)
    status.set_defaults(func=cmd_status)
    serve_p = sub.add_parser("_serve")  # the daemon itself (started by `start`)
    _add_start_options(serve_p)
    serve_p.set_defaults(func=serve)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vantrack")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["rig", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
