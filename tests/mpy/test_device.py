# The van on the device, on the sim board under MicroPython: the supervisor (watch.py)
# feeds the watchdog only while the GPS reader and the sender make progress, gives the
# status LED its pattern and ends the loader's trial; the sim board's watchdog resets a
# van that is not fed.
import asyncio
import os
from array import array

import aio
import board_sim
import config
import log
import mptest
import nmea
import tracker
import watch as supervisor

# tracker.py's _SLACK_MS, and uplink.py's counters in Uplink.v (consts: not attributes).
SLACK_MS = 10000
UP_REPORTS = 11
UP_FAILURES = 13
DIR = "/tmp/vantrack-mpy-device-" + "".join("%02x" % b for b in os.urandom(4))
CWD = os.getcwd()
lines = []


def _rec(level):
    def f(topic, event, **kv):
        lines.append(level + " " + topic + " " + event)

    return f


log.info = _rec("I")
log.warn = _rec("W")
log.error = _rec("E")


def _board(wdt_s=0):
    try:
        os.mkdir(DIR)
    except OSError:
        pass
    b = board_sim.Board(["--gps", "/dev/null", "--flash", DIR + "/flash"])
    cfg = config.load(b.flash_dir)
    cfg["wdt_s"] = wdt_s
    b.configure(cfg)
    return b, cfg


class Client:
    lifetime_ms = 0


class Uplink:
    # What the supervisor reads of an uplink: its counters and its client's lifetime.
    def __init__(self, lifetime_ms):
        self.v = array("i", bytes(4 * 38))
        self.client = Client()
        self.client.lifetime_ms = lifetime_ms


class Van:
    # A tracker on the sim board whose supervisor looks every 20 ms instead of 2 s, with
    # tasks standing in for the reader and the sender.
    def __init__(self, up=None):
        self.board, cfg = _board()
        self.t = tracker.Tracker(self.board, cfg)
        self.t.uplink = up
        self.looks = []
        b = self.board

        def status(pattern, alive):
            board_sim.Board.status(b, pattern, alive)  # the sim board's own
            self.looks.append((pattern, alive))
            return asyncio.sleep_ms(20)

        b.status = status
        self.hang = aio.Flag()  # never set: a task waiting on it hangs
        self.hung = None  # the stand-in that hangs: "reader" or "sender"
        self.fixing = False

    async def alive_then_hang(self, name):
        while self.hung != name:
            if self.fixing:
                self.t.fixes += 1
                self.t.valid_fixes += 1
            await asyncio.sleep_ms(5)
        await self.hang.wait()

    def run(self, scenario):
        async def main():
            reader = asyncio.create_task(self.alive_then_hang("reader"))
            sender = asyncio.create_task(self.alive_then_hang("sender"))
            watch = asyncio.create_task(supervisor.watch(self.t, reader, sender))
            try:
                await scenario(self)
            finally:
                for task in (watch, reader, sender):
                    task.cancel()

        asyncio.run(main())


def test_supervisor_feeds_while_tasks_progress_and_stops_when_the_sender_hangs():
    del lines[:]
    # A CoAP request that may last 30 ms: a sender waiting longer than that (plus the
    # slack) for its response is hung.
    van = Van(Uplink(30 - SLACK_MS))

    async def scenario(van):
        await asyncio.sleep_ms(200)
        n = len(van.looks)
        mptest.true(n >= 5, "%d looks in 200 ms" % n)
        mptest.true(all(alive for _, alive in van.looks), van.looks)
        van.hung = "sender"  # it now waits on a flag nobody sets
        await asyncio.sleep_ms(100)
        fed = van.board.fed
        await asyncio.sleep_ms(200)
        mptest.eq(van.board.fed, fed, "fed after the tasks hung")
        mptest.eq(van.looks[-1][1], False)
        mptest.true("W wdt not_fed" in lines, lines)

    van.run(scenario)


