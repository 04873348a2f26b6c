"""Relaying stored records to the sinks, from a durable outbox per sink (docs/sinks.md).

The report's transaction (store.Store.save, store.enqueue) puts each new record into the
`outbox` table of every enabled sink whose filter takes it, so a record is either stored
and queued for every sink or neither: a crash between the two cannot lose a relay. The
outbox holds keys only (sink, device, seq); the record is read from `positions` or
`events` when it is sent.

One `Relay` task per sink reads its outbox oldest first and hands the records to the
sink (gateway/sinks/base.py: one device's records one at a time in stored order, devices
concurrently). A row is deleted once `Sink.send()` returned, so delivery is at least
once, in order per device, and survives restarts: whatever was pending is pending when
the gateway starts again. Failures back off exponentially, capped:

- if every device tried in a round failed (the backend is down), the whole sink waits;
- if only some failed (a backend refusing one van), only those devices wait, and the
  others go on; a device waiting is left out of the next reads, so it cannot fill them.

A sink failing for `retry_for_s` (24 h) without one delivery, or told by its backend that
it is gone (HTTP 410), is disabled: logged, shown by `vantrack sinks status`, its outbox
still filled and kept until `vantrack sinks enable NAME`. `vantrack sinks replay` puts
stored records into an outbox again. Both are other processes: a relay reads its sink's
state from the database while it waits.

The outbox's reads and deletes run on their own thread and connection (`OutboxThread`),
not the store writer's, so relaying never delays a report's commit beyond SQLite's own
write lock. That connection commits with synchronous=NORMAL: a delete lost in a power
cut means a record sent again, which receivers deduplicate by key; the records and
outbox rows themselves are written by the writer, with FULL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from .log import emit
from .sinks import SKIPPED, Record, Sink, SinkConfig, SinkConfigError, SinkError, sink_class
from .store import EXTRA_ROUTE, Store, StoreError, Target, now_ms

log = logging.getLogger("vantrack.gateway.outbox")

POLL_S = 1.0  # how often an idle relay looks for rows a CLI replay added, or an enable
STATUS_EVERY_S = 2.0  # how often a relay counts its pending rows (metrics, status)
MAX_ERROR = 300  # characters of an error kept in the sinks table
REPLAY_CHUNK = 2000  # outbox rows per transaction of a replay
CRASH_RESTART_S = 10.0  # a relay that crashed (a bug) starts again after this


class SinkStartError(Exception):
    """A sink that cannot start with its settings (a password file unreadable...)."""


@dataclass(frozen=True)
class Row:
    """An outbox row with its record, as read for delivery."""

    id: int
    record: Record | None  # None: the record is not in the store (nothing to send)


@dataclass(frozen=True)
class SinkState:
    """One sink as `vantrack sinks status` shows it."""

    name: str
    type: str
    target: str
    configured: bool  # in the config the gateway last started with
    enabled: bool  # not `enabled = false` there
    disabled_ms: int | None  # the relay gave up at that time...
    disabled_reason: str | None  # ...for this reason
    failing_since_ms: int | None
    last_error: str | None
    last_error_ms: int | None
    delivered: int
    last_delivered_ms: int | None
    pending: int
    oldest_pending_ms: int | None  # when the oldest pending row entered the outbox

    @property
    def active(self) -> bool:
        """Relaying now (or will as soon as the gateway runs)."""
        return self.configured and self.enabled and self.disabled_ms is None


def filter_json(cfg: SinkConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg.filter), sort_keys=True)


def target_of(cfg: SinkConfig) -> Target:
    return Target(cfg.name, cfg.filter)


class Outbox:
    """The outbox's SQL on one Store connection (relays and the CLI)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.conn
        self._fences: dict[tuple[int, int], list[str] | None] = {}

    def _tx(self) -> Any:
        return self.store._transaction()

    # ---- the sinks table -------------------------------------------------------------
    def register(self, sinks: Sequence[tuple[SinkConfig, str]], at_ms: int) -> None:
        """Record the configured sinks (config, target) at gateway start; sinks no
        longer configured stay, with their outboxes, marked so."""
        try:
            with self._tx():
                self.conn.execute("UPDATE sinks SET configured = 0")
                for cfg, target in sinks:
                    self.conn.execute(
                        "INSERT INTO sinks (name, type, target, filter, configured, enabled)"
                        " VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (name) DO UPDATE SET"
                        # A sink disabled for failing, given a new target, starts afresh.
                        " disabled_ms = CASE WHEN target = excluded.target AND type ="
                        " excluded.type THEN disabled_ms END,"
                        " disabled_reason = CASE WHEN target = excluded.target AND type ="
                        " excluded.type THEN disabled_reason END,"
                        " type = excluded.type, target = excluded.target,"
                        " filter = excluded.filter, configured = 1, enabled = excluded.enabled",
                        (cfg.name, cfg.type, target, filter_json(cfg), int(cfg.enabled)),
                    )
        except sqlite3.Error as e:
            raise StoreError(str(e)) from None

    def disabled(self, name: str) -> tuple[int | None, str | None]:
        row = self.conn.execute(
            "SELECT disabled_ms, disabled_reason FROM sinks WHERE name = ?", (name,)
        ).fetchone()
        return (None, None) if row is None else (row[0], row[1])

    def disable(self, name: str, reason: str, at_ms: int) -> None:
        with self._tx():
            self.conn.execute(
                "UPDATE sinks SET disabled_ms = ?, disabled_reason = ? WHERE name = ?",
                (at_ms, reason[:MAX_ERROR], name),
            )

    def enable(self, name: str) -> bool:
        """Clear a disabled sink (and its failure streak); False if there is no such sink."""
        try:
            with self._tx():
                cur = self.conn.execute(
                    "UPDATE sinks SET disabled_ms = NULL, disabled_reason = NULL,"
                    " failing_since_ms = NULL WHERE name = ?",
                    (name,),
                )
        except sqlite3.Error as e:
            raise StoreError(str(e)) from None
        return cur.rowcount > 0

    def failed(self, name: str, error: str, at_ms: int, streak: bool = True) -> int:
        """Note a failure; returns when the current failure streak began (the backend
        failing: `streak`; a van refused keeps only the error)."""
        with self._tx():
            self.conn.execute(
                "UPDATE sinks SET last_error = ?2, last_error_ms = ?1,"
                " failing_since_ms = CASE WHEN ?4 THEN coalesce(failing_since_ms, ?1)"
                " ELSE failing_since_ms END WHERE name = ?3",
                (at_ms, error[:MAX_ERROR], name, streak),
            )
            row = self.conn.execute(
                "SELECT failing_since_ms FROM sinks WHERE name = ?", (name,)
            ).fetchone()
        return int(row[0]) if row is not None and row[0] is not None else at_ms

    # ---- rows ------------------------------------------------------------------------
    def fetch(
        self, name: str, limit: int, per_device: int, skip_devices: Sequence[int] = ()
    ) -> list[Row]:
        """The oldest rows of a sink's outbox with their records: at most `per_device`
        of any device (so one device's long backlog cannot fill the read), leaving out
        devices that wait after a failure."""
        skip, params = "", [name]
        if skip_devices:
            skip = " AND device_id NOT IN (SELECT value FROM json_each(?))"
            params.append(json.dumps(list(skip_devices)))
        chosen: list[int] = []
        taken: dict[int, int] = {}
        after = -1
        for _ in range(8):  # pages of keys, oldest first
            page = self.conn.execute(
                f"SELECT id, device_id FROM outbox WHERE sink = ? AND id > ?{skip}"
                " ORDER BY id LIMIT ?",
                (params[0], after, *params[1:], 4 * limit),
            ).fetchall()
            for oid, d in page:
                if taken.get(d, 0) < per_device:
                    taken[d] = taken.get(d, 0) + 1
                    chosen.append(oid)
                    if len(chosen) == limit:
                        break
            if len(page) < 4 * limit or len(chosen) == limit:
                break
            after = page[-1][0]
        if not chosen:
            return []
        rows = self.conn.execute(
            "SELECT o.id, o.device_id, o.seq, d.name,"
            " p.time_ms, p.received_ms, p.lat_e6, p.lon_e6, p.speed_dms, p.course_deg,"
            " p.hdop_x10, p.sats,"
            " e.time_ms, e.received_ms, e.lat_e6, e.lon_e6, e.hdop_x10, e.sats, e.type,"
            " e.fence, e.extra"
            " FROM outbox o"
            " LEFT JOIN positions p ON p.device_id = o.device_id AND p.seq = o.seq"
            " LEFT JOIN events e ON e.device_id = o.device_id AND e.seq = o.seq"
            " LEFT JOIN devices d ON d.id = o.device_id"
            " WHERE o.id IN (SELECT value FROM json_each(?)) ORDER BY o.id",
            (json.dumps(chosen),),
        ).fetchall()
        return [Row(r[0], self._record(r)) for r in rows]

    def _record(self, r: tuple[Any, ...]) -> Record | None:
        oid, device_id, seq, name = r[:4]
        name = name or str(device_id)
        if r[4] is not None:
            t, rx, lat, lon, speed, course, hdop, sats = r[4:12]
            return Record(device_id, name, seq, t, rx, lat, lon, speed, course, hdop, sats)
        if r[12] is None:
            return None
        t, rx, lat, lon, hdop, sats, etype, fence, extra = r[12:21]
        try:  # written by the store (canonical CBOR of a map), so this cannot fail...
            x = {} if extra is None else dict(cbor2.loads(extra))
        except (cbor2.CBORDecodeError, TypeError, ValueError):  # ...unless edited by hand
            x = {}
        return Record(
            device_id, name, seq, t, rx, lat, lon, None, None, hdop, sats, etype, fence,
            self._stop(device_id, fence, x.get(EXTRA_ROUTE)), x,
        )  # fmt: skip

    def _stop(self, device_id: int, fence: Any, version: Any) -> str | None:
        """A fence number's id through the route version the event names."""
        if isinstance(fence, str):
            return fence
        if not isinstance(fence, int) or not isinstance(version, int):
            return None
        if not 0 <= version < 2**63:  # the CDDL leaves extra values unbounded
            return None
        key = (device_id, version)
        if key not in self._fences:
            if len(self._fences) > 1024:
                self._fences.clear()
            self._fences[key] = self.store.fence_ids(device_id, version)
        ids = self._fences[key]
        return ids[fence] if ids is not None and 0 <= fence < len(ids) and ids[fence] else None

    def done(
        self, name: str, delivered: Sequence[int], other: Sequence[int],
        latest: dict[int, int], at_ms: int,
    ) -> None:  # fmt: skip
        """Rows that leave the outbox: `delivered` (counted, and they end the failure
        streak) and `other` (skipped by the sink, or whose record is gone); keep the
        newest device time given per device."""
        with self._tx():
            self.conn.executemany(
                "DELETE FROM outbox WHERE id = ?", [(i,) for i in (*delivered, *other)]
            )
            if delivered:
                self.conn.execute(
                    "UPDATE sinks SET delivered = delivered + ?, last_delivered_ms = ?,"
                    " failing_since_ms = NULL WHERE name = ?",
                    (len(delivered), at_ms, name),
                )
            self.conn.executemany(
                "INSERT INTO sink_latest VALUES (?, ?, ?) ON CONFLICT (sink, device_id)"
                " DO UPDATE SET time_ms = max(time_ms, excluded.time_ms)",
                [(name, d, t) for d, t in latest.items()],
            )

    def latest(self, name: str) -> dict[int, int]:
        return dict(
            self.conn.execute("SELECT device_id, time_ms FROM sink_latest WHERE sink = ?", (name,))
        )

    def pending(self, name: str) -> tuple[int, int | None]:
        """(rows pending, when the oldest entered the outbox)."""
        n, oldest = self.conn.execute(
            "SELECT count(*), min(created_ms) FROM outbox WHERE sink = ?", (name,)
        ).fetchone()
        return int(n), oldest

    # ---- the CLI ---------------------------------------------------------------------
    def status(self) -> list[SinkState]:
        try:
            rows = self.conn.execute(
                "SELECT s.name, s.type, s.target, s.configured, s.enabled, s.disabled_ms,"
                " s.disabled_reason, s.failing_since_ms, s.last_error, s.last_error_ms,"
                " s.delivered, s.last_delivered_ms,"
                " (SELECT count(*) FROM outbox o WHERE o.sink = s.name),"
                " (SELECT min(created_ms) FROM outbox o WHERE o.sink = s.name)"
                " FROM sinks s ORDER BY s.configured DESC, s.name"
            ).fetchall()
        except sqlite3.Error as e:
            raise StoreError(str(e)) from None
        return [
            SinkState(r[0], r[1], r[2], bool(r[3]), bool(r[4]), *r[5:])
            for r in rows  # fmt: skip
        ]

    def replay(
        self, name: str, since_ms: int, until_ms: int | None = None,
        device_id: int | None = None,
    ) -> tuple[int, int]:  # fmt: skip
        """Queue again, for one sink, the records stored (received) since `since_ms`
        that its filter takes, in the order they were stored. Returns (queued, already
        pending). Raises KeyError for an unknown sink."""
        try:
            row = self.conn.execute("SELECT filter FROM sinks WHERE name = ?", (name,)).fetchone()
        except sqlite3.Error as e:
            raise StoreError(str(e)) from None
        if row is None:
            raise KeyError(name)
        f = json.loads(row[0])
        where = "received_ms >= ?"
        params: list[Any] = [since_ms]
        if until_ms is not None:
            where += " AND received_ms < ?"
            params.append(until_ms)
        if device_id is not None:
            where += " AND device_id = ?"
            params.append(device_id)
        events = ""
        if f["events"] is not None:
            from . import wire

            types = [t for t in wire.EventType if wire.event_name(t) in f["events"]]
            events = f" AND type IN ({','.join(str(int(t)) for t in types) or 'NULL'})"
        parts = []
        if f["positions"]:
            parts.append(f"SELECT device_id, seq, received_ms FROM positions WHERE {where}")
        parts.append(f"SELECT device_id, seq, received_ms FROM events WHERE {where}{events}")
        query = " UNION ALL ".join(parts) + " ORDER BY received_ms, device_id, seq"
        now = now_ms()
        devices = set(f["devices"])
        try:
            names: dict[int, str] = dict(self.conn.execute("SELECT id, name FROM devices"))
            # Read first, then insert in short transactions: the gateway keeps storing
            # reports meanwhile (it waits for the write lock at most busy_timeout_ms).
            found = [
                (name, d, s, now)
                for d, s, _ in self.conn.execute(query, params * len(parts))
                if not devices or str(d) in devices or names.get(d) in devices
            ]
            queued = 0
            for i in range(0, len(found), REPLAY_CHUNK):
                with self._tx():
                    before = self.conn.total_changes
                    self.conn.executemany(
                        "INSERT OR IGNORE INTO outbox (sink, device_id, seq, created_ms)"
                        " VALUES (?, ?, ?, ?)",
                        found[i : i + REPLAY_CHUNK],
                    )
                    queued += self.conn.total_changes - before
        except sqlite3.Error as e:
            raise StoreError(str(e)) from None
        return queued, len(found) - queued


