# The geofence engine (firmware/fence.py) under MicroPython with a 64 KB heap: events
# from synthetic fixes in GPS time, hysteresis against jitter, polygons, the antimeridian,
# state across a reboot or a route replaced mid-day, and no allocation per fix.
#
# Scenarios are scripts (this file is compiled inside the 64 KB heap too, where code costs
# far more than strings), one item a line, positions in metres north,east of a base point:
#   stop N,E [IN/OUT]         a circle stop (default 60/150 m); zone, depot likewise
#   stop poly BUF N,E N,E...  a polygon stop (or zone) with a BUF metre buffer
#   param K=V                 a route parameter (0 hdop_max x10, 1 sats_min, 2 confirm_s,
#                             3 hold_s, 4 depot_leave_s)
#   T0-T1 N,E [hH] [sS] [!] [?] [~J]  one fix a second from T0 to T1 (GPS s, both
#                             included): HDOP x100 H (90), S satellites (9), ! not valid,
#                             ? no time, ~J jittered 10 m at most (J seeds it)
#   = EVENTS                  the events since the last "=", each <type><fence>@<t>[=<x>]
# Fences are numbered as on the wire: depot 0, stops 1.., zones after.
import gc
import math

import fence
import mptest
from mptest import eq, true

NAMES = "- app arr dep start fin oos enter exit".split()
K = 8.993216  # microdegrees of latitude per metre (1 / 0.11119508, the engine's sphere)
BCN = (41404925, 2199582)  # the urban-round depot, Barcelona
FIJI = (-16800000, 179999800)  # Taveuni, Fiji: the 180th meridian runs across the island
T0 = 850000000
# Where the engine keeps its latitude band, the end of its slots and the first slot in
# its _s array (fence._BAND, _END, _S0: private const()s, which a module does not export).
BAND, END, S0 = 11, 12, 16


def at(n, e, base=BCN):
    # The position n metres north and e metres east of base, microdegrees.
    lat = base[0] + round(n * K)
    lon = base[1] + round(e * K / math.cos(lat * 1.7453293e-8))
    return lat, (lon + 180000000) % 360000000 - 180000000


def points(ne, base=BCN):
    # ["N,E", ...] in metres from base -> [lat, lon, lat, lon, ...]
    c = []
    for p in ne:
        c.extend(at(*[int(x) for x in p.split(",")], base=base))
    return c


def spec(w, base=BCN):
    # A fence from a script line's words: "N,E [IN/OUT]" or "poly BUF N,E N,E ...".
    if w[0] == "poly":
        return ["id", 1, 0, int(w[1]), points(w[2:], base)]
    r = (w[1:] or ["60/150"])[0].split("/")
    return ["id", 0, int(r[0]), int(r[1]), points(w[:1], base)]


def route(stops, zones=(), depot=None, params=None):
    return [1, 1, params or {}, depot, stops, zones]


class Van:
    # The engine on a route, and the fix it is handed (the attributes of nmea.Fix).
    def __init__(self, r, base=BCN):
        self.g = fence.Geofence(r, self.emit)
        self.ev = []
        self.base = base
        self.ms = 0

    def emit(self, etype, no, fix, extra):
        x = "" if extra is None else "=%d" % extra
        self.ev.append("%s%d@%d%s" % (NAMES[etype], no, fix.t - T0, x))

    def go(self, t, n, e, hdop=90, sats=9, valid=True):
        self.t = None if t is None else T0 + t
        self.lat, self.lon = at(n, e, self.base)
        self.hdop, self.sats, self.valid = hdop, sats, valid
        self.g.check(self)


