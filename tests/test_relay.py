"""Relaying end to end: a real `vantrack gateway` process with sinks configured, real vans'
reports over CoAP, and real backends on loopback (an HTTP receiver in its own process,
a Traccar OsmAnd decoder, the Prometheus endpoint).

What each test holds the relay to: every record stored reaches the backend at least
once, exactly once after deduplication by its key, in stored order per van; failures
back off and are counted; nothing pending is lost by a restart or a day of failing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from gateway_fixture import Device, post, report
from osmand_server import OsmAndServer
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook

from vantrack.tools import rig
from vantrack.tools.http_receiver import HttpReceiver, free_tcp_port

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
FAST = "backoff_min_s = 0.05\nbackoff_max_s = 0.5\n"


def webhook_sink(url: str, name: str = "ops", extra: str = "") -> str:
    return (
        f'[[sink]]\ntype = "webhook"\nname = "{name}"\nurl = "{url}"\n'
        f'secret = "{SECRET}"\n{FAST}{extra}'
    )


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., rig.GatewayProcess]]:
    made: list[rig.GatewayProcess] = []

    def make(sinks: str, *extra: str) -> rig.GatewayProcess:
        gw = rig.GatewayProcess(
            tmp_path / "gw", *extra, config="[gateway]\nstats_interval_s = 0\n" + sinks
        )
        made.append(gw)
        gw.start()
        return gw

    yield make
    for gw in made:
        gw.stop()


def vans(gw: rig.GatewayProcess, n: int) -> list[Device]:
    out = []
    for i in range(1, n + 1):
        c = gw.add_device(f"van-{i}")
        out.append(Device(c["device_id"], f"van-{i}", bytes.fromhex(c["key"])))
    return out


def send(
    gw: rig.GatewayProcess, devices: list[Device], reports: int, per: int = 5, first: int = 0
) -> int:
    """Each van sends `reports` reports of `per` positions, seq `first` on, in seq order,
    vans interleaved; returns the records sent. Every report must be acknowledged."""

    async def run() -> None:
        ctx = await aiocoap.Context.create_client_context()
        try:
            for k in range(reports):
                for dev in devices:
                    payload = report(dev, first + k * per, per)
                    a = await post(ctx, f"coap://127.0.0.1:{gw.port}/r", payload)
                    assert a.code == "2.04", a
        finally:
            await ctx.shutdown()

    asyncio.run(run())
    return len(devices) * reports * per


def first_keys(bodies: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Per device, the seqs of the records received, duplicates dropped (first kept)."""
    seen: set[str] = set()
    out: dict[str, list[int]] = {}
    for b in bodies:
        if b["key"] not in seen:
            seen.add(b["key"])
            out.setdefault(b["device"], []).append(b["seq"])
    return out


