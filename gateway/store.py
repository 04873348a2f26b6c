"""The local store: devices, positions, events and routes in one SQLite database.

`Store` is the synchronous core, used directly by the command-line tools (`vantrack
devices`, `positions`, `events`) and, inside the gateway, only through `Writer`.

`Writer` gives the asyncio gateway a store that never blocks its event loop: one
dedicated thread (a single-worker executor) opens the connection and runs every
statement on it. Why a single owned thread and not `asyncio.to_thread` per call: SQLite
has one writer at a time anyway, so a pool would only add lock contention; a connection
used by exactly one thread needs no locking of our own (sqlite3's check_same_thread
stays on and proves it); and the commit order is the order the reports arrived.

Durability: WAL journal with synchronous=FULL. In WAL mode NORMAL can lose the last
commits on power loss or an OS crash (they are in the WAL but not yet fsynced), and the
gateway answers 2.04 only after the commit, upon which the van deletes the records: the
ack must mean "on disk". FULL fsyncs the WAL at every commit; `vantrack bench gateway`
shows the price. Each report is one transaction (BEGIN IMMEDIATE, so a lock held by
another process is met before any row is written, after `busy_timeout_ms`).

Records are keyed by (device_id, seq) and inserted with INSERT OR IGNORE: a repeated or
re-batched report stores only the records not seen before. Times are integers: device
(GPS) time and gateway receive time as Unix milliseconds UTC.

Routes (gateway/route.py) are stored per device as the CBOR the van fetches, its ETag and
the GeoJSON it came from. `route_history` keeps the CBOR of every version issued: the
van's events name fences by number within the route version they were decided under,
which may be older than the current one, and a number once issued is never reused (not
even after `route rm`), so a van never mistakes a new route for one it holds.
`vantrack route load` writes while the gateway runs (WAL, busy timeout); the gateway
reads the route per request, so the next fetch gets the new one.

Per-device reporting overrides (`vantrack devices reporting`) live in `reporting`, one
row per device holding only the values an operator set; they are read in the same
statement as the route version at the end of each report's transaction, so the ack
carries them with no extra round trip and a change applies to the next report.

The van's queue as the gateway sees it (`Store.queue()`, `vantrack devices list`): the
status records (event type 16) are found through a partial index on `events`; the
records delivered after the latest one through indexes on `received_ms`.

`Store.stops()` is the evidence per device and day (`vantrack stops`, docs/routes.md): a
query function, not an SQL VIEW, because an event's fence number means something only
through the CBOR of the route version it names (extra key 8), which SQLite cannot
decode; a view would need a decoded copy of every route kept in step with the CBOR.

It does not decode, authenticate or speak CoAP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from . import wire
from .route import decode as decode_route
from .route import etag as route_etag
from .sinks import Filter

# Type-specific event keys (docs/wire-format.md "7 and up"; firmware/report.py add_event).
EXTRA_VALUE = 7  # arrived: s inside; departed: dwell s; out_of_sequence: expected stop no.
EXTRA_ROUTE = 8  # the route version the fence number belongs to
SCHEMA_VERSION = 4  # 2: routes, route_history; 3: reporting, queue indexes; 4: outbox
STATUS = int(wire.EventType.STATUS)
MAX_DEVICE_ID = 0xFFFFFFFF
_INT64 = (-(2**63), 2**63 - 1)
UNIX_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS devices (
    id           INTEGER PRIMARY KEY,     -- the device id on the wire (report key 1)
    name         TEXT NOT NULL UNIQUE,
    key          BLOB NOT NULL,           -- 128-bit HMAC key (wire.mac)
    created_ms   INTEGER NOT NULL,        -- Unix ms UTC
    last_seen_ms INTEGER,                 -- gateway time of the last stored report
    last_seq     INTEGER                  -- highest seq stored
);
CREATE TABLE IF NOT EXISTS positions (
    device_id   INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    time_ms     INTEGER NOT NULL,         -- device (GPS) time, Unix ms UTC
    lat_e6      INTEGER NOT NULL,         -- microdegrees
    lon_e6      INTEGER NOT NULL,
    speed_dms   INTEGER,                  -- decimetres per second
    course_deg  INTEGER,
    hdop_x10    INTEGER,
    sats        INTEGER,
    received_ms INTEGER NOT NULL,         -- gateway time
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    device_id   INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    time_ms     INTEGER NOT NULL,
    type        INTEGER NOT NULL,         -- wire.EventType
    lat_e6      INTEGER,
    lon_e6      INTEGER,
    fence,                                -- stop or zone id: integer or text
    hdop_x10    INTEGER,
    sats        INTEGER,
    extra       BLOB,                     -- CBOR map of the type-specific keys, or NULL
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS routes (
    device_id   INTEGER PRIMARY KEY,
    version     INTEGER NOT NULL,         -- also in the CBOR and in report acks
    cbor        BLOB NOT NULL,            -- what GET /rt serves (gateway/route.cddl)
    etag        BLOB NOT NULL,            -- first 8 bytes of sha256(cbor)
    geojson     TEXT NOT NULL,            -- the file it was loaded from
    loaded_ms   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS route_history (
    device_id   INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    cbor        BLOB NOT NULL,            -- every version issued, current or not
    loaded_ms   INTEGER NOT NULL,
    PRIMARY KEY (device_id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reporting (
    device_id        INTEGER PRIMARY KEY, -- overrides pushed in report acks, NULL: the
    period_s         INTEGER,             -- van's own default (docs/wire-format.md)
    stopped_period_s INTEGER,
    distance_m       INTEGER,
    angle_deg        INTEGER,
    speed_delta_dms  INTEGER,             -- decimetres per second
    updated_ms       INTEGER NOT NULL
);
-- The van's queue (Store.queue): its status records, and what arrived after them.
CREATE INDEX IF NOT EXISTS events_status ON events (device_id, seq) WHERE type = {STATUS};
CREATE INDEX IF NOT EXISTS positions_received ON positions (device_id, received_ms);
CREATE INDEX IF NOT EXISTS events_received ON events (device_id, received_ms);
-- Relaying (gateway/outbox.py, docs/sinks.md): each configured sink, and its outbox.
CREATE TABLE IF NOT EXISTS sinks (
    name              TEXT PRIMARY KEY,
    type              TEXT NOT NULL,
    target            TEXT NOT NULL,       -- where it delivers, without secrets
    filter            TEXT NOT NULL,       -- JSON: what it takes (for `sinks replay`)
    configured        INTEGER NOT NULL,    -- 1: in the config the gateway last started with
    enabled           INTEGER NOT NULL,    -- 0: `enabled = false` in that config
    disabled_ms       INTEGER,             -- set: the relay gave up (failing too long, 410)
    disabled_reason   TEXT,
    failing_since_ms  INTEGER,             -- first failure since the last delivery
    last_error        TEXT,
    last_error_ms     INTEGER,
    delivered         INTEGER NOT NULL DEFAULT 0,
    last_delivered_ms INTEGER
);
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY,        -- the order records were stored in
    sink       TEXT NOT NULL,
    device_id  INTEGER NOT NULL,
    seq        INTEGER NOT NULL,           -- the record: positions or events (device_id, seq)
    created_ms INTEGER NOT NULL,           -- when it entered the outbox
    UNIQUE (sink, device_id, seq)
);
CREATE INDEX IF NOT EXISTS outbox_sink ON outbox (sink, id);
CREATE TABLE IF NOT EXISTS sink_latest (  -- newest device time relayed per sink and van
    sink      TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    time_ms   INTEGER NOT NULL,
    PRIMARY KEY (sink, device_id)
) WITHOUT ROWID;
"""