def run(script, v=None, base=BCN):
    # Play a script, checking its "=" lines; returns the van, to go on with.
    f = {"stop": [], "zone": [], "depot": [None], "param": {}}
    for line in script.split("\n"):
        w = line.split("#")[0].split()
        if not w:
            continue
        if w[0] in f:
            if w[0] == "param":
                k, x = w[1].split("=")
                f["param"][int(k)] = int(x)
            else:
                f[w[0]].append(spec(w[1:], base))
            continue
        if v is None:
            v = Van(route(f["stop"], f["zone"], f["depot"][-1], f["param"]), base)
        if w[0] == "=":
            eq(" ".join(v.ev), " ".join(w[1:]), line)
            v.ev = []
            continue
        t0, _, t1 = w[0].partition("-")
        n, e = [int(x) for x in w[1].split(",")]
        o = {x[0]: x[1:] for x in w[2:]}
        j = int(o.get("~", 0))
        for t in range(int(t0), int(t1) + 1):
            j = (j * 1103515245 + 12345) & 0x7FFFFFFF
            dn, de = ((j >> 8) % 21 - 10, (j >> 12) % 21 - 10) if "~" in o else (0, 0)
            v.go(None if "?" in o else t, n + dn, e + de, int(o.get("h", 90)),
                 int(o.get("s", 9)), "!" not in o)  # fmt: skip
    return v


def test_approach_arrive_and_depart_with_the_exact_dwell():
    run("""stop 0,0
        0-9 400,0
        10-14 140,0  # inside the outer boundary: approaching at once
        15-74 30,5   # inside the inner one from t=15: arrived 20 s later
        75-84 100,0  # between the boundaries: still there
        85-120 200,0 # out from 85: departed 30 s later, dwell 15..84
        = app1@10 arr1@35=20 dep1@115=69
        121-300 30,5 # a visited stop decides nothing more
        =""")


def test_confirm_and_hold_thresholds_to_the_second():
    run("stop 0,0\n0-19 0,0\n20-80 100,0\n= app1@0")  # inside from 0: 19 s at t=19
    run("stop 0,0\n0-20 0,0\n21-50 0,400\n51-99 0,0\n= app1@0 arr1@20=20")  # out 29 s
    run("stop 0,0\n0-20 0,0\n21-51 0,400\n= app1@0 arr1@20=20 dep1@51=20")


def test_van_parked_40m_from_a_stop_with_10m_jitter_arrives_once_and_departs_once():
    run("stop 0,0\n0-179 40,0 ~7 # three minutes\n180-260 600,0\n= app1@0 arr1@20=20 dep1@210=179")


def test_jitter_across_either_boundary_never_flaps():
    # Ten minutes astride the outer boundary; after arriving, astride the inner one.
    run("stop 0,0\n0-599 150,0 ~3\n= app1@4")
    run("stop 0,0\n0-20 50,0\n= app1@0 arr1@20=20\n21-599 60,0 ~11\n=")


def test_poor_fixes_neither_confirm_nor_break_a_dwell():
    run("""stop 0,0
        param 0=20   # HDOP 2.0
        param 1=5    # 5 satellites
        0-9 0,0
        10-49 0,900 h210 # 40 s of poor fixes far away: were they used, no arrival
        50-59 0,900 s4
        60-69 0,900 !
        60-69 0,900 ?    # (no date from the receiver yet)
        0-8 0,900        # older than the last fix used (9): the clock went back
        = app1@0
        70-70 0,0 h200 s5 # good enough: the run since 0 confirms
        = arr1@70=70
        71-75 0,0
        9000-9000 0,0    # a bad date, far ahead: what comes next is not "older"
        76-106 0,900
        = dep1@106=76""")
    run("stop 0,0\n0-100 0,0 h600\n=")  # nor do poor fixes confirm


