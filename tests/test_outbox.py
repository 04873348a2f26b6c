"""The outbox: what enters it (in the report's transaction), replay, and `vantrack sinks`.

Delivery itself, against real backends, is in tests/test_relay.py.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from gateway_fixture import vantrack

from vantrack.gateway import config, store, wire
from vantrack.gateway.outbox import Outbox
from vantrack.gateway.sinks import Filter, SinkConfig
from vantrack.gateway.store import Store, StoreError, Target

ARRIVED, DEPARTED, STATUS = int(wire.EventType.ARRIVED), int(wire.EventType.DEPARTED), 16


def pos(device: int, seq: int, rx: int = 1000) -> store.PositionRow:
    return (device, seq, 1_700_000_000_000 + seq * 1000, 52_000_000 + seq, 4_000_000, 50, 90,
            12, 8, rx)  # fmt: skip


def ev(device: int, seq: int, etype: int, rx: int = 1000) -> store.EventRow:
    return (device, seq, 1_700_000_000_000 + seq * 1000, etype, 52_000_000, 4_000_000, 1,
            12, 8, None, rx)  # fmt: skip


@pytest.fixture
def db(tmp_path: Path) -> Store:
    s = Store(tmp_path / "t.db")
    for i in (1, 2, 3):
        s.add_device(f"van-{i}", bytes(16), i)
    return s


def outbox(s: Store) -> list[tuple[str, int, int]]:
    return s.conn.execute("SELECT sink, device_id, seq FROM outbox ORDER BY id").fetchall()


def test_new_records_enter_each_sinks_outbox_in_seq_order_and_a_repeat_adds_nothing(
    db: Store,
) -> None:
    targets = [Target("a", Filter()), Target("b", Filter())]
    # One report: the event with seq 1 comes after positions 0 and 2 on the wire.
    saved = db.save(1, [pos(1, 0), pos(1, 2)], [ev(1, 1, ARRIVED)], 1000, targets)
    assert saved.new_records == 3
    assert outbox(db) == [("a", 1, 0), ("b", 1, 0), ("a", 1, 1), ("b", 1, 1),
                          ("a", 1, 2), ("b", 1, 2)]  # fmt: skip
    # The same report again, and one overlapping it: only seq 3 is new.
    db.save(1, [pos(1, 0), pos(1, 2)], [ev(1, 1, ARRIVED)], 2000, targets)
    db.save(1, [pos(1, 2), pos(1, 3)], [], 3000, targets)
    assert outbox(db)[6:] == [("a", 1, 3), ("b", 1, 3)]
    assert len(outbox(db)) == 8


def test_filters_decide_which_outboxes_a_record_enters(db: Store) -> None:
    targets = [
        Target("positions-only", Filter(events=())),
        Target("arrivals", Filter(events=("arrived",), positions=False)),
        Target("van-2-by-name", Filter(devices=("van-2",))),
        Target("van-1-by-id", Filter(devices=("1",))),
    ]
    for d in (1, 2):
        db.save(d, [pos(d, 0)], [ev(d, 1, ARRIVED), ev(d, 2, DEPARTED), ev(d, 3, STATUS)],
                1000, targets)  # fmt: skip
    got: dict[str, list[tuple[int, int]]] = {}
    for sink, d, seq in outbox(db):
        got.setdefault(sink, []).append((d, seq))
    assert got["positions-only"] == [(1, 0), (2, 0)]
    assert got["arrivals"] == [(1, 1), (2, 1)]
    assert got["van-2-by-name"] == [(2, 0), (2, 1), (2, 2), (2, 3)]
    assert got["van-1-by-id"] == [(1, 0), (1, 1), (1, 2), (1, 3)]


def test_a_report_that_fails_to_store_leaves_nothing_in_any_outbox(db: Store) -> None:
    db.conn.execute(
        "CREATE TRIGGER full BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    with pytest.raises(StoreError, match="disk full"):
        db.save(1, [pos(1, 0)], [ev(1, 1, ARRIVED)], 1000, [Target("a", Filter())])
    assert outbox(db) == []
    assert db.conn.execute("SELECT count(*) FROM positions").fetchone()[0] == 0
    # Once the store works again, the van's retry stores and queues both records.
    db.conn.execute("DROP TRIGGER full")
    db.save(1, [pos(1, 0)], [ev(1, 1, ARRIVED)], 2000, [Target("a", Filter())])
    assert outbox(db) == [("a", 1, 0), ("a", 1, 1)]


def register(s: Store, *sinks: SinkConfig) -> None:
    Outbox(s).register([(c, f"{c.type}://test") for c in sinks], 0)


def test_replay_queues_what_was_stored_since_t_in_stored_order_through_the_filter(
    db: Store,
) -> None:
    register(db, SinkConfig("ops", "webhook", filter=Filter(events=("arrived",))))
    db.save(2, [pos(2, 5, 1000)], [ev(2, 6, ARRIVED, 1000)], 1000)  # before T
    db.save(1, [pos(1, 0, 2000)], [ev(1, 1, ARRIVED, 2000), ev(1, 2, DEPARTED, 2000)], 2000)
    db.save(2, [pos(2, 7, 3000)], [ev(2, 8, ARRIVED, 3000)], 3000)
    box = Outbox(db)
    assert box.replay("ops", since_ms=2000) == (4, 0)
    # Stored order; the departed event is not one the sink takes; seq 5, 6 are older.
    assert outbox(db) == [("ops", 1, 0), ("ops", 1, 1), ("ops", 2, 7), ("ops", 2, 8)]
    # Pending records are not queued twice; --device and --until narrow it.
    assert box.replay("ops", since_ms=0) == (2, 4)
    assert outbox(db)[4:] == [("ops", 2, 5), ("ops", 2, 6)]
    db.conn.execute("DELETE FROM outbox")
    assert box.replay("ops", since_ms=0, until_ms=3000, device_id=2) == (2, 0)
    with pytest.raises(KeyError):
        box.replay("nope", since_ms=0)


SECRET = "whsec_" + base64.b64encode(bytes(32)).decode()
HOOK = (
    f'[[sink]]\ntype = "webhook"\nname = "ops"\nurl = "http://127.0.0.1:9/h"\nsecret = "{SECRET}"\n'
)


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ('[[sink]]\ntype = "kafka"\nname = "k"\n', "sink[0].type"),
        ('[[sink]]\ntype = "webhook"\nurl = "http://h"\n', "sink[0].name"),
        ('[[sink]]\ntype = "webhook"\nname = "ops"\nurl = "http://h"\n', "sink[0] (ops).secret"),
        (HOOK.replace("http://127.0.0.1:9/h", "ftp://h"), "sink[0] (ops).url"),
        (HOOK + "urll = 1\n", "sink[0] (ops): unknown key urll"),
        (HOOK + 'concurrency = "8"\n', "sink[0] (ops).concurrency"),
        (HOOK + "backoff_min_s = 0\n", "sink[0] (ops).backoff_min_s"),
        (HOOK + '[sink.filter]\nevents = ["arived"]\n', "sink[0] (ops).filter.events"),
        (HOOK + "[sink.filter]\nvans = []\n", "sink[0] (ops).filter: unknown key vans"),
        (HOOK + "[sink.filter]\npositions = 1\n", "sink[0] (ops).filter.positions"),
        (HOOK + HOOK, "sink[1].name: 'ops' is used by another sink"),
        ('[[sink]]\ntype = ["mqtt"]\nname = "b"\n', "sink[0].type"),
        ('[[sink]]\ntype = "mqtt"\nname = "b\\n"\nurl = "mqtt://h"\n', "sink[0].name"),
        (HOOK.replace("http://127.0.0.1:9/h", "http://[::1"), "sink[0] (ops).url"),
        (HOOK.replace("http://127.0.0.1:9/h", "http://h:0/"), "sink[0] (ops).url"),
        (HOOK + "timeout_s = nan\n", "sink[0] (ops).timeout_s"),
        (HOOK + "backoff_max_s = inf\n", "sink[0] (ops).backoff_max_s"),
        ('[[sink]]\ntype = "mqtt"\nname = "b"\nurl = "mqtt://h"\nqos = 0\n', "sink[0] (b).qos"),
        ('[[sink]]\ntype = "traccar"\nname = "t"\ndevice_id = "imei"\n', "(t).device_id"),
        ('[sink]\ntype = "mqtt"\n', "array of tables ([[sink]])"),
        ('[gateway]\nfleet = "a/b"\n', "gateway.fleet"),
        ("[metrics]\nport = -1\n", "metrics.port"),
    ],
)
def test_a_bad_sink_config_is_refused_at_start_naming_the_sink_and_key(
    tmp_path: Path, toml: str, named: str
) -> None:
    f = tmp_path / "gw.toml"
    f.write_text(toml)
    out = vantrack("gateway", "--config", str(f), "--bind", "127.0.0.1", cwd=tmp_path, timeout=20)
    assert out.returncode == 2, out.stderr
    assert named in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert out.stdout == ""


def test_sinks_of_every_type_load_in_file_order_with_their_filters(tmp_path: Path) -> None:
    f = tmp_path / "gw.toml"
    f.write_text(
        '[gateway]\nfleet = "north"\n'
        '[[sink]]\ntype = "mqtt"\nname = "broker"\nurl = "mqtts://mq.example:8883"\n'
        + HOOK
        + '[sink.filter]\ndevices = ["van-1", 7]\nevents = []\n'
        '[[sink]]\ntype = "traccar"\nname = "traccar"\nenabled = false\n'
    )
    cfg = config.load(f, {}, {})
    assert [(s.type, s.name) for s in cfg.sinks] == [
        ("mqtt", "broker"), ("webhook", "ops"), ("traccar", "traccar")
    ]  # fmt: skip
    assert cfg.sinks[1].filter == Filter(devices=("van-1", "7"), events=(), positions=True)
    assert cfg.sinks[0].filter == Filter() and not cfg.sinks[2].enabled
    assert cfg.gateway.fleet == "north"


def test_sinks_status_replay_and_enable_on_the_command_line(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    s = Store(db)
    s.add_device("van-1", bytes(16), 1)
    register(s, SinkConfig("ops", "webhook"), SinkConfig("old", "mqtt"))
    s.save(1, [pos(1, 0, 5000), pos(1, 1, 5000)], [], 5000, [Target("ops", Filter())])
    Outbox(s).failed("ops", "HTTP 503 from http://h", 6000)
    Outbox(s).disable("ops", "failing for 86400 s: HTTP 503 from http://h", 7000)
    # The gateway restarts without "old"; "ops" still points where it failed.
    Outbox(s).register([(SinkConfig("ops", "webhook"), "webhook://test")], 8000)
    s.close()
    table = vantrack("sinks", "status", "--db", str(db))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["sink", "type", "enabled", "pending"]
    assert lines[1].startswith("ops ") and "DISABLED 1970-01-01T00:00:07Z" in lines[1]
    assert " 2 " in lines[1] and "HTTP 503" in lines[1]
    assert lines[2].startswith("old ") and "no: not in the config" in lines[2]
    assert "vantrack sinks enable ops" in table.stdout
    out = vantrack("sinks", "enable", "ops", "--db", str(db))
    assert out.returncode == 0 and "2 pending will be delivered" in out.stdout
    assert vantrack("sinks", "status", "--db", str(db)).stdout.splitlines()[1].split()[2] == "yes"
    # Given a new address, a disabled sink starts afresh at the next gateway start.
    s = Store(db)
    Outbox(s).disable("ops", "failing", 9000)
    Outbox(s).register([(SinkConfig("ops", "webhook"), "webhook://test")], 9500)
    assert Outbox(s).disabled("ops")[0] == 9000
    Outbox(s).register([(SinkConfig("ops", "webhook"), "http://new.example/h")], 10000)
    assert Outbox(s).disabled("ops") == (None, None)
    s.close()
    out = vantrack("sinks", "replay", "nope", "--since", "1h", "--db", str(db))
    assert out.returncode == 1 and "no sink 'nope' (sinks: ops, old)" in out.stderr
    out = vantrack("sinks", "replay", "old", "--since", "1970-01-01T00:00:00Z", "--db", str(db))
    assert out.returncode == 0 and out.stdout.startswith("queued 2 records for old")


def test_a_seq_names_one_record_so_an_event_reusing_a_positions_seq_is_not_stored(
    db: Store,
) -> None:
    targets = [Target("all", Filter())]
    db.save(1, [pos(1, 5)], [], 1000, targets)
    saved = db.save(1, [], [ev(1, 5, ARRIVED)], 2000, targets)
    assert saved.new_records == 0
    assert db.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    # Within one report too: the position (first) is the record.
    saved = db.save(1, [pos(1, 6)], [ev(1, 6, ARRIVED), ev(1, 7, DEPARTED)], 3000, targets)
    assert saved.new_records == 2
    assert outbox(db) == [("all", 1, 5), ("all", 1, 6), ("all", 1, 7)]


def test_an_event_with_odd_extra_values_is_still_read_and_relayable_as_json(db: Store) -> None:
    import json

    import cbor2

    register(db, SinkConfig("ops", "webhook"))
    row = list(ev(1, 1, ARRIVED))
    row[9] = cbor2.dumps({7: b"\x01\x02", 8: 2**70, 9: cbor2.CBORTag(99, "x")})
    db.save(1, [], [tuple(row)], 1000, [Target("ops", Filter())])  # type: ignore[list-item]
    (got,) = Outbox(db).fetch("ops", 10, 10)
    assert got.record is not None and got.record.stop is None  # no such route version
    body = json.loads(json.dumps(got.record.to_json()))
    assert body["inside_s"] == "0102" and body["route_version"] == 2**70
