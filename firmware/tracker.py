# The tracker application: wires the board's GPS stream through the NMEA parser and
# acts on every fix. Board-independent: runs unchanged on the ESP32 and the unix port.
#
# Fixes are driven by GPS time (fix.t, seconds since 2000-01-01 UTC), never by the
# wall clock, so a replayed day of driving runs as fast as the simulator can send it.
# Each valid fix goes to the uplink as a position, then to the geofence (fence.py) when
# the van has a route; the events it decides follow their fix in the report stream, are
# logged (`I fence event type=.. n=..`) and the route's progress is saved to flash
# after each, so a reboot mid-round repeats nothing.
import asyncio
import gc
import os
import sys

import aio
import log
import nmea
from micropython import const

VERSION = "0.1.0"
# Parser counters are logged every this many GPS seconds.
_STATS_EVERY_S = const(60)
# When a replay ends (sim board), how long to wait for the last reports to be delivered.
_DRAIN_MS = const(30000)
_READ_CHUNK = const(128)  # GPS bytes per read: ~1/8 s of NMEA at 9600 baud
# Heap a booted van keeps free for running (reports in flight, queued reports, the CoAP
# exchange, log lines): measured on the 64-bit unix port at 64K, a van uses ~6 KB more
# than it has once booted, and fixes start failing below ~8.5 KB free at boot (a route
# of ~60 stops there; `vantrack bench memory`).
_HEAP_RESERVE = const(8704)


class Tracker:
    def __init__(self, board, cfg):
        self.board = board
        self.uplink = None  # main() attaches one if the van reports
        self.echo = cfg["echo_fixes"]
        self.parser = nmea.Parser(self.on_fix)
        self.fixes = 0
        self.valid_fixes = 0
        self.events = 0
        self._stats_t = None
        self.geo = None
        self.route = 0  # version of the route the geofence was built from
        self._ids = None  # the route's fence id hashes, by fence number
        self._etag = None
        self._path = board.flash_dir + "/route.cbor"
        self.restart = False  # set when a new route needs a clean heap: see run()
        self.load_route(True)

    def load_route(self, boot=False):
        # (Re)build the geofence from the route file (routefile.load: the code for it is
        # in the heap only meanwhile). The geofence being replaced has its progress in
        # the state file already (saved after every event) and goes first, so the two
        # never share the heap. If the heap cannot take the new one now (a route fetched
        # while everything runs), the van restarts to load it at boot (see run()); if the
        # file is bad it goes on tracking and reporting without fences, and says so.
        self.geo = None
        gc.collect()
        got = None
        try:
            import routefile

            got = routefile.load(self._path, self._event)
        except MemoryError:
            if boot:
                # The heap will never be emptier than now: no fences, and say so. The
                # uplink still gets the file's ETag, so it fetches only a new route.
                log.error("route", "too_large_for_heap")
                try:
                    self._etag = routefile.file_etag(self._path)
                except Exception:
                    pass
            else:
                log.warn("route", "restart_to_load")
                self.restart = True
        except (ValueError, OSError) as e:
            log.error("route", "unreadable", error=repr(e))
        finally:
            sys.modules.pop("routefile", None)
        if got is None:
            return
        self.geo, self.route, self._ids, self._etag, stops = got
        up = self.uplink
        if up is not None:
            up.route_etag = self._etag
            up.route_version = self.route
        log.info("route", "loaded", version=self.route, stops=stops, fences=len(self._ids))
        self._save()

    def _save(self):
        # The route's progress next to it, replaced atomically: its ETag (8 bytes), the
        # number of fences (2, little endian) and their id hashes (4 each: so a route
        # replacing this one takes over stop by stop), then Geofence.state(). Best
        # effort: a full or failing flash is logged, and the van goes on.
        tmp = self._path + ".state.tmp"
        ids = self._ids
        try:
            with open(tmp, "wb") as f:
                f.write(self._etag)
                f.write(bytes((len(ids) & 255, len(ids) >> 8)))  # type: ignore[arg-type]
                f.write(ids)
                f.write(self.geo.state())  # type: ignore[union-attr]
            os.rename(tmp, self._path + ".state")
        except (OSError, MemoryError) as e:
            log.error("route", "state_not_saved", error=repr(e))

    def _event(self, etype, no, fix, extra):
        # Called by the geofence within check(fix), right after the fix's position. The
        # engine has moved on already: the record must be made now (one retry after a
        # collection if the heap is short).
        self.events += 1
        up = self.uplink
        if up is not None:
            try:
                up.add(fix, etype, no, extra, self.route)
            except MemoryError:
                gc.collect()
                up.add(fix, etype, no, extra, self.route)
        log.info("fence", "event", type=etype, n=no, x=extra, t=fix.t)
        self._save()

    def on_fix(self, fix):
        # Called by the parser once per epoch, in the GPS reader task. Keep it cheap:
        # at 10 Hz this runs 10 times a second on the ESP32.
        self.fixes += 1
        if fix.valid:
            self.valid_fixes += 1
            if fix.t is not None:
                if self.uplink is not None:
                    self.uplink.add(fix)
                if self.geo is not None:
                    self.geo.check(fix)
        self.board.led(fix.valid)
        if self.echo:
            # print() writes each value as it goes: no line-sized string per fix.
            print("F", fix.t, fix.ms, fix.lat, fix.lon, fix.speed, fix.course, fix.alt,
                  fix.quality, fix.mode, fix.sats, fix.hdop, 1 if fix.valid else 0)  # fmt: skip
        t = fix.t
        if t is not None:
            if self._stats_t is None:
                self._stats_t = t
            elif t - self._stats_t >= _STATS_EVERY_S:
                self._stats_t = t
                self.log_stats()

    def log_stats(self):
        p = self.parser
        gc.collect()  # so mem_free is the heap not taken by live data
        log.info(
            "gps",
            "stats",
            sentences=p.sentences,
            fixes=self.fixes,
            valid=self.valid_fixes,
            events=self.events,
            drops=p.drops,
            mem_free=gc.mem_free(),
        )
        if self.uplink is not None:
            log.info("uplink", "stats", **self.uplink.stats())

    async def run(self):
        up = self.uplink
        sender = None if up is None else asyncio.create_task(up.run())
        try:
            while True:
                await self._read_gps()
                # The sim board's replay ended, or a restart is due: deliver what is left
                # first (the queue is in RAM), then stop.
                if up is None or await up.drain(_DRAIN_MS):
                    return
                log.warn("uplink", "undelivered", queued=len(up.queue))
                if not self.restart:
                    return
                # A restart now would lose the queue: track on without fences and load
                # the route at the next boot.
                log.warn("route", "restart_postponed")
                self.restart = False
        finally:
            if sender is not None:
                sender.cancel()
            if up is not None:
                up.client.close()

    async def _read_gps(self):
        # The GPS reader: moves bytes from the board's GPS stream (machine.UART on the
        # ESP32, a pty on the sim board) into the parser, through one preallocated buffer,
        # so reading allocates nothing; the parser calls on_fix once per epoch. While the
        # uplink's queue is full (`blocked`) it waits (the bytes stay in the UART/pty
        # buffer) instead of deciding records nobody can keep.
        stream = self.board.gps_stream()
        exits = self.board.gps_eof_exits
        parser = self.parser
        gate = self.uplink
        buf = bytearray(_READ_CHUNK)
        oom = 0
        mv = memoryview(buf)
        while True:
            try:
                await aio.readable(stream)
                n = stream.readinto(mv) or 0  # a UART with nothing (yet) says None
            except OSError as e:
                # A pty whose writer went away reports EIO; a UART never does.
                n = 0
                if not exits:
                    log.warn(
                        "gps", "read_error", errno=e.errno if hasattr(e, "errno") else e.args[0]
                    )
            if n:
                try:
                    parser.feed(buf, n)
                except Exception as e:
                    # Whatever failed in a fix's handling (the heap for a log line or a
                    # report, the flash for a sequence block), the van keeps reading its
                    # GPS: this chunk's fix may be lost, not the van. Logged at the 1st,
                    # 2nd, 4th, 8th... time.
                    oom += 1
                    gc.collect()
                    if not oom & (oom - 1):
                        log.error("gps", "fix_failed", error=repr(e), n=oom)
                if self.restart:
                    return  # stop deciding records: run() delivers them, main() restarts
                if gate is not None and gate.blocked:
                    await gate.space.wait()
                continue
            if exits:
                parser.flush()
                log.info("gps", "end_of_stream", fix_failures=oom)
                return
            if self.restart:
                return  # a silent GPS must not hold a restart back
            # No data: a silent receiver. Don't spin; the next byte wakes us normally.
            await asyncio.sleep_ms(100)


