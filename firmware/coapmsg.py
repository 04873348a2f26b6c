# CoAP message format (RFC 7252 section 3): encode a message into a buffer, parse one.
#
# Options are generic (number, value) pairs: the encoder writes any option with the
# delta/length nibbles and their 13/14 extensions, in option-number order (repeatable
# options keep their given order), and the parser returns every option as a
# (number, value) pair, so Block2, ETag, Observe... need no change here. Integer option
# values use uint()/to_uint() (RFC 7252 3.2: big-endian, shortest form).
#
# It also says what a response means for the sender: a Result carries one request's
# outcome and its decision, worked out from the response code (decisions are named here,
# the client's callers use them from here).
#
# It does not send, retransmit or match anything (coap.py does), and does not interpret
# options beyond their format.
#
# Memory: every function, class and string constant costs heap on the device once
# imported, so this module keeps to what its callers use: a parsed message is a tuple,
# not an object of its own; a format error is a plain ValueError; the option-header
# arithmetic is written out where it is used; and error messages are a word or two
# (a short string is an interned qstr, a sentence a string object of its own): the
# comment at each raise says what broke.
#
# Numbers (RFC 7252): message types CON 0, NON 1, ACK 2, RST 3. Codes are class << 5 |
# detail, 2.04 is 68 (code_str() prints "2.04"): EMPTY 0, GET 1, POST 2, PUT 3, DELETE 4.
# Options (5.10): Uri-Host 3, ETag 4, Location-Path 8, Uri-Path 11, Content-Format 12,
# Max-Age 14, Uri-Query 15, Accept 17; Block2 23 (RFC 7959). Content-Format
# application/cbor is 60. They are private const()s, here and in coap.py: a public
# module-level name costs heap on the device (a dict entry and a qstr), a const() nothing.
from micropython import const

_VERSION = const(1)
_MAX_TOKEN = const(8)
_MARKER = const(0xFF)
_EMPTY = const(0)  # code 0.00
_MAX_AGE = const(14)  # option number
_NO_OPTION = const(65805)  # above every option number the format can carry


def opt(options, number, default=None):
    # First value of option `number` in a (number, value) list, else default.
    for num, value in options:
        if num == number:
            return value
    return default


def code_str(code):
    # 68 -> "2.04".
    return "%d.%02d" % (code >> 5, code & 31)


def uint(n):
    # An unsigned integer option value in its shortest big-endian form (0 is empty).
    ln = 0
    while n >> 8 * ln:
        ln += 1
    return n.to_bytes(ln, "big")


def to_uint(value):
    return int.from_bytes(value, "big")


def encode_into(buf, mtype, code, mid, token=b"", options=(), payload=b""):
    # Writes the message at the start of buf; returns its length. options: a list or
    # tuple of (number, value) in any order. Raises ValueError if it does not fit or
    # breaks the format.
    tkl = len(token)
    if tkl > _MAX_TOKEN:
        raise ValueError("too large")  # a token has 0 to 8 bytes
    end = len(buf)
    buf[0] = _VERSION << 6 | mtype << 4 | tkl
    buf[1] = code
    buf[2] = mid >> 8 & 0xFF
    buf[3] = mid & 0xFF
    i = 4 + tkl
    buf[4:i] = token
    # Options go by number, each number's in their given order (Uri-Path segments must
    # keep theirs): pick the lowest number not written yet, write its options, repeat.
    # This sorts without a sorted copy or a stable sort (MicroPython's is not), and
    # option lists are a handful long.
    last = 0  # number of the option written last: each header holds the difference
    low = 0  # numbers below this are written
    written = 0
    while True:
        num = _NO_OPTION
        for n, _ in options:
            if low <= n < num:
                num = n
        if num == _NO_OPTION:
            break
        for n, value in options:
            if n != num:
                continue
            ln = len(value)
            if ln > 65804 or i + 5 + ln > end:
                raise ValueError("too large")
            # Header byte: the delta nibble, then the length nibble. 13 and 14 say that
            # 1 or 2 extension bytes follow the header with n - 13 or n - 269 (RFC 7252
            # 3.1); the delta's come first.
            head = i
            i += 1
            nibs = 0
            x = num - last
            for _ in range(2):  # the delta, then the length
                nibs <<= 4
                if x < 13:
                    nibs |= x
                elif x < 269:
                    nibs |= 13
                    buf[i] = x - 13
                    i += 1
                else:  # up to 65804 (_NO_OPTION - 1; lengths checked above)
                    nibs |= 14
                    x -= 269
                    buf[i] = x >> 8
                    buf[i + 1] = x & 0xFF
                    i += 2
                x = ln
            buf[head] = nibs
            buf[i : i + ln] = value
            i += ln
            last = num
            written += 1
        low = num + 1
    if written != len(options):
        raise ValueError("bad option")  # a number below 0 or above 65804: left out
    if payload:
        ln = len(payload)
        if i + 1 + ln > end:
            raise ValueError("too large")
        buf[i] = _MARKER
        buf[i + 1 : i + 1 + ln] = payload
        i += 1 + ln
    return i


