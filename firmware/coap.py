# CoAP client (RFC 7252) for MicroPython asyncio: how the van talks to the gateway.
#
# One Client is one UDP socket connected to the server and one task reading it, so the
# GPS task runs while a request waits. Requests go one at a time (NSTART 1, RFC 7252
# 4.7): the others queue. The request in flight is kept in the client's own fields, not
# in an object per request. The client numbers messages, retransmits a CON on a
# doubling, randomised timeout (RFC 7252 4.2, 4.8), matches ACK/RST by message ID and
# responses by token, ACKs separate responses, ignores duplicates and strays and ends
# every request in a coapmsg.Result whose `decision` tells the caller what to do with
# the payload (decisions and Result live in coapmsg, and callers take them from there;
# the reasons a request got no response are named where they arise, below, and listed
# at coapmsg.Result). A request's own timer task sends it and resends it.
#
# Memory: requests are encoded in a preallocated buffer and a retransmission resends
# the bytes already encoded. A request allocates its token, option list and timer task;
# each datagram received is one bytes object from recv() (a socket stream read cannot
# keep datagrams apart, see _receive), parsed into a tuple and a Result. recv() needs
# rx_size + 1 bytes in one piece: the client holds that much (the room) and lends it to
# each recv(), so that a fragmented heap cannot starve the receiver. Every method
# costs heap once imported, so there are few: sending is written out where it happens.
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

