# The tracker application: wires the board's GPS stream through the NMEA parser and
# acts on every fix. Board-independent: runs unchanged on the ESP32 and the unix port.
#
# Fixes are driven by GPS time (fix.t, seconds since 2000-01-01 UTC), never by the
# wall clock, so a replayed day of driving runs as fast as the simulator can send it.
# Each valid fix goes to the uplink as a position, then to the geofence (fence.py) when
# the van has a route; the events it decides follow their fix in the report stream, are
# logged (`I fence event type=.. n=..`) and the route's progress is saved to flash
# after each, so a reboot mid-round repeats nothing.
#
# Beside the GPS reader (the main task) and the uplink's sender run the board's network
# task, if it has one, and, where the board has work for it, the supervisor (watch.py):
# it feeds the watchdog only while the reader and the sender make progress, gives the
# status LED its pattern and ends the loader's trial of a new firmware once the van runs
# (docs/hardware.md). It is a module of its own, loaded only then: on the sim rig without
# a watchdog or a trial its code would only take heap from the route.
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
# When a replay ends (sim board), how long to wait for the last records to be delivered
# (what is left waits on flash for the next boot).
_DRAIN_MS = const(30000)
_READ_CHUNK = const(128)  # GPS bytes per read: ~1/8 s of NMEA at 9600 baud
# Heap a booted van keeps free for running (the report in flight, the CoAP exchange,
# log lines, reading the queue): measured on the 64-bit unix port at 64K, a van uses
# ~4.5 KB more than it has once booted (`vantrack bench memory`); with 8 KB free at boot
# it keeps ~3.5 KB for the garbage between collections. The CoAP client's receive room
# (coap.py, ~330 bytes here) is part of that and is taken already: 7.5 KB are asked.
_HEAP_RESERVE = const(7680)


