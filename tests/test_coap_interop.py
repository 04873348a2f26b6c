"""The firmware CoAP client (firmware/coap.py) against real peers over loopback.

The client always runs under `micropython -X heapsize=64K` through tools/mp/coap_post.py,
which prints one JSON line per request. Its peers: an aiocoap server (the gateway's
library), libcoap's coap-server-notls, and a raw UDP socket in this file that speaks
CoAP bytes (built and read with aiocoap's Message, an independent codec) to stage
losses, duplicates, strays and resets. Timeouts are shrunk; counts, never timings, are
asserted.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.resource
import pytest
from aiocoap import ACK, CON, NON, RST, Code, Message

from vantrack.tools import mpy
from vantrack.tools.rig import free_udp_port

DRIVER = Path(__file__).resolve().parent.parent / "tools" / "mp" / "coap_post.py"
CBOR_FIX = bytes.fromhex("a3016576616e2d37021a00bc614e0382fb404a000000000000fb4022000000000000")
FAST = ("--ack-timeout-ms", "60")  # RFC default is 2000; shrunk so loss tests run quickly


def parse_output(proc_out: bytes) -> tuple[list[dict[str, Any]], dict[str, int]]:
    lines = [json.loads(line) for line in proc_out.decode().splitlines() if line.startswith("{")]
    stats = [line["stats"] for line in lines if "stats" in line]
    assert len(stats) == 1, proc_out.decode()
    return [line for line in lines if "stats" not in line], stats[0]


def driver_args(port: int, path: str, options: tuple[str, ...]) -> list[str]:
    # Payloads go in on stdin, one hex line each (a long argv can exhaust a 64 KB heap).
    return [*options, "--hex", "127.0.0.1", str(port), path, "-"]


def stdin_for(payloads: tuple[bytes, ...]) -> bytes:
    return b"".join(p.hex().encode() + b"\n" for p in payloads)


def run_client(
    port: int, path: str, *payloads: bytes, options: tuple[str, ...] = ()
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    proc = mpy.run(
        DRIVER, driver_args(port, path, options), input=stdin_for(payloads or (b"",)), timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode() + proc.stdout.decode()
    return parse_output(proc.stdout)


# --- aiocoap server ------------------------------------------------------------------


class Recorder(aiocoap.resource.Resource):
    """Answers with a fixed code (after `delay` s: more than 0.1 s makes it separate)."""

    def __init__(
        self,
        seen: list[tuple[str, Message]],
        name: str,
        code: Code,
        delay: float = 0,
        max_age: int | None = None,
    ) -> None:
        super().__init__()
        self.seen, self.name, self.code = seen, name, code
        self.delay, self.max_age = delay, max_age

    async def render_post(self, request: Message) -> Message:
        # aiocoap's Site strips the path it matched: the name says which resource this is.
        self.seen.append((self.name, request))
        if self.delay:
            await asyncio.sleep(self.delay)
        response = Message(code=self.code, payload=b"ack:" + request.payload[:4])
        if self.max_age is not None:
            response.opt.max_age = self.max_age
        return response


class AiocoapServer:
    def __init__(self) -> None:
        self.port = free_udp_port()
        self.seen: list[tuple[str, Message]] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.context: aiocoap.Context | None = None

    def _site(self) -> aiocoap.resource.Site:
        site = aiocoap.resource.Site()
        site.add_resource(["v1", "pos"], Recorder(self.seen, "/v1/pos", Code.CHANGED))
        for code in ("4.00", "4.01", "4.13", "4.29"):
            c = Code(int(code[0]) << 5 | int(code[2:]))
            site.add_resource(["status", code], Recorder(self.seen, code, c))
        unavailable = Recorder(self.seen, "5.03", Code.SERVICE_UNAVAILABLE, max_age=17)
        site.add_resource(["status", "5.03"], unavailable)
        # aiocoap sends an empty ACK once a response takes over EMPTY_ACK_DELAY (0.1 s).
        site.add_resource(["slow"], Recorder(self.seen, "/slow", Code.CHANGED, delay=0.4))
        return site

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.context = await aiocoap.Context.create_server_context(
                self._site(), bind=("127.0.0.1", self.port)
            )
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(10), "aiocoap server did not start"

    def stop(self) -> None:
        if self.context is not None:
            asyncio.run_coroutine_threadsafe(self.context.shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def aiocoap_server() -> Iterator[AiocoapServer]:
    server = AiocoapServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_post_reaches_aiocoap_with_payload_content_format_and_path_intact(
    aiocoap_server: AiocoapServer,
) -> None:
    aiocoap_server.seen.clear()
    payloads = [CBOR_FIX, b"\x80", bytes(range(256)) * 3]
    results, stats = run_client(aiocoap_server.port, "/v1/pos", *payloads)
    assert [r["decision"] for r in results] == ["done"] * 3
    assert [r["code"] for r in results] == ["2.04"] * 3
    assert [r["tx"] for r in results] == [1, 1, 1]
    assert [bytes.fromhex(r["payload"]) for r in results] == [b"ack:" + p[:4] for p in payloads]
    assert [name for name, _ in aiocoap_server.seen] == ["/v1/pos"] * 3
    seen = [m for _, m in aiocoap_server.seen]
    assert [m.payload for m in seen] == payloads
    assert all(m.opt.content_format == 60 for m in seen)
    assert all(m.mtype == CON for m in seen)
    assert len({m.mid for m in seen}) == 3 and len({m.token for m in seen}) == 3
    assert stats["stray"] == stats["malformed"] == stats["duplicate"] == 0


@pytest.mark.parametrize(
    ("code", "decision"),
    [("4.00", "drop"), ("4.01", "backoff"), ("4.13", "drop"), ("4.29", "retry"), ("5.03", "retry")],
)
def test_aiocoap_response_codes_give_their_decision(
    aiocoap_server: AiocoapServer, code: str, decision: str
) -> None:
    [result], _ = run_client(aiocoap_server.port, f"/status/{code}", b"payload")
    assert (result["code"], result["decision"]) == (code, decision)
    assert result["retry_after"] == (17 if code == "5.03" else None)


def test_unknown_resource_on_aiocoap_is_not_found_and_backs_off(
    aiocoap_server: AiocoapServer,
) -> None:
    [result], _ = run_client(aiocoap_server.port, "/v2/nowhere", b"payload")
    assert (result["code"], result["decision"]) == ("4.04", "backoff")


def test_slow_aiocoap_resource_gives_a_separate_response_while_the_loop_runs(
    aiocoap_server: AiocoapServer,
) -> None:
    aiocoap_server.seen.clear()
    [result], stats = run_client(aiocoap_server.port, "/slow", b"late")
    assert result["separate"] is True
    assert (result["code"], result["decision"], result["tx"]) == ("2.04", "done", 1)
    assert bytes.fromhex(result["payload"]) == b"ack:late"
    assert len(aiocoap_server.seen) == 1
    # A 5 ms ticker task kept running while the request waited for about 0.4 s.
    assert result["ticks"] >= 5
    assert stats["stray"] == stats["duplicate"] == 0


def test_responses_are_read_in_a_heap_with_no_hole_for_the_receive_buffer(
    aiocoap_server: AiocoapServer,
) -> None:
    # A van running its route can be left with no hole as large as recv()'s buffer after
    # a collection. The client holds that much and lends it to each recv() (the driver
    # exits 3 if it could not cut the heap so, which would make this test prove nothing).
    payloads = [b"r%d" % i for i in range(6)]
    results, stats = run_client(aiocoap_server.port, "/v1/pos", *payloads,
                                options=("--fragment", *FAST))  # fmt: skip
    assert [(r["decision"], r["tx"]) for r in results] == [("done", 1)] * 6
    assert [bytes.fromhex(r["payload"]) for r in results] == [b"ack:" + p for p in payloads]
    assert stats["retransmitted"] == 0


# --- libcoap server --------------------------------------------------------------------

LIBCOAP_SERVER = shutil.which("coap-server-notls")


@pytest.fixture()
def libcoap_server() -> Iterator[int]:
    if LIBCOAP_SERVER is None:
        pytest.skip("libcoap3-bin (coap-server-notls) is not installed")
    port = free_udp_port()
    proc = subprocess.Popen(
        [LIBCOAP_SERVER, "-A", "127.0.0.1", "-p", str(port), "-d", "4"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Ready when a CoAP ping (empty CON) gets its RST.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.1)
            for _ in range(50):
                s.sendto(raw(CON, 1, Code.EMPTY).encode(), ("127.0.0.1", port))
                try:
                    if Message.decode(s.recv(64)).mtype == RST:
                        break
                except OSError:
                    continue
            else:
                pytest.fail("coap-server-notls did not answer")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_libcoap_creates_a_resource_from_a_post_and_serves_it_back(libcoap_server: int) -> None:
    [created], _ = run_client(libcoap_server, "/van/pos", CBOR_FIX)
    assert (created["code"], created["decision"]) == ("2.01", "done")
    location = [bytes.fromhex(v) for n, v in created["options"] if n == 8]
    assert location == [b"van", b"pos"]
    [changed], _ = run_client(libcoap_server, "/van/pos", b"\xa0")
    assert (changed["code"], changed["decision"]) == ("2.04", "done")
    [got], _ = run_client(libcoap_server, "/van/pos", options=("--method", "GET"))
    assert (got["code"], got["decision"], bytes.fromhex(got["payload"])) == (
        "2.05",
        "done",
        b"\xa0",
    )


def test_libcoap_delayed_resource_answers_separately(libcoap_server: int) -> None:
    # libcoap's /async?N sends an empty ACK now and a CON response N seconds later.
    [result], stats = run_client(
        libcoap_server, "/async", options=("--method", "GET", "--query", "1")
    )
    assert result["separate"] is True
    assert (result["code"], result["decision"], bytes.fromhex(result["payload"])) == (
        "2.05",
        "done",
        b"done",
    )
    assert stats["duplicate"] == stats["stray"] == 0  # our ACK stopped its retransmission


def test_libcoap_method_not_allowed_backs_off(libcoap_server: int) -> None:
    [result], _ = run_client(libcoap_server, "/example_data", b"x")
    assert (result["code"], result["decision"]) == ("4.05", "backoff")


# --- raw UDP peer ------------------------------------------------------------------------


class RawPeer:
    """A UDP socket on a free port; the test script decides every byte it sends."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.client: tuple[str, int] | None = None
        self.received: list[bytes] = []

    def recv(self, timeout: float = 10) -> Message:
        self.sock.settimeout(timeout)
        data, self.client = self.sock.recvfrom(2048)
        self.received.append(data)
        return Message.decode(data)

    def send(self, msg: Message) -> None:
        assert self.client is not None
        self.sock.sendto(msg.encode(), self.client)

    def drain(self, proc: subprocess.Popen[bytes]) -> list[Message]:
        """Everything the client still sends until its process exits."""
        more = []
        while True:
            try:
                more.append(self.recv(0.05))
            except TimeoutError:
                if proc.poll() is not None:
                    return more


