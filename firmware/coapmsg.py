# CoAP message format (RFC 7252 section 3): encode a message into a buffer, parse one.
#
# Options are generic (number, value) pairs: the encoder writes any option with the
# delta/length nibbles and their 13/14 extensions, in option-number order (repeatable
# options keep their given order), and the parser returns every option as a
# (number, bytes) pair, so Block2, ETag, Observe... need no change here. Integer option
# values use uint()/to_uint() (RFC 7252 3.2: big-endian, shortest form).
#
# It also says what a response means for the sender: decide() maps a response code to a
# decision, Result carries one request's outcome (decisions and reasons are named here,
# the client's callers use them from here).
#
# It does not send, retransmit or match anything (coap.py does), and does not interpret
# options beyond their format.
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


class FormatError(ValueError):
    # A message that breaks RFC 7252 3: the caller counts it and, for a CON, may RST it.
    pass


class Message:
    # A parsed message. options: list of (number, bytes) in wire order.
    def __init__(self, mtype, code, mid, token):
        self.type = mtype
        self.code = code
        self.mid = mid
        self.token = token
        self.options = []
        self.payload = b""


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
    out = bytearray(ln)
    while ln:
        ln -= 1
        out[ln] = n & 0xFF
        n >>= 8
    return bytes(out)


def to_uint(value):
    n = 0
    for b in value:
        n = n << 8 | b
    return n


def _sorted(options):
    # Stable insertion sort by number (MicroPython's sort is not stable, and Uri-Path
    # segments must keep their order); option lists are a handful long.
    out = list(options)
    for i in range(1, len(out)):
        o = out[i]
        j = i
        while j and out[j - 1][0] > o[0]:
            out[j] = out[j - 1]
            j -= 1
        out[j] = o
    return out


def _put(buf, i, n):
    # Writes the extension bytes of a delta or length n (after its nibble); next index.
    if n >= 269:
        n -= 269
        buf[i] = n >> 8
        buf[i + 1] = n & 0xFF
        return i + 2
    if n >= 13:
        buf[i] = n - 13
        return i + 1
    return i


def _nib(n):
    return n if n < 13 else 13 if n < 269 else 14


def encode_into(buf, mtype, code, mid, token=b"", options=(), payload=b""):
    # Writes the message at the start of buf; returns its length. Options may come in
    # any order. Raises ValueError if it does not fit or breaks the format.
    tkl = len(token)
    if tkl > _MAX_TOKEN:
        raise ValueError("token longer than 8 bytes")
    end = len(buf)
    buf[0] = _VERSION << 6 | mtype << 4 | tkl
    buf[1] = code
    buf[2] = mid >> 8 & 0xFF
    buf[3] = mid & 0xFF
    i = 4 + tkl
    buf[4:i] = token
    last = 0
    for num, _ in options:
        if num < last:
            options = _sorted(options)
            break
        last = num
    last = 0
    for num, value in options:
        delta = num - last
        last = num
        ln = len(value)
        if delta > 65804 or ln > 65804 or i + 5 + ln > end:
            raise ValueError("option too large")
        buf[i] = _nib(delta) << 4 | _nib(ln)
        i = _put(buf, _put(buf, i + 1, delta), ln)
        buf[i : i + ln] = value
        i += ln
    if payload:
        ln = len(payload)
        if i + 1 + ln > end:
            raise ValueError("payload too large")
        buf[i] = _MARKER
        buf[i + 1 : i + 1 + ln] = payload
        i += 1 + ln
    return i


def _ext(data, i, end, n):
    # Value of a delta/length nibble n with its extension bytes; returns (value, next i).
    if n < 13:
        return n, i
    if n == 15:
        raise FormatError("reserved option nibble 15")
    k = n - 12  # extension bytes: 1 or 2
    if i + k > end:
        raise FormatError("truncated option")
    if k == 1:
        return data[i] + 13, i + 1
    return (data[i] << 8 | data[i + 1]) + 269, i + 2


