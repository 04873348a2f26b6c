# Reading the route file under MicroPython (firmware/routefile.py): fences decoded one by
# one from the file, ids dropped, errors for what is not a route. The file here is
# written with the firmware's own CBOR writer; tests/test_route_device.py reads files the
# gateway encoded.
import gc

import cborx as cbor
import mptest
import routefile

PATH = "/tmp/vantrack-test-route.cbor"


def circle(w, fid, lat, lon, inner=60, outer=150, extras=0):
    w.array(5 + extras)
    w.text(fid)
    w.uint(0)
    w.uint(inner)
    w.uint(outer)
    w.array(2)
    w.int(lat)
    w.int(lon)
    for i in range(extras):
        w.uint(i)


def write_route(n_stops, n_zones=1, depot=True, fmt=1, cut=0):
    w = cbor.Writer(64 + 40 * (n_stops + n_zones))
    w.array(6)
    w.uint(fmt)
    w.uint(9)  # version
    w.map(1)
    w.uint(2)
    w.uint(15)  # confirm_s
    if depot:
        circle(w, "depot", 48858000, 2294000, 80, 300)
    else:
        w.null()
    w.array(n_stops)
    for i in range(n_stops):
        circle(w, "S-%d" % i, 48850000 + i * 1000, 2290000 - i * 1000, extras=4)
    w.array(n_zones)
    for i in range(n_zones):
        w.array(5)
        w.text("Z%d" % i)
        w.uint(1)
        w.uint(0)
        w.uint(40)
        w.array(6)
        for v in (-1, -2, 1000, -2, 1000, 2000):
            w.int(v)
    with open(PATH, "wb") as f:
        data = w.getvalue()
        f.write(data[: len(data) - cut])


def read_all():
    with open(PATH, "rb") as f:
        r = routefile.open_route(f)
        stops = [s for s in r[4]]
        zones = [z for z in r[5]]
    return r, stops, zones


def id_hash(s):
    h = 0
    for c in s.encode():
        h = ((h & 0x1FFFFFF) << 5) ^ (h >> 25) ^ c
    return h


def test_header_depot_stops_and_zones_in_order_with_id_hashes():
    write_route(3)
    r, stops, zones = read_all()
    mptest.eq(r[:4], [1, 9, {2: 15}, [id_hash("depot"), 0, 80, 300, [48858000, 2294000]]])
    mptest.eq(len(stops), 3)
    mptest.eq(stops[2], [id_hash("S-2"), 0, 60, 150, [48852000, 2288000]])
    mptest.eq(zones, [[id_hash("Z0"), 1, 0, 40, [-1, -2, 1000, -2, 1000, 2000]]])
    mptest.eq(len(set(s[0] for s in stops)), 3)


def test_long_ids_hash_to_30_bits_and_differ():
    mptest.true(0 < id_hash("stop-with-a-rather-long-identifier-0001") < 1 << 30)
    mptest.true(id_hash("S-1") != id_hash("S-2"))


def test_no_depot_and_no_zones():
    write_route(1, n_zones=0, depot=False)
    r, stops, zones = read_all()
    mptest.eq(r[3], None)
    mptest.eq((len(stops), zones), (1, []))


def test_lengths_are_known_before_iterating():
    write_route(5)
    with open(PATH, "rb") as f:
        r = routefile.open_route(f)
        mptest.eq(len(r[4]), 5)
        mptest.eq(len([s for s in r[4]]), 5)
        mptest.eq(len(r[5]), 1)


def test_a_file_cut_short_or_of_another_format_is_refused():
    write_route(3, cut=5)
    mptest.raises(ValueError, read_all)
    write_route(3, fmt=2)
    mptest.raises(ValueError, read_all)
    with open(PATH, "wb") as f:
        f.write(b"\xa1\x00\x01")  # a map, not a route
    mptest.raises(ValueError, read_all)


def test_reading_many_stops_keeps_the_heap_flat():
    write_route(300)
    gc.collect()
    before = gc.mem_alloc()
    peak = 0
    with open(PATH, "rb") as f:
        r = routefile.open_route(f)
        for _fence in r[4]:
            gc.collect()
            peak = max(peak, gc.mem_alloc() - before)
    # One fence and the reader at a time, never the 300 (52 KB decoded at once, measured
    # on this 64-bit port).
    mptest.true(peak < 3000, "peak %d bytes" % peak)


mptest.main(globals())
