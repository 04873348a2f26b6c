# CoAP client (RFC 7252) for MicroPython asyncio: how the van talks to the gateway.
#
# One Client is one UDP socket connected to the server and one task reading it, so the
# GPS task runs while a request waits. Requests go one at a time (NSTART 1, RFC 7252
# 4.7): the others queue. The request in flight is kept in the client's own fields, not
# in an object per request. The client numbers messages, retransmits a CON on a
# doubling, randomised timeout (RFC 7252 4.2, 4.8), matches ACK/RST by message ID and
# responses by token, ACKs separate responses, ignores duplicates and strays and ends
# every request in a coapmsg.Result whose `decision` tells the caller what to do with
# the payload (coapmsg.decide(); decisions, reasons and Result live in coapmsg, and
# callers take them from there).
#
# Memory: requests are encoded in a preallocated buffer and a retransmission resends
# the bytes already encoded. A request allocates its token, option list and timer task;
# each datagram received is one bytes object from recv() (a socket stream read cannot
# keep datagrams apart, see _receive), parsed into a Message and a Result.
# Encoding and parsing: coapmsg.py.
#
# It does not do blockwise transfers itself (a caller sends Block2 as an option),
# observe, multicast or DTLS, nor serve requests (an incoming request or ping is
# answered with RST).
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
_URI_PATH = const(11)
_CONTENT_FORMAT = const(12)
_CBOR = const(60)  # Content-Format application/cbor

_WAIT_ACK = const(0)  # CON sent, neither ACK nor response yet
_WAIT_RESPONSE = const(1)  # empty ACK received, separate response due
_DONE = const(2)  # no request in flight
_RECENT = const(8)  # separate-response MIDs kept to re-ACK their duplicates


