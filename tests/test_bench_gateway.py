"""`vantrack bench gateway` runs end to end: the SQLite-only gateway, the gateway with MQTT
and webhook sinks (every record stored reaches both), and the floor, in one run. It
prints figures; no timing is asserted here."""

from __future__ import annotations

import re

from gateway_fixture import vantrack


def test_bench_gateway_compares_sqlite_only_with_mqtt_and_webhook_sinks_in_one_run() -> None:
    out = vantrack("bench", "gateway", "--seconds", "1", "--devices", "5", "--concurrency", "2",
                   timeout=240)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln for ln in out.stdout.splitlines() if re.match(r"^(gateway|floor)", ln)]
    assert [r.split("  ")[0].strip() for r in rows[:3]] == [
        "gateway (SQLite, WAL, synchronous=FULL)", "gateway + MQTT + webhook sinks",
        "floor (aiocoap, answers 2.04, no work)",
    ]  # fmt: skip
    delivered = r"with sinks: (\d+) records stored, delivered \{'mqtt': (\d+), 'webhook': (\d+)\}"
    m = re.search(delivered, out.stdout)
    assert m and int(m[1]) > 0 and m[1] == m[2] == m[3], out.stdout
    assert "End to end (stored and delivered to every sink):" in out.stdout
