# Decode NMEA from stdin with the firmware parser, under the MicroPython binary.
# ruff: noqa: UP031 (MicroPython: %-formatting is the lean choice there)
#
# Run by `vantrack nmea-decode` (tools/nmeadecode.py), which owns the command line.
#   nmea_decode.py [--sentences] [--chunk N]   stdin: NMEA bytes
#       stdout: one JSON object per fix ({"sentence": ...} lines too with --sentences)
#       stderr: one summary JSON line at the end
#   nmea_decode.py --cases   stdin: records "<chunk> <length>\n" + bytes, one parser each
#       stdout: one JSON object per record with its fixes and counters (property tests)
import sys

import nmea


def civil(z):
    # (year, month, day) of a day number since 2000-01-01 (H. Hinnant's algorithm).
    z += 730425
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d


def fixed(v, places):
    # An int scaled by 10**places as an exact JSON number (no float rounding).
    if v is None:
        return "null"
    sign = "-" if v < 0 else ""
    v = abs(v)
    scale = 10**places
    return "%s%d.%0*d" % (sign, v // scale, places, v % scale)


def num(v):
    return "null" if v is None else str(v)


def iso(t, ms):
    if t is None:
        return "null"
    day = t // 86400
    s = t - day * 86400
    y, m, d = civil(day)
    return '"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ"' % (y, m, d, s // 3600, s // 60 % 60, s % 60, ms)


def fix_json(f):
    return (
        '{"time":%s,"lat":%s,"lon":%s,"speed_mps":%s,"course_deg":%s,"alt_m":%s,'
        '"quality":%s,"mode":%s,"sats":%s,"hdop":%s,"valid":%s}'
        % (
            iso(f.t, f.ms),
            fixed(f.lat, 6),
            fixed(f.lon, 6),
            fixed(f.speed, 3),
            fixed(f.course, 2),
            fixed(f.alt, 2),
            num(f.quality),
            num(f.mode),
            num(f.sats),
            fixed(f.hdop, 2),
            "true" if f.valid else "false",
        )
    )


# The slots of the parser's sentence array (Parser.s, nmea.py's _TOD.._STAT), in order;
# "no value" there is nmea._NONE. _STAT holds the ok (1) and bad (2) bits.
SLOTS = ("tod", "day", "lat", "lon", "speed", "course", "alt", "quality", "mode", "sats", "hdop")
NONE = -0x40000000


def sentence_json(p, s, n):
    line = bytes(p._buf[:n]).decode()
    vals = ",".join(
        '"%s":%s' % (name, num(None if s[i] == NONE else s[i])) for i, name in enumerate(SLOTS)
    )
    return '{"sentence":"%s","kind":"%s",%s,"ok":%s,"bad":%s}' % (
        line.replace("\\", "\\\\").replace('"', '\\"'),
        line[3:6],  # the sentence type: the parser takes only $ttSSS addresses
        vals,
        "true" if s[11] & 1 else "false",
        "true" if s[11] & 2 else "false",
    )


def counters(p):
    drops = ",".join('"%s":%d' % (k, v) for k, v in sorted(p.drops.items()))
    return '"sentences":%d,"fixes":%d,"ignored":%d,"drops":{%s}' % (
        p.sentences,
        p.fixes,
        p.ignored,
        drops,
    )


def decode(chunk, sentences):
    out = sys.stdout
    p = nmea.Parser(lambda f: out.write(fix_json(f) + "\n"))
    if sentences:
        p.on_sentence = lambda s, n: out.write(sentence_json(p, s, n) + "\n")
    buf = bytearray(chunk)
    inp = sys.stdin.buffer
    while True:
        n = inp.readinto(buf)
        if not n:
            break
        p.feed(buf, n)
    p.flush()
    sys.stderr.write('{"summary":true,%s}\n' % counters(p))


def cases():
    inp = sys.stdin.buffer
    out = sys.stdout
    i = 0
    while True:
        head = inp.readline()
        if not head:
            break
        chunk, length = [int(x) for x in head.split()]
        data = inp.read(length)
        fixes = []
        p = nmea.Parser(lambda f, fixes=fixes: fixes.append(fix_json(f)))
        mv = memoryview(data)
        for at in range(0, len(data), chunk):
            p.feed(mv[at : at + chunk])
        p.flush()
        out.write('{"case":%d,%s,"fix_list":[%s]}\n' % (i, counters(p), ",".join(fixes)))
        i += 1


def main(argv):
    if "--cases" in argv:
        cases()
        return
    chunk = 256
    if "--chunk" in argv:
        chunk = int(argv[argv.index("--chunk") + 1])
    decode(chunk, "--sentences" in argv)


main(sys.argv[1:])
