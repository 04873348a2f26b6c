# Firmware NMEA parser (firmware/nmea.py) under MicroPython with a 64 KB heap.
import gc
import time

import mptest
import nmea
from mptest import eq, raises, true


def nm(body):
    # A sentence with its checksum and CRLF.
    x = 0
    for c in body:
        x ^= ord(c)
    return ("$%s*%02X\r\n" % (body, x)).encode()


RMC = "GPRMC,101503.20,A,4807.0380,N,01131.0001,E,10.0,84.4,261126,,,A"
GGA = "GPGGA,101503.20,4807.0380,N,01131.0001,E,1,08,0.9,545.4,M,46.9,M,,"
GSA = "GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1"
VTG = "GPVTG,84.4,T,,M,10.0,N,18.5,K,A"


def run(data, chunk=0, maxline=120):
    fixes = []

    def on_fix(f):
        fixes.append(
            (f.t, f.ms, f.lat, f.lon, f.speed, f.course, f.alt, f.quality, f.mode, f.sats)
            + (f.hdop, f.valid)
        )

    p = nmea.Parser(on_fix, maxline)
    if chunk:
        for i in range(0, len(data), chunk):
            p.feed(data[i : i + chunk])
    else:
        p.feed(data)
    p.flush()
    return p, fixes


def at(hms, body):
    return body.replace("101503.20", hms)


T0 = 26 * 365 + 7 + 329  # 2026-11-26 in days since 2000 (7 leap days 2000..2024)
_Y2K = time.mktime((2000, 1, 1, 0, 0, 0, 0, 0))


def days(y, m, d):
    # Days since 2000-01-01 from the port's own calendar code, independent of ours.
    return (time.mktime((y, m, d, 0, 0, 0, 0, 0)) - _Y2K) // 86400


def test_epoch_merges_rmc_gga_gsa_vtg_into_one_fix():
    p, fx = run(nm(GGA) + nm(GSA) + nm(RMC) + nm(VTG))
    eq(len(fx), 1)
    eq(fx[0], (T0 * 86400 + 36903, 200, 48117300, 11516668, 5144, 8440, 54540, 1, 3, 8, 90, True))
    eq(p.sentences, 4)
    eq(p.fixes, 1)


