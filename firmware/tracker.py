# The tracker application: wires the board's GPS stream through the NMEA parser and
# acts on every fix. Board-independent: runs unchanged on the ESP32 and the unix port.
#
# Fixes are driven by GPS time (fix.t, seconds since 2000-01-01 UTC), never by the
# wall clock, so a replayed day of driving runs as fast as the simulator can send it.
# Later stages (fences, reporting queue, CoAP) hang off on_fix.
import asyncio
import gc

import config
import gps
import log
import nmea

VERSION = "0.1.0"
# Parser counters are logged every this many GPS seconds.
STATS_EVERY_S = 60


class Tracker:
    def __init__(self, board, cfg):
        self.board = board
        self.cfg = cfg
        self.echo = cfg["echo_fixes"]
        self.parser = nmea.Parser(self.on_fix)
        self.fixes = 0
        self.valid_fixes = 0
        self.last_t = None  # GPS time of the last valid fix
        self._stats_t = None

    def on_fix(self, fix):
        # Called by the parser once per epoch, in the GPS reader task. Keep it cheap:
        # at 10 Hz this runs 10 times a second on the ESP32.
        self.fixes += 1
        if fix.valid:
            self.valid_fixes += 1
            self.last_t = fix.t
        self.board.led(fix.valid)
        if self.echo:
            self._echo(fix)
        t = fix.t
        if t is not None:
            if self._stats_t is None:
                self._stats_t = t
            elif t - self._stats_t >= STATS_EVERY_S:
                self._stats_t = t
                self.log_stats()

    def _echo(self, fix):
        print(
            "F %s %s %s %s %s %s %s %s %s %s %s %s"
            % (
                fix.t,
                fix.ms,
                fix.lat,
                fix.lon,
                fix.speed,
                fix.course,
                fix.alt,
                fix.quality,
                fix.mode,
                fix.sats,
                fix.hdop,
                1 if fix.valid else 0,
            )
        )

    def log_stats(self):
        p = self.parser
        log.info(
            "gps",
            "stats",
            sentences=p.sentences,
            fixes=self.fixes,
            valid=self.valid_fixes,
            drops=p.drops,
            mem_free=gc.mem_free(),
        )

    async def run(self):
        await gps.run(self.board.gps_stream(), self.parser, self.board.gps_eof_exits)


def main(board):
    cfg = config.load(board.flash_dir, board.overrides)
    board.configure(cfg)
    info = board.describe()
    log.info("boot", "start", version=VERSION, device=cfg["device_name"] or "-", **info)
    t = Tracker(board, cfg)
    try:
        asyncio.run(t.run())
    finally:
        t.log_stats()
        log.info("boot", "stop")