def test_stops_out_of_order_emit_out_of_sequence_after_the_arrival():
    # Stops 1, 3, 4, 5, 2: 3 came when 2 was expected; 4 and 5 follow the plan again; 2,
    # the only one left, is then the one expected (its skip is on record already).
    run("""stop 0,0
        stop 0,1000
        stop 0,2000
        stop 0,3000
        stop 0,4000
        0-30 0,0
        31-70 5000,5000
        = app1@0 arr1@20=20 dep1@61=30
        71-101 0,2000
        102-141 5000,5000
        = app3@71 arr3@91=20 oos3@91=2 dep3@132=30
        142-172 0,3000
        173-212 5000,5000
        213-243 0,4000
        244-283 5000,5000
        284-314 0,1000
        = app4@142 arr4@162=20 dep4@203=30 app5@213 arr5@233=20 dep5@274=30 app2@284 arr2@304=20""")
    run("""stop 0,0
        stop 0,1000
        stop 0,2000
        0-30 0,2000  # the last first,
        31-70 5000,5000
        71-101 0,0   # then the first: the next after 3, round the end
        = app3@0 arr3@20=20 oos3@20=1 dep3@61=30 app1@71 arr1@91=20""")


def test_route_starts_after_depot_leave_s_out_and_finishes_back_at_the_depot():
    run("""depot 0,0 80/300
        stop 0,3000
        0-100 0,0        # loading at the depot
        101-219 0,1000   # out 119 s
        220-230 0,0      # back for a forgotten parcel
        231-351 0,1000   # out 120 s from 231
        = start0@351=120
        352-420 0,0      # back before any stop: not the end of the round
        421-451 0,3000
        452-491 5000,5000
        492-560 0,20     # back after a stop: finished after confirm_s
        = app1@421 arr1@441=20 dep1@482=30 fin0@512=20
        561-900 0,1000   # once finished, leaving starts nothing
        =""")
    booted_outside = "depot 0,0 80/300\nparam 4=60\n0-59 2000,0\n=\n60-60 2000,0\n= start0@60=60"
    run(booted_outside)


def test_zone_enter_and_exit_with_hysteresis():
    run("""stop 0,5000
        zone 0,0 100/200
        0-9 0,95        # astride the inner boundary: 10 s runs inside
        10-19 0,105
        20-29 0,95
        30-39 0,105
        40-60 0,95
        = enter2@60=20
        61-80 0,190     # astride the outer boundary: 29 s runs outside
        81-110 0,210
        111-130 0,190
        131-160 0,215
        161-170 0,100
        =
        171-210 0,300
        211-240 0,0     # zones can be entered again
        = exit2@201=130 enter2@231=20""")


# A U open to the north, 300 m wide, 200 m tall, the notch 100 m wide and 150 m deep.
U = "poly 30 -100,-150 -100,150 100,150 100,50 -50,50 -50,-50 100,-50 100,-150"


def where(g, no, ne, base=BCN):
    # Where each point is for fence no: "0" outside, "1" near (outer), "2" inside.
    c = points(ne.split(), base)
    return "".join(str(g._where(no, c[i], c[i + 1])) for i in range(0, len(c), 2))


def test_concave_polygon_inside_notch_buffer_and_corner():
    g = run("stop " + U + "\n=").g
    # In the arms and the base; the middle of the notch, 50 m from both arms; in the
    # notch 20-25 m from an edge; outside, 20-25 m away; 40 m away; corners: 25 m out on
    # both axes is 35 m from the vertex, 20 m out is 28 m.
    ne = "0,-100 0,100 -75,0 90,140 40,0 40,25 40,-25 -30,0 0,170 -125,0 120,100 0,190 "
    ne += "-140,0 140,100 -125,-175 -120,-170 125,175 118,168"
    eq(where(g, 1, ne), "2222 0 111 111 000 0101".replace(" ", ""))
    run(
        """stop %s
        0-10 0,400
        11-20 0,170  # in the buffer
        21-41 0,100  # in the right arm
        42-80 40,0   # in the notch, beyond the buffer
        = app1@11 arr1@41=20 dep1@72=20"""
        % U
    )