PositionRow = tuple[int, int, int, int, int, int | None, int | None, int | None, int | None, int]
EventRow = tuple[
    int, int, int, int, int | None, int | None, int | str | None, int | None, int | None,
    bytes | None, int,
]  # fmt: skip


class StoreError(Exception):
    """The store cannot do what was asked (locked, read-only, full, corrupt...)."""


class UnstorableReport(ValueError):
    """A verified report holding a value the store cannot keep (an integer beyond 64 bits)."""


def to_ms(t: dt.datetime) -> int:
    us = (t - UNIX_EPOCH) // dt.timedelta(microseconds=1)
    return (us + 500) // 1000


def from_ms(ms: int) -> dt.datetime:
    return UNIX_EPOCH + dt.timedelta(milliseconds=ms)


def now_ms() -> int:
    return to_ms(dt.datetime.now(dt.UTC))


def _int(name: str, v: int | None) -> int | None:
    if v is not None and not _INT64[0] <= v <= _INT64[1]:
        raise UnstorableReport(f"{name} {v} does not fit 64 bits")
    return v


def _uint(extra: bytes | None, key: int) -> int:
    """A non-negative integer under `key` of a stored extra map; 0 if absent or not one."""
    if extra is None:
        return 0
    try:
        v = cbor2.loads(extra).get(key)
    except (cbor2.CBORDecodeError, AttributeError, ValueError):
        return 0
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def report_rows(report: wire.Report, received_ms: int) -> tuple[list[PositionRow], list[EventRow]]:
    """The rows a report becomes. Raises UnstorableReport for values SQLite cannot hold
    (the CDDL leaves some integers unbounded)."""
    positions: list[PositionRow] = []
    events: list[EventRow] = []
    d = report.device_id
    for r in report.records:
        if isinstance(r, wire.Position):
            positions.append(
                (d, r.seq, to_ms(r.time), r.lat_e6, r.lon_e6, _int("speed", r.speed_dms),
                 r.course_deg, _int("hdop", r.hdop_x10), _int("sats", r.sats), received_ms)
            )  # fmt: skip
        else:
            fence = r.fence if isinstance(r.fence, str) else _int("fence", r.fence)
            try:
                extra = cbor2.dumps(r.extra, canonical=True) if r.extra else None
            except (cbor2.CBOREncodeError, TypeError, ValueError) as e:
                raise UnstorableReport(f"event extra keys: {e}") from None
            events.append(
                (d, r.seq, to_ms(r.time), r.type, _int("lat", r.lat_e6), _int("lon", r.lon_e6),
                 fence, _int("hdop", r.hdop_x10), _int("sats", r.sats), extra, received_ms)
            )  # fmt: skip
    return positions, events