def test_rmc_date_to_days_since_2000_every_month_end_1980_to_2079():
    eq(days(2026, 11, 26), T0)
    eq(days(1980, 1, 1), -7305)
    seen = []
    p = nmea.Parser(lambda f: seen.append(f.t // 86400))
    wrong = []
    n = 0
    for y in range(1980, 2080):
        for m in range(1, 13):
            last = (31, 29 if y % 4 == 0 else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[m - 1]
            for d in (1, last):
                p.feed(nm(RMC.replace("261126", "%02d%02d%02d" % (d, m, y % 100))))
                p.flush()  # one epoch per date
                if seen.pop() != days(y, m, d) and len(wrong) < 5:
                    wrong.append((y, m, d))
                n += 1
    eq((n, p.fixes, wrong), (2400, 2400, []))


def test_south_and_west_hemispheres_and_exact_microdegrees():
    body = "GPGGA,000001,3344.99999970,S,07011.1234567,W,1,5,1.0,-12.3,M,,,,"
    _, fx = run(nm(body))
    # 33 + 44.9999997/60 = 33.749999995 -> rounds to 33.750000; 70 + 11.1234567/60
    eq(fx[0][2:4], (-33750000, -70185391))
    eq(fx[0][6], -1230)


def test_split_at_every_byte_and_merged_chunks_give_same_fixes():
    data = (nm(GGA) + nm(RMC)) * 3 + nm(at("101504.20", GGA))
    _, whole = run(data)
    for chunk in (1, 2, 7, 64):
        eq(run(data, chunk)[1], whole, "chunk %d" % chunk)


def test_crlf_lf_and_cr_line_ends():
    for end in (b"\r\n", b"\n", b"\r", b"\n\r"):
        data = (nm(GGA) + nm(RMC)).replace(b"\r\n", end)
        p, fx = run(data)
        eq(p.sentences, 2, repr(end))
        eq(fx[0][2], 48117300)


def test_drop_reasons_are_counted_never_raised():
    bad = nm(RMC)[:-4] + b"00\r\n"
    data = (
        bad  # checksum
        + b"$"
        + RMC.encode()
        + b"\r\n"  # no_checksum
        + b"$GP"
        + b"X" * 200
        + b"\r\n"  # overlong
        + b"\x00\xff\x13noise\r\n"  # garbage
        + b"$GPGGA,12\x01\r\n"  # garbage inside a line
        + b"$GPGGA,1015$GPZDA,1*00\r\n"  # truncated (then a bad checksum)
        + nm("GPRMC,101503.20,A,48x7.0380,N,01131.0001,E,10.0,84.4,261126,,,A")  # malformed
        + nm("GPGSV,1,1,00")
        + nm("PGRME,1,M")  # ignored, not errors
    )
    p, fx = run(data)
    d = p.drops
    eq((d["checksum"], d["no_checksum"], d["overlong"]), (2, 1, 1))
    eq((d["garbage"], d["truncated"], d["malformed"]), (2, 1, 1))
    eq((p.ignored, p.sentences, fx), (2, 0, []))


def test_overlong_line_resyncs_at_next_dollar():
    data = b"$GPGGA," + b"1" * 150 + nm(GGA)
    p, fx = run(data, 10)
    eq(p.drops["overlong"], 1)
    eq(p.sentences, 1)
    eq(fx[0][2], 48117300)


def test_lowercase_checksum_and_any_talker():
    line = nm(GGA.replace("GPGGA", "GNGGA")).lower().replace(b"$gngga", b"$GNGGA")
    line = line.replace(b",n,", b",N,").replace(b",e,", b",E,").replace(b",m,", b",M,")
    for talker in ("GN", "GL", "GA", "GB", "BD", "GQ", "XY"):
        p, _ = run(nm(GGA.replace("GP", talker, 1)))
        eq(p.sentences, 1, talker)
    p, _ = run(line)
    eq(p.sentences, 1)


def test_receiver_invalid_marks_are_never_a_position():
    cases = (
        RMC.replace(",A,48", ",V,48"),
        GGA.replace(",E,1,", ",E,0,"),
        RMC.replace(",,,A", ",,,N"),
        VTG.replace(",K,A", ",K,N"),
        GSA.replace("A,3,", "A,1,"),
    )
    for bad in cases:
        data = nm(bad) + nm(GGA) + nm(RMC)
        _, fx = run(data)
        eq(fx[0][2:4], (None, None), bad)
        eq(fx[0][-1], False, bad)


def test_empty_fields_no_fix_yet():
    data = nm("GPGGA,,,,,,0,00,99.99,,,,,,") + nm("GPRMC,,V,,,,,,,,,,N")
    data += nm("GPGGA,,,,,,0,00,99.99,,,,,,")
    p, fx = run(data)
    eq(p.drops["malformed"], 0)
    eq(len(fx), 2)  # a repeated GGA without time starts the next epoch
    eq(fx[0][0], None)
    eq(fx[0][-1], False)


def test_nmea41_fields_gsa_per_constellation():
    rmc = RMC + ",V"  # 4.1 navigational status V ("not provided", u-blox): still valid
    gsa1 = "GNGSA,A,3,01,02,03,,,,,,,,,,1.6,0.9,1.3,1"
    gsa2 = "GNGSA,A,3,65,66,,,,,,,,,,,1.6,0.9,1.3,2"
    data = nm(rmc) + nm(gsa1) + nm(gsa2) + nm(at("101504.20", rmc))
    _, fx = run(data)
    eq(fx[0][8:], (3, 5, 90, True))  # 3 + 2 satellites from two GSA


def test_old_vtg_and_kmh_only():
    _, fx = run(nm("GPVTG,054.7,034.4,005.5,010.2") + nm(GGA))
    eq(fx[0][4:6], (2829, 5470))
    _, fx = run(nm("GPVTG,054.7,T,,M,,N,36.0,K,A") + nm(GGA))
    eq(fx[0][4], 10000)


def test_learned_cycle_end_emits_without_waiting():
    seen = []
    p = nmea.Parser(lambda f: seen.append(f.ms))
    for i in range(3):
        p.feed(nm(at("10150%d.20" % i, GGA)) + nm(at("10150%d.20" % i, RMC)))
    # Epochs 0 and 1 end when the time changes; RMC ended both, so it is learned
    # and epoch 2 is out as soon as its RMC arrives.
    eq(len(seen), 3)
    p.feed(nm(at("101503.20", GGA)))
    eq(len(seen), 3)
    p.feed(nm(at("101503.20", RMC)))
    eq(len(seen), 4)


def test_wrong_learned_end_falls_back_to_time_change():
    # 10 Hz GGA with a 1 Hz RMC: GGA is learned, the RMC then comes late.
    p = nmea.Parser(lambda f: None)
    for t in range(10):
        p.feed(nm(at("1015%02d.%d0" % (3 + t // 10, t % 10), GGA)))
    p.feed(nm(at("101504.00", GGA)) + nm(at("101504.00", RMC)))
    eq(p.drops["late"], 1)
    n = p.fixes
    p.feed(nm(at("101504.10", GGA)) + nm(at("101504.10", RMC)))
    eq(p.fixes, n)  # no longer emitting at GGA: waits for the time to change
    eq(p.drops["late"], 1)


def test_date_carried_to_gga_and_midnight_rollover():
    rmc = "GPRMC,235959.00,A,4807.0380,N,01131.0001,E,0,0,311226,,,A"
    gga = GGA.replace("101503.20", "235959.50")
    data = nm(rmc) + nm(gga) + nm(at("000000.50", GGA)) + nm(at("000001.00", GGA))
    _, fx = run(data)
    day = days(2026, 12, 31)
    eq(
        [(f[0], f[1]) for f in fx],
        [
            (day * 86400 + 86399, 0),
            (day * 86400 + 86399, 500),
            ((day + 1) * 86400, 500),
            ((day + 1) * 86400 + 1, 0),
        ],
    )


def test_gga_only_before_any_date_has_no_time():
    _, fx = run(nm(GGA))
    eq((fx[0][0], fx[0][1], fx[0][-1]), (None, 200, True))


def test_two_digit_year_pivot():
    _, fx = run(nm(RMC.replace("261126", "010199")))
    eq(fx[0][0] // 86400, days(1999, 1, 1))


def test_a_failing_on_fix_changes_no_fix_and_feed_raises_after_the_chunk():
    # Five epochs of GGA, GSA and RMC in one chunk; the caller fails on two of them (as a
    # van without heap for a record would). The parser must not lose the sentences that
    # came after a failure (the one that ended the epoch starts the next), nor carry the
    # failed epoch's fields into the next fix; feed() raises once the chunk is parsed.
    data = b"".join(
        nm(at("10150%d.20" % i, GGA)) + nm(GSA) + nm(at("10150%d.20" % i, RMC)) for i in range(5)
    )
    _, want = run(data)
    got = []
    p = nmea.Parser(None)

    def on_fix(f):
        got.append(
            (f.t, f.ms, f.lat, f.lon, f.speed, f.course, f.alt, f.quality, f.mode, f.sats)
            + (f.hdop, f.valid)
        )
        if len(got) in (2, 3):
            raise MemoryError("no heap for the record %d" % len(got))

    p.on_fix = on_fix
    e = raises(MemoryError, p.feed, data)
    eq(str(e), "no heap for the record 2")  # the first one
    eq(p.sentences, 15)
    p.flush()
    eq(got, want)
    eq(len(got), 5)
    # The chunk after a failure is parsed as usual and raises nothing.
    p.feed(nm(at("101505.20", GGA)) + nm(at("101506.20", GGA)))
    eq(len(got), 6)


def test_steady_state_allocates_nothing_per_sentence():
    data = bytearray(nm(GGA) + nm(GSA) + nm(RMC) + nm(VTG))
    p = nmea.Parser(lambda f: None)
    p.feed(data)
    p.feed(data)
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for _ in range(20):
            p.feed(data)
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    eq(used, 0)
    true(p.sentences >= 88)


mptest.main(globals())