def test_a_reader_waiting_for_bytes_is_alive_and_a_finished_sender_is_not():
    import socket

    # A silent GPS is no reason to reset: the reader waits in asyncio's I/O queue, here
    # on a socket nobody sends to, far longer than the 30 ms the sender may wait.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(socket.getaddrinfo("127.0.0.1", 0)[0][-1])
    van = Van(Uplink(30 - SLACK_MS))
    looks = van.looks

    async def main():
        async def silent_gps():
            await aio.readable(s)

        async def sender():
            while True:
                await asyncio.sleep_ms(5)

        async def ended():
            pass

        reader = asyncio.create_task(silent_gps())
        task = asyncio.create_task(sender())
        watch = asyncio.create_task(supervisor.watch(van.t, reader, task))
        await asyncio.sleep_ms(150)
        mptest.true(len(looks) >= 3 and all(alive for _, alive in looks), looks)
        watch.cancel()
        task.cancel()
        # A sender that ended (it never should) stops the feeding at once.
        task = asyncio.create_task(ended())
        del looks[:]
        watch = asyncio.create_task(supervisor.watch(van.t, reader, task))
        await asyncio.sleep_ms(60)
        mptest.true(looks and not any(alive for _, alive in looks), looks)
        watch.cancel()
        reader.cancel()

    try:
        asyncio.run(main())
    finally:
        s.close()


def test_led_pattern_follows_fix_and_link():
    up = Uplink(60000)
    van = Van(up)

    async def scenario(van):
        await asyncio.sleep_ms(60)
        mptest.eq(van.board.pattern, "no_fix")  # no fix yet
        van.fixing = True
        await asyncio.sleep_ms(60)
        mptest.eq(van.board.pattern, "no_link")  # fixes, but no report acked yet
        up.v[UP_REPORTS] += 1
        await asyncio.sleep_ms(60)
        mptest.eq(van.board.pattern, "fix")
        up.v[UP_FAILURES] += 1  # a delivery failed: the link is down
        await asyncio.sleep_ms(60)
        mptest.eq(van.board.pattern, "no_link")
        up.v[UP_REPORTS] += 1
        await asyncio.sleep_ms(60)
        mptest.eq(van.board.pattern, "fix")
        van.fixing = False  # the GPS lost its fix
        await asyncio.sleep_ms(60)
        mptest.eq(van.board.pattern, "no_fix")

    van.run(scenario)


def test_a_van_without_uplink_shows_no_link():
    van = Van(None)

    async def scenario(van):
        van.fixing = True
        await asyncio.sleep_ms(60)
        mptest.eq(van.board.pattern, "no_link")

    van.run(scenario)


def _trial(present):
    os.chdir(DIR)
    if present:
        with open("boot.trial", "w") as f:
            f.write("1")


def _on_trial():
    try:
        os.stat(DIR + "/boot.trial")
        return True
    except OSError:
        return False


def test_confirm_boot_removes_the_trial_mark_once_and_logs_it():
    b, _ = _board()
    try:
        _trial(True)
        del lines[:]
        b.confirm_boot()
        mptest.eq(_on_trial(), False)
        mptest.eq(lines, ["I boot confirmed"])
        b.confirm_boot()  # not on trial (any more): nothing to say
        mptest.eq(lines, ["I boot confirmed"])
    finally:
        os.chdir(CWD)


def test_supervisor_confirms_the_boot_at_the_first_gps_epoch():
    try:
        _trial(True)
        van = Van(None)
        del lines[:]

        async def scenario(van):
            await asyncio.sleep_ms(100)
            mptest.eq(_on_trial(), True)  # running, but no GPS epoch yet (and < 20 s)
            van.t.fixes += 1
            await asyncio.sleep_ms(60)
            mptest.eq(_on_trial(), False)
            mptest.eq(lines.count("I boot confirmed"), 1)

        van.run(scenario)
    finally:
        os.chdir(CWD)


def test_sim_watchdog_is_off_by_default_and_resets_when_not_fed():
    b, _ = _board()
    b.fed -= 10**6  # not fed for a long time
    b.status("no_fix", False)  # off: nothing happens
    b, _ = _board(wdt_s=1)
    b.status("fix", True)
    b.fed -= 999
    b.status("fix", False)  # 999 ms: not yet
    b.fed -= 2
    try:
        b.status("fix", False)
    except SystemExit as e:
        mptest.eq(e.args[0], 3)  # tools/rig.py RESTART_EXIT: the rig starts the van again
    else:
        raise mptest.Fail("not reset")