def _uplink(cfg, flash_dir):
    # Reporting needs a provisioned identity and a gateway; without them the van still
    # tracks (and logs why it does not report).
    if not (cfg["device_id"] and cfg["key"] and cfg["gateway_host"]):
        log.warn("uplink", "not_provisioned", reason="device_id, key and gateway_host needed")
        return None
    import coap
    import report
    import uplink

    # Requests: our largest report plus CoAP header and options. Responses: an ack map, a
    # one-line diagnostic, or a 256-byte block of the route with its header and options
    # (ETag, Block2, Content-Format); every received datagram is one allocation.
    tx = cfg["report_max_records"] * report.POSITION_MAX + report.ENVELOPE_MAX + 32
    gc.collect()  # buffers need contiguous heap: collect the import garbage first
    client = coap.Client(cfg["gateway_host"], cfg["gateway_port"], rx_size=300, tx_size=tx)
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
    # The route first, while the heap is at its emptiest, then the uplink.
    t = Tracker(board, cfg)
    up = t.uplink = _uplink(cfg, board.flash_dir)
    # The configuration has been read into the objects that use it: let it go.
    board.cfg = cfg = info = None
    gc.collect()
    fences = 0 if t._ids is None else len(t._ids)
    if t.geo is not None and gc.mem_free() < _HEAP_RESERVE:
        # Fences that leave the van too little heap to run would cost fixes (and their
        # records) to MemoryError all day: track and report without them, and say so.
        log.error("route", "too_large_for_heap", mem_free=gc.mem_free(), fences=fences)
        t.geo = None
        gc.collect()
    log.info("boot", "ready", mem_free=gc.mem_free(), fences=0 if t.geo is None else fences)
    if up is not None:
        up.on_route = t.load_route
        up.route_etag = t._etag
        up.route_version = t.route
    try:
        asyncio.run(t.run())
    finally:
        t.log_stats()
        log.info("boot", "stop")
    if t.restart:
        board.restart()  # everything decided was delivered: start again, route first