class OutboxThread:
    """The relays' handle on the outbox: one thread owns its connection."""

    def __init__(self, path: Path, *, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="outbox"
        )
        self._local = threading.local()

    def _outbox(self) -> Outbox:
        box: Outbox | None = getattr(self._local, "outbox", None)
        if box is None:
            store = Store(self._path, busy_timeout_ms=self._busy_timeout_ms)
            store.conn.execute("PRAGMA synchronous=NORMAL")
            box = self._local.outbox = Outbox(store)
        return box

    async def call(self, fn: str, *args: Any) -> Any:
        loop = asyncio.get_running_loop()

        def run() -> Any:
            try:
                return getattr(self._outbox(), fn)(*args)
            except sqlite3.Error as e:
                raise StoreError(str(e)) from None

        return await loop.run_in_executor(self._executor, run)

    async def close(self) -> None:
        def _close() -> None:
            box = getattr(self._local, "outbox", None)
            if box is not None:
                box.store.close()
                self._local.outbox = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=True)


@dataclass
class RelayStats:
    """What a relay reports (metrics, logs); pending figures as of the last count."""

    delivered: int = 0
    failures: int = 0
    pending: int = 0
    oldest_pending_ms: int | None = None
    disabled: bool = False
    crashed: bool = False  # waiting to start again after a crash (a bug)
    lag_ms: int = 0  # store to delivery, of the last record delivered