class Tracker:
    def __init__(self, board, cfg):
        self.board = board
        self.uplink = None  # start.boot() attaches one if the van reports
        self.echo = cfg["echo_fixes"]
        self.parser = nmea.Parser(self.on_fix)
        self.fixes = 0
        self.valid_fixes = 0
        self.events = 0
        # Log lines that found no heap (the next stats line says how many): a line with
        # a few values needs a block of ~150 contiguous bytes, which a van running its
        # route in a fragmented heap may not have even after a collection, and a log
        # line must never cost a fix or an event.
        self.unlogged = 0
        self.unsaved = 0  # failed attempts to save the route's progress since the last save
        self._stats_t = None
        self.geo = None
        self.route = 0  # version of the route the geofence was built from
        self._ids = None  # the route's fence id hashes, by fence number
        self._etag = None
        self._path = board.flash_dir + "/route.cbor"
        self.restart = False  # set when a new route is to be built at boot
        self._rebuild = False  # the fences went for a fetch: build them again at boot

    def new_route(self, state):
        # From the uplink's route fetch: -1, it is about to fetch; then 0, it failed; 1,
        # a new route was fetched; 2, the van's is current (2.03). A route is built at
        # boot (routefile.install), where the heap is at its emptiest: so for room the
        # fences go (their progress is on flash, saved after every event, and carries
        # over stop by stop), and once a new route is there, or the fences went, the van
        # restarts to build them; what is queued waits on flash meanwhile. (A fetch that
        # keeps failing while acks get through would restart the van at every ack: the
        # log says route fetch_failed or the CoAP code each time.)
        if state < 0:
            if self.geo is not None:
                self.geo = None
                sys.modules.pop("fence", None)
                self._rebuild = True
                gc.collect()
        elif state == 1 or self._rebuild:
            log.warn("route", "restart_to_load")
            self.restart = True

    def _save(self):
        # The route's progress next to it, replaced atomically: its ETag (8 bytes), the
        # number of fences (2, little endian) and their id hashes (4 each: so a route
        # replacing this one takes over stop by stop), then Geofence.state(). A full or
        # failing flash, or no heap for the file, is logged once and the van goes on:
        # on_fix() tries again at every fix until it is saved (a reboot meanwhile would
        # resume from the last progress saved, and repeat what came after).
        ids = self._ids
        try:
            tmp = self._path + ".state.tmp"
            with open(tmp, "wb") as f:
                f.write(self._etag)
                f.write(bytes((len(ids) & 255, len(ids) >> 8)))  # type: ignore[arg-type]
                f.write(ids)
                f.write(self.geo.state())  # type: ignore[union-attr]
            os.rename(tmp, self._path + ".state")
        except (OSError, MemoryError) as e:
            if not self.unsaved:
                try:
                    log.error("route", "state_not_saved", error=repr(e))
                except MemoryError:
                    self.unlogged += 1
            self.unsaved += 1
            return
        if self.unsaved:
            try:
                log.info("route", "state_saved", tries=self.unsaved + 1)
            except MemoryError:
                self.unlogged += 1
            self.unsaved = 0

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
        try:
            log.info("fence", "event", type=etype, n=no, x=extra, t=fix.t)
        except MemoryError:
            self.unlogged += 1  # the event is recorded: its log line is what went
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
                    if self.unsaved:
                        self._save()
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
        try:
            log.info(
                "gps",
                "stats",
                sentences=p.sentences,
                fixes=self.fixes,
                valid=self.valid_fixes,
                events=self.events,
                drops=p.drops,
                mem_free=gc.mem_free(),
                unlogged=self.unlogged,
            )
            self.unlogged = 0
            if self.uplink is not None:
                log.info("uplink", "stats", **self.uplink.stats())
        except MemoryError:
            self.unlogged += 1

    async def run(self):
        up = self.uplink
        board = self.board
        net = board.network_task  # the board's link (Wi-Fi on the ESP32): a coroutine
        if net:
            net = asyncio.create_task(net)
        sender = None if up is None else asyncio.create_task(up.run())
        watch = None
        if board.supervised:
            watch = __import__("watch").watch(self, asyncio.current_task(), sender)
            watch = asyncio.create_task(watch)
        try:
            await self._read_gps()
            # A restart is due (what is queued waits on flash), or the sim board's replay
            # ended: deliver what is left while the rig waits, then stop.
            if up is not None and not self.restart and not await up.drain(_DRAIN_MS):
                log.warn("uplink", "undelivered", queued=up.q.count)
        finally:
            if watch:
                watch.cancel()
            if net:
                net.cancel()
            if sender is not None:
                sender.cancel()
            if up is not None:
                up.client.close()

    async def _read_gps(self):
        # The GPS reader: moves bytes from the board's GPS stream (machine.UART on the
        # ESP32, a pty on the sim board) into the parser, through one preallocated buffer,
        # so reading allocates nothing; the parser calls on_fix once per epoch. It never
        # waits for the gateway: records go to the flash queue.
        stream = self.board.gps_stream()
        exits = self.board.gps_eof_exits
        parser = self.parser
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
                    return  # main() restarts
                continue
            if exits:
                parser.flush()
                log.info("gps", "end_of_stream", fix_failures=oom)
                return
            if self.restart:
                return  # a silent GPS must not hold a restart back
            # No data: a silent receiver. Don't spin; the next byte wakes us normally.
            await asyncio.sleep_ms(100)

    def main(self):
        # Builds the route's fences (start.boot() made this tracker and is gone: the heap
        # is as empty as it gets), then runs until the sim board's replay ends or a
        # restart is due.
        gc.collect()
        try:
            __import__("routefile").install(self)
        finally:
            sys.modules.pop("routefile", None)
        up = self.uplink
        if up is not None:
            up.on_route = self.new_route
            up.route_etag = self._etag
            up.route_version = self.route
            # A van with a route file asks only when an ack names another version.
            up.route_wanted = self._etag is None
        gc.collect()
        n = 0 if self.geo is None else len(self._ids)  # type: ignore[arg-type]
        if n and gc.mem_free() < _HEAP_RESERVE:
            # Fences that leave the van too little heap to run would cost fixes to
            # MemoryError all day: track and report without them, and say so.
            log.error("route", "too_large_for_heap", mem_free=gc.mem_free(), fences=n)
            self.geo = None
            sys.modules.pop("fence", None)
            n = 0
            gc.collect()
        elif n:
            self._save()  # the progress carried over, under this route's ETag
        log.info("boot", "ready", mem_free=gc.mem_free(), fences=n)
        try:
            asyncio.run(self.run())
        finally:
            self.log_stats()
            log.info("boot", "stop")
        if self.restart:
            self.board.restart()  # start again, route first (the queue waits on flash)
