"""Faults survived: whatever fails, every record the van made is stored exactly once.

Each test drives urban-round on the sim rig (the firmware under `micropython -X
heapsize=64K`, fed by gps-sim over a pty) to a real gateway, injects one kind of fault,
and then checks the store against the van's own flash queue (firmware/queue.py, read by
rig.queue_state): the van numbered its records 0..made-1, and

- every one of them is in the store (none lost),
- none is stored twice under two numbers (the same fix or event never came back as new;
  a report resent with the same numbers is stored once by the gateway's dedup),

and prints the counts. Faults come from seeded generators, so a failing run repeats.
Records are made for every fix (smart reporting's periods at 1 s) so flash writes are
going on all the time, and the link's faults hit reports, acks and retransmissions.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cbor2
import pytest

from vantrack.tools import rig
from vantrack.tools.udprelay import UdpRelay

START = "2026-11-26T08:00:00Z"
T_START = 848_995_200  # START in GPS seconds (since 2000-01-01)
EVERY_FIX = {"report_period_s": 1, "report_stopped_period_s": 1, "backlog_pace_ms": 20}
SPEEDUP = "80"  # urban-round (41 min) in about half a minute
STATUS = 16


def stored(db: Path, device: int) -> list[tuple[Any, ...]]:
    """(seq, kind, GPS time ms, type, fence, extra) of every record stored for the van."""
    with sqlite3.connect(db) as conn:
        pos = conn.execute("SELECT seq, 'p', time_ms, 0, NULL, NULL FROM positions"
                           " WHERE device_id = ?", (device,)).fetchall()  # fmt: skip
        ev = conn.execute("SELECT seq, 'e', time_ms, type, fence, extra FROM events"
                          " WHERE device_id = ?", (device,)).fetchall()  # fmt: skip
    return sorted(pos + ev)


def dropped_by_thinning(rows: list[tuple[Any, ...]]) -> int:
    return sum(cbor2.loads(r[5]).get(7, 0) for r in rows if r[1] == "e" and r[3] == STATUS)


def check(label: str, gateway: rig.GatewayProcess, cfg: dict[str, Any], van: rig.SimVan,
          extra: str = "", thinned_ok: bool = False, min_made: int = 500,
          ) -> dict[str, int]:  # fmt: skip
    """Deliver what is left, compare the store with the van's queue, print the counts."""
    van.flush()
    q = rig.queue_state(van.flash_dir)
    rows = stored(gateway.db, cfg["device_id"])
    seqs = [r[0] for r in rows]
    made = set(range(q.next_seq))
    missing = made - set(seqs)
    unknown = set(seqs) - made
    # The same record under two numbers: same kind, time, type and content.
    again = [k for k, n in Counter(r[1:] for r in rows).items() if n > 1]
    thinned = dropped_by_thinning(rows)
    counts = {"made": q.next_seq, "stored": len(rows), "lost": len(missing) - thinned,
              "duplicated": len(again), "thinned": thinned, "pending": q.pending}  # fmt: skip
    print(f"\n[{label}] made {counts['made']} records, stored {counts['stored']}, "
          f"lost {counts['lost']}, duplicated {counts['duplicated']}, "
          f"thinned out (counted in status records) {thinned}, still queued {q.pending}; "
          f"firmware kills {van.kills}, restarts {van.restarts}{extra}")  # fmt: skip
    assert q.next_seq > min_made
    assert not unknown, sorted(unknown)[:10]
    assert not again, again[:5]
    assert q.pending == 0
    if thinned_ok:
        assert len(missing) == thinned and thinned > 0
    else:
        assert not missing, sorted(missing)[:20]
    return counts


def drive(van_factory: Any, cfg: dict[str, Any], **kwargs: Any) -> rig.SimVan:
    return van_factory("urban-round", config=cfg, speedup=SPEEDUP,
                       sim_args=["--seed", "7", "--start", START], **kwargs)  # fmt: skip


def gps_time(line: str) -> int | None:
    """The GPS time (s since 2000) of an echoed fix line, if it is one."""
    if line.startswith("F "):
        t = line.split()[1]
        return None if t == "None" else int(t)
    return None


def errors(lines: list[str]) -> list[str]:
    return [ln for ln in lines if "MemoryError" in ln or "Traceback" in ln]


def test_gateway_down_for_ten_simulated_minutes_loses_nothing(van, gateway):
    cfg = gateway.van_config("van-down", **EVERY_FIX)
    v = drive(van, cfg)
    down_at, up_at = T_START + 600, T_START + 1200
    state = "before"
    lines = []
    for line in v.console():
        lines.append(line)
        t = gps_time(line)
        if t is None:
            continue
        if state == "before" and t >= down_at:
            gateway.stop()
            state = "down"
        elif state == "down" and t >= up_at:
            gateway.start()
            state = "up"
    assert state == "up"
    assert v.wait(60) == 0
    assert not errors(lines), errors(lines)[:5]
    check("gateway stopped 10 sim-min", gateway, cfg, v)


