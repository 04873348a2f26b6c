# Board layer for the MicroPython unix port: the simulated rig.
#
# The GPS UART is a serial device path (a pty from `vantrack gps-sim --pty`, or a real
# USB-serial adapter), opened as a file and read through asyncio's poller exactly like
# machine.UART on the ESP32, so the event loop never blocks on it. Flash is a directory.
# Options come from the command line: main.py --gps PATH --flash DIR [--echo] [--exit-on-eof]
import asyncio
import os
import sys

from micropython import const


def _options(argv):
    opts = {"gps": None, "flash": "./flash", "echo": False, "exit_on_eof": False}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--gps", "--flash") and i + 1 < len(argv):
            opts[a[2:]] = argv[i + 1]
            i += 2
            continue
        if a == "--echo":
            opts["echo"] = True
        elif a == "--exit-on-eof":
            opts["exit_on_eof"] = True
        else:
            raise ValueError("unknown option " + a)
        i += 1
    if not opts["gps"]:
        raise ValueError("--gps PATH is required (a pty from `vantrack gps-sim --pty`)")
    return opts


def _makedirs(path):
    cur = ""
    for part in path.split("/"):
        cur = cur + part + "/" if cur or not part else part + "/"
        if part:
            try:
                os.mkdir(cur)
            except OSError:
                pass


# Linux termios c_cc indices (MicroPython's termios module does not export them).
_VTIME = const(5)
_VMIN = const(6)


def _return_what_is_there(f):
    # MicroPython's readinto() on a blocking file keeps reading until the buffer is full,
    # which on a tty would hold a fix back (and block the event loop) until 256 more bytes
    # came in. With VMIN=0/VTIME=0 a tty read returns at once with what is queued, like
    # machine.UART's read on the ESP32; asyncio only calls it after poll() saw data.
    # A regular file (a recorded log) is not a tty and needs nothing.
    import termios

    try:
        attrs = termios.tcgetattr(f.fileno())
    except OSError:
        return
    attrs[6][_VMIN] = 0
    attrs[6][_VTIME] = 0
    termios.tcsetattr(f.fileno(), termios.TCSANOW, attrs)


class Board:
    name = "sim"

    def __init__(self, argv=None):
        opts = _options(sys.argv[1:] if argv is None else argv)
        self.gps_path = opts["gps"]
        self.flash_dir = opts["flash"].rstrip("/") or "."
        _makedirs(self.flash_dir)
        self.overrides = {"echo_fixes": True} if opts["echo"] else None
        self.gps_eof_exits = opts["exit_on_eof"]
        self.cfg = None
        self._led = False

    def configure(self, cfg):
        self.cfg = cfg

    def gps_stream(self):
        f = open(self.gps_path, "rb", buffering=0)
        _return_what_is_there(f)
        return asyncio.StreamReader(f)

    def led(self, on):
        self._led = bool(on)

    def describe(self):
        return {"board": self.name, "platform": sys.platform, "gps": self.gps_path}