@dataclass(frozen=True)
class Target:
    """A sink records are queued for as they are stored: its name and what it takes."""

    name: str
    filter: Filter


def new_rows(
    conn: sqlite3.Connection, device_id: int, positions: Sequence[PositionRow],
    events: Sequence[EventRow],
) -> tuple[list[PositionRow], list[EventRow]]:  # fmt: skip
    """The rows of a report not stored before: a seq names one record of a device, a
    position or an event, for good. Within the report the first row of a seq wins,
    positions before events (a van that numbers two records alike has a bug; the second
    is dropped, not stored beside the first)."""
    seqs = sorted({r[1] for r in positions} | {r[1] for r in events})
    if not seqs:
        return [], []
    marks = ",".join("?" * len(seqs))
    taken = {
        seq
        for (seq,) in conn.execute(
            f"SELECT seq FROM positions WHERE device_id = ? AND seq IN ({marks}) UNION"
            f" SELECT seq FROM events WHERE device_id = ? AND seq IN ({marks})",
            (device_id, *seqs, device_id, *seqs),
        )
    }
    new_positions, new_events = [], []
    for p in positions:
        if p[1] not in taken:
            taken.add(p[1])
            new_positions.append(p)
    for e in events:
        if e[1] not in taken:
            taken.add(e[1])
            new_events.append(e)
    return new_positions, new_events


def enqueue(
    conn: sqlite3.Connection, device_id: int, positions: Sequence[PositionRow],
    events: Sequence[EventRow], received_ms: int, targets: Sequence[Target],
) -> int:  # fmt: skip
    """Within the report's transaction: put its new records (`new_rows`) into the outbox
    of each target whose filter takes them, in seq order. Returns the outbox rows."""
    kinds: dict[int, int | None] = {r[1]: r[3] for r in events}  # seq -> event type
    kinds.update((r[1], None) for r in positions)
    name: str | None = None
    if any(t.filter.devices for t in targets):
        row = conn.execute("SELECT name FROM devices WHERE id = ?", (device_id,)).fetchone()
        name = None if row is None else row[0]
    rows = []
    for t in targets:
        if not t.filter.takes_device(device_id, name):
            continue
        for seq, etype in kinds.items():
            if t.filter.positions if etype is None else t.filter.takes_event(etype):
                rows.append((t.name, device_id, seq, received_ms))
    rows.sort(key=lambda r: r[2])  # seq order within the report, across sinks
    conn.executemany(
        "INSERT OR IGNORE INTO outbox (sink, device_id, seq, created_ms) VALUES (?, ?, ?, ?)",
        rows,
    )
    return len(rows)


