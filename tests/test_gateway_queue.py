"""Store-and-forward, the gateway's side: status records, the queue estimate in `devices
list`, reporting thresholds pushed in acks, backlogs arriving out of order.

One real gateway process (tests/gateway_fixture.py) serves the module; reports are built
with wire.encode and posted over CoAP with aiocoap; the CLI runs as a subprocess.
Records are timed so that seq s is at GPS time T0 + s: a backlog has older device times
than the live reports sent before it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    running_gateway,
    vantrack,
)

from vantrack.gateway import store, wire

Env = tuple[Gateway, Client, Path]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("gwq")
    add_device(tmp / "gw.db", "van-0", tmp / "creds")
    with running_gateway(tmp) as gw:
        client = Client()
        try:
            yield gw, client, tmp / "creds"
        finally:
            client.close()


_names = iter(range(1000))


@pytest.fixture
def dev(env: Env) -> Device:
    """A fresh device per test, registered while the gateway runs."""
    gw, _, creds = env
    return add_device(gw.db, f"van-q{next(_names)}", creds)


def status(seq: int, queued: int, dropped: int, cause: wire.StatusCause) -> wire.Event:
    return wire.Event(
        seq, wire.gps_time(T0 + seq), wire.EventType.STATUS, 41_390_000, 2_170_000, None, 9, 8,
        {wire.StatusKey.DROPPED: dropped, wire.StatusKey.QUEUED: queued,
         wire.StatusKey.CAUSE: cause},
    )  # fmt: skip


def batch(dev: Device, seq: int, n: int, *extra: wire.Record) -> bytes:
    """n positions from seq (seq s at T0 + s), then `extra` records numbered after them."""
    recs = [*positions(dev.id, seq, n, T0 + seq), *extra]
    assert [r.seq for r in recs] == list(range(seq, seq + len(recs)))
    return wire.encode(dev.id, seq, T0 + seq, recs, dev.key)


def send(env: Env, payload: bytes) -> dict[int, Any]:
    gw, client, _ = env
    ans = client.run(post(client.ctx, gw.uri, payload))
    assert ans.code == "2.04", ans.payload
    ack = cbor2.loads(ans.payload)
    # The ack is deterministic CBOR: what the van parses as a run of small uint pairs.
    assert ans.payload == cbor2.dumps(ack, canonical=True)
    assert list(ack) == sorted(ack)
    assert isinstance(ack, dict)
    return ack


def cli(env: Env, *args: str) -> Any:
    out = vantrack(*args, "--db", str(env[0].db))
    assert out.returncode == 0, out.stderr
    return out


def listed(env: Env, dev: Device) -> dict[str, Any]:
    rows = [json.loads(x) for x in cli(env, "devices", "list", "--json").stdout.splitlines()]
    (row,) = [r for r in rows if r["device_id"] == dev.id]
    return row


def queue(env: Env, dev: Device) -> tuple[Any, Any]:
    row = listed(env, dev)
    return row["queued"], row["dropped"]


def iso(seq: int) -> str:
    return f"{wire.gps_time(T0 + seq):%Y-%m-%dT%H:%M:%S}.0Z"


# ---- status records --------------------------------------------------------------------
def test_status_record_is_stored_and_listed_with_its_counters_by_name(
    env: Env, dev: Device
) -> None:
    send(env, batch(dev, 0, 3, status(3, 41, 7, wire.StatusCause.LINK_BACK)))
    events = [
        json.loads(x)
        for x in cli(env, "events", "--device", dev.name, "--json").stdout.splitlines()
    ]
    assert len(events) == 1
    ev = events[0]
    assert (ev["seq"], ev["type"], ev["event"], ev["time"]) == (3, 16, "status", iso(3))
    assert (ev["lat"], ev["lon"], ev["hdop"], ev["sats"]) == (41.39, 2.17, 0.9, 8)
    assert ev["extra"] == {"7": 7, "9": 41, "10": 2}
    assert (ev["dropped"], ev["queued"], ev["cause"], ev["cause_name"]) == (
        7, 41, 2, "link_back")  # fmt: skip
    table = cli(env, "events", "--device", dev.name).stdout.splitlines()
    assert table[1].split()[3] == "status"


def test_devices_list_shows_dashes_for_a_van_that_never_sent_a_status(
    env: Env, dev: Device
) -> None:
    send(env, batch(dev, 0, 5))
    row = listed(env, dev)
    assert (row["queued"], row["dropped"], row["last_seq"]) == (None, None, 4)
    assert row["last_fix"] == iso(4) and row["last_seen"] is not None
    lines = cli(env, "devices", "list").stdout.splitlines()
    assert lines[0].split()[-2:] == ["queued", "dropped"]
    (line,) = [x for x in lines if f" {dev.name} " in x]
    assert line.split()[-2:] == ["-", "-"]


def test_queue_estimate_falls_as_the_backlog_arrives_and_dropped_adds_up(
    env: Env, dev: Device
) -> None:
    # The link comes back: the van holds 200..499 (300 records) and says so in a status
    # record at seq 500, sent live with 501..509.
    live = send(env, batch(dev, 500, 0, status(500, 300, 4, wire.StatusCause.LINK_BACK),
                           *positions(dev.id, 501, 9, T0 + 501)))  # fmt: skip
    assert live[0] == 509
    assert queue(env, dev) == (300, 4)
    # The backlog, oldest first, in reports of 50; live reports in between do not count.
    send(env, batch(dev, 200, 50))
    assert queue(env, dev) == (250, 4)
    send(env, batch(dev, 510, 10))
    send(env, batch(dev, 250, 50))
    assert queue(env, dev) == (200, 4)
    # A retransmitted backlog report is stored once and delivers nothing new.
    send(env, batch(dev, 250, 50))
    assert queue(env, dev) == (200, 4)
    # The queue fills up: the van thins out 50 positions and says it holds 150 now.
    send(env, batch(dev, 520, 0, status(520, 150, 50, wire.StatusCause.QUEUE_THINNED)))
    assert queue(env, dev) == (150, 54)
    for seq in (300, 350, 400):  # what is left of 300..499 after thinning, 150 records
        send(env, batch(dev, seq, 50))
    assert queue(env, dev) == (0, 54)
    # The van says the backlog is delivered, with nothing left.
    send(env, batch(dev, 521, 0, status(521, 0, 0, wire.StatusCause.BACKLOG_DELIVERED)))
    row = listed(env, dev)
    assert (row["queued"], row["dropped"]) == (0, 54)
    assert (row["last_seq"], row["last_fix"]) == (521, iso(521))
    assert row["positions"] == 9 + 10 + 250 and row["events"] == 3
    (line,) = [x for x in cli(env, "devices", "list").stdout.splitlines() if f" {dev.name} " in x]
    assert line.split()[-2:] == ["0", "54"]


def test_queue_estimate_never_goes_below_zero(env: Env, dev: Device) -> None:
    send(env, batch(dev, 100, 0, status(100, 20, 0, wire.StatusCause.BOOT)))
    assert queue(env, dev) == (20, 0)
    send(env, batch(dev, 50, 50))  # more older records than the status counted
    assert queue(env, dev) == (0, 0)


# ---- out of order ----------------------------------------------------------------------
def test_backlog_after_live_reports_is_listed_in_device_time_and_ack_keeps_the_highest_seq(
    env: Env, dev: Device
) -> None:
    assert send(env, batch(dev, 500, 5))[0] == 504
    arrived = wire.Event(
        230, wire.gps_time(T0 + 230), wire.EventType.ARRIVED, 41_390_100, 2_170_050, 3, 9, 8,
        {7: 12},
    )  # fmt: skip
    # The backlog arrives newest batch first, the oldest last: the ack still says 504.
    assert send(env, batch(dev, 220, 10, arrived))[0] == 504
    assert send(env, batch(dev, 200, 20))[0] == 504
    out = cli(env, "positions", "--device", dev.name, "--json").stdout.splitlines()
    rows = [json.loads(x) for x in out]
    want = [*range(200, 230), *range(500, 505)]
    assert [r["seq"] for r in rows] == want
    assert [r["time"] for r in rows] == [iso(s) for s in want]
    table = cli(env, "positions", "--device", dev.name).stdout.splitlines()[1:]
    assert [int(x.split()[1]) for x in table] == want
    # Events too: the backlog's arrived (seq 230) before a live status (seq 505).
    send(env, batch(dev, 505, 0, status(505, 0, 0, wire.StatusCause.BACKLOG_DELIVERED)))
    evs = [
        json.loads(x)
        for x in cli(env, "events", "--device", dev.name, "--json").stdout.splitlines()
    ]
    assert [(e["seq"], e["event"]) for e in evs] == [(230, "arrived"), (505, "status")]
    row = listed(env, dev)
    assert (row["last_seq"], row["last_fix"], row["positions"]) == (505, iso(505), 35)


def test_the_same_report_sent_twice_is_stored_once(env: Env, dev: Device) -> None:
    payload = batch(dev, 40, 8, status(48, 3, 1, wire.StatusCause.BOOT))
    assert send(env, payload) == send(env, payload) == {0: 48}
    with sqlite3.connect(env[0].db) as conn:
        n_pos = conn.execute("SELECT count(*) FROM positions WHERE device_id = ?", (dev.id,))
        n_ev = conn.execute("SELECT count(*) FROM events WHERE device_id = ?", (dev.id,))
        assert (n_pos.fetchone()[0], n_ev.fetchone()[0]) == (8, 1)
    row = listed(env, dev)
    assert (row["positions"], row["events"], row["queued"], row["dropped"]) == (8, 1, 3, 1)


# ---- reporting thresholds ----------------------------------------------------------------
def reporting(env: Env, dev: Device, *args: str) -> dict[str, Any]:
    out = cli(env, "devices", "reporting", dev.name, *args, "--json")
    data: dict[str, Any] = json.loads(out.stdout)
    assert (data.pop("device_id"), data.pop("device_name")) == (dev.id, dev.name)
    return data


def test_reporting_overrides_ride_in_the_next_ack_and_go_after_reset(env: Env, dev: Device) -> None:
    assert reporting(env, dev) == {}
    assert send(env, batch(dev, 0, 2)) == {0: 1}
    got = reporting(env, dev, "--period", "5", "--speed-delta", "10")
    assert got == {"period_s": 5, "speed_delta_dms": 28, "speed_delta_kmh": 10.08}
    assert send(env, batch(dev, 2, 2)) == {0: 3, 2: 5, 6: 28}
    # Options not given keep their value.
    reporting(env, dev, "--stopped-period", "300", "--distance", "100000", "--angle", "180")
    assert send(env, batch(dev, 4, 2)) == {0: 5, 2: 5, 3: 300, 4: 100000, 5: 180, 6: 28}
    text = cli(env, "devices", "reporting", dev.name).stdout
    assert "period 5" in text and "stopped-period 300" in text and "28 dm/s" in text
    # --reset with a value: only that one is left.
    assert reporting(env, dev, "--reset", "--distance", "250") == {"distance_m": 250}
    assert send(env, batch(dev, 6, 2)) == {0: 7, 4: 250}
    assert reporting(env, dev, "--reset") == {}
    assert send(env, batch(dev, 8, 2)) == {0: 9}
    assert "none" in cli(env, "devices", "reporting", str(dev.id)).stdout


def test_reporting_overrides_are_per_device(env: Env, dev: Device) -> None:
    other = add_device(env[0].db, f"van-q{next(_names)}", env[2])
    reporting(env, dev, "--period", "30")
    assert send(env, batch(other, 0, 1)) == {0: 0}
    assert send(env, batch(dev, 0, 1)) == {0: 0, 2: 30}


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--period", "0", "--period 0: must be 1..86400"),
        ("--period", "86401", "--period 86401: must be 1..86400"),
        ("--stopped-period", "-3", "--stopped-period -3: must be 1..86400"),
        ("--distance", "100001", "--distance 100001: must be 1..100000"),
        ("--angle", "181", "--angle 181: must be 1..180"),
        ("--speed-delta", "0.5", "--speed-delta 0.5: must be 1..200"),
        ("--speed-delta", "201", "--speed-delta 201: must be 1..200"),
        ("--speed-delta", "nan", "--speed-delta nan: must be 1..200"),
    ],
)
def test_reporting_value_out_of_range_is_refused_naming_the_option_and_changes_nothing(
    env: Env, dev: Device, option: str, value: str, message: str
) -> None:
    reporting(env, dev, "--angle", "45")
    out = vantrack("devices", "reporting", dev.name, "--distance", "10", option, value,
                   "--db", str(env[0].db))  # fmt: skip
    assert out.returncode == 1
    assert message in out.stderr and "Traceback" not in out.stderr
    assert reporting(env, dev) == {"angle_deg": 45}


@pytest.mark.parametrize("args", [("--period", "fast"), ("--angle", "1.5"), ("--distance",)])
def test_reporting_value_that_is_not_a_number_is_a_usage_error(
    env: Env, dev: Device, args: tuple[str, ...]
) -> None:
    out = vantrack("devices", "reporting", dev.name, *args, "--db", str(env[0].db))
    assert out.returncode == 2 and f"argument {args[0]}" in out.stderr
    assert reporting(env, dev) == {}


def test_reporting_for_an_unknown_device_is_exit_1(env: Env) -> None:
    out = vantrack("devices", "reporting", "no-such-van", "--period", "5", "--db", str(env[0].db))
    assert out.returncode == 1 and "no device 'no-such-van'" in out.stderr


def test_removing_a_device_removes_its_overrides(tmp_path: Path) -> None:
    db, creds = tmp_path / "t.db", tmp_path / "creds"
    add_device(db, "van-1", creds)
    out = vantrack("devices", "reporting", "van-1", "--period", "9", "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert vantrack("devices", "remove", "van-1", "--db", str(db)).returncode == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM reporting").fetchone()[0] == 0


def test_an_older_database_gains_the_reporting_table_and_queue_indexes(tmp_path: Path) -> None:
    db, creds = tmp_path / "old.db", tmp_path / "creds"
    dev = add_device(db, "van-1", creds)
    # Make it what a schema-2 gateway left behind.
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE reporting")
        for index in ("events_status", "positions_received", "events_received"):
            conn.execute(f"DROP INDEX {index}")
        conn.execute("PRAGMA user_version = 2")
    out = vantrack("devices", "reporting", "van-1", "--angle", "20", "--json", "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["angle_deg"] == 20
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"reporting", "events_status", "positions_received", "events_received"} <= names
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    # The queue estimate reads only what it needs, through the indexes.
    s = store.Store(db)
    try:
        payload = wire.encode(dev.id, 0, T0, [status(0, 5, 0, wire.StatusCause.BOOT)], dev.key)
        s.save(dev.id, *store.report_rows(wire.decode(payload), 1), received_ms=1)
        plans = []
        for sql, args in queue_queries(s):
            plan = s.conn.execute("EXPLAIN QUERY PLAN " + sql, args).fetchall()
            plans.append(" ".join(str(r[-1]) for r in plan))
    finally:
        s.close()
    assert len(plans) == 3
    assert "USING INDEX events_status" in plans[0] and "USING INDEX events_status" in plans[2]
    assert "positions_received" in plans[1] and "events_received" in plans[1]


def queue_queries(s: store.Store) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements Store.queue() runs, caught on their way to SQLite."""
    seen: list[tuple[str, tuple[Any, ...]]] = []
    real = s.conn

    class Spy:
        def execute(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
            seen.append((sql, args))
            return real.execute(sql, args)

    s.conn = Spy()  # type: ignore[assignment]
    try:
        assert s.queue(1) is not None
    finally:
        s.conn = real
    return seen
