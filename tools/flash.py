"""Putting the firmware on a van: `vantrack flash`, `vantrack provision`, `vantrack console`.

All three talk to the board over its USB serial port with mpremote's own transport (the
real tool, as a library: raw REPL, raw-paste, file transfer). flash and provision
soft-reset the board into the raw REPL as `mpremote connect PORT ...` does (boot.py runs,
main.py does not), so the firmware's heap is free for the transfer; console only
listens. The sim rig (`vantrack rig start`) is such a board on a pty (docs/rig.md).

The board's filesystem (docs/flashing.md):
    boot.py, main.py   the loader (firmware/loader/): picks app/, finishes or undoes updates
    app/               the firmware (.mpy) and its manifest.json
    data/              config.json (provisioning) and the flash queue: never touched by flash

`flash` never leaves a half-updated firmware: it builds for the board's platform
(tools/fwbuild.py), compares sha256 with what the board holds, writes a complete copy to
app.new/ (unchanged files copied on the board, changed ones sent), verifies every hash
there, then switches with two renames and marks the new firmware on trial (boot.trial).
It soft-resets the board and waits for the firmware's boot line. A firmware that does not
confirm its boot is rolled back to the previous one by the loader at the next start.

`provision` registers the van in the gateway's store (or reuses its entry and key),
writes its credentials file on the laptop (0600) and its config.json on the board
atomically (written beside, then renamed). The key is never printed. The queue and its
numbering (data/q/) are left alone, so a van provisioned again loses nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BAUD = 115200
BANNER = re.compile(r"^I boot start .*\bversion=(\S+)")
CONFIRMED = "I boot confirmed"
ROLLBACK = "W loader rollback"
CHUNK = 512  # bytes per raw-REPL write: larger is faster, smaller is kinder to 64 KB heaps
# USB-serial bridges found on ESP32 boards (vendor id, product id or None for any).
KNOWN_USB = {
    (0x10C4, 0xEA60): "Silicon Labs CP210x",
    (0x1A86, 0x7523): "WCH CH340",
    (0x1A86, 0x55D4): "WCH CH9102",
    (0x0403, 0x6001): "FTDI FT232R",
    (0x0403, 0x6015): "FTDI FT231X",
    (0x303A, None): "Espressif native USB",
}


class FlashError(Exception):
    """Something the user must fix; the message says what."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- the port --------------------------------------------------------------------------
def detect_port() -> str:
    """The serial port of the one ESP32 board attached; FlashError if none or several."""
    from serial.tools import list_ports

    found = []
    for p in list_ports.comports():
        for (vid, pid), name in KNOWN_USB.items():
            if p.vid == vid and (pid is None or p.pid == pid):
                found.append((p.device, name))
    if not found:
        raise FlashError(
            "no ESP32 board found on USB (is it plugged in, with a data cable?); "
            "give --port (the sim rig: `vantrack rig start` prints its port)"
        )
    if len(found) > 1:
        listed = ", ".join(f"{dev} ({name})" for dev, name in found)
        raise FlashError(f"several boards attached: {listed}; choose one with --port")
    return found[0][0]


# ---- a board in raw REPL ---------------------------------------------------------------
# Run on the board: sha256 of every file in the given directories (flat) and of the
# given root files, as {path: hex}. hashlib and binascii are in every ESP32 image.
_HASHES = """
import os, hashlib, binascii
def _h(p, b=bytearray(512)):
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        while True:
            n = f.readinto(b)
            if not n:
                break
            h.update(memoryview(b)[:n])
    return binascii.hexlify(h.digest()).decode()
_r = {}
for _d in %r:
    try:
        for _e in os.ilistdir(_d):
            if _e[1] != 0x4000:
                _r[_d + '/' + _e[0]] = _h(_d + '/' + _e[0])
    except OSError:
        pass
for _p in %r:
    try:
        _r[_p] = _h(_p)
    except OSError:
        pass
print(repr(_r))
del _h, _r
"""

_RMTREE = """
import os
def _rm(p):
    try:
        st = os.stat(p)
    except OSError:
        return
    if st[0] & 0x4000:
        for e in os.ilistdir(p):
            _rm(p + '/' + e[0])
        os.rmdir(p)
    else:
        os.remove(p)
"""

# Copy a file on the board (an unchanged module into app.new/).
_COPY = """
def _cp(a, b, buf=bytearray(512)):
    with open(a, 'rb') as f, open(b, 'wb') as g:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            g.write(memoryview(buf)[:n])
"""


