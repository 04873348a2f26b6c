"""Store trouble: the gateway answers 5.03 with Max-Age, acknowledges nothing it has not
committed, and stores normally once the trouble is gone."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiocoap
import cbor2
from gateway_fixture import add_device, post, report, running_gateway


def test_locked_store_gets_503_then_recovers_and_stores_once(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    dev = add_device(db, "van-1", tmp_path / "creds")
    # A short busy timeout so the locked write gives up quickly (the default is 2 s).
    with running_gateway(tmp_path, "--busy-timeout-ms", "100", db=db) as gw:

        async def scenario() -> None:
            ctx = await aiocoap.Context.create_client_context()
            try:
                # Another process (a backup, a migration) holds the write lock.
                blocker = sqlite3.connect(db, isolation_level=None)
                blocker.execute("BEGIN EXCLUSIVE")
                try:
                    ans = await post(ctx, gw.uri, report(dev, 0, 5))
                    assert ans.code == "5.03" and ans.max_age == 30
                    assert ans.payload == b"store unavailable, retry later"
                finally:
                    blocker.execute("ROLLBACK")
                    blocker.close()
                line = gw.events("report_rejected")[-1]
                assert line["reason"] == "store_unavailable" and line["device"] == str(dev.id)
                assert "locked" in line["detail"]
                with sqlite3.connect(db) as conn:
                    assert conn.execute("SELECT count(*) FROM positions").fetchone() == (0,)
                # The van retries after Max-Age: now it is stored, once.
                ans = await post(ctx, gw.uri, report(dev, 0, 5))
                assert ans.code == "2.04" and cbor2.loads(ans.payload) == {0: 4}
                ans = await post(ctx, gw.uri, report(dev, 0, 5))
                assert ans.code == "2.04"
            finally:
                await ctx.shutdown()

        asyncio.run(scenario())
        assert gw.counters()["rejected_store_unavailable"] == 1
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM positions").fetchone() == (5,)
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_sigint_stops_the_gateway_cleanly_with_its_counters_logged(tmp_path: Path) -> None:
    import json
    import signal

    from gateway_fixture import stop_process as stop

    with running_gateway(tmp_path, "--log-format", "json") as gw:
        gw.proc.send_signal(signal.SIGINT)
        assert gw.proc.wait(10) == 0
        assert stop(gw.proc) == 0
    lines = [json.loads(x) for x in gw.log().splitlines()]
    assert [x["event"] for x in lines][-1] == "gateway_stopped"
    assert all({"ts", "level", "event"} <= x.keys() for x in lines)


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    from gateway_fixture import vantrack

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        out = vantrack("gateway", "--bind", "127.0.0.1", "--port", str(port),
                       "--db", str(tmp_path / "x.db"), timeout=20)  # fmt: skip
    assert out.returncode == 1 and "cannot listen" in out.stderr and out.stdout == ""
    assert "Traceback" not in out.stderr