def backoff_s(cfg: SinkConfig, failures: int) -> float:
    """Wait after `failures` failures in a row: min * 2^(n-1), capped at max."""
    return float(min(cfg.backoff_max_s, cfg.backoff_min_s * 2 ** min(failures - 1, 30)))


class Relay:
    """One sink's delivery loop."""

    def __init__(self, sink: Sink, box: OutboxThread) -> None:
        self.sink = sink
        self.cfg = sink.cfg
        self.name = sink.cfg.name
        self.box = box
        self.wake = asyncio.Event()  # set when new records are stored
        self.stats = RelayStats()
        self._failures = 0  # rounds in a row in which every device failed
        self._device_failures: dict[int, int] = {}
        self._waiting: dict[int, float] = {}  # device -> monotonic time it may try again
        self._latest: dict[int, int] = {}
        self._counted = 0.0

    async def run(self) -> None:
        """Deliver until cancelled (the sink was started by `Relays.start`)."""
        self._latest = await self.box.call("latest", self.name)
        disabled_ms, _ = await self.box.call("disabled", self.name)
        self.stats.disabled = disabled_ms is not None
        while True:
            try:
                await self._step()
            except StoreError as e:  # the database locked or gone: try again later
                emit(log, "relay_store_error", logging.WARNING, sink=self.name, detail=str(e))
                await asyncio.sleep(backoff_s(self.cfg, 3))

    async def _count(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._counted >= STATUS_EVERY_S:
            self._counted = now
            self.stats.pending, self.stats.oldest_pending_ms = await self.box.call(
                "pending", self.name
            )

    async def _sleep(self, seconds: float) -> None:
        """Wait that long, or until new records are stored (since the last read)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)

    async def _step(self) -> None:
        await self._count()
        if self.stats.disabled:
            disabled_ms, _ = await self.box.call("disabled", self.name)
            if disabled_ms is not None:
                await asyncio.sleep(POLL_S)
                return
            self.stats.disabled = False
            self._failures = 0
            emit(log, "sink_enabled", sink=self.name)
        now = time.monotonic()
        for d in [d for d, t in self._waiting.items() if t <= now]:
            del self._waiting[d]
        self.wake.clear()  # before the read: a record stored after it sets it again
        per_device = max(1, self.cfg.batch // self.cfg.concurrency)
        rows: list[Row] = await self.box.call(
            "fetch", self.name, self.cfg.batch, per_device, list(self._waiting)
        )
        if not rows:
            if not self._waiting:  # nothing pending at the read
                self.stats.pending, self.stats.oldest_pending_ms = 0, None
            soonest = min(self._waiting.values(), default=now + POLL_S)
            await self._sleep(max(0.01, min(POLL_S, soonest - now)))
            return
        await self._deliver(rows)

    async def _deliver(self, rows: list[Row]) -> None:
        by_device: dict[int, list[Row]] = {}
        gone: list[int] = []  # rows whose record is not in the store
        for row in rows:
            if row.record is None:
                gone.append(row.id)
            else:
                by_device.setdefault(row.record.device_id, []).append(row)
        limit = asyncio.Semaphore(self.cfg.concurrency)
        delivered: list[int] = []
        skipped: list[int] = []  # records the backend has no use for (Sink.SKIPPED)
        latest: dict[int, int] = {}
        errors: dict[int, SinkError] = {}

        async def device(d: int, mine: list[Row]) -> None:
            async with limit:
                for row in mine:
                    r = row.record
                    assert r is not None
                    is_latest = r.lat_e6 is not None and r.time_ms >= self._latest.get(d, -1)
                    if is_latest:
                        r = dataclasses.replace(r, latest=True)
                    try:
                        # A bound on a sink that overruns its own timeout_s (no extra task).
                        async with asyncio.timeout(self.cfg.timeout_s + 5):
                            outcome = await self.sink.send(r)
                    except SinkError as e:
                        errors[d] = e
                        return
                    except TimeoutError:
                        errors[d] = SinkError(f"no answer in {self.cfg.timeout_s + 5:g} s")
                        return
                    except Exception as e:  # a bug in the sink, or a record it chokes on
                        emit(
                            log, "sink_bug", logging.ERROR, sink=self.name, device=d,
                            seq=r.seq, detail=f"{type(e).__name__}: {e}",
                        )  # fmt: skip
                        errors[d] = SinkError(f"sink bug: {type(e).__name__}: {e}",
                                              device_only=True)  # fmt: skip
                        return
                    if outcome == SKIPPED:
                        skipped.append(row.id)
                        continue
                    delivered.append(row.id)
                    if is_latest:
                        self._latest[d] = latest[d] = r.time_ms
                    self.stats.lag_ms = max(0, now_ms() - r.received_ms)

        # device() raises nothing but cancellation, so no van's sends outlive the round.
        await asyncio.gather(*(device(d, mine) for d, mine in by_device.items()))
        at = now_ms()
        if gone:
            emit(log, "relay_record_missing", logging.WARNING, sink=self.name, rows=len(gone))
        if delivered or skipped or gone:
            await self.box.call("done", self.name, delivered, skipped + gone, latest, at)
            self.stats.delivered += len(delivered)
        for d in by_device:
            if d not in errors:
                self._device_failures.pop(d, None)
        if not errors:
            if delivered:
                self._failures = 0
            await self._count()
            return
        await self._failed(errors, delivered=bool(delivered), at=at)

    async def _failed(self, errors: dict[int, SinkError], delivered: bool, at: int) -> None:
        """After a round with failures: every failed van waits its own backoff; if no van
        got through and the failures were the backend's (not refusals of one van), the
        whole sink waits too, and the failure streak that can disable it goes on."""
        self.stats.failures += len(errors)
        now = time.monotonic()
        for d, e in errors.items():
            n = self._device_failures[d] = self._device_failures.get(d, 0) + 1
            wait = backoff_s(self.cfg, n)
            if e.retry_after is not None:
                wait = min(max(wait, e.retry_after), self.cfg.backoff_max_s)
            self._waiting[d] = now + wait
        backend = {d: e for d, e in errors.items() if not e.device_only}
        device, first = next(iter((backend or errors).items()))
        gone = [e for e in errors.values() if not e.retry]
        streak = bool(backend) and not delivered
        since = await self.box.call("failed", self.name, str(first), at, streak)
        await self._count(force=True)
        if gone or (streak and self.cfg.retry_for_s and at - since >= self.cfg.retry_for_s * 1000):
            reason = (
                f"backend refused for good: {gone[0]}" if gone
                else f"failing for {(at - since) / 1000:.0f} s: {first}"
            )  # fmt: skip
            await self.box.call("disable", self.name, reason, at)
            self.stats.disabled = True
            emit(
                log, "sink_disabled", logging.ERROR, sink=self.name, reason=reason,
                pending=self.stats.pending,
            )  # fmt: skip
            return
        if not streak:
            self._failures = 0
            for d, e in errors.items():
                emit(
                    log, "sink_failed", logging.WARNING, sink=self.name, device=d,
                    error=str(e), retry_in_s=round(self._waiting[d] - now, 2),
                    failures=self._device_failures[d],
                )  # fmt: skip
            return
        # The backend is down (or refusing everyone): the whole sink waits.
        self._failures += 1
        wait = backoff_s(self.cfg, self._failures)
        asked = [e.retry_after for e in backend.values() if e.retry_after is not None]
        if asked:
            wait = min(max(wait, *asked), self.cfg.backoff_max_s)
        emit(
            log, "sink_failed", logging.WARNING, sink=self.name, device=device,
            error=str(first), retry_in_s=round(wait, 2), failures=self._failures,
            devices=len(errors), pending=self.stats.pending,
        )  # fmt: skip
        await self._sleep_quiet(wait)

    async def _sleep_quiet(self, seconds: float) -> None:
        """A backoff: new records do not cut it short."""
        await asyncio.sleep(seconds)


class Relays:
    """Every configured sink's relay, started and stopped with the gateway."""

    def __init__(self, sinks: Sequence[SinkConfig], fleet: str, path: Path, busy_ms: int):
        self.configs = list(sinks)
        self.fleet = fleet
        self.box = OutboxThread(path, busy_timeout_ms=busy_ms)
        self.relays: list[Relay] = []
        self._tasks: list[asyncio.Task[None]] = []
        # The sinks whose outboxes take new records: those enabled in the config (a sink
        # the relay disabled still takes them, to deliver once enabled again).
        self.targets = [target_of(c) for c in self.configs if c.enabled]

    async def start(self) -> None:
        """Register the sinks in the database, start each enabled sink (SinkStartError if
        one cannot: its settings, not its backend, which may be down) and its relay."""
        sinks = [sink_class(c.type)(c, self.fleet) for c in self.configs]
        await self.box.call("register", [(s.cfg, s.target()) for s in sinks], now_ms())
        for s in sinks:
            emit(
                log, "sink_configured", sink=s.cfg.name, type=s.cfg.type, target=s.target(),
                enabled=s.cfg.enabled,
            )  # fmt: skip
            if not s.cfg.enabled:
                continue
            try:
                await s.start()
            except SinkConfigError as e:
                raise SinkStartError(f"sink {s.cfg.name}: {e}") from None
            relay = Relay(s, self.box)
            self.relays.append(relay)
            self._tasks.append(asyncio.create_task(self._run(relay), name=s.cfg.name))

    async def _run(self, relay: Relay) -> None:
        """Run a relay; one that crashes (a bug) is logged and started again, so one
        sink's bug never stops the others or loses its outbox."""
        while True:
            try:
                await relay.run()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                emit(
                    log, "relay_crashed", logging.ERROR, sink=relay.name,
                    detail=f"{type(e).__name__}: {e}", restart_in_s=CRASH_RESTART_S,
                )  # fmt: skip
                relay.stats.crashed = True
                await asyncio.sleep(CRASH_RESTART_S)
                relay.stats.crashed = False

    def stored(self) -> None:
        """New records are in the outboxes: wake the idle relays."""
        for r in self.relays:
            r.wake.set()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for r in self.relays:
            with contextlib.suppress(Exception):
                await r.sink.close()
        await self.box.close()