class Board:
    """A board (or the sim rig) in raw REPL over mpremote's serial transport."""

    def __init__(self, port: str) -> None:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        self.port = port
        try:
            self.t = SerialTransport(port, baudrate=BAUD)
            # A soft reset into the raw REPL, as `mpremote connect` does: boot.py runs,
            # main.py does not, so the firmware's heap is free for the transfer (at 64 KB
            # an interrupted firmware leaves too little for mpremote's buffers).
            self.t.enter_raw_repl(soft_reset=True)
        except (TransportError, OSError) as e:
            raise FlashError(f"cannot talk to a MicroPython board on {port}: {e}") from None

    def run(self, code: str) -> str:
        from mpremote.transport import TransportError

        try:
            out: bytes = self.t.exec(code)
        except TransportError as e:
            raise FlashError(f"the board said: {str(e).strip().splitlines()[-1]}") from None
        return out.decode(errors="replace")

    def eval(self, expr: str) -> Any:
        import ast

        return ast.literal_eval(self.run(f"print(repr({expr}))").strip())

    def info(self) -> dict[str, Any]:
        self.run("import sys, os")
        name, version, mpy, platform, machine = self.eval(
            "(sys.implementation.name, sys.implementation.version[:3],"
            " getattr(sys.implementation, '_mpy', 0), sys.platform,"
            " os.uname().machine if hasattr(os, 'uname') else sys.platform)"
        )
        return {"implementation": name, "version": ".".join(map(str, version)),
                "mpy": mpy, "platform": platform, "machine": machine}  # fmt: skip

    def hashes(self, dirs: list[str], files: list[str]) -> dict[str, str]:
        found: dict[str, str] = self.eval_script(_HASHES % (dirs, files))
        return found

    def eval_script(self, code: str) -> Any:
        import ast

        return ast.literal_eval(self.run(code).strip().splitlines()[-1])

    def write(self, path: str, data: bytes, progress: Callable[[int, int], None] | None = None):
        from mpremote.transport import TransportError

        try:
            self.t.fs_writefile(path, data, chunk_size=CHUNK, progress_callback=progress)
        except (TransportError, OSError) as e:
            raise FlashError(f"writing {path} on the board failed: {e}") from None

    def read(self, path: str) -> bytes | None:
        try:
            data: bytes = self.t.fs_readfile(path)
        except Exception:
            return None
        return data

    def serial(self) -> Any:
        return self.t.serial

    def close(self, leave_raw: bool = True) -> None:
        with contextlib.suppress(Exception):
            if leave_raw:
                self.t.exit_raw_repl()
        with contextlib.suppress(Exception):
            self.t.close()


@contextlib.contextmanager
def connected(port: str | None) -> Iterator[Board]:
    board = Board(port or detect_port())
    try:
        yield board
    finally:
        board.close()


Until = re.Pattern[str] | Callable[[list[str]], bool] | None


def soft_reset_and_wait(board: Board, until: Until = BANNER,
                        timeout: float = 60.0, echo: bool = True) -> list[str]:  # fmt: skip
    """Leave the raw REPL, soft-reset the board (Ctrl-D at the friendly REPL, as a
    user would) and read its console until a line matches `until`; the lines read."""
    ser = board.serial()
    board.t.exit_raw_repl()
    ser.write(b"\x03\x04")  # stop what runs, then soft reset: boot.py, main.py
    return read_lines(ser, until, timeout, echo)


def serial_lines(ser: Any, deadline: float | None) -> Iterator[str]:
    """The lines a board writes on its console, until `deadline` (monotonic) if any."""
    buf = b""
    ser.timeout = 0.2
    while deadline is None or time.monotonic() < deadline:
        buf += ser.read(256)
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            yield raw.decode(errors="replace").rstrip("\r")


def read_lines(ser: Any, until: Until, timeout: float, echo: bool = True) -> list[str]:
    lines: list[str] = []
    for line in serial_lines(ser, time.monotonic() + timeout):
        lines.append(line)
        if echo:
            _say(f"  | {line}")
        if until is not None and (until(lines) if callable(until) else until.search(line)):
            break
    return lines


# ---- flash -----------------------------------------------------------------------------
@dataclass
class Plan:
    send: list[str] = field(default_factory=list)  # new or changed: sent from here
    keep: list[str] = field(default_factory=list)  # unchanged: copied on the board
    drop: list[str] = field(default_factory=list)  # on the board, not in the build
    root: list[str] = field(default_factory=list)  # loader files to replace

    @property
    def changes(self) -> bool:
        return bool(self.send or self.drop or self.root)