def test_thirty_percent_of_datagrams_lost_both_ways_loses_nothing(van, gateway):
    # Half the exchanges need a retransmission: with the default smart reporting (about
    # 140 records in 40-odd reports) and a 300 ms ACK timeout (the relay is on loopback)
    # the round's reports get through in about the time it takes to drive it here.
    lossy = {"coap_ack_timeout_ms": 300, "report_max_age_s": 30}
    with UdpRelay(gateway.port, drop=0.3, seed=11) as relay:
        cfg = gateway.van_config("van-lossy", **lossy, gateway_port=relay.port)
        v = drive(van, cfg)
        lines = list(v.console())
        assert v.wait(60) == 0
        c = relay.counts()
        check("30% datagrams dropped each way", gateway, cfg, v,
              f"; relay: {relay.summary()}", min_made=100)  # fmt: skip
    assert not errors(lines), errors(lines)[:5]
    assert c["up_dropped"] > 15 and c["down_dropped"] > 15


def test_power_cut_twenty_times_mid_round_even_mid_write_loses_nothing(van, gateway):
    rng = random.Random(20)
    cfg = gateway.van_config("van-cuts", **EVERY_FIX)
    v = drive(van, cfg)
    cuts = sorted(rng.sample(range(T_START + 60, T_START + 2300), 20))
    torn = 0
    lines = []
    for line in v.console():
        lines.append(line)
        t = gps_time(line)
        if t is not None and cuts and t >= cuts[0]:
            cuts.pop(0)
            # Every other cut lands mid-write: part of a record is left on flash.
            if len(cuts) % 2:
                v.kill(torn=rng.randbytes(rng.randrange(1, 36)))
                torn += 1
            else:
                # Wait a random few ms so the cut lands anywhere in the firmware's work.
                time.sleep(rng.random() * 0.02)
                v.kill()
    assert not cuts and v.kills == 20
    assert v.wait(60) == 0
    assert not errors(lines), errors(lines)[:5]
    check("power cut 20 times", gateway, cfg, v, f", {torn} of them mid-write")


def test_reboot_with_a_full_queue_keeps_every_event_and_counts_what_was_thinned(van, gateway):
    # A queue of 5 segments (565 records) and a link that is down for most of the round:
    # the queue fills, thins its oldest positions, and the van reboots full.
    with UdpRelay(gateway.port, drop=1.0, seed=3) as relay:
        cfg = gateway.van_config("van-full", **EVERY_FIX, queue_kb=20,
                                 gateway_port=relay.port)  # fmt: skip
        v = drive(van, cfg)
        rebooted = False
        lines = []
        for line in v.console():
            lines.append(line)
            t = gps_time(line)
            if t is not None and not rebooted and t >= T_START + 1500:
                v.kill()
                rebooted = True
            elif t is not None and rebooted and relay.drop_up and t >= T_START + 1560:
                relay.drop_up = relay.drop_down = 0.0
        assert v.wait(60) == 0
        counts = check("reboot with a full queue", gateway, cfg, v, thinned_ok=True)
    assert not errors(lines), errors(lines)[:5]
    assert counts["thinned"] > 300


def test_a_store_write_failing_once_is_retried_and_stored_once(van, tmp_path):
    # A short busy timeout and Max-Age: the write that finds the store locked fails at
    # once with 5.03, and the van tries again 2 s later.
    conf = "[gateway]\nbusy_timeout_ms = 50\nmax_age_s = 2\n"
    with rig.GatewayProcess(tmp_path / "gw-fail", config=conf) as gateway:
        cfg = gateway.van_config("van-disk", **EVERY_FIX)
        v = drive(van, cfg)
        lock: sqlite3.Connection | None = None
        lines = []
        for line in v.console():
            lines.append(line)
            t = gps_time(line)
            if t is not None and lock is None and t >= T_START + 900:
                # Another process holds the write lock until one report failed on it.
                lock = sqlite3.connect(gateway.db, isolation_level=None, check_same_thread=False)
                lock.execute("BEGIN EXCLUSIVE")
                threading.Thread(target=release_after_one_failure, args=(gateway, lock),
                                 daemon=True).start()  # fmt: skip
        assert v.wait(60) == 0
        rejected = gateway.log().count("store_unavailable")
        check("store write failing once", gateway, cfg, v, f"; rejected by the store: {rejected}")
    assert lock is not None and rejected >= 1
    assert not errors(lines), errors(lines)[:5]


def release_after_one_failure(gateway: rig.GatewayProcess, lock: sqlite3.Connection) -> None:
    deadline = time.monotonic() + 30
    while "store_unavailable" not in gateway.log() and time.monotonic() < deadline:
        time.sleep(0.01)
    lock.execute("ROLLBACK")
    lock.close()


@pytest.fixture(autouse=True)
def _show_counts(capsys: pytest.CaptureFixture[str]) -> Any:
    # The counts are the proof: show them even when the test passes.
    yield
    out = capsys.readouterr().out
    with capsys.disabled():
        for line in out.splitlines():
            if line.startswith("["):
                print("\n" + line, end="")
