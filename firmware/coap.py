# CoAP client (RFC 7252) for MicroPython asyncio: how the van talks to the gateway.
#
# Layered like aiocoap. Client is the message layer: it numbers messages, retransmits a
# CON on a doubling, randomised timeout (RFC 7252 4.2, 4.8), matches ACK/RST by message
# ID and responses by token, ACKs separate responses, ignores duplicates and strays and
# ends every request in a Result whose `decision` tells the caller what to do with the
# payload (coapmsg.decide(); decisions, reasons and Result live in coapmsg, and callers
# take them from there). Udp is the transport: one non-blocking UDP socket connected to
# the server and one asyncio task reading it, so the GPS task runs while a request waits.
#
# Memory: requests are encoded in a preallocated buffer and a retransmission resends the
# bytes already encoded (no allocation per retransmission). A request allocates its
# token, option list, Event and timer task (and a copy of the message when requests may
# overlap, nstart None); each datagram received is one bytes object from recv() (a
# socket stream read cannot keep datagrams apart, see Udp._receive), parsed into a
# Message and a Result. Encoding and parsing: coapmsg.py.
#
# It does not do blockwise transfers, observe, multicast or DTLS, nor serve requests
# (an incoming request or ping is answered with RST).
import asyncio
import errno
import os
import random
import socket
import time

import coapmsg
from micropython import const

# RFC 7252 numbers the client uses (see coapmsg.py's header).
_CON = const(0)
_ACK = const(2)
_RST = const(3)
_EMPTY = const(0)
_POST = const(2)
_URI_HOST = const(3)
_URI_PATH = const(11)
_CONTENT_FORMAT = const(12)
_URI_QUERY = const(15)
_ACCEPT = const(17)
_CBOR = const(60)  # Content-Format application/cbor

_WAIT_ACK = const(0)  # CON sent, neither ACK nor response yet
_WAIT_RESPONSE = const(1)  # empty ACK received, separate response due
_DONE = const(2)
_RECENT = const(8)  # separate-response MIDs kept to re-ACK their duplicates


class _Exchange:
    def __init__(self, mid, token, msg, deadline):
        self.mid = mid
        self.token = token
        self.msg = msg  # the encoded CON, resent as is
        self.deadline = deadline  # ticks_ms: end of the wait for a separate response
        self.state = _WAIT_ACK
        self.tx = 0
        self.result = None
        self.event = asyncio.Event()
        self.timer = None


class Udp:
    # Transport: a connected, non-blocking UDP socket and one task receiving from it,
    # handing each datagram (bytes) to on_datagram(data).
    def __init__(self, host, port, on_datagram, rx_size):
        self.addr = (host, port)
        self.size = rx_size
        self.on_datagram = on_datagram
        self.sock = None
        self.task = None
        self.errors = 0

    def open(self):
        if not self.sock:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect(socket.getaddrinfo(*self.addr)[0][-1])  # once: DNS may block
            self.sock = s
            self.task = asyncio.create_task(self._receive(asyncio.StreamReader(s)))

    def send(self, data):
        try:
            self.sock.send(data)  # type: ignore[union-attr]  # open() came first
        except OSError:
            # Interface down or no route: the datagram is lost, the timers carry on.
            self.errors += 1

    async def _receive(self, reader):
        # A stream read (readinto) keeps reading until its buffer is full and so runs
        # queued datagrams together; recv() returns exactly one. Reading into an empty
        # buffer just waits, through the asyncio poller, until one is there.
        ready = bytearray(0)
        while True:
            try:
                await reader.readinto(ready)
                data = self.sock.recv(self.size + 1)  # type: ignore[union-attr]
            except OSError as e:
                if e.args[0] != errno.EAGAIN:
                    # ECONNREFUSED after an ICMP port unreachable (nothing listens):
                    # retransmission decides; pause so a failing socket cannot spin.
                    self.errors += 1
                    await asyncio.sleep_ms(50)
                continue
            except MemoryError:
                # A full heap must not end the receive task (every later request would
                # time out): lose this datagram, let the GC catch up, retransmission
                # recovers it.
                self.errors += 1
                await asyncio.sleep_ms(50)
                continue
            try:
                self.on_datagram(data)
            except MemoryError:
                self.errors += 1

    def close(self):
        if self.task:
            self.task.cancel()
            self.sock.close()  # type: ignore[union-attr]
        self.sock = self.task = None