def plan(manifest: dict[str, Any], on_board: dict[str, str]) -> Plan:
    p = Plan()
    wanted = {f["path"]: f["sha256"] for f in manifest["files"]}
    for path, digest in sorted(wanted.items()):
        if "/" not in path:  # boot.py, main.py
            if on_board.get(path) != digest:
                p.root.append(path)
        elif on_board.get(path) == digest:
            p.keep.append(path)
        else:
            p.send.append(path)
    p.drop = sorted(x for x in on_board if x.startswith("app/") and x not in wanted
                    and x != "app/manifest.json")  # fmt: skip
    return p


def target_for(info: dict[str, Any]) -> str:
    return "esp32" if info["platform"] == "esp32" else "unix"


def build(target: str, out: Path | None) -> tuple[Path, dict[str, Any]]:
    """Build the firmware for the target (tools/fwbuild.py); (output dir, manifest)."""
    from . import fwbuild

    out = out or fwbuild.default_out(target)
    try:
        fwbuild.build(out, target, table=None)
    except fwbuild.BuildError as e:
        raise FlashError(f"the firmware does not build: {e}") from None
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return out, manifest


def mpy_version(path: Path) -> int:
    head = path.read_bytes()[:2]
    if len(head) < 2 or head[0] != ord("M"):
        raise FlashError(f"{path} is not a .mpy file")
    return head[1]


def flash(port: str | None, build_dir: Path | None = None, dry_run: bool = False,
          wait_s: float = 60.0) -> int:  # fmt: skip
    with connected(port) as board:
        info = board.info()
        _say(f"board on {board.port}: {info['implementation']} {info['version']} "
             f"({info['platform']}, {info['machine']})")  # fmt: skip
        target = target_for(info)
        if build_dir is None:
            _say(f"building the firmware for {target} ...")
            out, manifest = build(target, None)
        else:
            out = build_dir
            manifest = json.loads((out / "manifest.json").read_text())
        if manifest.get("target") != target:
            raise FlashError(f"{out} was built for {manifest.get('target')}, the board is {target}")
        mpys = [f["path"] for f in manifest["files"] if f["path"].endswith(".mpy")]
        built = mpy_version(out / mpys[0])
        board_mpy = int(info["mpy"]) & 0xFF
        if board_mpy != built:
            raise FlashError(
                f"the board's MicroPython {info['version']} loads .mpy version {board_mpy}, "
                f"this build is version {built}: flash a MicroPython matching mpy-cross "
                "(docs/flashing.md) first"
            )
        on_board = board.hashes(["app"], ["boot.py", "main.py"])
        p = plan(manifest, on_board)
        version = manifest.get("version", "?")
        _say(f"firmware {version} ({manifest.get('git', '?')}): {len(p.send)} to send, "
             f"{len(p.keep)} unchanged, {len(p.drop)} to remove, "
             f"{len(p.root)} loader files to replace")  # fmt: skip
        for path in p.send:
            _say(f"  send    {path}")
        for path in p.drop:
            _say(f"  remove  {path}")
        for path in p.root:
            _say(f"  loader  {path}")
        if dry_run:
            _say("dry run: nothing written")
            return 0
        if not p.changes:
            _say("the board already runs this firmware; nothing to do")
            return 0
        _stage(board, out, manifest, p)
        _switch(board, p, out)
        _say("switched; soft reset, waiting for the firmware to boot and confirm ...")
        lines = soft_reset_and_wait(board, _settled, wait_s)
    return _verdict(lines, version)


def _settled(lines: list[str]) -> bool:
    """The new firmware confirmed its boot, or was rolled back and the old one booted."""
    if any(ln.startswith(CONFIRMED) for ln in lines):
        return True
    rolled = [i for i, ln in enumerate(lines) if ROLLBACK in ln]
    return bool(rolled) and any(BANNER.search(ln) for ln in lines[rolled[0] :])


def _stage(board: Board, out: Path, manifest: dict[str, Any], p: Plan) -> None:
    board.run(_RMTREE + "_rm('app.new')\nos.mkdir('app.new')")
    if p.keep:
        board.run(_COPY + "".join(
            f"_cp({path!r}, {'app.new/' + path.split('/', 1)[1]!r})\n" for path in p.keep
        ))  # fmt: skip
        _say(f"  copied {len(p.keep)} unchanged files on the board")
    total = len(p.send)
    for i, path in enumerate(p.send, 1):
        data = (out / path).read_bytes()
        started = time.monotonic()
        board.write("app.new/" + path.split("/", 1)[1], data)
        _say(f"  [{i}/{total}] {path}  {len(data):,} B  {time.monotonic() - started:.1f} s")
    # Everything in app.new/ must be exactly the build before anything is switched.
    staged = board.hashes(["app.new"], [])
    want = {"app.new/" + f["path"].split("/", 1)[1]: f["sha256"]
            for f in manifest["files"] if "/" in f["path"]}  # fmt: skip
    bad = sorted(k for k in want if staged.get(k) != want[k])
    if bad:
        raise FlashError(f"verification failed on the board for {', '.join(bad)}; "
                         "the running firmware was not touched")  # fmt: skip
    board.write("app.new/manifest.json", json.dumps(manifest, indent=1).encode())
    _say(f"  verified {len(want)} files (sha256) in app.new/")