@dataclass(frozen=True)
class Device:
    id: int
    name: str
    key: bytes
    created_ms: int
    last_seen_ms: int | None
    last_seq: int | None
    positions: int = 0
    events: int = 0
    last_fix_ms: int | None = None  # device time of the record with the highest seq
    queue: Queue | None = None  # None: the van never sent a status record


@dataclass(frozen=True)
class Queue:
    """The van's flash queue as its status records (event type 16) tell it."""

    status_seq: int  # the latest status record (highest seq)
    status_received_ms: int
    reported: int  # records waiting on the van when it wrote that status (key 9)
    delivered: int  # records older than it received after it
    dropped: int  # positions thinned out of the queue: key 7 summed over all status records

    @property
    def queued(self) -> int:
        """What the van holds now, as far as the gateway can tell."""
        return max(0, self.reported - self.delivered)


@dataclass(frozen=True)
class Reporting:
    """A device's reporting overrides; None: the van keeps its own default."""

    period_s: int | None = None  # minimum period while moving
    stopped_period_s: int | None = None  # period while stopped
    distance_m: int | None = None
    angle_deg: int | None = None  # heading change
    speed_delta_dms: int | None = None  # speed change, decimetres per second

    def set(self) -> dict[str, int]:
        """The values set, by field name."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


REPORTING_COLUMNS = tuple(f.name for f in dataclasses.fields(Reporting))


@dataclass(frozen=True)
class Saved:
    new_records: int  # records not stored before
    highest_seq: int | None  # highest seq now stored for the device
    route_version: int | None = None  # the device's current route, for the ack
    reporting: Reporting = Reporting()  # the device's overrides, for the ack


@dataclass(frozen=True)
class StoredRoute:
    device_id: int
    version: int
    cbor: bytes
    etag: bytes
    geojson: str
    loaded_ms: int


@dataclass(frozen=True)
class Query:
    device_id: int | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int | None = None


@dataclass(frozen=True)
class StopVisit:
    """One stop's evidence on one day. Times are Unix ms UTC; None where no event says."""

    seq: int | None  # planned order; None: a stop only in an earlier version that day
    stop_id: str
    window_start_ms: int | None
    window_end_ms: int | None
    arrived_ms: int | None  # first fix inside: the arrived event's time minus its key 7
    departed_ms: int | None  # when the van decided it had left (hold_s after the last
    # fix inside or near)
    dwell_s: int | None  # measured by the van: first fix inside to last fix inside or near
    out_of_sequence: bool  # an out_of_sequence event named it
    expected: str | None  # the stop the van expected instead, when out of sequence

    @property
    def visited(self) -> bool:
        return self.arrived_ms is not None


@dataclass(frozen=True)
class StopsDay:
    device_id: int
    since_ms: int  # the day: since_ms <= event time < until_ms
    until_ms: int
    version: int  # the route version whose stops are the plan
    versions: tuple[int, ...]  # the versions the day's events were decided under
    stops: list[StopVisit]  # the plan in seq order, then stops dropped from it that day
    unmapped: int  # stop events whose fence number no stored route version explains