class Client:
    # host, port: the server, resolved once when the first request opens the socket.
    # lifetime_ms bounds a request from its first transmission to its separate response
    # (RFC EXCHANGE_LIFETIME: 247 s). rx_size: the largest datagram taken (larger ones
    # count as malformed); tx_size: the largest request (defaults to rx_size).
    def __init__(
        self,
        host,
        port=5683,
        ack_timeout_ms=2000,
        ack_random_factor=1.5,
        max_retransmit=4,
        lifetime_ms=247000,
        token_len=4,
        rx_size=1152,
        tx_size=None,
    ):
        if not 0 < token_len <= 8:
            raise ValueError("token_len must be 1..8")
        self.addr = (host, port)
        self.rx_size = rx_size
        self.ack_timeout_ms = ack_timeout_ms
        self._jitter = int(ack_timeout_ms * (ack_random_factor - 1))
        self.max_retransmit = max_retransmit
        self.lifetime_ms = lifetime_ms
        self.errors = 0  # socket errors: send failures, receive errors
        self._sock = None
        self._reader = None  # the receive task
        self._tkl = token_len
        self._mid = random.getrandbits(16)
        # The request in flight: its MID, token, state, transmissions and result.
        self._xmid = -1
        self._token = b""
        self._state = _DONE
        self._n = 0
        self._result = None
        self._ended = asyncio.Event()  # the request in flight has its result
        # Requests queue on _busy, waking on _free (an asyncio.Lock would cost the heap
        # its module for what these few lines do).
        self._busy = False
        self._free = asyncio.Event()
        self._recent = [-1] * _RECENT
        self._ri = 0
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

    async def request(self, method, uri_path, payload=b"", content_format=None, options=()):
        # uri_path: "/a/b" or, better, coapmsg.path("/a/b") made once; options: more
        # (number, bytes) pairs (Uri-Query, ETag, Block2...). Network trouble never
        # raises but ends in a RETRY result; a message too large raises ValueError.
        opts = []
        for seg in coapmsg.path(uri_path) if isinstance(uri_path, str) else uri_path:
            opts.append((_URI_PATH, seg))
        if content_format is not None:
            opts.append((_CONTENT_FORMAT, coapmsg.uint(content_format)))
        opts.extend(options)
        while self._busy:
            await self._free.wait()
        self._busy = True
        timer = None
        try:
            mid = self._mid = (self._mid + 1) & 0xFFFF  # random start, then +1 (4.4)
            token = os.urandom(self._tkl)
            n = coapmsg.encode_into(self._tx, _CON, method, mid, token, opts, payload)
            try:
                self._open()
            except OSError:  # no DNS answer or no interface yet (Wi-Fi still joining)
                return coapmsg.Result(coapmsg.RETRY, 0, coapmsg.UNREACHABLE)
            self._xmid = mid
            self._token = token
            self._n = 1
            self._result = None
            self._ended.clear()
            self._state = _WAIT_ACK
            self.stats["sent"] += 1
            msg = memoryview(self._tx)[:n]  # ours until this request ends: resent as is
            self._send(msg)
            timer = asyncio.create_task(self._retransmit(msg, time.ticks_ms()))
            await self._ended.wait()
            return self._result
        finally:
            # Also when our caller cancels us: nothing may match or time it out later.
            self._state = _DONE
            if timer:
                timer.cancel()
            self._busy = False
            self._free.set()  # wakes the waiting requests: the first to run goes
            self._free.clear()

    def _open(self):
        if not self._sock:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect(socket.getaddrinfo(*self.addr)[0][-1])  # once: DNS may block
            self._sock = s
            self._reader = asyncio.create_task(self._receive(asyncio.StreamReader(s)))

    def _send(self, data):
        try:
            self._sock.send(data)  # type: ignore[union-attr]  # _open() came first
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
                data = self._sock.recv(self.rx_size + 1)  # type: ignore[union-attr]
                self._dispatch(data)
            except OSError as e:
                if e.args[0] != errno.EAGAIN:
                    # ECONNREFUSED after an ICMP port unreachable (nothing listens):
                    # retransmission decides; pause so a failing socket cannot spin.
                    self.errors += 1
                    await asyncio.sleep_ms(50)
            except MemoryError:
                # A full heap must not end the receive task (every later request would
                # time out): lose this datagram, let the GC catch up, retransmission
                # recovers it.
                self.errors += 1
                await asyncio.sleep_ms(50)

    def _finish(self, decision, reason=None, msg=None, separate=False):
        if self._state != _DONE:
            self._state = _DONE
            self._result = coapmsg.Result(decision, self._n, reason, msg, separate)
            self._ended.set()

    async def _retransmit(self, msg, start):
        # Resend after t, 2t, 4t... (t random in [ACK_TIMEOUT, ACK_TIMEOUT * factor]);
        # give up when MAX_RETRANSMIT resends went unanswered. Once ACKed, wait for the
        # separate response until the end of the request's lifetime.
        t = self.ack_timeout_ms + random.getrandbits(16) % (self._jitter + 1)
        while self._state == _WAIT_ACK:
            await asyncio.sleep_ms(t)
            if self._state != _WAIT_ACK:
                break
            if self._n > self.max_retransmit:
                self._finish(coapmsg.RETRY, coapmsg.TIMEOUT)
                return
            self._n += 1
            self.stats["sent"] += 1
            self.stats["retransmitted"] += 1
            self._send(msg)
            t <<= 1
        if self._state == _WAIT_RESPONSE:
            left = self.lifetime_ms - time.ticks_diff(time.ticks_ms(), start)
            await asyncio.sleep_ms(max(0, left))
            self._finish(coapmsg.RETRY, coapmsg.NO_RESPONSE)

    def _dispatch(self, data):
        # One datagram: match it to the request in flight, or count it.
        st = self.stats
        st["received"] += 1
        try:
            if len(data) > self.rx_size:
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
        state = self._state
        if mtype >= _ACK:
            if state == _DONE or mid != self._xmid or (code and msg.token != self._token):
                st["stray"] += 1  # late, or carries another request's response
            elif state != _WAIT_ACK:
                st["duplicate"] += 1
            elif code:
                if mtype == _ACK:
                    self._finish(coapmsg.decide(code), None, msg)
                else:
                    st["malformed"] += 1  # RST must be empty
            elif mtype == _RST:
                self._finish(coapmsg.RETRY, coapmsg.RESET)
            else:
                self._state = _WAIT_RESPONSE
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
        if state == _DONE or msg.token != self._token:
            st["stray"] += 1  # a response to no request in flight: RFC 7252 5.3.2
            if con:
                self._control(_RST, mid)
            return
        if con:
            self._control(_ACK, mid)
            self._recent[self._ri] = mid
            self._ri = (self._ri + 1) % _RECENT
        # A CON response before the empty ACK also ends retransmission (RFC 7252 5.2.2).
        self._finish(coapmsg.decide(code), None, msg, True)

    def _control(self, mtype, mid):
        coapmsg.encode_into(self._ctl, mtype, _EMPTY, mid)
        self._send(self._ctl)

    def close(self):
        # Stops the receiver, closes the socket, ends a waiting request with CLOSED.
        if self._reader:
            self._reader.cancel()
            self._sock.close()  # type: ignore[union-attr]
        self._sock = self._reader = None
        self._finish(coapmsg.RETRY, coapmsg.CLOSED)
