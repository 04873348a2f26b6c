# CoAP message format and response decisions under MicroPython (firmware/coapmsg.py:
# encode_into, parse, coapmsg.Result). Transport and retransmission are tested against
# real peers in tests/test_coap_interop.py.
import coap
import coapmsg
import mptest

# Numbers from RFC 7252 (the firmware keeps them as private const()s).
CON, NON, ACK, RST = 0, 1, 2, 3
EMPTY, GET, POST = 0, 1, 2
CHANGED = 68  # 2.04
CONTENT = 69  # 2.05
CONTENT_FORMAT, MAX_AGE, ACCEPT = 12, 14, 17

BUF = bytearray(1152)


def enc(*args):
    n = coapmsg.encode_into(BUF, *args)
    return bytes(BUF[:n])


def roundtrip(mtype, code, mid, token, options, payload):
    m = coapmsg.parse(enc(mtype, code, mid, token, options, payload))
    mptest.eq(m, (mtype, code, mid, token, [(n, bytes(v)) for n, v in options], payload))
    return m


def options_of(data):
    return coapmsg.parse(data)[4]


def response(code, options=(), payload=b""):
    # A Result for a piggybacked response with this code, as the client makes it.
    return coapmsg.Result(1, None, coapmsg.parse(enc(ACK, code, 1, b"t", options, payload)))


def test_rfc7252_get_temperature_bytes():
    # CON GET, MID 0x7d34, no token, Uri-Path "temperature" (delta 11, length 11 = 0xbb).
    want = b"\x40\x01\x7d\x34\xbbtemperature"
    mptest.eq(enc(CON, GET, 0x7D34, b"", [(11, b"temperature")]), want)
    mptest.eq(coapmsg.parse(want), (CON, GET, 0x7D34, b"", [(11, b"temperature")], b""))


def test_post_with_cbor_payload_round_trips():
    opts = [(3, b"gw.example"), (11, b"v1"), (11, b"pos"), (12, coapmsg.uint(60))]
    m = roundtrip(CON, POST, 1234, b"\x01\x02\x03\x04", opts, b"\xa1\x01\x02")
    mptest.eq(coapmsg.to_uint(coapmsg.opt(m[4], CONTENT_FORMAT)), 60)
    mptest.eq(coapmsg.opt(m[4], ACCEPT), None)


def test_every_type_and_mid_and_token_length_round_trips():
    for mtype in (CON, NON, ACK, RST):
        for mid in (0, 1, 0x7FFF, 0xFFFF):
            for tkl in range(9):
                roundtrip(mtype, CHANGED, mid, bytes(range(1, tkl + 1)), [], b"x")


def test_empty_ack_is_four_bytes():
    mptest.eq(enc(ACK, EMPTY, 0xBEEF), b"\x60\x00\xbe\xef")
    mptest.eq(enc(RST, EMPTY, 1), b"\x70\x00\x00\x01")


def test_option_delta_boundaries_12_13_268_269():
    for num in (12, 13, 14, 268, 269, 270, 1000, 65804):
        data = enc(CON, GET, 1, b"", [(num, b"v")])
        ext = 0 if num < 13 else 1 if num < 269 else 2
        mptest.eq(len(data), 4 + 1 + ext + 1, "delta %d" % num)
        mptest.eq(data[4] >> 4, num if num < 13 else 13 if num < 269 else 14)
        mptest.eq(options_of(data), [(num, b"v")])


def test_option_length_boundaries_12_13_268_269():
    for ln in (0, 12, 13, 14, 268, 269, 270, 1000):
        value = bytes(ln)
        data = enc(CON, GET, 1, b"", [(11, value)])
        ext = 0 if ln < 13 else 1 if ln < 269 else 2
        mptest.eq(len(data), 4 + 1 + ext + ln, "length %d" % ln)
        mptest.eq(data[4] & 15, ln if ln < 13 else 13 if ln < 269 else 14)
        mptest.eq(options_of(data), [(11, value)])


def test_deltas_accumulate_across_extended_options():
    opts = [(4, b"e1"), (4, b"e2"), (23, b"\x06"), (300, b""), (2000, b"z" * 20)]
    roundtrip(CON, GET, 9, b"t", opts, b"")


def test_options_are_sorted_by_number_keeping_repeats_in_order():
    opts = [(17, b"<"), (11, b"a"), (12, b"<"), (11, b"b"), (3, b"h"), (11, b"c")]
    got = options_of(enc(CON, POST, 5, b"", opts, b"p"))
    mptest.eq(got, [(3, b"h"), (11, b"a"), (11, b"b"), (11, b"c"), (12, b"<"), (17, b"<")])
    mptest.eq(options_of(enc(CON, GET, 5, b"", [(4, b"e"), (3, b"h")])), [(3, b"h"), (4, b"e")])


def test_uint_values_are_shortest_big_endian_and_codes_print_dotted():
    cases = ((0, b""), (1, b"\x01"), (60, b"<"), (255, b"\xff"), (256, b"\x01\x00"))
    for n, b in cases + ((0x10000, b"\x01\x00\x00"), (0xFFFFFFFF, b"\xff\xff\xff\xff")):
        mptest.eq(coapmsg.uint(n), b)
        mptest.eq(coapmsg.to_uint(b), n)
    mptest.eq(coapmsg.code_str(CHANGED), "2.04")