def _rmc(t):
    # An RMC at t seconds past 08:00:00 on 2026-11-26, with its checksum.
    body = "GPRMC,08%02d%02d.00,A,4807.0380,N,01131.0001,E,10.0,84.4,261126,,,A" % (
        t // 60,
        t % 60,
    )
    x = 0
    for c in body:
        x ^= ord(c)
    return ("$%s*%02X\r\n" % (body, x)).encode()


def test_a_log_line_without_heap_costs_no_fix():
    # The GPS stats line finds no heap once (a fragmented heap can refuse its ~150
    # bytes): every fix is still recorded, nothing leaves the parser, and the next stats
    # line says one line went.
    b, cfg = _board()
    t = tracker.Tracker(b, cfg)
    added = []
    stats = []

    class Up:
        def add(self, fix, *event):
            added.append(fix.t)

        def stats(self):
            return {}

    def info(topic, event, **kv):
        if (topic, event) == ("gps", "stats"):
            stats.append(kv)
            if len(stats) == 1:
                raise MemoryError("memory allocation failed, allocating 152 bytes")

    t.uplink = Up()
    log.info = info
    try:
        for s in range(130):
            t.parser.feed(_rmc(s))  # RMC ends each epoch: a fix as soon as it is read
    finally:
        log.info = _rec("I")
    mptest.eq(len(added), 130)
    mptest.eq(added[-1] - added[0], 129)
    mptest.eq(len(stats), 2)  # at 60 s (no heap) and at 120 s
    mptest.eq(stats[1]["unlogged"], 1)
    mptest.eq(stats[1]["valid"], 121)
    mptest.eq(t.unlogged, 0)


def test_route_progress_the_flash_refused_is_saved_at_a_later_fix():
    # The route's progress after an event cannot be written (here its directory is not
    # there yet; on a van a full flash or no heap for the file): the tracker says so
    # once and tries again at each fix until it is saved.
    b, cfg = _board()
    t = tracker.Tracker(b, cfg)
    said = []

    def rec(level):
        def f(topic, event, **kv):
            said.append((level, topic, event, kv))

        return f

    class Geo:  # the geofence's side of it: checks fixes, has progress to save
        def check(self, fix):
            pass

        def state(self):
            return b"\x05\x06"

    t.geo = Geo()
    t._ids = array("I", [0x04030201])  # one fence's id hash
    t._etag = b"etag1234"
    where = DIR + "/later"
    t._path = where + "/route.cbor"
    fix = nmea.Fix()
    fix.t, fix.lat, fix.lon, fix.valid = 848995200, 41380000, 2170000, True
    log.info, log.error = rec("I"), rec("E")
    try:
        t._event(2, 1, fix, None)  # arrived at stop 1: its progress is not saved
        t.on_fix(fix)
        t.on_fix(fix)
        mptest.eq(t.unsaved, 3)
        os.mkdir(where)
        t.on_fix(fix)
        mptest.eq(t.unsaved, 0)
        t.on_fix(fix)  # nothing left to save: no write
    finally:
        log.info, log.error = _rec("I"), _rec("E")
    try:
        with open(t._path + ".state", "rb") as f:
            mptest.eq(f.read(), b"etag1234\x01\x00\x01\x02\x03\x04\x05\x06")
    finally:
        for p in (t._path + ".state", where):
            os.remove(p) if p != where else os.rmdir(p)
    route = [(lv, e, kv) for lv, topic, e, kv in said if topic == "route"]
    mptest.eq([(lv, e) for lv, e, _ in route], [("E", "state_not_saved"), ("I", "state_saved")])
    mptest.eq(route[1][2], {"tries": 4})


mptest.main(globals())
for path in (DIR + "/boot.trial", DIR + "/flash", DIR):
    try:
        os.remove(path) if path.endswith(".trial") else os.rmdir(path)
    except OSError:
        pass
