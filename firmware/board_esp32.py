# Board layer for the ESP32: the only module that touches pins, UARTs, the radio, the
# watchdog and the filesystem layout of the real device. Everything else receives
# streams, directories and tasks from here.
#
# What it offers the tracker besides the GPS stream: a Wi-Fi task (network_task), the
# hardware watchdog and the status LED (status) and the end of the loader's trial
# (confirm_boot). It does not decide whether to feed the watchdog nor which pattern to
# show: the tracker's supervisor does, from what its tasks did.
import asyncio
import os
import sys
import time

import log
from machine import UART, WDT, Pin, reset_cause, soft_reset

# UART receive buffer: at 10 Hz and 115200 baud a receiver can fill the line
# (11.5 KB/s). 4 KB covers ~350 ms of a saturated line, more than the longest pause of
# the reader task (a flash write or a GC cycle takes tens of ms) with margin.
GPS_RXBUF = 4096
# The loader's mark of a firmware on trial (loader/boot.py), in the filesystem's root.
_TRIAL = "/boot.trial"
_WDT_DEFAULT_MS = 30000
_JOIN_MS = 20000  # a join still going after this long counts as failed
_WDT_MIN_MS = 8000  # the supervisor looks every 2 s: a few looks per timeout at least
# Status LED patterns, 2 s each (the supervisor's period): on, off, on, off... in ms.
_PATTERNS = {
    "fix": (100, 1900),  # fix and link: a short blink every 2 s
    "no_fix": (1000, 1000),  # slow blink
    "no_link": (100, 200, 100, 1600),  # double blink: fix, but no Wi-Fi or no acks
}


class Board:
    name = "esp32"
    supervised = True  # the tracker runs watch.py: watchdog, status LED, boot trial

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
        self._wifi = None  # (ssid, password, country) once configured with an SSID
        # The Wi-Fi task for the tracker to run (a coroutine), None without an SSID.
        self.network_task = None
        self._wdt_ms = 0
        self._wdt = None
        # False while Wi-Fi is configured but not connected (the LED shows no link). A
        # van without Wi-Fi settings reaches the gateway some other way (or not at all:
        # the uplink's acks tell).
        self.online = True

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
        if cfg["wifi_ssid"]:
            self._wifi = (cfg["wifi_ssid"], cfg["wifi_password"], cfg["wifi_country"])
            self.online = False
            self.network_task = self._net()
        s = cfg["wdt_s"]  # 0: the default; below 0: off (bench work at the REPL)
        self._wdt_ms = 0 if s < 0 else max(s * 1000, _WDT_MIN_MS) if s else _WDT_DEFAULT_MS

    def gps_stream(self):
        # machine.UART is a stream the asyncio poller understands (aio.readable): the GPS
        # task waits for bytes without holding up the others.
        return self.gps_uart

    def restart(self):
        soft_reset()  # the interpreter starts again: boot.py, main.py

    async def _net(self):
        # Joins the access point, and again after a loss, 1 s after a failure, doubling
        # to 60 s. Never blocks: connect() only starts the join, then this task polls.
        # The driver's own reconnecting is off, so the backoff and the log are ours.
        import network

        ssid, key, country = self._wifi  # type: ignore[misc]
        w = network.WLAN(network.STA_IF)
        w.active(True)
        if country:
            network.country(country)  # once the radio is up: the driver must exist
        w.config(reconnects=0)
        wait = 1000
        why = None  # the status that ended the last attempt or link, logged once
        while True:
            if w.isconnected():
                if not self.online:
                    self.online = True
                    why = None
                    wait = 1000
                    log.info("net", "up", ip=w.ifconfig()[0], rssi=w.status("rssi"))
                await asyncio.sleep_ms(1000)
                continue
            if self.online:
                self.online = False  # lost: the uplink's sends fail until it is back
                why = w.status()
                log.warn("net", "down", reason=_reason(network, why))
            try:
                w.connect(ssid, key)
            except OSError as e:
                log.warn("net", "connect_failed", error=repr(e))
            t = time.ticks_ms()
            while w.status() == network.STAT_CONNECTING and \
                    time.ticks_diff(time.ticks_ms(), t) < _JOIN_MS:  # fmt: skip
                await asyncio.sleep_ms(250)
            if w.isconnected():
                continue  # logged above
            s = w.status()
            if s != why:  # the first failure, or another reason: not every retry
                why = s
                log.warn("net", "down", reason=_reason(network, s), retry_ms=wait)
            w.disconnect()
            await asyncio.sleep_ms(wait)
            wait = min(wait * 2, 60000)

    async def status(self, pattern, alive):
        # The supervisor's look, once per LED period: arms the hardware watchdog at the
        # first look (the van has booted), feeds it if the tasks are alive, then plays
        # one 2 s period of the LED's pattern (no Wi-Fi: no link). A watchdog not fed
        # within its timeout resets the chip (reset_cause wdt). Once armed it cannot be
        # stopped and a soft reset keeps it running: a restart must boot within it.
        if self._wdt is None and self._wdt_ms:
            self._wdt = WDT(timeout=self._wdt_ms)
        if alive and self._wdt is not None:
            self._wdt.feed()
        if pattern == "fix" and not self.online:
            pattern = "no_link"
        led = self._led
        on = 1
        for ms in _PATTERNS[pattern]:
            if led is not None:
                led.value(on)
            on ^= 1
            await asyncio.sleep_ms(ms)

    def confirm_boot(self):
        # The van runs: end the loader's trial of a freshly flashed firmware (it would
        # roll back after a reset that finds the mark still there).
        try:
            os.remove(_TRIAL)
        except OSError:
            return  # not on trial
        log.info("boot", "confirmed")

    def describe(self):
        cfg = self.cfg
        if cfg is None:
            return {"board": self.name, "platform": sys.platform}
        import machine

        c = reset_cause()
        names = {machine.PWRON_RESET: "power_on", machine.HARD_RESET: "hard",
                 machine.WDT_RESET: "wdt", machine.DEEPSLEEP_RESET: "deepsleep",
                 machine.SOFT_RESET: "soft"}  # fmt: skip
        return {
            "board": self.name,
            "platform": sys.platform,
            "reset_cause": names.get(c, str(c)),
            "gps": "uart%d rx=%d tx=%d %d baud"
            % (cfg["gps_uart"], cfg["gps_rx"], cfg["gps_tx"], cfg["gps_baud"]),
            "wifi": cfg["wifi_ssid"] or "-",  # never the password
            "wdt_s": self._wdt_ms // 1000,
        }


def _reason(network, s):
    # A WLAN status as a word for the log (network.STAT_*), else its number.
    for k in ("WRONG_PASSWORD", "NO_AP_FOUND", "BEACON_TIMEOUT", "HANDSHAKE_TIMEOUT",
              "ASSOC_FAIL", "CONNECT_FAIL", "IDLE", "CONNECTING"):  # fmt: skip
        if getattr(network, "STAT_" + k, None) == s:
            return k.lower()
    return str(s)