def _switch(board: Board, p: Plan, out: Path) -> None:
    # The loader files first, each replaced by a rename (old or new loader both handle
    # any state of app/, app.new/, app.old/).
    for path in p.root:
        board.write(path + ".new", (out / path).read_bytes())
        board.run(f"import os\nos.rename({path + '.new'!r}, {path!r})")
    board.run(
        _RMTREE + "_rm('app.old')\n"
        "try:\n os.stat('app')\n os.rename('app', 'app.old')\nexcept OSError:\n pass\n"
        "os.rename('app.new', 'app')\n"
        "with open('boot.trial', 'w') as f:\n f.write('0')\n"
    )


def _verdict(lines: list[str], version: str) -> int:
    if any(ROLLBACK in ln for ln in lines):
        booted = next((m[1] for ln in lines if (m := BANNER.search(ln))), "?")
        _say(f"the new firmware did not come up: the board rolled back (running {booted}); "
             "its console above says why")  # fmt: skip
        return 1
    booted_v = next((m[1] for ln in lines if (m := BANNER.search(ln))), None)
    if booted_v is None:
        _say("no boot line from the firmware within the wait; see `vantrack console`")
        return 1
    if booted_v != version:
        _say(f"the board booted {booted_v}, not {version}")
        return 1
    if not any(ln.startswith(CONFIRMED) for ln in lines):
        _say(f"firmware {version} booted but did not confirm within the wait (it confirms "
             "once the GPS has spoken); it is still on trial: see `vantrack console`")  # fmt: skip
        return 1
    _say(f"firmware {version} is running and confirmed its boot")
    return 0


# ---- provision -------------------------------------------------------------------------
CONFIG_PATH = "data/config.json"
# Flags -> config.json keys (firmware/config.py DEFAULTS).
CONFIG_FLAGS = {
    "gateway_host": str, "gateway_port": int, "wifi_ssid": str, "wifi_country": str,
    "gps_uart": int, "gps_rx": int, "gps_tx": int, "gps_baud": int,
    "report_period_s": int, "report_stopped_period_s": int, "report_distance_m": int,
    "report_angle_deg": int, "report_speed_delta_kmh": int,
}  # fmt: skip


def provision(args: argparse.Namespace) -> int:
    from vantrack.gateway import cli as gwcli

    settings = {k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k) is not None}
    if args.wifi_password_file is not None:
        settings["wifi_password"] = Path(args.wifi_password_file).read_text().strip()
    cfg = gwcli._config(args, **{"gateway.credentials_dir": args.credentials_dir})
    with contextlib.closing(gwcli._open(cfg)) as store:
        dev = store.device(args.device)
        if dev is None:
            import secrets

            if not gwcli._NAME.match(args.device):
                raise FlashError(f"bad device name {args.device!r}: letters, digits, . _ -")
            dev = store.add_device(args.device, secrets.token_bytes(16))
            _say(f"registered {dev.name} (id {dev.id}) in {cfg.gateway.db}")
        else:
            _say(f"{dev.name} is registered (id {dev.id}); reusing its id and key")
        creds = gwcli.write_credentials(cfg.gateway.credentials_dir, dev)
        _say(f"credentials: {creds} (mode 0600)")
    with connected(args.port) as board:
        old = board.read(CONFIG_PATH)
        config: dict[str, Any] = {}
        if old:
            try:
                config = json.loads(old)
            except ValueError:
                _say(f"the board's {CONFIG_PATH} is not JSON; writing a new one")
        config.update(settings)
        config.update(device_id=dev.id, device_name=dev.name, key=dev.key.hex())
        if not config.get("gateway_host"):
            raise FlashError("--gateway-host is needed (the board has none configured)")
        board.run(_RMTREE + "try:\n os.mkdir('data')\nexcept OSError:\n pass")
        board.write(CONFIG_PATH + ".new", json.dumps(config, sort_keys=True).encode())
        board.run(f"import os\nos.rename({CONFIG_PATH + '.new'!r}, {CONFIG_PATH!r})")
        shown = {k: v for k, v in config.items() if k not in ("key", "wifi_password")}
        _say(f"wrote {CONFIG_PATH} on the board: {json.dumps(shown, sort_keys=True)}")
        if args.no_reset:
            return 0
        _say("soft reset, waiting for the firmware to boot ...")
        lines = soft_reset_and_wait(board, BANNER, args.wait)
    if not any(BANNER.search(ln) for ln in lines):
        _say("no boot line from the firmware (is it flashed? `vantrack flash`)")
        return 1
    return 0


