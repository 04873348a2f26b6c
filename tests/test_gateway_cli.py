"""The gateway's commands: configuration errors, the device registry, queries, decode."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest
from gateway_fixture import T0, add_device, positions, report, vantrack, vantrack_bytes

from vantrack.gateway import config, store, wire


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[gateway]\nprot = 5683\n", "gateway.prot"),
        ('[gateway]\nport = "5683"\n', "gateway.port"),
        ("[gateway]\nmax_report_bytes = true\n", "gateway.max_report_bytes"),
        ('[log]\nformat = "xml"\n', "log.format"),
        ("[gatway]\nport = 1\n", "[gatway]"),
        ("[gateway]\nport = 5683\nbind = \n", "line 3"),
        ("[gateway]\nport = 70000\n", "gateway.port"),
    ],
)
def test_bad_config_is_refused_at_start_with_exit_2_naming_the_key(
    tmp_path: Path, toml: str, named: str
) -> None:
    f = tmp_path / "gw.toml"
    f.write_text(toml)
    out = vantrack("gateway", "--config", str(f), "--bind", "127.0.0.1", cwd=tmp_path, timeout=20)
    assert out.returncode == 2
    assert named in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""


def test_unreadable_config_file_is_exit_2(tmp_path: Path) -> None:
    out = vantrack("devices", "list", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert out.returncode == 2 and "nope.toml" in out.stderr and "Traceback" not in out.stderr


def test_flags_override_the_file_and_the_file_overrides_the_environment(tmp_path: Path) -> None:
    f = tmp_path / "gw.toml"
    f.write_text('[gateway]\nport = 6000\ndb = "file.db"\n[log]\nformat = "json"\n')
    cfg = config.load(f, {"gateway.port": 7000, "gateway.bind": None}, {"VANTRACK_DB": "e.db"})
    assert (cfg.gateway.port, cfg.gateway.db, cfg.log.format) == (7000, Path("file.db"), "json")
    assert config.load(None, {}, {"VANTRACK_DB": "e.db"}).gateway.db == Path("e.db")
    assert config.load(None, {}, {}).gateway.db == Path("vantrack.db")


def test_example_config_loads() -> None:
    example = Path(__file__).parent.parent / "docs" / "gateway.example.toml"
    assert config.load(example, {}, {}) == config.Config()


def test_devices_add_writes_a_0600_credentials_file_and_never_prints_the_key(
    tmp_path: Path,
) -> None:
    db, creds = tmp_path / "t.db", tmp_path / "creds"
    out = vantrack("devices", "add", "van-07", "--db", str(db), "--credentials-dir", str(creds))
    assert out.returncode == 0, out.stderr
    path = creds / "van-07.json"
    data = json.loads(path.read_text())
    assert data["device_id"] == 1 and data["device_name"] == "van-07"
    key = bytes.fromhex(data["key"])
    assert len(key) == 16
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in out.stdout and data["key"] not in out.stdout + out.stderr
    # Adding it again reuses id and key; --new-key replaces the key.
    again = vantrack("devices", "add", "van-07", "--db", str(db), "--credentials-dir", str(creds))
    assert again.returncode == 0 and "exists" in again.stdout
    assert json.loads(path.read_text())["key"] == data["key"]
    path.chmod(0o644)
    new = vantrack("devices", "add", "van-07", "--new-key", "--db", str(db),
                   "--credentials-dir", str(creds))  # fmt: skip
    assert new.returncode == 0 and "new key" in new.stdout
    assert json.loads(path.read_text())["key"] != data["key"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Ids: next free unless given; taken ids and names are refused.
    assert add_device(db, "van-08", creds).id == 2
    assert add_device(db, "van-42", creds, "--id", "42").id == 42
    taken = vantrack("devices", "add", "van-43", "--id", "42", "--db", str(db),
                     "--credentials-dir", str(creds))  # fmt: skip
    assert taken.returncode == 1 and "taken" in taken.stderr


def test_devices_list_and_remove_keep_the_positions(tmp_path: Path) -> None:
    db, creds = tmp_path / "t.db", tmp_path / "creds"
    dev = add_device(db, "van-1", creds)
    add_device(db, "van-2", creds)
    s = store.Store(db)
    rows = store.report_rows(wire.decode(report(dev, 7, 4)), store.now_ms())
    assert s.save(dev.id, *rows, received_ms=store.now_ms()).highest_seq == 10
    s.close()
    table = vantrack("devices", "list", "--db", str(db))
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["id", "name", "created", "last", "seen", "last", "fix", "last",
                                "seq", "positions", "events", "queued", "dropped"]  # fmt: skip
    assert lines[1].split()[:2] == ["1", "van-1"]
    assert lines[1].split()[-5:] == ["10", "4", "0", "-", "-"]
    js = [
        json.loads(x)
        for x in vantrack("devices", "list", "--json", "--db", str(db)).stdout.splitlines()
    ]
    assert [(d["device_name"], d["last_seq"], d["positions"]) for d in js] == [
        ("van-1", 10, 4), ("van-2", None, 0)]  # fmt: skip
    out = vantrack("devices", "remove", "1", "--db", str(db))
    assert out.returncode == 0 and "4 positions" in out.stdout
    assert vantrack("devices", "remove", "van-1", "--db", str(db)).returncode == 1
    remaining = vantrack("devices", "list", "--json", "--db", str(db)).stdout
    assert "van-1" not in remaining
    pos = vantrack("positions", "--db", str(db)).stdout.splitlines()
    assert len(pos) == 5 and pos[1].startswith("#1 ")
    # A new device never takes the id that still has records.
    assert add_device(db, "van-3", creds).id == 3


def _filled(tmp_path: Path) -> Path:
    db, creds = tmp_path / "q.db", tmp_path / "creds"
    a, b = add_device(db, "van-a", creds), add_device(db, "van-b", creds)
    s = store.Store(db)
    # Records are numbered from the report's seq on, the event last: van-a's second
    # report starts after its first one's event (a seq names one record for good).
    for dev, seq in ((a, 0), (b, 0), (a, 11)):
        recs = positions(dev.id, seq, 10, T0 + seq * 60)
        recs.append(wire.Event(seq + 10, wire.gps_time(T0 + seq * 60 + 10), 2, fence="s1"))
        r = wire.decode(wire.encode(dev.id, seq, T0 + seq * 60, recs, dev.key))
        s.save(dev.id, *store.report_rows(r, store.now_ms()), received_ms=store.now_ms())
    s.close()
    return db


def test_positions_filters_and_json(tmp_path: Path) -> None:
    db = _filled(tmp_path)

    def q(*args: str) -> list[dict[str, object]]:
        out = vantrack("positions", "--json", "--db", str(db), *args)
        assert out.returncode == 0, out.stderr
        return [json.loads(x) for x in out.stdout.splitlines()]

    everything = q()
    assert len(everything) == 30
    assert [(p["device_name"], p["seq"]) for p in everything][:11][-2:] == [
        ("van-a", 9), ("van-a", 11)]  # fmt: skip
    assert [p["device_name"] for p in everything] == ["van-a"] * 20 + ["van-b"] * 10
    assert len(q("--device", "van-b")) == 10 and len(q("--device", "2")) == 10
    since = wire.gps_time(T0 + 600).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert {p["seq"] for p in q("--since", since)} == set(range(11, 21))
    until = wire.gps_time(T0 + 4).isoformat()
    assert [p["seq"] for p in q("--until", until, "--device", "van-a")] == [0, 1, 2, 3, 4]
    assert len(q("--limit", "3")) == 3
    assert q("--since", "1h") == []  # device times are in 2025
    assert len(q("--since", "100000d")) == 30
    table = vantrack("positions", "--db", str(db), "--limit", "2").stdout.splitlines()
    assert table[0].split()[:3] == ["device", "seq", "time"] and len(table) == 3
    bad = vantrack("positions", "--since", "yesterday", "--db", str(db))
    assert bad.returncode == 1 and "yesterday" in bad.stderr
    unknown = vantrack("positions", "--device", "van-z", "--db", str(db))
    assert unknown.returncode == 1 and "van-z" in unknown.stderr


def test_events_query(tmp_path: Path) -> None:
    db = _filled(tmp_path)
    out = vantrack("events", "--json", "--db", str(db), "--device", "van-a")
    got = [json.loads(x) for x in out.stdout.splitlines()]
    assert [(e["seq"], e["event"], e["fence"]) for e in got] == [
        (10, "arrived", "s1"), (21, "arrived", "s1")]  # fmt: skip
    table = vantrack("events", "--db", str(db)).stdout.splitlines()
    assert len(table) == 4 and "arrived" in table[1]


def test_decode_prints_diagnostic_and_fields(tmp_path: Path) -> None:
    dev = add_device(tmp_path / "d.db", "van-d", tmp_path / "creds")
    recs = positions(dev.id, 5, 2) + [wire.Event(7, wire.gps_time(T0 + 3), 3, extra={7: 120})]
    payload = wire.encode(dev.id, 5, T0, recs, dev.key)
    out = vantrack("decode", payload.hex())
    assert out.returncode == 0, out.stderr
    assert "0: 1," in out.stdout.replace(":1", ": 1") and "h'" in out.stdout
    assert f"device {dev.id}  seq 5..7  (3 records)" in out.stdout
    assert "t0 800000000 = 2025-05-08T06:13:20Z" in out.stdout
    assert "2025-05-08T06:13:20.0Z  position 41.390000 2.170000  18.0 km/h" in out.stdout
    assert "departed" in out.stdout and "'7': 120" in out.stdout
    # stdin: raw bytes or hex text; --verify checks the MAC against the registry.
    raw = vantrack_bytes("decode", "-", "--verify", "--db", str(tmp_path / "d.db"), stdin=payload)
    assert raw.returncode == 0 and b"mac: ok" in raw.stdout
    hexed = vantrack_bytes("decode", "-", stdin=payload.hex().encode() + b"\n")
    assert hexed.returncode == 0 and b"seq 5..7" in hexed.stdout


@pytest.mark.parametrize(
    ("payload", "reason"),
    [("1cfe", "not_cbor"), ("a10001", "schema"), ("", "empty"), ("zz", "hex")],
)
def test_decode_of_garbage_is_a_clear_error_exit_1(payload: str, reason: str) -> None:
    out = vantrack("decode", payload)
    assert out.returncode == 1 and reason in out.stderr and "Traceback" not in out.stderr


def test_store_schema_is_wal_and_keyed_by_device_and_seq(tmp_path: Path) -> None:
    store.Store(tmp_path / "s.db").close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        pk = [r[1] for r in conn.execute("PRAGMA table_info(positions)") if r[5]]
        assert pk == ["device_id", "seq"]
