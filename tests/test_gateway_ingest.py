"""The gateway over real CoAP on loopback: what is stored, what is refused, and why.

One gateway process (tests/gateway_fixture.py) serves the whole module; aiocoap and
libcoap's coap-client are the peers. Every refusal is checked for its code, its
diagnostic, its counter, and that the next good report is still stored.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest
from gateway_fixture import (
    T0,
    Client,
    Device,
    Gateway,
    add_device,
    positions,
    post,
    report,
    running_gateway,
    vantrack,
)

from vantrack.gateway import wire


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Client, Path]]:
    tmp = tmp_path_factory.mktemp("gw")
    creds = tmp / "creds"
    add_device(tmp / "gw.db", "van-1", creds)  # the DB exists before the gateway starts
    with running_gateway(tmp) as gw:
        client = Client()
        try:
            yield gw, client, creds
        finally:
            client.close()


_names = iter(range(1000))


@pytest.fixture
def dev(env: tuple[Gateway, Client, Path]) -> Device:
    """A fresh device per test, registered while the gateway runs."""
    gw, _, creds = env
    return add_device(gw.db, f"van-t{next(_names)}", creds)


def stored(db: Path, device: int) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT seq, time_ms, lat_e6, lon_e6, speed_dms, course_deg, hdop_x10, sats"
            " FROM positions WHERE device_id = ? ORDER BY seq",
            (device,),
        ).fetchall()


def send(env: tuple[Gateway, Client, Path], payload: bytes, **kw: Any) -> Any:
    gw, client, _ = env
    return client.run(post(client.ctx, gw.uri, payload, **kw))


def test_report_is_stored_once_and_queried_back_equal(env: Any, dev: Device) -> None:
    gw = env[0]
    recs = positions(dev.id, 100, 10)
    ans = send(env, wire.encode(dev.id, 100, T0, recs, dev.key))
    assert ans.code == "2.04"
    assert cbor2.loads(ans.payload) == {0: 109}
    rows = stored(gw.db, dev.id)
    assert [r[0] for r in rows] == list(range(100, 110))
    out = vantrack("positions", "--device", dev.name, "--json", "--db", str(gw.db))
    import json

    got = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(got) == 10
    for g, r in zip(got, recs, strict=True):
        assert isinstance(r, wire.Position)
        assert g["seq"] == r.seq
        assert round(g["lat"] * 1e6) == r.lat_e6 and round(g["lon"] * 1e6) == r.lon_e6
        assert (
            g["time"] == r.time.strftime("%Y-%m-%dT%H:%M:%S.") + f"{r.time.microsecond // 100000}Z"
        )
        assert g["speed_kmh"] == round(r.speed_dms * 0.36, 2)  # type: ignore[operator]
        assert g["course"] == r.course_deg
    assert (got[0]["hdop"], got[0]["sats"]) == (0.9, 8)


def test_repeated_report_is_acknowledged_twice_and_stored_once(env: Any, dev: Device) -> None:
    payload = report(dev, 0, 5)
    first, second = send(env, payload), send(env, payload)
    assert (first.code, second.code) == ("2.04", "2.04")
    assert cbor2.loads(second.payload) == {0: 4}
    assert [r[0] for r in stored(env[0].db, dev.id)] == [0, 1, 2, 3, 4]
    assert env[0].events("report_stored")[-1]["new"] == "0"


def test_overlapping_rebatch_stores_only_the_new_records(env: Any, dev: Device) -> None:
    assert send(env, report(dev, 10, 5)).code == "2.04"  # 10..14
    # The van re-batches 12..19 with a different first record (absolute, with quality).
    ans = send(env, report(dev, 12, 8, t0=T0 + 2))
    assert ans.code == "2.04" and cbor2.loads(ans.payload) == {0: 19}
    rows = stored(env[0].db, dev.id)
    assert [r[0] for r in rows] == list(range(10, 20))
    # The records already stored kept their first version (12 had no hdop then).
    assert rows[2][6] is None


def test_events_are_stored_with_their_fields(env: Any, dev: Device) -> None:
    recs: list[wire.Record] = [
        *positions(dev.id, 0, 2),
        wire.Event(2, wire.gps_time(T0 + 3), wire.EventType.ARRIVED, 41_390_100, 2_170_050,
                   "stop-4", 11, 9, {7: 42}),
        wire.Event(3, wire.gps_time(T0 + 100), wire.EventType.DEPARTED, fence=4, extra={7: 97}),
    ]  # fmt: skip
    assert send(env, wire.encode(dev.id, 0, T0, recs, dev.key)).code == "2.04"
    out = vantrack("events", "--device", str(dev.id), "--json", "--db", str(env[0].db))
    import json

    got = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(g["seq"], g["event"], g["fence"], g["extra"]) for g in got] == [
        (2, "arrived", "stop-4", {"7": 42}),
        (3, "departed", 4, {"7": 97}),
    ]
    assert got[0]["lat"] == 41.3901 and got[0]["time"].endswith("T06:13:23.0Z")


@pytest.mark.skipif(shutil.which("coap-client-notls") is None, reason="libcoap3-bin missing")
def test_libcoap_client_post_is_accepted_and_stored(env: Any, dev: Device, tmp_path: Path) -> None:
    gw = env[0]
    f = tmp_path / "report.cbor"
    f.write_bytes(report(dev, 500, 3))
    out = subprocess.run(
        ["coap-client-notls", "-m", "post", "-t", "60", "-f", str(f), "-B", "10",
         "-o", str(tmp_path / "resp"), f"coap://127.0.0.1:{gw.port}/r"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert cbor2.loads((tmp_path / "resp").read_bytes()) == {0: 502}
    assert [r[0] for r in stored(gw.db, dev.id)] == [500, 501, 502]
    # libcoap prints the code of an error response; a 4.xx must not look like success.
    f.write_bytes(b"\xff")
    bad = subprocess.run(
        ["coap-client-notls", "-m", "post", "-t", "cbor", "-f", str(f), "-B", "10",
         f"coap://127.0.0.1:{gw.port}/r"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert b"4.00" in bad.stdout + bad.stderr


def _mac_not_last(dev: Device) -> bytes:
    good = wire.decode(report(dev, 0, 1))
    body = {0: 1, 1: dev.id, 2: 0, 3: T0, 5: good.mac, 4: [[0, 41_390_000, 2_170_000, 5, 1]]}
    return cbor2.dumps(body)  # valid per the CDDL, but the MAC is not the last entry


BAD = {
    "not_cbor": lambda d: b"\x1c\xfe\x00",  # reserved additional info 28
    "truncated": lambda d: report(d, 0, 3)[:-15],
    "not_the_schema": lambda d: cbor2.dumps({0: 1, 1: d.id, 2: "x"}),
    "wrong_version": lambda d: bytes([0xA6, 0x00, 0x02]) + report(d, 0, 1)[3:],
    "mac_not_last": _mac_not_last,
    "bytes_after_mac": lambda d: report(d, 0, 2) + b"\x00",
    "position_out_of_range": lambda d: wire.encode(
        d.id, 0, T0, [wire.Position(0, wire.gps_time(T0), 91_000_000, 0, None, None)], d.key
    ),
}
EXPECT = {
    "not_cbor": ("4.00", "not_cbor"),
    "truncated": ("4.00", "not_cbor"),
    "not_the_schema": ("4.00", "schema"),
    "wrong_version": ("4.00", "version"),
    "mac_not_last": ("4.00", "schema"),  # the CDDL fixes the key order
    "bytes_after_mac": ("4.00", "mac_position"),
    "position_out_of_range": ("4.00", "position"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_report_gets_400_with_diagnostic_and_the_next_is_stored(
    env: Any, dev: Device, case: str
) -> None:
    gw = env[0]
    code, reason = EXPECT[case]
    before = gw.counters().get(f"rejected_{reason}", 0)
    ans = send(env, BAD[case](dev))
    assert (ans.code, ans.content_format) == (code, 0)
    assert ans.payload.decode().startswith(f"{reason}: ")
    line = gw.events("report_rejected")[-1]
    assert line["reason"] == reason and line["code"] == code
    assert gw.counters()[f"rejected_{reason}"] == before + 1
    assert send(env, report(dev, 40, 2)).code == "2.04"
    assert [r[0] for r in stored(gw.db, dev.id)] == [40, 41]


def test_unknown_device_gets_401(env: Any, dev: Device) -> None:
    stranger = Device(dev.id + 100_000, "stranger", dev.key)
    ans = send(env, report(stranger, 0, 2))
    assert (ans.code, ans.payload) == ("4.01", b"unknown device")
    line = env[0].events("report_rejected")[-1]
    assert (line["reason"], line["device"]) == ("unknown_device", str(stranger.id))
    assert env[0].counters()["rejected_unknown_device"] >= 1
    assert stored(env[0].db, stranger.id) == []
    assert send(env, report(dev, 0, 2)).code == "2.04"


def test_bad_mac_gets_401_and_stores_nothing(env: Any, dev: Device) -> None:
    forged = Device(dev.id, dev.name, bytes(16))
    ans = send(env, report(forged, 0, 2))
    assert (ans.code, ans.payload) == ("4.01", b"bad mac")
    assert env[0].events("report_rejected")[-1]["reason"] == "bad_mac"
    assert stored(env[0].db, dev.id) == []
    assert send(env, report(dev, 0, 2)).code == "2.04"


def test_removed_device_gets_401_and_keeps_its_positions(env: Any, dev: Device) -> None:
    gw = env[0]
    assert send(env, report(dev, 0, 3)).code == "2.04"
    out = vantrack("devices", "remove", dev.name, "--db", str(gw.db))
    assert out.returncode == 0 and "3 positions" in out.stdout
    assert send(env, report(dev, 3, 3)).code == "4.01"
    assert len(stored(gw.db, dev.id)) == 3


@pytest.mark.parametrize("size", [1025, 1500, 4000])
def test_oversized_payload_gets_413(env: Any, dev: Device, size: int) -> None:
    before = env[0].counters().get("rejected_too_large", 0)
    ans = send(env, report(dev, 0, 1) + bytes(size))
    assert ans.code == "4.13" and ans.payload.startswith(b"too_large")
    assert env[0].counters()["rejected_too_large"] == before + 1
    assert send(env, report(dev, 0, 2)).code == "2.04"


def test_wrong_method_and_content_format_are_refused(env: Any, dev: Device) -> None:
    assert send(env, b"", method=aiocoap.GET).code == "4.05"
    assert send(env, report(dev, 0, 1), content_format=0).code == "4.15"
    assert send(env, report(dev, 0, 1), content_format=None).code == "4.15"
    c = env[0].counters()
    assert c["rejected_method"] >= 1 and c["rejected_content_format"] >= 2
    assert send(env, report(dev, 0, 1)).code == "2.04"


def test_unstorable_integer_is_refused_not_retried_forever(env: Any, dev: Device) -> None:
    # The CDDL leaves speed unbounded; 2**64-1 cannot go into SQLite. 4.00, not 5.03.
    rec = wire.Position(0, wire.gps_time(T0), 41_000_000, 2_000_000, 2**64 - 1, None)
    ans = send(env, wire.encode(dev.id, 0, T0, [rec], dev.key))
    assert ans.code == "4.00" and ans.payload.startswith(b"range: ")
    assert env[0].alive()