def test_fences_across_the_antimeridian():
    # A stop 20 m west of the line, and a zone 200 m square centred on it, longitudes as
    # the gateway sends them: relative to the first vertex, so past 180e6.
    x = (FIJI[0], 180000000)
    sq = ["sq", 1, 0, 20, points("-100,-100 -100,100 100,100 100,-100".split(), x)]
    sq[4][3] += 360000000
    sq[4][5] += 360000000
    g = fence.Geofence(route([spec(["0,0"], FIJI)], [sq]), None)
    true(at(0, 40, FIJI)[1] < -179000000)
    eq(where(g, 1, "0,40 0,100 0,200 0,-200", FIJI), "2100")
    eq(where(g, 2, "50,50 50,-50 50,110 50,-110 50,130 -50,-130", x), "221100")
    run("stop 0,0\n0-9 0,0\n10-19 0,40 # over the line\n20-29 0,0\n= app1@0 arr1@20=20", base=FIJI)


def test_state_restored_after_a_reboot_mid_round_repeats_nothing():
    r = "depot 0,0 80/300\nstop 0,1000\nstop 0,2000\nstop 0,3000\nstop 0,4000\n"
    v = run(
        r
        + """0-130 0,500
        131-161 0,1000
        162-201 5000,5000
        202-227 0,3000 # skipping stop 2
        = start0@120=120 app1@131 arr1@151=20 dep1@192=30 app3@202 arr3@222=20 oos3@222=2"""
    )
    saved = v.g.state()
    w = run(r + "=")  # the reboot: a fresh engine on the same route
    w.g.load_state(saved)
    eq(w.g.state(), saved)
    run(
        """240-250 0,3000 # still at stop 3
        251-290 0,5500      # off: the dwell counts from before the reboot
        291-321 0,4000      # stop 4: the one after 3
        322-361 5000,5000
        362-380 0,1000      # past stop 1, visited
        381-420 0,10        # home
        = dep3@281=48 app4@291 arr4@311=20 dep4@352=30 fin0@401=20""",
        w,
    )


def test_a_route_replaced_mid_day_keeps_progress_through_a_remap():
    v = run("""depot 0,0 80/300
        stop 0,1000
        stop 0,2000
        stop 0,3000
        0-30 0,1000
        31-70 5000,5000
        71-96 0,2000
        = app1@0 arr1@20=20 dep1@61=30 app2@71 arr2@91=20""")
    # The new route drops stop 3, puts a new stop first, adds a zone: 0->0, 1->2, 2->3.
    w = run("depot 0,0 80/300\nstop 0,4000\nstop 0,1000\nstop 0,2000\nzone 3000,0\n=")
    w.g.load_state(v.g.state(), [0, 2, 3, -1])
    # Old stop 1, now 2, is visited; the depot's out run from t=0 went on.
    run("97-101 0,1000\n102-150 0,5000\n= start0@120=120 dep3@127=25", w)
    mptest.raises(ValueError, w.g.load_state, v.g.state())  # 4 fences, not 5: needs a remap
    mptest.raises(ValueError, w.g.load_state, v.g.state(), [0, 1])


def test_malformed_state_and_fences_are_refused():
    g = run("stop 0,0\n=").g
    s = g.state()
    for bad in (b"\x02" + s[1:], s + b"\x00", s[:5]):
        mptest.raises(ValueError, g.load_state, bad)
    # inner > outer, a polygon of two vertices, past the pole, no such kind, no fence
    for bad in ("0,0 150/60", "poly 10 0,0 0,9", "9000000,0", ["id", 2, 0, 0, [1, 2]], None):
        if type(bad) is str:
            bad = spec(bad.split())
        try:
            fence.Geofence(route([spec(["0,0"]), bad]), None)
        except ValueError as e:
            eq(str(e), "fence 2")
        else:
            raise mptest.Fail("accepted %r" % bad)


def test_more_stops_in_one_place_than_slots_degrade_and_catch_up():
    # 18 stops at one place, 16 slots: the first 16 (ties go by fence number) arrive,
    # the other two on the next visit.
    v = run("stop 0,0\n" * 18 + "0-30 0,0\n31-70 0,5000\n71-100 0,0")
    eq(
        [e for e in v.ev if e[:3] == "arr"],
        ["arr%d@%d=20" % (i, 20 + 71 * (i > 16)) for i in range(1, 19)],
    )
    true(v.g.overflow > 0)
    # Slots held by stops only passed by give way (once outside) to the stop the van is at.
    v = run("stop 0,0\n" * 16 + "stop 0,400\n0-4 0,0\n5-40 0,400")
    eq(" ".join(v.ev[16:]), "app17@6 arr17@26=20 oos17@26=1")


