"""The lossy UDP relay (tools/udprelay.py) on its own: seeded drops per direction at the
asked rate, answers routed back to the client that asked, repeats counted, delays applied."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from vantrack.tools.rig import CLI
from vantrack.tools.udprelay import UdpRelay


@pytest.fixture
def echo() -> Iterator[int]:
    """A UDP echo server on loopback: answers each datagram with b'echo:' + it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = s.recvfrom(2048)
            except TimeoutError:
                continue
            s.sendto(b"echo:" + data, addr)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield s.getsockname()[1]
    stop.set()
    t.join(2)
    s.close()


def client() -> socket.socket:
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind(("127.0.0.1", 0))
    c.settimeout(0.02)  # loopback answers in well under a millisecond
    return c


def exchange(relay: UdpRelay, n: int) -> list[bytes]:
    """Send n numbered datagrams through the relay, one at a time; the answers that came."""
    c = client()
    got = []
    try:
        for i in range(n):
            c.sendto(b"%d" % i, ("127.0.0.1", relay.port))
            try:
                got.append(c.recv(2048))
            except TimeoutError:
                pass
    finally:
        c.close()
    return got


def wait_for(relay: UdpRelay, total: int) -> dict[str, int]:
    # The last datagram's fate is counted by the relay's thread: give it a moment.
    deadline = time.monotonic() + 2
    while True:
        c = relay.counts()
        up = c["up_forwarded"] + c["up_dropped"]
        down = c["down_forwarded"] + c["down_dropped"]
        if (up == total and down == c["up_forwarded"]) or time.monotonic() > deadline:
            return c
        time.sleep(0.01)


def test_thirty_percent_drop_both_ways_is_seeded_and_near_the_rate(echo):
    runs = []
    for _ in range(2):
        with UdpRelay(echo, drop=0.3, seed=11) as relay:
            answers = exchange(relay, 300)
            runs.append((answers, wait_for(relay, 300)))
    (answers, c), (answers2, c2) = runs
    assert answers == answers2 and c == c2  # the same seed, the same fates
    assert c["up_forwarded"] + c["up_dropped"] == 300
    assert c["down_forwarded"] + c["down_dropped"] == c["up_forwarded"]
    assert 0.24 < c["up_dropped"] / 300 < 0.36
    assert 0.24 < c["down_dropped"] / c["up_forwarded"] < 0.36
    assert len(answers) == c["down_forwarded"]
    assert all(a.startswith(b"echo:") for a in answers)
    with UdpRelay(echo, drop=0.3, seed=12) as other:
        assert exchange(other, 300) != answers  # another seed, other fates


def test_drop_can_be_one_way_only(echo):
    with UdpRelay(echo, drop_up=0.0, drop_down=1.0, seed=1) as relay:
        assert exchange(relay, 20) == []
        c = wait_for(relay, 20)
    assert (c["up_forwarded"], c["up_dropped"], c["down_dropped"]) == (20, 0, 20)
    with UdpRelay(echo, drop_up=1.0, drop_down=0.0, seed=1) as relay:
        assert exchange(relay, 20) == []
        c = wait_for(relay, 20)
    assert (c["up_dropped"], c["down_forwarded"], c["down_dropped"]) == (20, 0, 0)


def test_each_answer_goes_back_to_the_client_that_asked(echo):
    with UdpRelay(echo, seed=1) as relay:
        a, b = client(), client()
        try:
            for i in range(10):
                a.sendto(b"a%d" % i, ("127.0.0.1", relay.port))
                b.sendto(b"b%d" % i, ("127.0.0.1", relay.port))
            got_a = [a.recv(100) for _ in range(10)]
            got_b = [b.recv(100) for _ in range(10)]
        finally:
            a.close()
            b.close()
        assert relay.counts()["clients"] == 2
    assert got_a == [b"echo:a%d" % i for i in range(10)]
    assert got_b == [b"echo:b%d" % i for i in range(10)]


def test_a_datagram_sent_again_is_counted_as_a_repeat(echo):
    with UdpRelay(echo, seed=1) as relay:
        c = client()
        try:
            for payload in (b"x", b"y", b"x", b"x"):
                c.sendto(payload, ("127.0.0.1", relay.port))
                c.recv(100)
        finally:
            c.close()
        assert relay.counts()["repeats"] == 2


def test_delay_holds_each_datagram_back(echo):
    with UdpRelay(echo, delay_ms=100, seed=1) as relay:
        c = client()
        c.settimeout(2)
        try:
            t0 = time.monotonic()
            c.sendto(b"slow", ("127.0.0.1", relay.port))
            assert c.recv(100) == b"echo:slow"
            took = time.monotonic() - t0
        finally:
            c.close()
    assert took >= 0.2  # 100 ms each way


def test_the_command_prints_its_counts_when_stopped(echo):
    proc = subprocess.Popen(
        [*CLI, "relay", "--to", f"127.0.0.1:{echo}", "--drop", "0.5", "--seed", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    port = int(proc.stdout.readline().split()[3].rsplit(":", 1)[1])
    c = client()
    try:
        for _ in range(20):
            c.sendto(b"z", ("127.0.0.1", port))
    finally:
        c.close()
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    m = re.search(r"up forwarded=(\d+) dropped=(\d+)", err)
    assert m and int(m[1]) + int(m[2]) == 20, err


def test_a_probability_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError):
        UdpRelay(9, drop=1.5)