import aio
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
            raise ValueError("token_len")  # 1..8 bytes
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
        # The request in flight (or the last one): its MID, token, state, transmissions
        # and result. MIDs start at random, then count up (RFC 7252 4.4).
        self._mid = random.getrandbits(16)
        self._token = b""
        self._state = _DONE
        self._n = 0
        self._result = None
        self._ended = aio.Flag()  # the request in flight has its result
        # Set while no request is in flight: the others wait on it (an asyncio.Lock
        # would cost the heap its module for what these few lines do).
        self._free = aio.Flag()
        self._free.set()
        self._recent = [-1] * _RECENT  # MIDs of the last separate responses, oldest first
        self._tx = bytearray(tx_size or rx_size)
        self._ctl = bytearray(4)  # empty ACK / RST
        # The receive room: heap held for the next datagram (see _receive), taken here
        # while the heap is still whole.
        self._room = bytearray(rx_size + 16)
        self.stats = {
            "sent": 0,
            "retransmitted": 0,
            "received": 0,
            "malformed": 0,  # format errors (RFC 7252 3): ignored; a CON is RST
            "stray": 0,  # matches no request in flight (late, wrong MID/token): ignored
            "duplicate": 0,  # repeated ACK or separate response: ignored, CON re-ACKed
            "unexpected": 0,  # requests or pings sent to us: RST
        }

    def post(self, uri_path, payload, content_format=_CBOR):
        # Awaitable: request()'s own coroutine (a coroutine around it would cost a frame).
        return self.request(_POST, uri_path, payload, content_format)

    async def request(self, method, uri_path, payload=b"", content_format=None, options=()):
        # uri_path: "/a/b" or, better, coapmsg.path("/a/b") made once; options: more
        # (number, bytes) pairs (Uri-Query, ETag, Block2...). Network trouble never
        # raises but ends in a RETRY result; a message too large raises ValueError.
        if self._room is None:
            # The room could not be taken back after the last datagram (see _receive):
            # try now that the caller is done with the last response. Without the heap
            # for it, recv() tries its luck.
            self._result = None
            try:
                self._room = bytearray(self.rx_size + 16)
            except MemoryError:
                pass
        opts = []
        for seg in coapmsg.path(uri_path) if isinstance(uri_path, str) else uri_path:
            opts.append((_URI_PATH, seg))
        if content_format is not None:
            opts.append((_CONTENT_FORMAT, coapmsg.uint(content_format)))
        opts.extend(options)
        while not self._free.is_set():
            await self._free.wait()
        self._free.clear()
        timer = None
        try:
            mid = self._mid = (self._mid + 1) & 0xFFFF
            token = os.urandom(self._tkl)
            n = coapmsg.encode_into(self._tx, _CON, method, mid, token, opts, payload)
            if not self._sock:
                try:
                    # Once: DNS may block. It fails while Wi-Fi is still joining.
                    addr = socket.getaddrinfo(*self.addr)[0][-1]
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.setblocking(False)
                    s.connect(addr)
                except OSError:
                    return coapmsg.Result(0, "unreachable")
                self._sock = s
                self._reader = asyncio.create_task(self._receive())
            self._token = token
            self._n = 0
            self._result = None
            self._ended.clear()
            self._state = _WAIT_ACK
            # _tx is ours until this request ends: the timer sends and resends it as is.
            timer = asyncio.create_task(self._transmit(memoryview(self._tx)[:n]))
            await self._ended.wait()
            return self._result
        finally:
            # Also when our caller cancels us: nothing may match or time it out later.
            self._state = _DONE
            if timer:
                timer.cancel()
            self._free.set()  # wakes the waiting requests: the first to run goes

    async def _receive(self):
        # Wait (through the asyncio poller) until a datagram is there, then recv() it:
        # exactly one datagram, where a stream read would run queued ones together.
        while True:
            try:
                await aio.readable(self._sock)
                # recv() allocates rx_size + 1 bytes in one piece, and a van's heap is
                # fragmented: after a collection its largest hole can be smaller than
                # that, so the datagram would never be read. The room held for it goes
                # first: if recv() finds no other hole, its allocation collects and
                # takes the room's. recv() frees that buffer before it returns (it
                # returns a copy), so the room is taken back at once, before anything
                # else can be put in its place.
                self._room = None  # type: ignore[assignment]
                data = self._sock.recv(self.rx_size + 1)  # type: ignore[union-attr]
                try:
                    self._room = bytearray(self.rx_size + 16)
                except MemoryError:
                    pass  # the next request tries again
                self._dispatch(data)
            except OSError as e:
                if e.args[0] != errno.EAGAIN:
                    # ECONNREFUSED after an ICMP port unreachable (nothing listens):
                    # retransmission decides; pause so a failing socket cannot spin.
                    self.errors += 1
                    await asyncio.sleep_ms(50)
            except MemoryError:
                # A full heap must not end the receive task (every later request would
                # time out), nor leave the datagram in the socket (recv() allocates before
                # it reads: it would fail on it for ever). Drop it: readinto() into the
                # 4-byte control buffer takes exactly one datagram (a stream read stops
                # once the buffer is full), and retransmission brings it again.
                self.errors += 1
                try:
                    self._sock.readinto(self._ctl)  # type: ignore[union-attr]
                except OSError:
                    pass
                await asyncio.sleep_ms(50)

    def _finish(self, reason=None, msg=None, separate=False):
        # Ends the request in flight (if any): with the response msg, else for reason.
        if self._state != _DONE:
            self._state = _DONE
            self._result = coapmsg.Result(self._n, reason, msg, separate)
            self._ended.set()

    async def _transmit(self, msg):
        # The request's timer: send, then resend after t, 2t, 4t... (t random in
        # [ACK_TIMEOUT, ACK_TIMEOUT * factor]) until an ACK or the response comes; give up
        # when MAX_RETRANSMIT resends went unanswered. Once ACKed, wait for the separate
        # response until the end of the request's lifetime.
        start = time.ticks_ms()
        t = self.ack_timeout_ms + random.getrandbits(16) % (self._jitter + 1)
        st = self.stats
        while self._state == _WAIT_ACK:
            if self._n > self.max_retransmit:
                self._finish("timeout")  # no ACK after MAX_RETRANSMIT resends
                return
            if self._n:
                st["retransmitted"] += 1
            self._n += 1
            st["sent"] += 1
            try:
                self._sock.send(msg)  # type: ignore[union-attr]  # request() opened it
            except OSError:
                # Interface down or no route: the datagram is lost, the timer carries on.
                self.errors += 1
            await asyncio.sleep_ms(t)
            t <<= 1
        if self._state == _WAIT_RESPONSE:
            left = self.lifetime_ms - time.ticks_diff(time.ticks_ms(), start)
            await asyncio.sleep_ms(max(0, left))
            self._finish("no_response")  # ACKed, but no response came

    def _dispatch(self, data):
        # One datagram: match it to the request in flight, or count it.
        st = self.stats
        st["received"] += 1
        try:
            if len(data) > self.rx_size:
                raise ValueError  # larger than the receive size: cut short
            msg = coapmsg.parse(data)
        except ValueError:
            st["malformed"] += 1
            if len(data) < 4 or data[0] & 0xF0 != 0x40:
                return  # not a CON of version 1: nothing to answer
            # A CON that cannot be understood is answered with RST (RFC 7252 4.2).
            mtype = _CON
            mid = data[2] << 8 | data[3]
            reply = _RST
        else:
            mtype, code, mid, token, _, _ = msg
            state = self._state
            if mtype >= _ACK:
                if state == _DONE or mid != self._mid or (code and token != self._token):
                    st["stray"] += 1  # late, or carries another request's response
                elif state != _WAIT_ACK:
                    st["duplicate"] += 1
                elif code:
                    if mtype == _ACK:
                        self._finish(None, msg)
                    else:
                        st["malformed"] += 1  # RST must be empty
                elif mtype == _RST:
                    self._finish("reset")  # the server rejected the request
                else:
                    self._state = _WAIT_RESPONSE
                return
            # A CON or NON: a request, or a separate response. Only a CON is answered,
            # with an empty ACK or RST (`reply`).
            if code >> 5 == 0:  # a ping (0.00) or a request: we serve nothing
                st["unexpected"] += 1
                reply = _RST
            elif mtype == _CON and mid in self._recent:
                st["duplicate"] += 1  # our ACK of it was lost: ACK again, deliver nothing
                reply = _ACK
            elif state == _DONE or token != self._token:
                st["stray"] += 1  # a response to no request in flight: RFC 7252 5.3.2
                reply = _RST
            else:
                reply = _ACK
                if mtype == _CON:
                    self._recent.pop(0)  # the list keeps its room: no allocation
                    self._recent.append(mid)
                # A CON response before the empty ACK also ends retransmission (5.2.2).
                self._finish(None, msg, True)
        if mtype == _CON:
            coapmsg.encode_into(self._ctl, reply, _EMPTY, mid)
            try:
                self._sock.send(self._ctl)  # type: ignore[union-attr]
            except OSError:
                self.errors += 1  # lost: the peer will repeat its CON

    def close(self):
        # Stops the receiver, closes the socket, ends a waiting request ("closed").
        if self._reader:
            self._reader.cancel()
            self._sock.close()  # type: ignore[union-attr]
        self._sock = self._reader = None
        self._finish("closed")
