"""The MQTT sink against a real mosquitto on loopback (tests/mosquitto.py), no mocks.

What docs/mqtt.md promises: each record on its topic, the body being Record.to_json()
(JSON or CBOR), a retained state topic with the newest fix, send() returning only once
the broker acknowledged and raising SinkError (quickly) when it cannot, and reconnection
after a broker restart with a persistent subscriber losing nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import cbor2
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from vantrack.gateway import wire
from vantrack.gateway.sinks import SinkConfigError, SinkError, sink_class
from vantrack.gateway.sinks.base import EXTRA_VALUE, Record
from vantrack.gateway.sinks.mqtt import MqttConfig, MqttSink
from vantrack.tools.mosquitto import Message, Mosquitto, Subscriber, free_tcp_port

FLEET = "north"
T_MS = 1_790_000_000_000  # 2026-09-21
T = TypeVar("T")
STATE = "vantrack/+/+/state"


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    with Mosquitto() as broker:
        yield broker


def config(url: str, **keys: Any) -> MqttConfig:
    keys.setdefault("timeout_s", 3.0)
    cfg = MqttConfig(name="broker", type="mqtt", url=url, **keys)
    cfg.check()
    return cfg


def position(seq: int, device: str = "van-7", device_id: int = 7, latest: bool = True) -> Record:
    return Record(
        device_id=device_id,
        device=device,
        seq=seq,
        time_ms=T_MS + seq * 5000,
        received_ms=T_MS + seq * 5000 + 800,
        lat_e6=52_370_000 + seq * 10,
        lon_e6=4_890_000 - seq * 10,
        speed_dms=83,
        course_deg=270,
        hdop_x10=9,
        sats=11,
        latest=latest,
    )


def arrived(seq: int, latest: bool = True) -> Record:
    return Record(
        device_id=7,
        device="van-7",
        seq=seq,
        time_ms=T_MS + seq * 5000,
        received_ms=T_MS + seq * 5000 + 800,
        lat_e6=52_371_000,
        lon_e6=4_889_000,
        event=wire.EventType.ARRIVED,
        fence=3,
        stop="depot-2",
        extra={EXTRA_VALUE: 42},
        latest=latest,
    )


def status(seq: int) -> Record:
    """A status event without a fix (the van booted indoors)."""
    return Record(
        device_id=7,
        device="van-7",
        seq=seq,
        time_ms=T_MS + seq * 5000,
        received_ms=T_MS + seq * 5000 + 800,
        lat_e6=None,
        lon_e6=None,
        event=wire.EventType.STATUS,
        extra={wire.StatusKey.QUEUED: 12, wire.StatusKey.CAUSE: wire.StatusCause.BOOT},
        latest=True,
    )


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def send_all(cfg: MqttConfig, records: list[Record]) -> None:
    sink = MqttSink(cfg, FLEET)
    await sink.start()
    try:
        for r in records:
            await sink.send(r)
    finally:
        await sink.close()


def decode(payload: bytes, fmt: str = "json") -> Any:
    return cbor2.loads(payload) if fmt == "cbor" else json.loads(payload)


def not_state(msgs: list[Message]) -> list[Message]:
    return [m for m in msgs if not m.topic.endswith("/state")]


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_every_record_arrives_once_in_order_on_its_topic_with_its_json_as_body(
    mosquitto: Mosquitto, fmt: str
) -> None:
    records = [position(1), position(2), arrived(3), position(4), status(5)]
    with Subscriber(mosquitto.port, client_id=f"sub-{fmt}") as sub:
        run(send_all(config(mosquitto.url, format=fmt), records))
        got = not_state(sub.wait_for(lambda m: len(not_state(m)) >= len(records)))
        time.sleep(0.2)  # nothing more (no duplicates) comes after
        got = not_state(sub.snapshot())
    assert [m.topic for m in got] == [
        "vantrack/north/van-7/position",
        "vantrack/north/van-7/position",
        "vantrack/north/van-7/event/arrived",
        "vantrack/north/van-7/position",
        "vantrack/north/van-7/event/status",
    ]
    assert [decode(m.payload, fmt) for m in got] == [r.to_json() for r in records]
    assert decode(got[2].payload, fmt)["inside_s"] == 42
    assert decode(got[4].payload, fmt)["cause_name"] == "boot"


def test_mqtt5_messages_carry_the_key_and_content_type(mosquitto: Mosquitto) -> None:
    got: list[paho.MQTTMessage] = []
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="v5-sub", protocol=paho.MQTTv5)
    sub.on_message = lambda c, u, msg: got.append(msg)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe("vantrack/#", qos=1)
    sub.loop_start()
    try:
        time.sleep(0.2)  # SUBACK
        run(send_all(config(mosquitto.url, format="cbor"), [position(1, latest=False)]))
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert len(got) == 1
    props: Any = got[0].properties
    assert props.UserProperty == [("key", "7-1")]
    assert props.ContentType == "application/cbor"


def test_retained_state_holds_the_newest_fix_and_a_new_subscriber_gets_it(
    mosquitto: Mosquitto,
) -> None:
    run(send_all(config(mosquitto.url), [position(1), position(2), arrived(3)]))
    with Subscriber(
        mosquitto.port, "vantrack/+/+/state", client_id="late", clean_session=True
    ) as sub:
        (state,) = sub.wait_for(lambda m: len(m) >= 1)
    assert state.topic == "vantrack/north/van-7/state"
    assert state.retain
    # An event with a fix is the van's newest position too: state is that record.
    assert json.loads(state.payload) == arrived(3).to_json()


def test_backlog_records_and_records_without_a_fix_leave_the_state_alone(
    mosquitto: Mosquitto,
) -> None:
    backlog = [position(1, latest=False), arrived(2, latest=False)]
    run(send_all(config(mosquitto.url), [position(5), *backlog, status(6)]))
    with Subscriber(
        mosquitto.port, "vantrack/+/+/state", client_id="late", clean_session=True
    ) as sub:
        sub.wait_for(lambda m: len(m) >= 1)
        time.sleep(0.2)
        msgs = sub.snapshot()
    assert [json.loads(m.payload)["key"] for m in msgs] == ["7-5"]


def test_retain_state_false_publishes_no_state(mosquitto: Mosquitto) -> None:
    with Subscriber(mosquitto.port, client_id="all") as sub:
        run(send_all(config(mosquitto.url, retain_state=False), [position(1), position(2)]))
        sub.wait_for(lambda m: len(m) >= 2)
        time.sleep(0.2)
        assert [m.topic for m in sub.snapshot()] == ["vantrack/north/van-7/position"] * 2


def test_send_with_the_broker_down_raises_sink_error_quickly_and_start_does_not() -> None:
    async def scenario() -> tuple[SinkError, float]:
        sink = MqttSink(config(f"mqtt://127.0.0.1:{free_tcp_port()}", timeout_s=2.0), FLEET)
        await sink.start()
        try:
            t0 = time.monotonic()
            with pytest.raises(SinkError) as caught:
                await sink.send(position(1))
            return caught.value, time.monotonic() - t0
        finally:
            await sink.close()

    err, elapsed = run(scenario())
    assert elapsed < 2.0 + 5  # no hang: refused at once, or at worst the timeout
    assert err.retry
    assert "127.0.0.1" in str(err) and "refused" in str(err)


def test_send_to_a_broker_that_never_answers_times_out_with_sink_error() -> None:
    # A listening socket that accepts but never sends CONNACK (a hung broker).
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]

        async def scenario() -> float:
            sink = MqttSink(config(f"mqtt://127.0.0.1:{port}", timeout_s=1.0), FLEET)
            try:
                t0 = time.monotonic()
                with pytest.raises(SinkError, match="no acknowledgement from .* within 1 s"):
                    await sink.send(position(1))
                return time.monotonic() - t0
            finally:
                await sink.close()

        assert run(scenario()) < 1.0 + 5  # the 1 s timeout ends it, not a hang


def test_a_broker_that_stops_answering_makes_send_raise_sink_error_within_timeout(
    mosquitto: Mosquitto,
) -> None:
    async def scenario() -> float:
        sink = MqttSink(config(mosquitto.url, timeout_s=1.0), FLEET)
        try:
            await sink.send(position(1))
            assert mosquitto.proc is not None
            mosquitto.proc.send_signal(signal.SIGSTOP)  # connected, but no PUBACK comes
            try:
                t0 = time.monotonic()
                with pytest.raises(SinkError, match="no acknowledgement from mqtt:.* within 1 s"):
                    await sink.send(position(2))
                return time.monotonic() - t0
            finally:
                mosquitto.proc.send_signal(signal.SIGCONT)
        finally:
            await sink.close()

    assert run(scenario()) < 1.0 + 5  # the 1 s timeout ends it, not a hang


def test_after_a_broker_restart_the_next_send_reconnects_and_nothing_is_lost(
    mosquitto: Mosquitto,
) -> None:
    async def scenario(sub: Subscriber) -> None:
        sink = MqttSink(config(mosquitto.url), FLEET)
        await sink.start()
        try:
            await sink.send(position(1))
            await sink.send(position(2))
            mosquitto.restart()
            await sink.send(position(3))  # one call: the connection is renewed inside
            mosquitto.restart()
            await asyncio.sleep(0.3)  # this time the sink notices the drop while idle
            await sink.send(position(4))
        finally:
            await sink.close()

    with Subscriber(mosquitto.port, "vantrack/+/+/position", client_id="persistent") as sub:
        run(scenario(sub))
        got = sub.wait_for(lambda m: {json.loads(x.payload)["key"] for x in m} >= {"7-4"})
    keys = [json.loads(m.payload)["key"] for m in got]
    # At least once: receivers deduplicate by key. Here nothing was even duplicated.
    assert list(dict.fromkeys(keys)) == ["7-1", "7-2", "7-3", "7-4"]


def test_concurrent_sends_for_many_devices_all_complete(mosquitto: Mosquitto) -> None:
    devices = [(f"van-{i}", i) for i in range(1, 25)]

    async def scenario() -> None:
        sink = MqttSink(config(mosquitto.url), FLEET)
        await sink.start()  # no connection yet: 24 first sends race to open one

        async def van(name: str, device_id: int) -> None:
            for seq in range(1, 6):
                await sink.send(position(seq, name, device_id))

        try:
            await asyncio.gather(*(van(n, d) for n, d in devices))
        finally:
            await sink.close()

    with Subscriber(mosquitto.port, "vantrack/+/+/position", client_id="all") as sub:
        run(scenario())
        got = sub.wait_for(lambda m: len(m) >= 24 * 5)
    for name, _ in devices:
        seqs = [json.loads(m.payload)["seq"] for m in got if f"/{name}/" in m.topic]
        assert seqs == [1, 2, 3, 4, 5], name
    log = mosquitto.log()
    assert log.count(" as vantrack-north-broker ") == 1, log  # one shared connection
    assert "Received DISCONNECT from vantrack-north-broker" in log  # close() said goodbye


def test_username_and_password_file_authenticate_and_a_wrong_password_is_a_sink_error(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    with Mosquitto(users={"gateway": "s3cret"}) as broker:
        good = config(broker.url, username="gateway", password_file=str(secret))
        run(send_all(good, [position(1)]))

        async def wrong() -> SinkError:
            sink = MqttSink(config(broker.url, username="gateway", password="nope"), FLEET)
            try:
                with pytest.raises(SinkError) as caught:
                    await sink.send(position(2))
                return caught.value
            finally:
                await sink.close()

        err = str(run(wrong()))
        # mosquitto answers 135 Not authorized (134 Bad user name or password elsewhere)
        assert re.search(r"code:13[45]", err), err
        assert "nope" not in err


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_mqtts_verifies_the_broker_against_ca_file(tmp_path: Path) -> None:
    cert, key = tmp_path / "broker.pem", tmp_path / "broker.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_tcp_port()
    tls_listener = [f"listener {port} 127.0.0.1", f"certfile {cert}", f"keyfile {key}"]
    with Mosquitto(extra=tls_listener) as broker:
        url = f"mqtts://127.0.0.1:{port}"
        with Subscriber(broker.port, "vantrack/+/+/position", client_id="tls") as sub:
            run(send_all(config(url, ca_file=str(cert)), [position(1)]))
            (got,) = sub.wait_for(lambda m: len(m) >= 1)
        assert json.loads(got.payload)["key"] == "7-1"
        with pytest.raises(SinkError, match="certificate verify failed"):
            run(send_all(config(url), [position(2)]))  # not signed by a system CA


def test_a_publish_the_broker_refuses_is_a_sink_error(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite elsewhere/#\n")
    with Mosquitto(extra=[f"acl_file {acl}"]) as broker:
        with pytest.raises(SinkError, match="Not authorized"):
            run(send_all(config(broker.url), [position(1)]))


def test_mqtt_3_1_1_delivers_too(mosquitto: Mosquitto) -> None:
    with Subscriber(mosquitto.port, "vantrack/+/+/position", client_id="v311") as sub:
        run(send_all(config(mosquitto.url, protocol="3.1.1"), [position(1), position(2)]))
        got = sub.wait_for(lambda m: len(m) >= 2)
    assert [json.loads(m.payload)["seq"] for m in got] == [1, 2]


def test_target_names_the_broker_without_credentials() -> None:
    cfg = config("mqtts://broker.example:8884", username="u", password="p")
    assert MqttSink(cfg, FLEET).target() == "mqtts://broker.example:8884"
    assert MqttSink(config("mqtt://10.0.0.5"), FLEET).target() == "mqtt://10.0.0.5:1883"
    assert MqttSink(config("mqtts://10.0.0.5"), FLEET).target() == "mqtts://10.0.0.5:8883"
    assert MqttSink(config("mqtt://[::1]"), FLEET).target() == "mqtt://[::1]:1883"


def test_the_registry_finds_the_mqtt_sink() -> None:
    assert sink_class("mqtt") is MqttSink
    assert MqttSink.config_class is MqttConfig


@pytest.mark.parametrize(
    ("keys", "bad_key"),
    [
        ({"url": ""}, "url"),
        ({"url": "http://broker:1883"}, "url"),
        ({"url": "mqtt://broker:0"}, "url"),
        ({"url": "mqtt://broker:70000"}, "url"),
        ({"url": "mqtt://user:pw@broker"}, "url"),
        ({"url": "mqtt://broker/topic"}, "url"),
        ({"qos": 0}, "qos"),
        ({"qos": 3}, "qos"),
        ({"format": "xml"}, "format"),
        ({"protocol": "4"}, "protocol"),
        ({"topic_prefix": "a/#"}, "topic_prefix"),
        ({"topic_prefix": "a//b"}, "topic_prefix"),
        ({"keepalive_s": 0}, "keepalive_s"),
        ({"username": "u", "password": "p", "password_file": __file__}, "password_file"),
        ({"username": "u", "password_file": "/nonexistent/pw"}, "password_file"),
        ({"password": "p"}, "username"),
        ({"url": "mqtts://broker", "ca_file": "/nonexistent/ca.pem"}, "ca_file"),
        ({"ca_file": __file__}, "ca_file"),
        ({"url": "mqtts://broker", "key_file": __file__}, "key_file"),
        ({"concurrency": 0}, "concurrency"),
    ],
)
def test_config_check_names_the_bad_key(keys: dict[str, Any], bad_key: str) -> None:
    keys = {"url": "mqtt://broker:1883", **keys}
    cfg = MqttConfig(name="broker", type="mqtt", **keys)
    with pytest.raises(SinkConfigError) as caught:
        cfg.check()
    assert caught.value.key == bad_key


def test_config_without_url_is_refused() -> None:
    with pytest.raises(SinkConfigError) as caught:
        MqttConfig(name="broker", type="mqtt").check()
    assert caught.value.key == "url"


def test_config_defaults_are_valid_with_a_url() -> None:
    cfg = MqttConfig(name="broker", type="mqtt", url="mqtt://127.0.0.1:1883")
    cfg.check()
    assert (cfg.qos, cfg.format, cfg.topic_prefix, cfg.protocol) == (1, "json", "vantrack", "5")
