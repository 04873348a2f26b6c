# Runs under MicroPython: NMEA on stdin -> the firmware's parser -> the firmware's own
# recording policy (uplink.Uplink.add: smart reporting, flash queue, status records) ->
# reports built and sealed as uplink's sender builds them, over a link that is always up
# (every report acknowledged at once). Used by `vantrack bench wire` to compare recording
# policies on the same fixes; it does not send anything or measure heap.
#
# Usage: micropython tools/mp/wire_policy.py FLASH_DIR CONFIG_JSON
#   FLASH_DIR: an empty directory for the queue (a fresh one per run);
#   CONFIG_JSON: a JSON object overlaid on firmware/config.py DEFAULTS (device_id, key and
#   the report_* thresholds).
# Output, one line each, in order:
#   C <key>=<value> ...                     the recording thresholds in force
#   F <recorded 0/1> <t> <ms> <lat> <lon>   every valid fix handed to Uplink.add()
#   R <records> <length> <hex payload>      every report, when it is sent
#   S <records> <lost> <reports>            at the end: the uplink's counters
#
# When a report is sent follows uplink.Uplink._deliver: when Uplink.add() says one is due
# (_READY), or when a report's worth of records waits, or when records wait and no record
# came for _IDLE_MS; that last rule runs on ticks_ms on the van, here on GPS time (at
# the GPS's pace, as on the van, one is the other). At the end the queue is flushed as
# Uplink.drain() does.
import binascii
import json
import sys

import config
import nmea
from uplink import Uplink

# uplink.Uplink.v indices (firmware/uplink.py): private there, mirrored here.
_STATUS = 5
_BACKLOG = 6
_READY = 7
_RECORDS = 8
_LOST = 9
_ACKED = 10
_REPORTS = 11
_DRAINED = 4  # status cause: a backlog was delivered
_IDLE_S = 5  # uplink._IDLE_MS, in GPS seconds

cfg = dict(config.DEFAULTS)
cfg.update(json.loads(sys.argv[2]))
up = Uplink(cfg, sys.argv[1], None)
v = up.v
q = up.q
b = up.batch
out = sys.stdout
state = [-1]  # GPS time of the last record
_SHOWN = ("report_period_s", "report_stopped_period_s", "report_distance_m", "report_angle_deg",
          "report_speed_delta_kmh", "report_max_records", "report_max_age_s")  # fmt: skip
out.write("C")
for k in _SHOWN:
    out.write(" %s=%d" % (k, cfg[k]))
out.write("\n")


def send():
    # One report, as _deliver builds it; the gateway acknowledges it at once.
    v[_READY] = 0
    first, n = up.build()
    if not n:
        return False
    payload = b.seal()
    out.write("R %d %d %s\n" % (n, len(payload), binascii.hexlify(payload).decode()))
    q.ack(first, n)
    v[_ACKED] += n
    v[_REPORTS] += 1
    if q.count > b.max_records:
        v[_BACKLOG] = 1
    return True


def deliver(t):
    # _deliver's rounds until nothing is due, at GPS time t.
    while True:
        if q.count and state[0] >= 0 and t - state[0] >= _IDLE_S:
            v[_READY] = 1  # records wait and the GPS went quiet
        if not q.count or q.count < b.max_records and not v[_READY]:
            if v[_BACKLOG] and not q.count:
                v[_BACKLOG] = 0
                v[_STATUS] = _DRAINED
            return
        if not send():
            return


def on_fix(fix):
    if fix.valid and fix.t is not None:
        before = v[_RECORDS]
        up.add(fix)
        rec = v[_RECORDS] > before
        if rec:
            state[0] = fix.t
        out.write("F %d %d %d %d %d\n" % (rec, fix.t, fix.ms, fix.lat, fix.lon))
    if fix.t is not None:
        deliver(fix.t)


parser = nmea.Parser(on_fix)
buf = bytearray(512)
stdin = sys.stdin.buffer
while True:
    n = stdin.readinto(buf)
    if not n:
        break
    parser.feed(buf, n)
parser.flush()
# Uplink.drain(): everything still queued goes out.
while q.count:
    v[_READY] = 1
    if not send():
        break
out.write("S %d %d %d\n" % (v[_RECORDS], v[_LOST], v[_REPORTS]))