class Store:
    """One connection to the database, used by one thread."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 2000) -> None:
        try:
            self.conn = sqlite3.connect(
                str(path), timeout=busy_timeout_ms / 1000, isolation_level=None
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            if self.conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                with self._transaction():
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            self.conn.execute(statement)
                    self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise StoreError(f"{path}: {e}") from None

    def close(self) -> None:
        self.conn.close()

    def _transaction(self) -> _Tx:
        return _Tx(self.conn)

    # ---- devices ---------------------------------------------------------------------
    def device(self, ref: int | str) -> Device | None:
        """A device by numeric id or by name."""
        col = "id" if isinstance(ref, int) else "name"
        row = self.conn.execute(
            f"SELECT id, name, key, created_ms, last_seen_ms, last_seq FROM devices "
            f"WHERE {col} = ?",
            (ref,),
        ).fetchone()
        return None if row is None else Device(*row)

    def device_key(self, device_id: int) -> bytes | None:
        try:
            row = self.conn.execute("SELECT key FROM devices WHERE id = ?", (device_id,)).fetchone()
        except sqlite3.Error as e:
            raise StoreError(str(e)) from None
        return None if row is None else bytes(row[0])

    def next_device_id(self) -> int:
        # Never reuse an id that still has records from a removed device.
        row = self.conn.execute(
            "SELECT max(coalesce((SELECT max(id) FROM devices), 0),"
            " coalesce((SELECT max(device_id) FROM positions), 0),"
            " coalesce((SELECT max(device_id) FROM events), 0))"
        ).fetchone()
        return int(row[0]) + 1

    def add_device(self, name: str, key: bytes, device_id: int | None = None) -> Device:
        try:
            with self._transaction():
                if device_id is None:
                    device_id = self.next_device_id()
                created = now_ms()
                self.conn.execute(
                    "INSERT INTO devices (id, name, key, created_ms) VALUES (?, ?, ?, ?)",
                    (device_id, name, key, created),
                )
        except sqlite3.IntegrityError as e:
            raise StoreError(f"device id {device_id} or name {name!r} already taken") from e
        except sqlite3.Error as e:
            raise StoreError(str(e)) from None
        return Device(device_id, name, key, created, None, None)

    def set_key(self, device_id: int, key: bytes) -> None:
        with self._transaction():
            self.conn.execute("UPDATE devices SET key = ? WHERE id = ?", (key, device_id))

    def remove_device(self, device_id: int) -> None:
        """Forget the device (its key, so its reports get 4.01) and its route (the stops'
        addresses); stored records stay."""
        with self._transaction():
            self.conn.execute("DELETE FROM devices WHERE id = ?", (device_id,))
            self.conn.execute("DELETE FROM routes WHERE device_id = ?", (device_id,))
            self.conn.execute("DELETE FROM route_history WHERE device_id = ?", (device_id,))
            self.conn.execute("DELETE FROM reporting WHERE device_id = ?", (device_id,))

    def devices(self) -> list[Device]:
        rows = self.conn.execute(
            "SELECT d.id, d.name, d.key, d.created_ms, d.last_seen_ms, d.last_seq,"
            " (SELECT count(*) FROM positions p WHERE p.device_id = d.id),"
            " (SELECT count(*) FROM events e WHERE e.device_id = d.id),"
            " coalesce((SELECT time_ms FROM positions p WHERE p.device_id = d.id"
            "  AND p.seq = d.last_seq), (SELECT time_ms FROM events e"
            "  WHERE e.device_id = d.id AND e.seq = d.last_seq))"
            " FROM devices d ORDER BY d.id"
        ).fetchall()
        return [
            Device(id_, name, key, created, seen, seq, n_pos, n_ev, fix, self.queue(id_))
            for id_, name, key, created, seen, seq, n_pos, n_ev, fix in rows
        ]

    def queue(self, device_id: int) -> Queue | None:
        """The van's queue from its status records, or None if it never sent one.

        The latest status S (highest seq) said the van held Q = key 9 records older than
        S; every record older than S that arrived after S was one of them (the van sends
        its backlog oldest first), so the van holds max(0, Q - those) now. Reads: S and
        the status records through the partial index `events_status`, the records
        received after S through the `*_received` indexes (records since S only). The
        partial index is named: without statistics SQLite would rather walk the primary
        key through every event of the device."""
        try:
            latest = self.conn.execute(
                f"SELECT seq, received_ms, extra FROM events INDEXED BY events_status"
                f" WHERE device_id = ? AND type = {STATUS} ORDER BY seq DESC LIMIT 1",
                (device_id,),
            ).fetchone()
            if latest is None:
                return None
            seq, received_ms, extra = latest
            delivered = self.conn.execute(
                "SELECT (SELECT count(*) FROM positions WHERE device_id = ?1"
                " AND received_ms > ?2 AND seq < ?3) + (SELECT count(*) FROM events"
                " WHERE device_id = ?1 AND received_ms > ?2 AND seq < ?3)",
                (device_id, received_ms, seq),
            ).fetchone()[0]
            extras = self.conn.execute(
                f"SELECT extra FROM events INDEXED BY events_status"
                f" WHERE device_id = ? AND type = {STATUS}",
                (device_id,),
            ).fetchall()
        except sqlite3.Error as e:
            raise StoreError(str(e)) from None
        dropped = sum(_uint(x, wire.StatusKey.DROPPED) for (x,) in extras)
        return Queue(seq, received_ms, _uint(extra, wire.StatusKey.QUEUED), delivered, dropped)

    # ---- reporting overrides ---------------------------------------------------------
    def reporting(self, device_id: int) -> Reporting:
        try:
            row = self.conn.execute(
                f"SELECT {', '.join(REPORTING_COLUMNS)} FROM reporting WHERE device_id = ?",
                (device_id,),
            ).fetchone()
        except sqlite3.Error as e:
            raise StoreError(str(e)) from None
        return Reporting() if row is None else Reporting(*row)

    def set_reporting(self, device_id: int, values: Reporting, *, reset: bool = False) -> Reporting:
        """Set the values given (others stay as they are, or go with `reset`); the result.
        Values are checked by the caller (the CLI); the ack sends them as they are."""
        given = values.set()
        cols = ", ".join(given)
        try:
            with self._transaction():
                if reset:
                    self.conn.execute("DELETE FROM reporting WHERE device_id = ?", (device_id,))
                if given:
                    self.conn.execute(
                        f"INSERT INTO reporting (device_id, {cols}, updated_ms)"
                        f" VALUES (?, {', '.join('?' * len(given))}, ?)"
                        " ON CONFLICT (device_id) DO UPDATE SET "
                        + ", ".join(f"{c} = excluded.{c}" for c in (*given, "updated_ms")),
                        (device_id, *given.values(), now_ms()),
                    )
                current = self.reporting(device_id)
        except sqlite3.Error as e:
            raise StoreError(str(e)) from None
        return current

    # ---- records ---------------------------------------------------------------------
    def save(
        self, device_id: int, positions: Sequence[PositionRow], events: Sequence[EventRow],
        received_ms: int, targets: Sequence[Target] = (),
    ) -> Saved:  # fmt: skip
        """Store one report's rows in one transaction, and put every record not stored
        before into the outbox of each target whose filter takes it (gateway/outbox.py);
        raises StoreError, having rolled back, if anything fails."""
        try:
            with self._transaction():
                positions, events = new_rows(self.conn, device_id, positions, events)
                if targets:
                    enqueue(self.conn, device_id, positions, events, received_ms, targets)
                before = self.conn.total_changes
                if positions:
                    self.conn.executemany(
                        "INSERT OR IGNORE INTO positions VALUES (?,?,?,?,?,?,?,?,?,?)", positions
                    )
                if events:
                    self.conn.executemany(
                        "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?)", events
                    )
                new = self.conn.total_changes - before
                highest = self.conn.execute(
                    "SELECT max(s) FROM (SELECT max(seq) AS s FROM positions WHERE device_id = ?1"
                    " UNION ALL SELECT max(seq) FROM events WHERE device_id = ?1)",
                    (device_id,),
                ).fetchone()[0]
                self.conn.execute(
                    "UPDATE devices SET last_seen_ms = ?, last_seq = ? WHERE id = ?",
                    (received_ms, highest, device_id),
                )
                # What the ack carries besides the seq, in one statement.
                route, *reporting = self.conn.execute(
                    "SELECT (SELECT version FROM routes WHERE device_id = ?1), "
                    + ", ".join(f"r.{c}" for c in REPORTING_COLUMNS)
                    + " FROM (SELECT 1) LEFT JOIN reporting r ON r.device_id = ?1",
                    (device_id,),
                ).fetchone()
        except sqlite3.Error as e:
            raise StoreError(str(e)) from None
        return Saved(new, highest, route, Reporting(*reporting))

    # ---- routes ----------------------------------------------------------------------
    def put_route(
        self, device_id: int, encode: Callable[[int], bytes], geojson: str
    ) -> StoredRoute:
        """Store a device's new route under the next version; `encode(version)` gives
        its CBOR. One transaction: the version is taken and used atomically."""
        try:
            with self._transaction():
                row = self.conn.execute(
                    "SELECT coalesce(max(version), 0) FROM route_history WHERE device_id = ?",
                    (device_id,),
                ).fetchone()
                version = int(row[0]) + 1
                payload = encode(version)
                stored = StoredRoute(
                    device_id, version, payload, route_etag(payload), geojson, now_ms()
                )
                self.conn.execute(
                    "INSERT OR REPLACE INTO routes VALUES (?, ?, ?, ?, ?, ?)",
                    (device_id, version, payload, stored.etag, geojson, stored.loaded_ms),
                )
                self.conn.execute(
                    "INSERT INTO route_history VALUES (?, ?, ?, ?)",
                    (device_id, version, payload, stored.loaded_ms),
                )
        except sqlite3.Error as e:
            raise StoreError(str(e)) from None
        return stored

    def route(self, device_id: int) -> StoredRoute | None:
        try:
            row = self.conn.execute(
                "SELECT device_id, version, cbor, etag, geojson, loaded_ms FROM routes"
                " WHERE device_id = ?",
                (device_id,),
            ).fetchone()
        except sqlite3.Error as e:
            raise StoreError(str(e)) from None
        if row is None:
            return None
        return StoredRoute(row[0], row[1], bytes(row[2]), bytes(row[3]), row[4], row[5])

    def route_version(self, device_id: int, version: int) -> bytes | None:
        """The CBOR of any version a device was given (to read the fences its events name)."""
        try:
            row = self.conn.execute(
                "SELECT cbor FROM route_history WHERE device_id = ? AND version = ?",
                (device_id, version),
            ).fetchone()
        except sqlite3.Error as e:
            raise StoreError(str(e)) from None
        return None if row is None else bytes(row[0])

    def fence_ids(self, device_id: int, version: int) -> list[str] | None:
        """Fence ids by number in a route version (depot 0, stops 1..n, zones after),
        or None if the device was never given that version."""
        payload = self.route_version(device_id, version)
        if payload is None:
            return None
        route = decode_route(payload)[1]
        return ["" if route.depot is None else route.depot.id] + [
            f.id for f in (*route.stops, *route.zones)
        ]

    def stops(self, device_id: int, since_ms: int, until_ms: int) -> StopsDay | None:
        """Planned stops against the van's events for one day [since_ms, until_ms).

        The plan is the highest route version the day's events were decided under, or,
        with no events, the last version loaded before the day ends; None if there is
        none. Each event maps its fence number through its own version (key 8), so a
        route replaced mid-day puts every event on the right stop, matched by stop id."""
        try:
            rows = self.conn.execute(
                "SELECT time_ms, type, fence, extra FROM events WHERE device_id = ?"
                " AND time_ms >= ? AND time_ms < ? AND type IN (?, ?, ?)"
                " ORDER BY time_ms, seq",
                (device_id, since_ms, until_ms, wire.EventType.ARRIVED,
                 wire.EventType.DEPARTED, wire.EventType.OUT_OF_SEQUENCE),
            ).fetchall()  # fmt: skip
            loaded = self.conn.execute(
                "SELECT max(version) FROM route_history WHERE device_id = ? AND loaded_ms < ?",
                (device_id, until_ms),
            ).fetchone()[0]
        except sqlite3.Error as e:
            raise StoreError(str(e)) from None
        events = [(t, ty, f, cbor2.loads(x) if x is not None else {}) for t, ty, f, x in rows]
        versions = sorted({x[EXTRA_ROUTE] for *_, x in events if EXTRA_ROUTE in x})
        plan_version = versions[-1] if versions else loaded
        if plan_version is None:
            return None
        plan_payload = self.route_version(device_id, plan_version)
        if plan_payload is None:
            return None
        plan = decode_route(plan_payload)[1].stops
        ids: dict[int, list[str] | None] = {}

        def fence_id(fence: int | str | None, version: int) -> str | None:
            if isinstance(fence, str):
                return fence
            if fence is None:
                return None
            if version not in ids:
                ids[version] = self.fence_ids(device_id, version)
            names = ids[version]
            return names[fence] if names is not None and 0 <= fence < len(names) else None

        arrived: dict[str, int] = {}
        departed: dict[str, tuple[int, int | None]] = {}
        late: dict[str, str | None] = {}
        order: list[str] = []  # stops named by events, in the order first named
        unmapped = 0
        for time_ms, etype, fence, extra in events:
            version = extra.get(EXTRA_ROUTE, plan_version)
            sid = fence_id(fence, version)
            if sid is None:
                unmapped += 1
                continue
            if sid not in order:
                order.append(sid)
            value = extra.get(EXTRA_VALUE)
            if etype == wire.EventType.ARRIVED:
                arrived.setdefault(sid, time_ms - 1000 * (value or 0))
            elif etype == wire.EventType.DEPARTED:
                departed.setdefault(sid, (time_ms, value))
            else:
                late.setdefault(sid, None if value is None else fence_id(value, version))

        def visit(seq: int | None, sid: str, ws: int | None, we: int | None) -> StopVisit:
            gone, dwell = departed.get(sid, (None, None))
            return StopVisit(
                seq, sid, ws, we, arrived.get(sid), gone, dwell, sid in late, late.get(sid)
            )

        def gps_ms(t: int | None) -> int | None:
            return None if t is None else to_ms(wire.gps_time(t))

        out = [visit(s.seq, s.id, gps_ms(s.window_start), gps_ms(s.window_end)) for s in plan]
        planned = {s.id for s in plan}
        out += [visit(None, sid, None, None) for sid in order if sid not in planned]
        return StopsDay(device_id, since_ms, until_ms, plan_version, tuple(versions), out, unmapped)

    def remove_route(self, device_id: int) -> StoredRoute | None:
        """Stop serving the device's route; it stays in the history. The removed one."""
        try:
            with self._transaction():
                old = self.route(device_id)
                self.conn.execute("DELETE FROM routes WHERE device_id = ?", (device_id,))
        except sqlite3.Error as e:
            raise StoreError(str(e)) from None
        return old

    def _where(self, q: Query) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if q.device_id is not None:
            clauses.append("device_id = ?")
            params.append(q.device_id)
        if q.since_ms is not None:
            clauses.append("time_ms >= ?")
            params.append(q.since_ms)
        if q.until_ms is not None:
            clauses.append("time_ms <= ?")
            params.append(q.until_ms)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        limit = ""
        if q.limit is not None:
            limit = " LIMIT ?"
            params.append(q.limit)
        return where + " ORDER BY device_id, time_ms, seq" + limit, params

    def positions(self, q: Query) -> Iterator[sqlite3.Row]:
        return self._rows("positions", q)

    def events(self, q: Query) -> Iterator[sqlite3.Row]:
        return self._rows("events", q)

    def _rows(self, table: str, q: Query) -> Iterator[sqlite3.Row]:
        # table is one of our two record tables, never user input.
        where, params = self._where(q)
        self.conn.row_factory = sqlite3.Row
        try:
            yield from self.conn.execute(
                "SELECT r.*, (SELECT name FROM devices d WHERE d.id = r.device_id) AS name"
                f" FROM {table} r" + where,
                params,
            )
        finally:
            self.conn.row_factory = None


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.Error:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass


