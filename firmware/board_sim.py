# Board layer for the MicroPython unix port: the simulated rig.
#
# The GPS UART is a serial device path (a pty from `vantrack gps-sim --pty`, or a real
# USB-serial adapter), opened as a file and read through asyncio's poller exactly like
# machine.UART on the ESP32, so the event loop never blocks on it. Flash is a directory.
# Options come from the command line: main.py --gps PATH --flash DIR [--echo] [--exit-on-eof]
#
# The network is loopback (no network task). The status LED is the name of the pattern
# the ESP32 would blink (`pattern`). The watchdog is off unless config wdt_s is above 0:
# then it counts wall time, as the ESP32's does (a replay at 80x speed still gets its
# seconds), and a van not fed for that long exits with the restart code, so the rig
# starts it again as a watchdog reset would. Unlike the hardware it has no clock of its
# own: it looks at each LED period (status), which the supervisor runs whether or not it
# feeds. So it catches a task that hangs (the supervisor stops feeding), not a loop
# blocked for good (the ESP32's does).
import asyncio
import os
import sys
import time

import log
from micropython import const

# Exit status asking the rig to start the firmware again (the van's reset: tools/rig.py).
_RESTART = const(3)
# Linux termios c_cc indices (MicroPython's termios module does not export them).
_VTIME = const(5)
_VMIN = const(6)
_TRIAL = "boot.trial"  # the loader's trial mark, in the rig's working directory


class Board:
    name = "sim"
    network_task = None  # loopback: no link to keep up

    def __init__(self, argv=None):
        # One pass over the options (boot only: no helper functions kept in the heap).
        argv = sys.argv[1:] if argv is None else argv
        self.gps_path = None
        flash = "./flash"
        self.overrides = None
        self.gps_eof_exits = False
        i = 0
        while i < len(argv):
            a = argv[i]
            if a in ("--gps", "--flash") and i + 1 < len(argv):
                i += 1
                if a == "--gps":
                    self.gps_path = argv[i]
                else:
                    flash = argv[i]
            elif a == "--echo":
                self.overrides = {"echo_fixes": True}
            elif a == "--exit-on-eof":
                self.gps_eof_exits = True
            else:
                raise ValueError("unknown option " + a)
            i += 1
        if not self.gps_path:
            raise ValueError("--gps PATH is required (a pty from `vantrack gps-sim --pty`)")
        self.flash_dir = flash.rstrip("/") or "."
        cur = ""  # mkdir -p
        for part in self.flash_dir.split("/"):
            cur = cur + part + "/" if cur or not part else part + "/"
            if part:
                try:
                    os.mkdir(cur)
                except OSError:
                    pass
        self.cfg = None
        self.pattern = None  # what the status LED would show (board_esp32._PATTERNS)
        self._wdt_ms = 0

    def configure(self, cfg):
        self.cfg = cfg
        self._wdt_ms = max(cfg["wdt_s"], 0) * 1000
        self.fed = time.ticks_ms()  # last fed (armed at boot, as the van boots in seconds)
        # The supervisor (watch.py) runs only with work to do: a watchdog, or a firmware
        # on trial to confirm (a flash on the sim rig). The LED is not worth its heap.
        try:
            os.stat(_TRIAL)
            self.supervised = True
        except OSError:
            self.supervised = self._wdt_ms > 0

    def gps_stream(self):
        # MicroPython's readinto() on a blocking file keeps reading until the buffer is
        # full, which on a tty would hold a fix back (and block the event loop) until
        # 256 more bytes came in. With VMIN=0/VTIME=0 a tty read returns at once with
        # what is queued, like machine.UART's read on the ESP32; the GPS task only reads
        # after poll() saw data. A regular file (a recorded log) is not a tty: as is.
        try:
            f = open(self.gps_path, "rb", buffering=0)  # type: ignore[arg-type]  # checked at boot
        except OSError:
            if not self.gps_eof_exits:
                raise
            # The replay ended while the van restarted (its pty is gone): an empty line,
            # so the van delivers what is queued and stops as at the end of a replay.
            return open("/dev/null", "rb")
        import termios

        try:
            attrs = termios.tcgetattr(f.fileno())
        except OSError:
            return f
        attrs[6][_VMIN] = 0
        attrs[6][_VTIME] = 0
        termios.tcsetattr(f.fileno(), termios.TCSANOW, attrs)
        return f

    def restart(self):
        sys.exit(_RESTART)

    def status(self, pattern, alive):
        # The supervisor's look, once per LED period (2 s): the pattern the LED would
        # show, and the watchdog, fed if the tasks are alive.
        self.pattern = pattern
        if alive:
            self.fed = time.ticks_ms()
        elif self._wdt_ms and time.ticks_diff(time.ticks_ms(), self.fed) > self._wdt_ms:
            log.error("wdt", "reset", timeout_ms=self._wdt_ms)
            sys.exit(_RESTART)
        return asyncio.sleep_ms(2000)

    def confirm_boot(self):
        try:
            os.remove(_TRIAL)
        except OSError:
            return  # not on trial
        log.info("boot", "confirmed")

    def describe(self):
        return {"board": self.name, "platform": sys.platform, "gps": self.gps_path}
