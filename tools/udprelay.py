"""`vantrack relay`: a lossy UDP relay between vans and a gateway, for fault tests and demos.

It listens on 127.0.0.1:PORT and forwards every datagram to the target (the gateway), one
upstream socket per client address so each answer goes back to the client it belongs to,
dropping each datagram with probability p, independently per direction, and optionally
delaying it (a fixed delay plus uniform jitter, so datagrams can be reordered). Drops
come from one seeded random generator per direction, so the n-th datagram each way has
the same fate on every run with the same seed. It counts what it forwarded and dropped
each way, and datagrams a client sent again byte for byte (a CoAP retransmission is one).

It does not parse or change what it relays, and it does not model bandwidth, duplication
or corruption. Used from tests as `with UdpRelay(gateway_port, drop=0.3, seed=1) as relay:`
(then point the van at `relay.port`) and from the command line as `vantrack relay`.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import random
import selectors
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import FrameType

_MAX_DATAGRAM = 65535
_REPEAT_WINDOW = 32  # a client's last datagrams kept to recognise a resend of one of them


@dataclass
class _Client:
    addr: tuple[str, int]
    upstream: socket.socket
    recent: deque[bytes] = field(default_factory=lambda: deque(maxlen=_REPEAT_WINDOW))


class UdpRelay:
    """A lossy UDP relay run by a background thread; `start()`/`stop()` or `with`.

    drop_up applies to client -> target datagrams, drop_down to target -> client ones.
    `counts()` is a snapshot: up/down forwarded and dropped, repeats (client datagrams
    equal to one of its last 32), clients (addresses seen).
    """

    def __init__(
        self,
        target_port: int,
        *,
        target_host: str = "127.0.0.1",
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        drop: float = 0.0,
        drop_up: float | None = None,
        drop_down: float | None = None,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.drop_up = drop if drop_up is None else drop_up
        self.drop_down = drop if drop_down is None else drop_down
        for p in (self.drop_up, self.drop_down):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"drop probability {p} not in [0, 1]")
        if delay_ms < 0 or jitter_ms < 0:
            raise ValueError("delay and jitter must be >= 0")
        self.target = (target_host, target_port)
        self.delay_s = delay_ms / 1000
        self.jitter_s = jitter_ms / 1000
        # One generator per direction (and one for delays) so the fate of the n-th
        # datagram one way does not depend on how many went the other way.
        root = random.Random(seed)
        self._rng_up = random.Random(root.getrandbits(64))
        self._rng_down = random.Random(root.getrandbits(64))
        self._rng_delay = random.Random(root.getrandbits(64))
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._listen.bind((listen_host, listen_port))
        self._listen.setblocking(False)
        self.host, self.port = self._listen.getsockname()[:2]
        self._clients: dict[tuple[str, int], _Client] = {}
        self._by_upstream: dict[socket.socket, _Client] = {}
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listen, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        # Delayed datagrams: (due, tie-breaker, socket, payload, address).
        self._pending: list[tuple[float, int, socket.socket, bytes, tuple[str, int]]] = []
        self._tie = itertools.count()
        self._lock = threading.Lock()
        self._counts = {
            "up_forwarded": 0, "up_dropped": 0, "down_forwarded": 0, "down_dropped": 0,
            "repeats": 0, "errors": 0,
        }  # fmt: skip
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- life cycle ---------------------------------------------------------------------
    def start(self) -> UdpRelay:
        self._thread = threading.Thread(target=self._run, name=f"udprelay-{self.port}")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(5)
        self._sel.close()
        for s in (self._listen, self._wake_r, self._wake_w):
            s.close()
        for c in self._clients.values():
            c.upstream.close()

    def __enter__(self) -> UdpRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- figures ------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._counts)
        out["clients"] = len(self._clients)
        return out

    def summary(self) -> str:
        c = self.counts()
        return (
            f"up forwarded={c['up_forwarded']} dropped={c['up_dropped']}  "
            f"down forwarded={c['down_forwarded']} dropped={c['down_dropped']}  "
            f"repeats={c['repeats']} clients={c['clients']} errors={c['errors']}"
        )

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    # ---- the loop -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            timeout = None
            if self._pending:
                timeout = max(0.0, self._pending[0][0] - time.monotonic())
            for key, _ in self._sel.select(timeout):
                sock = key.fileobj
                if sock is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                elif sock is self._listen:
                    self._from_client()
                else:
                    assert isinstance(sock, socket.socket)
                    self._from_target(sock)
            self._send_due()

    def _read(self, sock: socket.socket) -> tuple[bytes, tuple[str, int]] | None:
        try:
            data, addr = sock.recvfrom(_MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            # e.g. ECONNREFUSED from an ICMP port-unreachable: the gateway is down.
            self._count("errors")
            return None
        return data, addr

    def _from_client(self) -> None:
        got = self._read(self._listen)
        if got is None:
            return
        data, addr = got
        client = self._clients.get(addr)
        if client is None:
            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            up.bind((self._listen.getsockname()[0], 0))
            up.setblocking(False)
            client = _Client(addr, up)
            self._clients[addr] = client
            self._by_upstream[up] = client
            self._sel.register(up, selectors.EVENT_READ)
        if data in client.recent:
            self._count("repeats")
        client.recent.append(data)
        if self._rng_up.random() < self.drop_up:
            self._count("up_dropped")
            return
        self._count("up_forwarded")
        self._forward(client.upstream, data, self.target)

    def _from_target(self, up: socket.socket) -> None:
        got = self._read(up)
        if got is None:
            return
        data, _ = got
        client = self._by_upstream[up]
        if self._rng_down.random() < self.drop_down:
            self._count("down_dropped")
            return
        self._count("down_forwarded")
        self._forward(self._listen, data, client.addr)

    def _forward(self, sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
        delay = self.delay_s
        if self.jitter_s:
            delay += self._rng_delay.uniform(0, self.jitter_s)
        if delay <= 0 and not self._pending:
            self._send(sock, data, addr)
        else:
            due = time.monotonic() + delay
            heapq.heappush(self._pending, (due, next(self._tie), sock, data, addr))

    def _send_due(self) -> None:
        now = time.monotonic()
        while self._pending and self._pending[0][0] <= now:
            _, _, sock, data, addr = heapq.heappop(self._pending)
            self._send(sock, data, addr)

    def _send(self, sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
        try:
            sock.sendto(data, addr)
        except OSError:
            self._count("errors")


# ---- command line -------------------------------------------------------------------------
EPILOG = """\
examples:
  vantrack relay --to 127.0.0.1:5683 --listen 5700 --drop 0.3 --seed 1
      30 % of datagrams lost each way; point the van's gateway_port at 5700
  vantrack relay --to 127.0.0.1:5683 --drop-up 0.5 --delay-ms 80 --jitter-ms 40 --stats-every 10
