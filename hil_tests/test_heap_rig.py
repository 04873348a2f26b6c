"""A van with a full route in a fragmented heap still delivers every record.

The sim van with the urban round's 14 fences, recording every fix, under `micropython
-X heapsize=64K` at 60x, reports to a gateway on loopback. Its heap is then cut into
holes of a few GC blocks: after a collection the largest can be smaller than the
datagram recv() reads a response into (~300 bytes). Before the CoAP client held room
for the next response, such a van sent its reports and never read the answers:
deliveries stalled after a few reports and ~2,400 records waited on flash at the end
of the round. Now every record reaches the store during the round.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from vantrack.tools import rig

ROUTES = Path(rig.__file__).parent / "routes"
EVERY_FIX = {"report_period_s": 1, "report_stopped_period_s": 1, "backlog_pace_ms": 20}


def test_a_van_with_fourteen_fences_recording_every_fix_delivers_every_record(
    van: Any, gateway: rig.GatewayProcess
) -> None:
    cfg = gateway.van_config("van-a", **EVERY_FIX)
    proc = subprocess.run(
        [*rig.CLI, "route", "load", "van-a", str(ROUTES / "urban-round.stops.geojson"),
         "--db", str(gateway.db)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    v = van("urban-round", config=cfg, speedup="60",
            sim_args=["--seed", "7", "--start", "2026-11-26T08:00:00Z"])  # fmt: skip
    lines = list(v.console())
    assert v.wait(60) == 0
    ready = [ln for ln in lines if ln.startswith("I boot ready")]
    assert "fences=14" in ready[-1].split(), ready
    stats = [ln for ln in lines if ln.startswith("I uplink stats")]
    made = rig.queue_state(v.flash_dir).next_seq
    fields = dict(kv.split("=") for kv in stats[-1].split()[3:])
    print(f"\n[heap] {made} records made, {fields['reports']} reports in the last boot; "
          f"last stats: {stats[-1]}")  # fmt: skip
    undelivered = [ln for ln in lines if "undelivered" in ln]
    assert not undelivered, undelivered
    assert int(fields["queued"]) == 0
    assert made > 2000
    with sqlite3.connect(gateway.db) as conn:
        stored = conn.execute(
            "SELECT (SELECT count(*) FROM positions WHERE device_id = ?1)"
            " + (SELECT count(*) FROM events WHERE device_id = ?1)",
            (cfg["device_id"],),
        ).fetchone()[0]
    assert stored == made
