# The geofence engine's own geometry (firmware/fence.py, Geofence._where) on points read
# from stdin, for tests/test_fence_shapely.py to compare with shapely. It classifies
# positions only: no fixes, timers or events.
# ruff: noqa: UP031 (MicroPython: %-formatting is the lean choice there)
#
# stdin, one item a line, integers, positions in microdegrees:
#   c INNER_M OUTER_M LAT LON           a circle stop
#   p BUFFER_M LAT LON LAT LON ...      a polygon stop (at least 3 vertices)
#   F LAT LON                           a point to classify against fence F
# Fences come first and are numbered as on the wire: stops 1.. (no depot: 0 is empty).
# The first point line builds the engine.
# stdout: one digit per point, in input order, 64 a line: 2 inside the inner boundary
# (circle) or the polygon, 1 within the outer radius or the buffer, 0 outside. A fence the
# engine refuses gives "ERROR fence N" and exit status 1.
import sys

import fence

stops = []
g = None
out = bytearray(64)
n = 0
for line in sys.stdin:
    w = line.split()
    if not w:
        continue
    if w[0] == "c" or w[0] == "p":
        v = [int(x) for x in w[1:]]
        if w[0] == "c":
            stops.append(["c%d" % len(stops), 0, v[0], v[1], v[2:]])
        else:
            stops.append(["p%d" % len(stops), 1, 0, v[0], v[1:]])
        continue
    if g is None:
        try:
            g = fence.Geofence([1, 1, {}, None, stops, []], None)
        except ValueError as e:
            print("ERROR", e)
            sys.exit(1)
        stops = None
    out[n] = 48 + g._where(int(w[0]), int(w[1]), int(w[2]))
    n += 1
    if n == 64:
        print(out.decode())
        n = 0
if n:
    print(out[:n].decode())