@pytest.fixture()
def peer() -> Iterator[RawPeer]:
    p = RawPeer()
    try:
        yield p
    finally:
        p.sock.close()


@pytest.fixture()
def start_client(peer: RawPeer) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*payloads: bytes, options: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        proc = mpy.popen(
            DRIVER,
            driver_args(peer.port, "/v1/pos", options),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        assert proc.stdin is not None
        proc.stdin.write(stdin_for(payloads))
        proc.stdin.close()
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for f in (proc.stdout, proc.stderr):
                if f:
                    f.close()


def finish(proc: subprocess.Popen[bytes]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    assert proc.stdout is not None and proc.stderr is not None
    proc.wait(30)
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 0, err.decode() + out.decode()
    return parse_output(out)


def raw(mtype: Any, mid: int, code: Code, token: bytes = b"", payload: bytes = b"") -> Message:
    """A message with exactly these header fields (aiocoap would choose MID and token)."""
    m = Message(code=code, payload=payload)
    m.mtype, m.mid, m.token = mtype, mid, token
    return m


def ack(req: Message, code: Code = Code.CHANGED, payload: bytes = b"") -> Message:
    return raw(ACK, req.mid, code, req.token, payload)


def test_request_options_decode_with_aiocoap(peer: RawPeer, start_client: Any) -> None:
    proc = start_client(
        CBOR_FIX, options=("--uri-host", "gw.example", "--accept", "60", "--query", "v=1")
    )
    req = peer.recv()
    peer.send(ack(req))
    [result], _ = finish(proc)
    assert result["decision"] == "done"
    assert req.mtype == CON and req.code == Code.POST
    assert req.opt.uri_host == "gw.example"
    assert req.opt.uri_path == ("v1", "pos")
    assert req.opt.uri_query == ("v=1",)
    assert req.opt.content_format == 60 and req.opt.accept == 60
    assert len(req.token) == 4 and req.payload == CBOR_FIX


@pytest.mark.parametrize("ignored", [1, 3])
def test_lost_transmissions_are_retransmitted_identically_until_acked(
    peer: RawPeer, start_client: Any, ignored: int
) -> None:
    proc = start_client(b"fix", options=FAST)
    reqs = [peer.recv() for _ in range(ignored + 1)]
    peer.send(ack(reqs[-1]))
    reqs += peer.drain(proc)
    [result], stats = finish(proc)
    assert (result["decision"], result["code"], result["tx"]) == ("done", "2.04", ignored + 1)
    assert len(reqs) == ignored + 1
    assert len(set(peer.received)) == 1  # same bytes: same MID, token and payload
    assert stats["retransmitted"] == ignored


def test_unanswered_request_gives_up_after_five_transmissions(
    peer: RawPeer, start_client: Any
) -> None:
    proc = start_client(b"fix", options=FAST)
    reqs = [peer.recv()] + peer.drain(proc)
    [result], stats = finish(proc)
    assert (result["decision"], result["reason"], result["code"]) == ("retry", "timeout", None)
    assert result["tx"] == len(reqs) == 5  # MAX_RETRANSMIT + 1
    assert len(set(peer.received)) == 1
    assert stats["sent"] == 5


def test_max_retransmit_is_a_constructor_argument(peer: RawPeer, start_client: Any) -> None:
    proc = start_client(b"fix", options=(*FAST, "--max-retransmit", "1"))
    reqs = [peer.recv()] + peer.drain(proc)
    [result], _ = finish(proc)
    assert result["reason"] == "timeout" and result["tx"] == len(reqs) == 2


def test_strays_and_duplicate_ack_are_ignored_and_one_result_delivered(
    peer: RawPeer, start_client: Any
) -> None:
    proc = start_client(b"first", b"second", options=("--ack-timeout-ms", "1000"))
    req = peer.recv()
    bad = Code.BAD_REQUEST
    wrong_token = bytes(b ^ 0xFF for b in req.token)
    peer.send(raw(NON, 4000, bad, wrong_token))
    peer.send(raw(ACK, (req.mid + 1) % 65536, bad, req.token))
    peer.send(raw(ACK, req.mid, bad, wrong_token))
    peer.send(raw(CON, 4001, bad, wrong_token))
    rst = peer.recv()  # an unknown CON response is rejected (RFC 7252 5.3.2)
    assert (rst.mtype, rst.mid, rst.code) == (RST, 4001, Code.EMPTY)
    peer.send(ack(req, payload=b"ok"))
    peer.send(ack(req, payload=b"ok"))  # duplicate ACK
    req2 = peer.recv()
    assert req2.mid == (req.mid + 1) % 65536 and req2.payload == b"second"
    peer.send(ack(req2, Code.CREATED))
    assert peer.drain(proc) == []
    results, stats = finish(proc)
    assert [(r["decision"], r["code"], r["tx"]) for r in results] == [
        ("done", "2.04", 1),
        ("done", "2.01", 1),
    ]
    assert bytes.fromhex(results[0]["payload"]) == b"ok"
    assert stats["stray"] + stats["duplicate"] == 5
    assert stats["stray"] >= 4


def test_reset_fails_the_request_with_a_reason(peer: RawPeer, start_client: Any) -> None:
    proc = start_client(b"fix", options=FAST)
    req = peer.recv()
    peer.send(raw(RST, req.mid, Code.EMPTY))
    reqs = peer.drain(proc)
    [result], _ = finish(proc)
    assert (result["decision"], result["reason"], result["tx"]) == ("retry", "reset", 1)
    assert reqs == []  # no retransmission after the RST


def test_pings_requests_and_malformed_cons_sent_to_the_client_are_reset(
    peer: RawPeer, start_client: Any
) -> None:
    # The van serves nothing: a ping or a request gets RST (RFC 7252 4.2), and so does a
    # CON it cannot parse or take (larger than its receive size); a NON gets nothing.
    proc = start_client(b"fix", options=("--ack-timeout-ms", "2000"))
    req = peer.recv()
    assert peer.client is not None
    peer.send(raw(CON, 6001, Code.EMPTY))  # a CoAP ping
    peer.send(raw(CON, 6002, Code.GET, b"q"))
    peer.sock.sendto(bytes([0x40, 0x45, 0x17, 0x73, 0xF1, 0x00]), peer.client)  # nibble 15
    peer.sock.sendto(bytes([0x50, 0x45, 0x17, 0x74, 0xF1, 0x00]), peer.client)  # as a NON
    # Our request's response with its token, but over rx_size (1152): cut short.
    peer.send(raw(CON, 6005, Code.CHANGED, req.token, bytes(1200)))
    resets = sorted((m.mtype, m.mid, m.code, m.token) for m in [peer.recv() for _ in range(4)])
    assert resets == [(RST, mid, Code.EMPTY, b"") for mid in (6001, 6002, 6003, 6005)]
    peer.send(ack(req, payload=b"ok"))
    assert peer.drain(proc) == []
    [result], stats = finish(proc)
    assert (result["decision"], result["tx"], bytes.fromhex(result["payload"])) == (
        "done",
        1,
        b"ok",
    )
    assert (stats["unexpected"], stats["malformed"], stats["stray"]) == (2, 3, 0)


def test_separate_response_sent_twice_is_acked_twice_and_delivered_once(
    peer: RawPeer, start_client: Any
) -> None:
    proc = start_client(b"first", b"second", options=("--ack-timeout-ms", "1000"))
    req = peer.recv()
    peer.send(raw(ACK, req.mid, Code.EMPTY))
    response = raw(CON, 777, Code.CHANGED, req.token, b"sep")
    acks, others = [], []
    for _ in range(2):
        peer.send(response)
        while True:
            m = peer.recv()
            if m.mtype == ACK:
                acks.append(m)
                break
            others.append(m)  # the second request may overtake the second ACK
    while not others:
        others.append(peer.recv())
    [req2] = others
    peer.send(ack(req2))
    assert peer.drain(proc) == []
    results, stats = finish(proc)
    assert [(a.mid, a.code, a.token) for a in acks] == [(777, Code.EMPTY, b"")] * 2
    assert [(r["code"], r["separate"]) for r in results] == [("2.04", True), ("2.04", False)]
    assert bytes.fromhex(results[0]["payload"]) == b"sep"
    assert stats["duplicate"] == 1


def test_con_response_before_the_empty_ack_ends_the_exchange(
    peer: RawPeer, start_client: Any
) -> None:
    # The server's empty ACK was lost: its CON response alone must do.
    proc = start_client(b"fix", options=("--ack-timeout-ms", "1000"))
    req = peer.recv()
    peer.send(raw(NON, 5, Code.CREATED, req.token))
    assert peer.drain(proc) == []  # a NON response is not ACKed
    [result], _ = finish(proc)
    assert (result["code"], result["separate"], result["tx"]) == ("2.01", True, 1)


def test_separate_response_that_never_comes_ends_in_no_response(
    peer: RawPeer, start_client: Any
) -> None:
    proc = start_client(b"fix", options=(*FAST, "--lifetime-ms", "400"))
    req = peer.recv()
    peer.send(raw(ACK, req.mid, Code.EMPTY))
    reqs = peer.drain(proc)
    [result], _ = finish(proc)
    assert (result["decision"], result["reason"], result["tx"]) == ("retry", "no_response", 1)
    assert reqs == []


def _arrivals_before_first_ack(peer: RawPeer, n: int) -> list[Message]:
    first = peer.recv()
    early = [first]
    while True:
        try:
            early.append(peer.recv(0.3))
        except TimeoutError:
            return early


def test_concurrent_requests_go_one_at_a_time(peer: RawPeer, start_client: Any) -> None:
    # NSTART 1 (RFC 7252 4.7): a second request waits until the first is answered.
    options = ("--ack-timeout-ms", "2000", "--concurrent")
    proc = start_client(b"a", b"b", b"c", options=options)
    early = _arrivals_before_first_ack(peer, 3)
    assert len(early) == 1
    pending = list(early)
    answered = 0
    while answered < 3:
        if not pending:
            pending.append(peer.recv())
        peer.send(ack(pending.pop(0)))
        answered += 1
    results, _ = finish(proc)
    assert sorted(r["decision"] for r in results) == ["done"] * 3
    assert [r["tx"] for r in results] == [1, 1, 1]
    time.sleep(0)  # results are printed after all three finished