# ---- console ---------------------------------------------------------------------------
def console(port: str | None, until: str | None, timeout: float | None) -> int:
    import serial

    port = port or detect_port()
    try:
        ser = serial.Serial(port, BAUD, timeout=0.2)
    except (serial.SerialException, OSError) as e:
        raise FlashError(f"cannot open {port}: {e}") from None
    pattern = re.compile(until) if until else None
    _say(f"console of {port} (Ctrl-C to leave)")
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        for line in serial_lines(ser, deadline):
            print(line, flush=True)
            if pattern is not None and pattern.search(line):
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        ser.close()
    return 1 if pattern is not None else 0


# ---- command line ----------------------------------------------------------------------
def _handler(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except FlashError as e:
            print(f"vantrack: {e}", file=sys.stderr)
            return 1

    return run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    port_help = "serial port of the board (default: the one ESP32 attached over USB)"
    f = sub.add_parser(
        "flash", help="build the firmware and deploy it to a board with mpremote",
        description="Build the firmware for the board's platform (vantrack firmware build), "
        "send only the files whose sha256 differs from the board's, into a staging "
        "directory verified on the board, then switch atomically (the previous firmware "
        "is kept, and restored by the loader if the new one does not confirm its boot), "
        "soft-reset and wait for the firmware's boot line. Works the same on the sim rig "
        "(`vantrack rig start`). See docs/flashing.md.",
    )  # fmt: skip
    f.add_argument("--port", help=port_help)
    f.add_argument(
        "--build-dir",
        type=Path,
        metavar="DIR",
        help="deploy this build (default: build now into build/firmware-TARGET)",
    )
    f.add_argument("--dry-run", action="store_true", help="list what would change, write nothing")
    f.add_argument("--wait", type=float, default=60.0, metavar="S",
                   help="how long to wait for the boot line (default 60)")  # fmt: skip
    f.set_defaults(func=_handler(lambda a: flash(a.port, a.build_dir, a.dry_run, a.wait)))

    p = sub.add_parser(
        "provision", help="register a van and write its config to the board",
        description="Register DEVICE in the gateway's store (or reuse its entry and key), "
        "write its credentials file (mode 0600, never printed) and its config.json on the "
        "board, atomically: identity, gateway, Wi-Fi, GPS UART and reporting settings. "
        "Settings not given keep the value the board has. The queue and its numbering "
        "stay as they are. See docs/flashing.md.",
    )  # fmt: skip
    p.add_argument("device", metavar="DEVICE", help="the van's name (letters, digits, . _ -)")
    p.add_argument("--port", help=port_help)
    g = p.add_argument_group("the van's settings (config.json; docs/hardware.md)")
    for key, kind in CONFIG_FLAGS.items():
        g.add_argument("--" + key.replace("_", "-"), type=kind, metavar="V")
    g.add_argument(
        "--wifi-password-file",
        metavar="FILE",
        help="a file holding the Wi-Fi password (not a flag: it would show in ps)",
    )
    p.add_argument(
        "--credentials-dir",
        type=Path,
        metavar="DIR",
        help="where the credentials file goes (default: config, else ./credentials)",
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="the gateway's TOML config")
    p.add_argument("--db", type=Path, metavar="PATH", help="the gateway's SQLite store")
    p.add_argument("--no-reset", action="store_true", help="do not restart the firmware after")
    p.add_argument("--wait", type=float, default=60.0, metavar="S",
                   help="how long to wait for the boot line (default 60)")  # fmt: skip
    p.set_defaults(func=_handler(provision))

    c = sub.add_parser(
        "console", help="show a board's console (its log)",
        description="Print what the board writes on its serial console, a line at a time, "
        "until Ctrl-C. It does not interrupt the firmware.",
    )  # fmt: skip
    c.add_argument("--port", help=port_help)
    c.add_argument("--until", metavar="REGEX", help="stop (exit 0) at the first matching line")
    c.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    c.set_defaults(func=_handler(lambda a: console(a.port, a.until, a.timeout)))