Counts are printed on stderr every --stats-every seconds and when it stops (Ctrl-C, SIGTERM).
The first stdout line is `relay listening on 127.0.0.1:PORT -> HOST:PORT`.
Exit codes: 0 stopped by a signal, 2 bad arguments."""


def _probability(text: str) -> float:
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability is between 0 and 1, not {p}")
    return p


def _non_negative(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {v}")
    return v


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    try:
        n = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}") from None
    if not 0 < n < 65536:
        raise argparse.ArgumentTypeError(f"port {n} out of range")
    return host or "127.0.0.1", n


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "relay",
        help="a lossy UDP relay between vans and a gateway (drop, delay, jitter; seeded)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--to", required=True, type=_hostport, metavar="HOST:PORT",
        help="where to forward datagrams (the gateway)",
    )  # fmt: skip
    p.add_argument(
        "--listen", type=int, default=0, metavar="PORT",
        help="port to listen on at --bind (default: a free port, printed at start)",
    )  # fmt: skip
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR", help="default 127.0.0.1")
    loss = p.add_argument_group("loss (probability per datagram, 0-1)")
    loss.add_argument(
        "--drop", type=_probability, default=0.0, metavar="P",
        help="drop each datagram with probability P, both ways (default 0)",
    )  # fmt: skip
    loss.add_argument(
        "--drop-up", type=_probability, metavar="P", help="client -> target only (overrides --drop)"
    )
    loss.add_argument(
        "--drop-down", type=_probability, metavar="P",
        help="target -> client only (overrides --drop)",
    )  # fmt: skip
    timing = p.add_argument_group("timing")
    timing.add_argument(
        "--delay-ms", type=_non_negative, default=0.0, metavar="MS",
        help="delay every forwarded datagram by MS (default 0)",
    )  # fmt: skip
    timing.add_argument(
        "--jitter-ms", type=_non_negative, default=0.0, metavar="MS",
        help="plus a uniform random 0..MS (reorders datagrams; default 0)",
    )  # fmt: skip
    p.add_argument(
        "--seed", type=int, default=None, help="random seed: the same drops on every run"
    )
    p.add_argument(
        "--stats-every", type=_non_negative, default=0.0, metavar="SECONDS",
        help="print the counts every SECONDS (default 0: only at exit)",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    relay = UdpRelay(
        args.to[1], target_host=args.to[0], listen_host=args.bind, listen_port=args.listen,
        drop=args.drop, drop_up=args.drop_up, drop_down=args.drop_down,
        delay_ms=args.delay_ms, jitter_ms=args.jitter_ms, seed=args.seed,
    )  # fmt: skip
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with relay:
            print(
                f"relay listening on {relay.host}:{relay.port} -> {args.to[0]}:{args.to[1]} "
                f"(drop up {relay.drop_up:g}, down {relay.drop_down:g}, seed {args.seed})",
                flush=True,
            )
            while not stop.wait(args.stats_every or None):
                print(f"relay {relay.summary()}", file=sys.stderr, flush=True)
            print(f"relay stopped: {relay.summary()}", file=sys.stderr, flush=True)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0