def delivered_bodies(rx: HttpReceiver) -> list[dict[str, Any]]:
    """The CloudEvents' data of every request answered 200, verified."""
    hook = Webhook(SECRET)
    out = []
    for r in rx.requests():
        if r["status"] == 200:
            event = hook.verify(r["body"].encode(), r["headers"])
            assert event["id"] == event["data"]["key"] == r["headers"]["webhook-id"]
            out.append(event["data"])
    return out


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def sinks_status(gw: rig.GatewayProcess) -> dict[str, dict[str, Any]]:
    import subprocess

    out = subprocess.run(
        [*rig.CLI, "sinks", "status", "--json", "--db", str(gw.db)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return {s["sink"]: s for s in map(json.loads, out.stdout.splitlines())}


def vantrack(*args: str) -> str:
    import subprocess

    out = subprocess.run([*rig.CLI, *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_webhook_failing_every_third_request_gets_every_record_once_in_order_per_van(
    gateway: Callable[..., rig.GatewayProcess], tmp_path: Path,
) -> None:  # fmt: skip
    with HttpReceiver(free_tcp_port(), tmp_path / "rx.jsonl", "--fail-every", "3") as rx:
        gw = gateway(webhook_sink(rx.url))
        devices = vans(gw, 3)
        n = send(gw, devices, reports=6)
        wait(lambda: len({b["key"] for b in delivered_bodies(rx)}) == n, 30, "every record")
        got = first_keys(delivered_bodies(rx))
        assert got == {d.name: list(range(30)) for d in devices}
        failed = [r for r in rx.requests() if r["status"] != 200]
        assert len(failed) >= n // 3  # every third attempt failed and was retried
        st = wait(lambda: (s := sinks_status(gw)["ops"])["pending"] == 0 and s, 10, "status")
        assert st["enabled"] and st["delivered"] == n and st["last_error"].startswith("HTTP 500")


def test_a_webhook_down_the_whole_time_is_disabled_after_retry_for_s_and_keeps_every_record(
    gateway: Callable[..., rig.GatewayProcess], tmp_path: Path,
) -> None:  # fmt: skip
    port = free_tcp_port()  # nothing listens there
    gw = gateway(webhook_sink(f"http://127.0.0.1:{port}/hook", extra="retry_for_s = 2\n"))
    devices = vans(gw, 2)
    n = send(gw, devices, reports=3)
    wait(lambda: "event=sink_disabled" in gw.log(), 20, "the sink to be disabled")
    st = sinks_status(gw)["ops"]
    assert not st["enabled"] and st["disabled"] and st["pending"] == n
    assert "failing for" in st["disabled_reason"] and "connect" in st["last_error"]
    table = vantrack("sinks", "status", "--db", str(gw.db))
    assert "DISABLED" in table and "vantrack sinks enable ops" in table
    # Records keep entering its outbox while it is disabled.
    more = send(gw, devices[:1], reports=1, per=4, first=15)
    assert sinks_status(gw)["ops"]["pending"] == n + more
    # The endpoint comes back; an operator enables the sink: everything is delivered.
    with HttpReceiver(port, tmp_path / "rx.jsonl") as rx:
        assert "enabled again" in vantrack("sinks", "enable", "ops", "--db", str(gw.db))
        wait(lambda: len(delivered_bodies(rx)) >= n + more, 20, "the backlog")
        got = first_keys(delivered_bodies(rx))
        assert got == {"van-1": list(range(15 + 4)), "van-2": list(range(15))}


def test_a_backend_refusing_one_van_does_not_hold_up_the_others(
    gateway: Callable[..., rig.GatewayProcess],
) -> None:  # fmt: skip
    with OsmAndServer(devices=["van-1", "van-3"]) as traccar:
        gw = gateway(f'[[sink]]\ntype = "traccar"\nname = "traccar"\nurl = "{traccar.url}"\n{FAST}')
        devices = vans(gw, 3)
        n = send(gw, devices, reports=8)
        per_van = n // 3
        got = wait(lambda: len(traccar.positions) >= 2 * per_van and traccar.positions, 30,
                   "van-1 and van-3")  # fmt: skip
        assert {p.device for p in got} == {"van-1", "van-3"}
        st = sinks_status(gw)["traccar"]
        assert st["enabled"] and st["pending"] == per_van
        assert "not registered" in st["last_error"]
        # Registered in Traccar at last: van-2's records follow, in order.
        traccar.add_device("van-2")
        got = wait(lambda: len(traccar.positions) >= n and traccar.positions, 30, "van-2")
        seqs = [int(p.attributes["seq"]) for p in got if p.device == "van-2"]
        assert seqs == list(range(per_van))


def test_records_pending_when_the_gateway_stops_are_delivered_after_it_starts_again(
    gateway: Callable[..., rig.GatewayProcess], tmp_path: Path,
) -> None:  # fmt: skip
    port = free_tcp_port()
    gw = gateway(webhook_sink(f"http://127.0.0.1:{port}"))
    n = send(gw, vans(gw, 2), reports=4)
    wait(lambda: "event=sink_failed" in gw.log(), 10, "a failed delivery")
    gw.stop()
    with HttpReceiver(port, tmp_path / "rx.jsonl") as rx:
        gw.start()
        wait(lambda: len(delivered_bodies(rx)) >= n, 20, "the pending records")
        assert first_keys(delivered_bodies(rx)) == {"van-1": list(range(20)),
                                                    "van-2": list(range(20))}  # fmt: skip


def test_replay_delivers_stored_records_again_with_the_same_keys(
    gateway: Callable[..., rig.GatewayProcess], tmp_path: Path,
) -> None:  # fmt: skip
    with HttpReceiver(free_tcp_port(), tmp_path / "rx.jsonl") as rx:
        gw = gateway(webhook_sink(rx.url))
        n = send(gw, vans(gw, 2), reports=2)
        wait(lambda: len(rx.requests()) >= n, 20, "first delivery")
        out = vantrack("sinks", "replay", "ops", "--since", "10m", "--device", "van-2",
                       "--db", str(gw.db))  # fmt: skip
        assert out.startswith(f"queued {n // 2} records for ops")
        wait(lambda: len(rx.requests()) >= n + n // 2, 20, "the replay")
        again = delivered_bodies(rx)[n:]
        assert [b["key"] for b in again] == [f"2-{s}" for s in range(10)]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_metrics_endpoint_counts_reports_rejections_and_each_sinks_delivery(
    gateway: Callable[..., rig.GatewayProcess], tmp_path: Path,
) -> None:  # fmt: skip
    metrics_port = free_tcp_port()
    with HttpReceiver(free_tcp_port(), tmp_path / "rx.jsonl") as rx:
        down = f"http://127.0.0.1:{free_tcp_port()}"
        gw = gateway(webhook_sink(rx.url) + webhook_sink(down, name="down"),
                     "--metrics-port", str(metrics_port))  # fmt: skip
        devices = vans(gw, 1)
        n = send(gw, devices, reports=3)
        forged = Device(devices[0].id, "van-1", bytes(16))

        async def bad() -> str:
            ctx = await aiocoap.Context.create_client_context()
            try:
                return (await post(ctx, f"coap://127.0.0.1:{gw.port}/r", report(forged, 99))).code
            finally:
                await ctx.shutdown()

        assert asyncio.run(bad()) == "4.01"
        wait(lambda: len(rx.requests()) >= n, 20, "delivery")

        def settled() -> dict[Any, float] | None:
            m = scrape(metrics_port)
            return m if m[("vantrack_sink_pending", (("sink", "down"),))] == n else None

        m = wait(settled, 10, "the pending count")
    assert m[("vantrack_reports_received_total", ())] == 4
    assert m[("vantrack_reports_stored_total", ())] == 3
    assert m[("vantrack_records_stored_total", ())] == n
    assert m[("vantrack_reports_rejected_total", (("reason", "bad_mac"),))] == 1
    assert m[("vantrack_sink_delivered_total", (("sink", "ops"),))] == n
    assert m[("vantrack_sink_up", (("sink", "ops"), ("type", "webhook")))] == 1
    assert m[("vantrack_sink_failures_total", (("sink", "down"),))] >= 1
    assert m[("vantrack_sink_oldest_pending_seconds", (("sink", "down"),))] > 0
    assert m[("vantrack_sink_pending", (("sink", "ops"),))] == 0


def test_an_endpoint_answering_410_gone_is_disabled_at_once_with_its_records_kept(
    gateway: Callable[..., rig.GatewayProcess], tmp_path: Path,
) -> None:  # fmt: skip
    with HttpReceiver(free_tcp_port(), tmp_path / "rx.jsonl", "--status", "410") as rx:
        gw = gateway(webhook_sink(rx.url))
        n = send(gw, vans(gw, 1), reports=2)
        wait(lambda: "event=sink_disabled" in gw.log(), 10, "the sink to be disabled")
        st = sinks_status(gw)["ops"]
        assert not st["enabled"] and st["pending"] == n
        assert st["disabled_reason"].startswith("backend refused for good: HTTP 410")
        assert len(rx.requests()) == 1  # it did not keep knocking


def test_a_van_refused_while_the_fleet_is_quiet_neither_disables_nor_slows_the_sink(
    gateway: Callable[..., rig.GatewayProcess],
) -> None:  # fmt: skip
    with OsmAndServer(devices=["van-1"]) as traccar:
        gw = gateway(
            f'[[sink]]\ntype = "traccar"\nname = "traccar"\nurl = "{traccar.url}"\n'
            "backoff_min_s = 0.05\nbackoff_max_s = 60\nretry_for_s = 1\n"
        )
        van1, van2 = vans(gw, 2)
        send(gw, [van2], reports=2)  # only the van Traccar does not know reports
        wait(lambda: gw.log().count("event=sink_failed") >= 4, 20, "retries of van-2")
        time.sleep(1.2)  # past retry_for_s
        st = sinks_status(gw)["traccar"]
        assert st["enabled"] and st["failing_since"] is None and st["pending"] == 10
        # van-1 goes through at once: the sink as a whole is not backing off.
        sent = time.monotonic()
        send(gw, [van1], reports=1)
        wait(lambda: len(traccar.positions) >= 5, 20, "van-1's records")
        assert time.monotonic() - sent < 20  # a sink backing off as a whole waits up to 60 s
        assert {p.device for p in traccar.positions} == {"van-1"}