def test_more_zones_than_the_room_kept_for_them_are_numbered_and_decided_alike():
    # Room is made for the depot and a few zones before the zones can be counted; seven
    # zones grow the arrays. The last one is fence 9, after the depot and two stops.
    r = "depot 0,0 80/300\nstop 0,2000\nstop 0,4000\n"
    r += "".join("zone 3000,%d\n" % (1000 * i) for i in range(7))
    v = run(r + "0-20 3000,6000\n= enter9@20=20\n21-60 3000,6500\n= exit9@51=20")
    eq(len(v.g.state()), 10 + 10)  # 10 fences, none tracked
    run("61-81 0,4000\n= app2@61 arr2@81=20 oos2@81=1", v)


class Grid:
    # n stops scattered over 20 x 20 km around BCN, made as they are iterated (500 fence
    # lists would not fit this heap; routefile hands the engine fences the same way).
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __iter__(self):
        for i in range(self.n):
            yield spec(["%d,%d" % (i * 7919 % 20000 - 10000, i * 104729 % 20011 - 10000)])


def test_the_largest_fences_keep_local_coordinates_within_13_bits():
    # What keeps every product of the per-fix maths below 2**30 (the ESP32's small ints):
    # a 5 km circle and a 20 x 20 km polygon with a 2 km buffer, near 70 degrees north,
    # get units of 0.8 and 1.6 m.
    b = (70000000, 25000000)
    g = run("stop 0,0 4000/5000\nzone poly 2000 -10000,-10000 -10000,10000 10000,0\n=", base=b).g
    xy = [abs(g._pv[i]) for i in range(1, len(g._pv)) if 0 < i % 4 < 3]
    eq([g._fl[1] >> 5, g._fl[2] >> 5, max(xy) < 8192], [3, 4, True])
    eq(where(g, 1, "0,3990 0,4990 0,5010 3520,3520 3550,3550", b), "21010")
    eq(where(g, 2, "0,0 -9990,0 -11990,0 -12010,0 10500,0 12010,0", b), "221010")


def test_a_big_zone_is_checked_apart_and_seen_however_far_its_centre():
    v = run("stop 0,0\nstop 0,500\nzone 22239,0 2500/3000\n=")
    eq(v.g._s[BAND], 9 * 150)  # the latitude band stays as narrow as the stops need
    run("0-20 22000,0 # far from the stops, 240 m from the zone's centre\n= enter3@20=20", v)


def test_500_fences_prefilter_finds_what_a_full_scan_finds_and_a_fix_allocates_nothing():
    v = Van(route(Grid(500), [spec(U.split())], spec(["0,0", "80/300"])))
    g = v.g
    hits = 0
    for t in range(0, 2000, 2):  # diagonally across the grid at 10 m/s
        v.go(t, t * 10 - 10000, t * 10 - 10000)
        near = [f for f in range(1, 502) if g._where(f, v.lat, v.lon)]
        s = g._s  # slots: fence number << 4 | where at the last fix << 2 | ...
        eq([s[j] >> 4 for j in range(S0, s[END], 4) if s[j] & 12], near, t)
        hits += len(near)
    true(hits > 20, hits)
    counts = bytearray(9)

    def emit(etype, no, fix, extra):
        counts[etype] += 1

    g._emit = emit
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for t in range(2000, 6000):  # the other diagonal at 7 m/s, one fix a second
            v.t = T0 + t
            v.lat = BCN[0] - 180000 + 45 * t
            v.lon = BCN[1] + 240000 - 60 * t
            g.check(v)
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    true(counts[1] > 3, list(counts))  # the drive did meet fences
    eq(used, 0)


mptest.main(globals())