class Writer:
    """The gateway's asynchronous handle on the store: one thread owns the connection."""

    def __init__(self, path: Path, *, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="store-writer"
        )
        self._local = threading.local()

    def _store(self) -> Store:
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = Store(self._path, busy_timeout_ms=self._busy_timeout_ms)
        return store

    async def _run(self, fn: str, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: getattr(self._store(), fn)(*args))

    async def open(self) -> None:
        """Open (and create or migrate) the database now, so a bad path fails at start."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._store)

    async def device_key(self, device_id: int) -> bytes | None:
        key: bytes | None = await self._run("device_key", device_id)
        return key

    async def save(
        self, device_id: int, positions: list[PositionRow], events: list[EventRow],
        received_ms: int, targets: Sequence[Target] = (),
    ) -> Saved:  # fmt: skip
        saved: Saved = await self._run("save", device_id, positions, events, received_ms, targets)
        return saved

    async def route(self, device_id: int) -> StoredRoute | None:
        """The device's route, read on the store's thread (routes are rare, small reads)."""
        route: StoredRoute | None = await self._run("route", device_id)
        return route

    async def close(self) -> None:
        """Finish the statements already queued, then close the connection."""

        def _close() -> None:
            store = getattr(self._local, "store", None)
            if store is not None:
                store.close()
                self._local.store = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=True)