def parse(data, n=-1):
    # Message from the first n bytes of data (all of it if n < 0). Raises FormatError.
    if n < 0:
        n = len(data)
    if n < 4 or data[0] >> 6 != _VERSION:
        raise FormatError("no CoAP version 1 header")
    tkl = data[0] & 15
    code = data[1]
    if tkl > _MAX_TOKEN or 4 + tkl > n:
        raise FormatError("bad token length")
    if code == _EMPTY and n != 4:
        raise FormatError("empty message with content")
    mv = memoryview(data)
    i = 4 + tkl
    msg = Message(data[0] >> 4 & 3, code, data[2] << 8 | data[3], bytes(mv[4:i]))
    num = 0
    options = msg.options
    while i < n:
        b = data[i]
        if b == _MARKER:
            if i + 1 >= n:
                raise FormatError("payload marker without payload")
            msg.payload = bytes(mv[i + 1 : n])
            break
        delta, i = _ext(data, i + 1, n, b >> 4)
        ln, i = _ext(data, i, n, b & 15)
        if i + ln > n:
            raise FormatError("truncated option value")
        num += delta
        options.append((num, bytes(mv[i : i + ln])))
        i += ln
    return msg


# Decisions: what the caller does with the payload after a request.
DONE = "done"  # accepted (2.xx)
DROP = "drop"  # will never be accepted as sent (4.00, 4.02, 4.13, 4.15, 4.22): count, log
BACKOFF = "backoff"  # device unknown or misconfigured (4.01, 4.03, 4.04...): much later
RETRY = "retry"  # server busy or unreachable (5.xx, 4.29, no answer, RST): later

# Why a request ended without a response code.
TIMEOUT = "timeout"  # no ACK after MAX_RETRANSMIT retransmissions
RESET = "reset"  # the server rejected the request with RST
NO_RESPONSE = "no_response"  # ACKed, but no separate response within the lifetime
CLOSED = "closed"  # the client was closed while the request waited
UNREACHABLE = "unreachable"  # the server's name or a socket could not be had


def decide(code):
    # The decision for a response code: a few 4.xx codes have their own, the rest follow
    # their class.
    if code in (128, 130, 141, 143, 150):
        # 4.00 Bad Request, 4.02 Bad Option, 4.13 Request Entity Too Large,
        # 4.15 Unsupported Content-Format, 4.22 Unprocessable Entity (RFC 8132)
        return DROP
    if code == 157:  # 4.29 Too Many Requests (RFC 8516)
        return RETRY
    cls = code >> 5
    if cls == 2:
        return DONE
    if cls == 5:
        return RETRY
    # 4.01 Unauthorized, 4.03 Forbidden, 4.04 Not Found, other 4.xx (4.05 wrong method,
    # 4.06...) and codes no server should send: something is misconfigured, and dropping
    # would lose the payload.
    return BACKOFF


def path(p):
    # "/v1/pos" -> (b"v1", b"pos"), the Uri-Path segments: split once, pass to request().
    segs = []
    for s in p.split("/"):
        if s:
            segs.append(s.encode())
    return tuple(segs)


class Result:
    # One request's outcome. code: the response code (int; code_str() prints it),
    # or None when no response came, and then reason says why (TIMEOUT, RESET...).
    # retry_after: Max-Age seconds of a 5.xx or 4.29 response, else None.
    # tx: transmissions of the request; separate: the response came apart from the ACK.
    def __init__(self, decision, tx, reason=None, msg=None, separate=False):
        self.decision = decision
        self.tx = tx
        self.reason = reason
        self.separate = separate
        self.code = None
        self.payload = b""
        self.options = []
        self.retry_after = None
        if msg:
            self.code = msg.code
            self.payload = msg.payload
            self.options = opts = msg.options
            v = opt(opts, _MAX_AGE)
            if v is not None and decision == RETRY:
                self.retry_after = to_uint(v)
