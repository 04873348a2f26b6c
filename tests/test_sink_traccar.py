"""The Traccar sink against a local server that decodes OsmAnd requests as Traccar does
(tests/osmand_server.py, a port of Traccar's OsmAndProtocolDecoder)."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import socket
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from osmand_server import (
    DecodeError,
    OsmAndServer,
    decode_query,
    java_parse_double,
    netty_parameters,
)

from vantrack.gateway import wire
from vantrack.gateway.sinks import sink_class
from vantrack.gateway.sinks.base import EXTRA_ROUTE, EXTRA_VALUE, Record, SinkConfigError, SinkError
from vantrack.gateway.sinks.traccar import (
    KNOTS_PER_DMS,
    TraccarConfig,
    TraccarSink,
    osmand_params,
)

T_MS = 1_795_000_000_123  # 2026-11-18T08:26:40.123Z


def utc_ms(ms: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)


def position(seq: int = 100, **kw: Any) -> Record:
    fields: dict[str, Any] = dict(
        device_id=7, device="van-7", seq=seq, time_ms=T_MS + seq, received_ms=T_MS + 5000,
        lat_e6=52_520_008, lon_e6=13_404_954, speed_dms=139, course_deg=271, hdop_x10=12,
        sats=9,
    )  # fmt: skip
    fields.update(kw)
    return Record(**fields)


ARRIVAL = position(
    seq=101, lat_e6=-33_868_820, lon_e6=-70_000_001, speed_dms=0, course_deg=0,
    event=wire.EventType.ARRIVED, fence=3, stop="S-12", extra={EXTRA_VALUE: 45, EXTRA_ROUTE: 2},
)  # fmt: skip
STATUS = position(
    seq=102, speed_dms=None, course_deg=None, event=wire.EventType.STATUS,
    extra={wire.StatusKey.DROPPED: 0, wire.StatusKey.QUEUED: 4, wire.StatusKey.CAUSE: 1},
)  # fmt: skip


def sink(url: str, **kw: Any) -> TraccarSink:
    cfg = TraccarConfig(name="traccar", type="traccar", url=url, **kw)
    cfg.check()
    return TraccarSink(cfg, "fleet")


async def deliver(s: TraccarSink, *records: Record) -> None:
    await s.start()
    try:
        for r in records:
            await s.send(r)
    finally:
        await s.close()


def send_all(s: TraccarSink, *records: Record) -> None:
    asyncio.run(deliver(s, *records))


@pytest.fixture
def traccar() -> Iterator[OsmAndServer]:
    with OsmAndServer(devices={"van-7"}) as server:
        yield server


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- what arrives in Traccar -----------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_position_arrives_decoded_as_traccar_decodes_it(traccar: OsmAndServer, method: str) -> None:
    send_all(sink(traccar.url, method=method), position())
    [p] = traccar.wait_for(1)
    assert p.method == method
    assert p.device == "van-7"
    assert p.fix_time == utc_ms(T_MS + 100)  # to the millisecond
    assert (p.latitude, p.longitude) == (52.520008, 13.404954)
    assert p.speed == pytest.approx(13.9 * 3600 / 1852, abs=1e-4)  # knots
    assert round(p.speed / KNOTS_PER_DMS) == 139  # back to dm/s without loss
    assert p.course == 271.0
    assert p.valid and not p.outdated
    assert p.attributes == {"hdop": 1.2, "sat": 9.0, "seq": 100.0, "key": "7-100"}


def test_stop_arrival_arrives_with_event_stop_and_key_attributes(traccar: OsmAndServer) -> None:
    send_all(sink(traccar.url), ARRIVAL)
    [p] = traccar.wait_for(1)
    assert p.fix_time == utc_ms(T_MS + 101)
    assert (p.latitude, p.longitude) == (-33.868820, -70.000001)
    assert (p.speed, p.course) == (0.0, 0.0)
    assert p.attributes == {
        "hdop": 1.2, "sat": 9.0, "seq": 101.0, "key": "7-101",
        "event": "arrived", "stop": "S-12", "fence": 3.0, "route_version": 2.0,
        "inside_s": 45.0,
    }  # fmt: skip


def test_status_record_with_a_fix_arrives_with_its_cause_and_queue(
    traccar: OsmAndServer,
) -> None:
    send_all(sink(traccar.url), STATUS)
    [p] = traccar.wait_for(1)
    assert "speed" not in p.params and "bearing" not in p.params
    assert p.attributes["event"] == "status"
    assert p.attributes["cause"] == "boot"
    assert (p.attributes["queued"], p.attributes["dropped"]) == (4.0, 0.0)
    assert p.attributes["key"] == "7-102"


def test_records_arrive_in_order_and_no_altitude_is_made_up(traccar: OsmAndServer) -> None:
    send_all(sink(traccar.url), position(), ARRIVAL, STATUS)
    got = traccar.wait_for(3)
    assert [p.attributes["key"] for p in got] == ["7-100", "7-101", "7-102"]
    assert all("altitude" not in p.params for p in got)
    assert all(p.altitude == 0.0 for p in got)  # Traccar's default, not ours


def test_numeric_looking_stop_id_arrives_as_a_number_as_traccar_types_it(
    traccar: OsmAndServer,
) -> None:
    # Traccar makes every unknown parameter a Double when Double.parseDouble accepts it.
    send_all(sink(traccar.url), position(seq=103, event=wire.EventType.DEPARTED, stop="0042"))
    [p] = traccar.wait_for(1)
    assert p.attributes["stop"] == 42.0
    assert p.attributes["key"] == "7-103"  # "7-103" is no Java double: always a string


def test_event_type_unknown_to_the_gateway_arrives_by_number(traccar: OsmAndServer) -> None:
    send_all(sink(traccar.url), position(seq=105, event=42, extra={EXTRA_VALUE: 1}))
    [p] = traccar.wait_for(1)
    assert p.attributes["event"] == "event_42"
    assert p.attributes["key"] == "7-105"


def test_record_without_a_position_is_skipped_without_a_request(traccar: OsmAndServer) -> None:
    no_fix = position(seq=104, lat_e6=None, lon_e6=None, event=wire.EventType.STATUS)
    send_all(sink(traccar.url), no_fix)
    time.sleep(0.1)
    assert traccar.requests == 0 and traccar.positions == []


def test_device_id_id_sends_the_numeric_device_id() -> None:
    with OsmAndServer(devices={"7"}) as server:
        send_all(sink(server.url, device_id="id"), position())
        [p] = server.wait_for(1)
    assert p.device == "7"


names = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", min_size=1)
texts = st.text(st.characters(codec="utf-8"), max_size=20)  # any text but lone surrogates


@settings(max_examples=300, deadline=None)
@given(
    name=names,
    device_id=st.integers(1, 2**31),
    seq=st.integers(0, 2**32),
    time_ms=st.integers(946_684_800_000, 4_102_444_800_000),  # 2000..2100
    lat_e6=st.integers(-90_000_000, 90_000_000),
    lon_e6=st.integers(-180_000_000, 180_000_000),
    speed_dms=st.none() | st.integers(0, 2000),
    course=st.none() | st.integers(0, 359),
    hdop_x10=st.none() | st.integers(0, 999),
    stop=st.none() | texts,
    get=st.booleans(),
)
def test_any_record_decodes_in_traccar_to_exactly_what_was_sent(
    name: str, device_id: int, seq: int, time_ms: int, lat_e6: int, lon_e6: int,
    speed_dms: int | None, course: int | None, hdop_x10: int | None, stop: str | None,
    get: bool,
) -> None:  # fmt: skip
    r = Record(
        device_id=device_id, device=name, seq=seq, time_ms=time_ms, received_ms=time_ms,
        lat_e6=lat_e6, lon_e6=lon_e6, speed_dms=speed_dms, course_deg=course,
        hdop_x10=hdop_x10, event=None if stop is None else wire.EventType.ARRIVED, stop=stop,
    )  # fmt: skip
    body = urllib.parse.urlencode(osmand_params(r))
    status, p = (
        decode_query(f"/?{body}", b"", {name}) if get else decode_query("/", body.encode(), {name})
    )
    assert status == 200 and p is not None
    assert p.device == name
    assert p.fix_time == utc_ms(time_ms)
    assert (p.latitude, p.longitude) == (lat_e6 / 1e6, lon_e6 / 1e6)
    if speed_dms is not None:
        assert round(p.speed / KNOTS_PER_DMS) == speed_dms
    assert p.course == (course or 0)
    if hdop_x10 is not None:
        assert p.attributes["hdop"] == hdop_x10 / 10
    assert p.attributes["key"] == f"{device_id}-{seq}"
    assert p.attributes["seq"] == float(seq)
    if stop is not None:
        try:
            java_parse_double(stop)
        except ValueError:
            assert p.attributes["stop"] == {"true": True, "false": False}.get(stop, stop)


def test_time_traccar_would_read_as_seconds_is_sent_as_iso_instead() -> None:
    r = position(time_ms=2_000_000_123)  # 1970-01-24: not a GPS time, but not misread
    body = urllib.parse.urlencode(osmand_params(r))
    _, p = decode_query("/", body.encode(), {"van-7"})
    assert p is not None and p.fix_time == utc_ms(2_000_000_123)


# --- failures --------------------------------------------------------------------------


def test_unknown_device_raises_sink_error_saying_it_is_not_registered(
    traccar: OsmAndServer,
) -> None:
    with pytest.raises(SinkError) as e:
        send_all(sink(traccar.url), position(device="van-9", device_id=9))
    assert "400" in str(e.value) and "'van-9'" in str(e.value)
    assert "not registered in Traccar" in str(e.value)
    assert e.value.retry  # registering the van in Traccar fixes it
    assert traccar.positions == []


def test_delivery_succeeds_once_the_device_is_registered(traccar: OsmAndServer) -> None:
    with pytest.raises(SinkError):
        send_all(sink(traccar.url), position(device="van-9", device_id=9))
    traccar.add_device("van-9")
    send_all(sink(traccar.url), position(device="van-9", device_id=9))
    assert [p.device for p in traccar.wait_for(1)] == ["van-9"]


def test_server_down_raises_sink_error_promptly() -> None:
    s = sink(f"http://127.0.0.1:{free_tcp_port()}", timeout_s=30.0)
    t0 = time.monotonic()
    with pytest.raises(SinkError, match="cannot connect to Traccar"):
        send_all(s, position())
    assert time.monotonic() - t0 < 10  # refused at once, not the 30 s timeout


def test_traccar_too_slow_to_answer_raises_sink_error_at_the_timeout() -> None:
    with OsmAndServer(devices={"van-7"}, delay_s=3.0) as server:
        t0 = time.monotonic()
        with pytest.raises(SinkError, match="no answer from Traccar within 0.3 s"):
            send_all(sink(server.url, timeout_s=0.3), position())
        assert time.monotonic() - t0 < 2.5  # not the 3 s the server holds the answer


def test_connection_closed_once_without_an_answer_is_retried_at_once() -> None:
    with OsmAndServer(devices={"van-7"}, drop=1) as server:
        send_all(sink(server.url), position())
        assert len(server.wait_for(1)) == 1 and server.requests == 2


def test_connection_closed_twice_without_an_answer_raises_sink_error() -> None:
    with OsmAndServer(devices={"van-7"}, drop=2) as server:
        with pytest.raises(SinkError, match="closed the connection without an answer"):
            send_all(sink(server.url), position())
        assert server.requests == 2 and server.positions == []


def test_sink_is_found_by_kind_and_target_is_the_url_without_credentials() -> None:
    assert sink_class("traccar") is TraccarSink
    s = sink("https://user:secret@traccar.example:5055/osmand")
    assert s.target() == "https://traccar.example:5055/osmand"


# --- configuration ---------------------------------------------------------------------


def test_default_config_is_valid() -> None:
    cfg = TraccarConfig(name="traccar", type="traccar")
    cfg.check()
    assert (cfg.url, cfg.device_id, cfg.method) == ("http://127.0.0.1:5055", "name", "POST")


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"url": "ftp://traccar.example:5055"}, "url"),
        ({"url": "traccar.example:5055"}, "url"),
        ({"url": "http://traccar.example:99999"}, "url"),
        ({"url": "http://traccar.example:5055/?id=1"}, "url"),
        ({"device_id": "imei"}, "device_id"),
        ({"method": "PUT"}, "method"),
        ({"concurrency": 0}, "concurrency"),
    ],
)
def test_config_check_error_names_the_key(kw: dict[str, Any], key: str) -> None:
    with pytest.raises(SinkConfigError) as e:
        TraccarConfig(name="traccar", type="traccar", **kw).check()
    assert e.value.key == key


# --- the stand-in decodes as Traccar's decoder (its own test cases) ----------------------


def test_osmand_server_decodes_traccars_own_test_requests() -> None:
    # From traccar/traccar src/test/java/org/traccar/protocol/OsmAndProtocolDecoderTest.java
    dev = {"123456", "902064", "353861053849681"}
    status, p = decode_query("/?id=123456&timestamp=1377177267&lat=60.0&lon=30.0", b"", dev)
    assert status == 200 and p is not None
    assert p.fix_time == dt.datetime(2013, 8, 22, 13, 14, 27, tzinfo=dt.UTC)  # seconds
    uri = "/?id=902064&lat=42.06288&lon=-88.23412&timestamp=1442068686579&hdop=6.0&speed=0.0"
    _, p = decode_query(uri, b"", dev)
    assert p is not None and p.fix_time == utc_ms(1442068686579)  # milliseconds
    uri = "/?id=902064&lat=42.06288&lon=-88.23412&timestamp=2016-01-27T18%3A55%3A47Z"
    _, p = decode_query(uri, b"", dev)
    assert p is not None and p.fix_time == dt.datetime(2016, 1, 27, 18, 55, 47, tzinfo=dt.UTC)
    uri = "/?lat=49.60688&lon=6.15788&timestamp=2014-06-04+09%3A10%3A11&id=353861053849681"
    _, p = decode_query(uri, b"", dev)
    assert p is not None and p.fix_time == dt.datetime(2014, 6, 4, 9, 10, 11, tzinfo=dt.UTC)
    _, p = decode_query("/?id=123456&timestamp=1377177267&location=60.0,30.0", b"", dev)
    assert p is not None and (p.latitude, p.longitude) == (60.0, 30.0)
    assert decode_query("/?timestamp=1377177267&lat=60.0&lon=30.0", b"", dev) == (400, None)


def test_osmand_server_reads_the_body_only_when_the_uri_has_no_query() -> None:
    body = b"id=van-7&lat=1.5&lon=2.5&ignition=true&note=a+b%3Bc"
    status, p = decode_query("/", body, {"van-7"})
    assert status == 200 and p is not None
    assert p.attributes == {"ignition": True, "note": "a b;c"}
    assert decode_query("/?x=1", body, {"van-7"}) == (400, None)  # body ignored: no id


def test_osmand_server_refuses_what_traccar_cannot_parse() -> None:
    with pytest.raises(DecodeError):
        decode_query("/?id=van-7&lat=abc&lon=1", b"", {"van-7"})


def test_java_double_parsing_is_not_pythons() -> None:
    assert java_parse_double("12d") == 12.0
    assert java_parse_double(" 0x1p3 ") == 8.0
    assert java_parse_double("-Infinity") == -math.inf
    for not_java in ("inf", "nan", "1_0", "", "1e"):
        with pytest.raises(ValueError):
            java_parse_double(not_java)


def test_netty_splits_parameters_on_ampersand_and_semicolon() -> None:
    assert netty_parameters("/p?a=1;b=2&a=3&c&=x") == {
        "a": ["1", "3"], "b": ["2"], "c": [""], "x": [""]
    }  # fmt: skip