def test_encode_refuses_what_does_not_fit():
    small = bytearray(16)
    mptest.raises(ValueError, coapmsg.encode_into, small, CON, 2, 1, b"", [], b"x" * 12)
    mptest.raises(ValueError, coapmsg.encode_into, small, CON, 2, 1, b"", [(11, bytes(20))])
    mptest.raises(ValueError, coapmsg.encode_into, BUF, CON, 2, 1, bytes(9))
    mptest.eq(coapmsg.encode_into(small, CON, 2, 1, b"", [], b"x" * 11), 16)
    # An option number the deltas cannot reach is refused, not left out.
    for num in (-1, 65805):
        opts = [(11, b"a"), (num, b"")]
        mptest.raises(ValueError, coapmsg.encode_into, BUF, CON, 2, 1, b"", opts)


def test_format_errors_are_rejected():
    bad = (
        b"",
        b"\x40\x01\x00",  # short header
        b"\x80\x01\x00\x01",  # version 2
        b"\x49\x01\x00\x01" + bytes(9),  # token length 9
        b"\x44\x01\x00\x01\x01\x02",  # token cut short
        b"\x60\x00\x00\x01\xff",  # empty message with a byte after the header
        b"\x61\x00\x00\x01\x05",  # empty message with a token
        b"\x40\x01\x00\x01\xff",  # payload marker, no payload
        b"\x40\x01\x00\x01\xf1\x00",  # option delta nibble 15
        b"\x40\x01\x00\x01\xbf",  # option length nibble 15
        b"\x40\x01\x00\x01\xd1",  # delta 13 without its extension byte
        b"\x40\x01\x00\x01\xe1\x00",  # delta 14 with one of its two extension bytes
        b"\x40\x01\x00\x01\xb5ab",  # value shorter than its length
        b"\x40\x01\x00\x01\xd5\x00ab",  # the same after a delta extension byte
    )
    for data in bad:
        try:
            coapmsg.parse(data)
        except ValueError:
            continue
        raise mptest.Fail("accepted %r" % data)


def test_parse_reads_a_memoryview_up_to_its_end():
    data = bytearray(enc(ACK, CONTENT, 7, b"tk", [(12, b"<")], b"abc")) + b"junk"
    m = coapmsg.parse(memoryview(data)[: len(data) - 4])
    mptest.eq(m, (ACK, CONTENT, 7, b"tk", [(12, b"<")], b"abc"))
    # Cut inside an option's extension byte: an error, not a read past the view.
    mptest.raises(ValueError, coapmsg.parse, memoryview(enc(CON, GET, 1, b"", [(20, b"v")]))[:5])


def test_decisions_per_response_code():
    done, drop, backoff, retry = coapmsg.DONE, coapmsg.DROP, coapmsg.BACKOFF, coapmsg.RETRY
    table = (
        (2, 1, done),
        (2, 4, done),
        (2, 5, done),
        (4, 0, drop),
        (4, 2, drop),
        (4, 13, drop),
        (4, 15, drop),
        (4, 22, drop),
        (4, 1, backoff),
        (4, 3, backoff),
        (4, 4, backoff),
        (4, 5, backoff),
        (4, 29, retry),
        (5, 0, retry),
        (5, 3, retry),
        (5, 4, retry),
    )
    for cls, detail, want in table:
        mptest.eq(response(cls << 5 | detail).decision, want, "%d.%02d" % (cls, detail))


def test_result_carries_the_response():
    opts = [(CONTENT_FORMAT, b"<"), (MAX_AGE, b"\x05")]
    r = coapmsg.Result(2, None, coapmsg.parse(enc(CON, CONTENT, 9, b"t", opts, b"pl")), True)
    got = (r.decision, r.code, r.options, r.payload, r.reason, r.tx, r.separate)
    mptest.eq(got, (coapmsg.DONE, CONTENT, opts, b"pl", None, 2, True))
    mptest.eq(r.retry_after, None)  # Max-Age only says when to retry after a failure


def test_result_without_response_is_a_retry_with_its_reason():
    r = coapmsg.Result(5, "timeout")
    got = (r.decision, r.reason, r.tx, r.code, r.payload, r.retry_after, r.separate)
    mptest.eq(got, (coapmsg.RETRY, "timeout", 5, None, b"", None, False))
    mptest.eq(list(r.options), [])


def test_retry_after_comes_from_max_age_of_retryable_responses():
    age = [(MAX_AGE, coapmsg.uint(30))]
    for code, opts, want in ((163, age, 30), (157, age, 30), (128, age, None), (163, [], None)):
        mptest.eq(response(code, opts).retry_after, want)


def test_message_ids_start_at_random():
    # (Each request then takes the next MID: tests/test_coap_interop.py sees it.)
    starts = [coap.Client("127.0.0.1", 5683)._mid for _ in range(8)]
    mptest.true(len(set(starts)) > 1, "MIDs all start at %r" % starts[0])


def test_path_splits_into_uri_path_segments():
    mptest.eq(coapmsg.path("/v1/pos"), (b"v1", b"pos"))
    mptest.eq(coapmsg.path("v1//pos/"), (b"v1", b"pos"))
    mptest.eq(coapmsg.path("/"), ())


mptest.main(globals())
