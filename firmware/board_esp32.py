# Board layer for the ESP32: the only module that touches pins, UARTs and the filesystem
# layout of the real device. Everything else receives streams and directories from here.
import os
import sys

from machine import UART, Pin, reset_cause, soft_reset

# UART receive buffer: at 10 Hz and 115200 baud a receiver can fill the line
# (11.5 KB/s). 4 KB covers ~350 ms of a saturated line, more than the longest pause of
# the reader task (a flash write or a GC cycle takes tens of ms) with margin.
GPS_RXBUF = 4096


class Board:
    name = "esp32"

    def __init__(self):
        self.flash_dir = "/data"
        try:
            os.mkdir(self.flash_dir)  # first boot after flashing: the config and counters go here
        except OSError:
            pass  # already there
        self.overrides = None
        self.gps_eof_exits = False
        self.cfg = None
        self.gps_uart = None
        self._led = None

    def configure(self, cfg):
        self.cfg = cfg
        self.gps_uart = UART(
            cfg["gps_uart"],
            baudrate=cfg["gps_baud"],
            rx=cfg["gps_rx"],
            tx=cfg["gps_tx"],
            rxbuf=GPS_RXBUF,
        )
        self._led = Pin(cfg["status_led"], Pin.OUT)

    def gps_stream(self):
        # machine.UART is a stream the asyncio poller understands (aio.readable): the GPS
        # task waits for bytes without holding up the others.
        return self.gps_uart

    def restart(self):
        soft_reset()  # the interpreter starts again: boot.py, main.py

    def led(self, on):
        if self._led is not None:
            self._led.value(1 if on else 0)

    def describe(self):
        cfg = self.cfg
        if cfg is None:
            return {"board": self.name, "platform": sys.platform}
        return {
            "board": self.name,
            "platform": sys.platform,
            "reset_cause": reset_cause(),
            "gps": "uart%d rx=%d tx=%d %d baud"
            % (cfg["gps_uart"], cfg["gps_rx"], cfg["gps_tx"], cfg["gps_baud"]),
        }