class Client:
    # host, port: the server, resolved once when the first request opens the client.
    # uri_host: sent as Uri-Host if set. nstart: 1 (RFC 7252 4.7) queues requests so
    # one is in flight; None lets them overlap. lifetime_ms bounds a request from
    # its first transmission to its separate response (RFC EXCHANGE_LIFETIME: 247 s).
    def __init__(
        self,
        host,
        port=5683,
        uri_host=None,
        ack_timeout_ms=2000,
        ack_random_factor=1.5,
        max_retransmit=4,
        lifetime_ms=247000,
        nstart=1,
        token_len=4,
        rx_size=1152,
        tx_size=None,
    ):
        if nstart not in (1, None) or not 0 < token_len <= 8:
            raise ValueError("nstart must be 1 or None, token_len 1..8")
        self.udp = Udp(host, port, self._dispatch, rx_size)
        self.uri_host = uri_host
        self.ack_timeout_ms = ack_timeout_ms
        self._jitter = int(ack_timeout_ms * (ack_random_factor - 1))
        self.max_retransmit = max_retransmit
        self.lifetime_ms = lifetime_ms
        # nstart 1: requests queue on _busy, waking on _free (an asyncio.Lock would cost
        # the heap its module for what these few lines do).
        self._serial = nstart == 1
        self._busy = False
        self._free = asyncio.Event()
        self._tkl = token_len
        self._mid = random.getrandbits(16)
        self._pending = []
        self._recent = [-1] * _RECENT
        self._ri = 0
        # Encoding scratch: as large as the largest request (defaults to rx_size).
        self._tx = bytearray(tx_size or rx_size)
        self._ctl = bytearray(4)  # empty ACK / RST
        self.stats = {
            "sent": 0,
            "retransmitted": 0,
            "received": 0,
            "malformed": 0,  # format errors (RFC 7252 3): ignored; a CON is RST
            "stray": 0,  # matches no request in flight (late, wrong MID/token): ignored
            "duplicate": 0,  # repeated ACK or separate response: ignored, CON re-ACKed
            "unexpected": 0,  # requests or pings sent to us: RST
        }

    async def post(self, uri_path, payload, content_format=_CBOR):
        return await self.request(_POST, uri_path, payload, content_format)

    async def request(
        self, method, uri_path, payload=b"", content_format=None, accept=None, query=(), options=()
    ):
        # uri_path: "/a/b" or, better, coapmsg.path("/a/b") made once; query: "k=v" strings;
        # options: more (number, bytes) pairs (ETag, Block2...). Network trouble never
        # raises but ends in a RETRY result; a message too large raises ValueError.
        opts = [(_URI_HOST, self.uri_host.encode())] if self.uri_host else []
        for seg in coapmsg.path(uri_path) if isinstance(uri_path, str) else uri_path:
            opts.append((_URI_PATH, seg))
        if content_format is not None:
            opts.append((_CONTENT_FORMAT, coapmsg.uint(content_format)))
        for q in query:
            opts.append((_URI_QUERY, q.encode()))
        if accept is not None:
            opts.append((_ACCEPT, coapmsg.uint(accept)))
        opts.extend(options)
        serial = self._serial
        if serial:
            while self._busy:
                await self._free.wait()
            self._busy = True
        ex = None
        try:
            mid = self._next_mid()
            token = os.urandom(self._tkl)
            n = coapmsg.encode_into(self._tx, _CON, method, mid, token, opts, payload)
            try:
                self.udp.open()
            except OSError:  # no DNS answer or no interface yet (Wi-Fi still joining)
                return coapmsg.Result(coapmsg.RETRY, 0, coapmsg.UNREACHABLE)
            deadline = time.ticks_add(time.ticks_ms(), self.lifetime_ms)
            # With nstart 1, _tx stays ours until this exchange ends: resend it in place.
            # Overlapping requests each keep a copy.
            msg = memoryview(self._tx)[:n]
            ex = _Exchange(mid, token, msg if serial else bytes(msg), deadline)
            self._pending.append(ex)
            ex.tx = 1
            self.stats["sent"] += 1
            self.udp.send(ex.msg)
            ex.timer = asyncio.create_task(self._retransmit(ex))
            await ex.event.wait()
            return ex.result
        finally:
            # Also when our caller cancels us: nothing may match or time it out later.
            if ex:
                ex.state = _DONE
                self._pending.remove(ex)
                if ex.timer:
                    ex.timer.cancel()
            if serial:
                self._busy = False
                self._free.set()  # wakes the waiting requests: the first to run goes
                self._free.clear()

    def _next_mid(self):
        # Random start, then +1 mod 2**16 per new CON (RFC 7252 4.4).
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def _finish(self, ex, decision, reason=None, msg=None, separate=False):
        if ex.state != _DONE:
            ex.state = _DONE
            ex.result = coapmsg.Result(decision, ex.tx, reason, msg, separate)
            ex.event.set()

    async def _retransmit(self, ex):
        # Resend after t, 2t, 4t... (t random in [ACK_TIMEOUT, ACK_TIMEOUT * factor]);
        # give up when MAX_RETRANSMIT resends went unanswered. Once ACKed, wait for the
        # separate response until the deadline.
        t = self.ack_timeout_ms + random.getrandbits(16) % (self._jitter + 1)
        while ex.state == _WAIT_ACK:
            await asyncio.sleep_ms(t)
            if ex.state != _WAIT_ACK:
                break
            if ex.tx > self.max_retransmit:
                self._finish(ex, coapmsg.RETRY, coapmsg.TIMEOUT)
                return
            ex.tx += 1
            self.stats["sent"] += 1
            self.stats["retransmitted"] += 1
            self.udp.send(ex.msg)
            t <<= 1
        if ex.state == _WAIT_RESPONSE:
            await asyncio.sleep_ms(max(0, time.ticks_diff(ex.deadline, time.ticks_ms())))
            self._finish(ex, coapmsg.RETRY, coapmsg.NO_RESPONSE)

    def _dispatch(self, data):
        # One datagram: match it to a request in flight, or count it.
        st = self.stats
        st["received"] += 1
        try:
            if len(data) > self.udp.size:
                raise coapmsg.FormatError("larger than the receive size: cut short")
            msg = coapmsg.parse(data)
        except coapmsg.FormatError:
            st["malformed"] += 1
            if len(data) >= 4 and data[0] & 0xF0 == 0x40:  # a CON of version 1
                self._control(_RST, data[2] << 8 | data[3])
            return
        mtype = msg.type
        code = msg.code
        mid = msg.mid
        if mtype >= _ACK:
            ex = None
            for e in self._pending:
                if e.mid == mid:
                    ex = e
            if ex is None or (code and msg.token != ex.token):
                st["stray"] += 1  # late, or carries another request's response
            elif ex.state != _WAIT_ACK:
                st["duplicate"] += 1
            elif code:
                if mtype == _ACK:
                    self._finish(ex, coapmsg.decide(code), None, msg)
                else:
                    st["malformed"] += 1  # RST must be empty
            elif mtype == _RST:
                self._finish(ex, coapmsg.RETRY, coapmsg.RESET)
            else:
                ex.state = _WAIT_RESPONSE
            return
        # CON or NON.
        con = mtype == _CON
        if code >> 5 == 0:  # a ping (0.00) or a request: we serve nothing
            st["unexpected"] += 1
            if con:
                self._control(_RST, mid)
            return
        if con and mid in self._recent:
            st["duplicate"] += 1  # our ACK of it was lost: ACK again, deliver nothing
            self._control(_ACK, mid)
            return
        ex = None
        for e in self._pending:
            if e.state != _DONE and e.token == msg.token:
                ex = e
        if ex is None:
            st["stray"] += 1  # a response to no request in flight: RFC 7252 5.3.2
            if con:
                self._control(_RST, mid)
            return
        if con:
            self._control(_ACK, mid)
            self._recent[self._ri] = mid
            self._ri = (self._ri + 1) % _RECENT
        # A CON response before the empty ACK also ends retransmission (RFC 7252 5.2.2).
        self._finish(ex, coapmsg.decide(code), None, msg, True)

    def _control(self, mtype, mid):
        coapmsg.encode_into(self._ctl, mtype, _EMPTY, mid)
        self.udp.send(self._ctl)

    def close(self):
        # Stops the receiver, closes the socket, ends waiting requests with CLOSED.
        self.udp.close()
        for ex in self._pending:
            self._finish(ex, coapmsg.RETRY, coapmsg.CLOSED)
