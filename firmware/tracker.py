# The tracker application: wires the board's GPS stream through the NMEA parser and
# acts on every fix. Board-independent: runs unchanged on the ESP32 and the unix port.
#
# Fixes are driven by GPS time (fix.t, seconds since 2000-01-01 UTC), never by the
# wall clock, so a replayed day of driving runs as fast as the simulator can send it.
# Later stages (fences, reporting queue, CoAP) hang off on_fix.
import asyncio
import gc
import sys

import gps
import log
import nmea
from micropython import const

VERSION = "0.1.0"
# Parser counters are logged every this many GPS seconds.
_STATS_EVERY_S = const(60)
# When a replay ends (sim board), how long to wait for the last reports to be delivered.
_DRAIN_MS = const(30000)


class Tracker:
    def __init__(self, board, cfg, uplink=None):
        self.board = board
        self.cfg = cfg
        self.uplink = uplink
        self.echo = cfg["echo_fixes"]
        self.parser = nmea.Parser(self.on_fix)
        self.fixes = 0
        self.valid_fixes = 0
        self._stats_t = None

    def on_fix(self, fix):
        # Called by the parser once per epoch, in the GPS reader task. Keep it cheap:
        # at 10 Hz this runs 10 times a second on the ESP32.
        self.fixes += 1
        if fix.valid:
            self.valid_fixes += 1
            if self.uplink is not None and fix.t is not None:
                self.uplink.add_fix(fix)
        self.board.led(fix.valid)
        if self.echo:
            self._echo(fix)
        t = fix.t
        if t is not None:
            if self._stats_t is None:
                self._stats_t = t
            elif t - self._stats_t >= _STATS_EVERY_S:
                self._stats_t = t
                self.log_stats()

    def _echo(self, fix):
        # print() writes each value as it goes: no line-sized string per fix.
        print("F", fix.t, fix.ms, fix.lat, fix.lon, fix.speed, fix.course, fix.alt,
              fix.quality, fix.mode, fix.sats, fix.hdop, 1 if fix.valid else 0)  # fmt: skip

    def log_stats(self):
        p = self.parser
        gc.collect()  # so mem_free is the heap not taken by live data
        log.info(
            "gps",
            "stats",
            sentences=p.sentences,
            fixes=self.fixes,
            valid=self.valid_fixes,
            drops=p.drops,
            mem_free=gc.mem_free(),
        )
        if self.uplink is not None:
            log.info("uplink", "stats", **self.uplink.stats())

    async def run(self):
        up = self.uplink
        sender = None if up is None else asyncio.create_task(up.run())
        try:
            await gps.run(self.board.gps_stream(), self.parser, self.board.gps_eof_exits, up)
            # Only the sim board's replay ends: deliver what is left before stopping.
            if up is not None and not await up.drain(_DRAIN_MS):
                log.warn("uplink", "undelivered", queued=len(up.queue))
        finally:
            if sender is not None:
                sender.cancel()
            if up is not None:
                up.client.close()


def _uplink(cfg, flash_dir):
    # Reporting needs a provisioned identity and a gateway; without them the van still
    # tracks (and logs why it does not report).
    if not (cfg["device_id"] and cfg["key"] and cfg["gateway_host"]):
        log.warn("uplink", "not_provisioned", reason="device_id, key and gateway_host needed")
        return None
    import coap
    import report
    import uplink

    # Requests: our largest report plus CoAP header and options. Responses are small (an
    # ack map or a one-line diagnostic), and every received datagram is one allocation.
    tx = cfg["report_max_records"] * report.POSITION_MAX + report.ENVELOPE_MAX + 32
    gc.collect()  # buffers need contiguous heap: collect the import garbage first
    client = coap.Client(cfg["gateway_host"], cfg["gateway_port"], rx_size=192, tx_size=tx)
    try:
        up = uplink.Uplink(cfg, flash_dir, client)
    except ValueError as e:
        # A key that is not 32 hex digits: say so and keep tracking without reporting.
        log.error("uplink", "bad_key", error=str(e))
        return None
    log.info("uplink", "gateway", host=cfg["gateway_host"], port=cfg["gateway_port"])
    return up


def main(board):
    # Collect once a quarter of the heap was allocated since the last collection, not
    # only when an allocation fails: garbage then goes while holes are small.
    gc.threshold((gc.mem_free() + gc.mem_alloc()) // 4)
    # config is needed once, at boot: unload it so its code does not stay in the heap.
    import config

    cfg = config.load(board.flash_dir, board.overrides)
    del sys.modules["config"]
    board.configure(cfg)
    info = board.describe()
    log.info("boot", "start", version=VERSION, device=cfg["device_name"] or "-", **info)
    t = Tracker(board, cfg, _uplink(cfg, board.flash_dir))
    try:
        asyncio.run(t.run())
    finally:
        t.log_stats()
        log.info("boot", "stop")