def parse(data):
    # The message in data (one datagram) as a tuple (type, code, mid, token, options,
    # payload), options a list of (number, value) in wire order. Token, values and
    # payload are slices of data: bytes from bytes (each one allocation), views from a
    # memoryview. A message that breaks RFC 7252 3 raises ValueError("malformed"): the
    # caller counts it and, for a CON, may RST it.
    n = len(data)
    if n < 4 or data[0] >> 6 != _VERSION:
        raise ValueError("malformed")  # no header of CoAP version 1
    tkl = data[0] & 15
    code = data[1]
    i = 4 + tkl
    if tkl > _MAX_TOKEN or i > n:
        raise ValueError("malformed")  # token longer than 8 bytes or cut short
    if code == _EMPTY and n != 4:
        raise ValueError("malformed")  # an empty message (0.00) with more
    options = []
    payload = b""
    num = 0
    try:
        # Reading an extension byte past the end raises IndexError: cut short.
        while i < n:
            b = data[i]
            i += 1
            if b == _MARKER:
                if i == n:
                    raise ValueError("malformed")  # payload marker, no payload
                payload = data[i:]
                break
            delta = b >> 4
            ln = b & 15
            if delta == 15 or ln == 15:
                raise ValueError("malformed")  # reserved: only 0xFF (the marker)
            # 13 and 14: 1 or 2 extension bytes follow, the delta's first (RFC 7252 3.1).
            if delta == 13:
                delta = data[i] + 13
                i += 1
            elif delta == 14:
                delta = (data[i] << 8 | data[i + 1]) + 269
                i += 2
            if ln == 13:
                ln = data[i] + 13
                i += 1
            elif ln == 14:
                ln = (data[i] << 8 | data[i + 1]) + 269
                i += 2
            if i + ln > n:
                raise IndexError  # the value is cut short: handled below
            num += delta
            options.append((num, data[i : i + ln]))
            i += ln
    except IndexError:
        raise ValueError("malformed") from None
    return data[0] >> 4 & 3, code, data[2] << 8 | data[3], data[4 : 4 + tkl], options, payload


# Decisions: what the caller does with the payload after a request.
DONE = "done"  # accepted (2.xx)
DROP = "drop"  # will never be accepted as sent (4.00, 4.02, 4.13, 4.15, 4.22): count, log
BACKOFF = "backoff"  # device unknown or misconfigured (4.01, 4.03, 4.04...): much later
RETRY = "retry"  # server busy or unreachable (5.xx, 4.29, no answer, RST): later


def path(p):
    # "/v1/pos" -> (b"v1", b"pos"), the Uri-Path segments: split once, pass to request().
    segs = []
    for s in p.split("/"):
        if s:
            segs.append(s.encode())
    return tuple(segs)


class Result:
    # One request's outcome: its decision, and the response, if one came.
    # code: the response code (int; code_str() prints it), or None when no response came,
    # and then the decision is RETRY and reason says why (coap.py's reasons: "timeout",
    # no ACK after MAX_RETRANSMIT retransmissions; "reset", the server sent RST;
    # "no_response", ACKed but no separate response within the lifetime; "closed", the
    # client was closed meanwhile; "unreachable", no address or socket for the server).
    # payload, options: the response's. retry_after: Max-Age seconds of a 5.xx or 4.29
    # response, else None. tx: transmissions of the request; separate: the response came
    # apart from the ACK. msg: parse()'s tuple of the response.
    #
    # The defaults below live on the class, not in each object: a result holds only the
    # fields it sets (three without a response, up to eight with one): it stays small.
    code = None  # type: int | None
    payload = b""
    options = ()  # type: list | tuple
    retry_after = None  # type: int | None
    separate = False

    def __init__(self, tx, reason=None, msg=None, separate=False):
        self.tx = tx
        self.reason = reason
        self.decision = RETRY
        if msg is None:
            return
        self.code = code = msg[1]
        self.options = msg[4]
        self.payload = msg[5]
        self.separate = separate
        cls = code >> 5
        if code in (128, 130, 141, 143, 150):
            # 4.00 Bad Request, 4.02 Bad Option, 4.13 Request Entity Too Large,
            # 4.15 Unsupported Content-Format, 4.22 Unprocessable Entity (RFC 8132)
            self.decision = DROP
        elif cls == 2:
            self.decision = DONE
        elif cls == 5 or code == 157:  # 4.29 Too Many Requests (RFC 8516)
            v = opt(msg[4], _MAX_AGE)
            if v is not None:
                self.retry_after = to_uint(v)
        else:
            # 4.01 Unauthorized, 4.03 Forbidden, 4.04 Not Found, other 4.xx (4.05 wrong
            # method, 4.06...) and codes no server should send: something is
            # misconfigured, and dropping would lose the payload.
            self.decision = BACKOFF
