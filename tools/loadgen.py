"""Load generator for the gateway, and the `vantrack bench gateway` benchmark.

Many virtual vans on loopback: each has a device id and key registered in a temporary
store, and sends valid reports (gateway/wire.py's reference encoder, `records` positions
each, seq increasing) as confirmable CoAP POSTs with aiocoap. `concurrency` workers each
own an aiocoap client context, i.e. their own UDP endpoint, like separate vans: aiocoap
keeps NSTART=1 (one outstanding request per server per endpoint), so one shared context
would serialise everything. A worker sends its next report as soon as the last one is
answered, so `concurrency` is the number of requests in flight.

Measured: reports/s acknowledged with 2.04 (for the gateway that means committed to
SQLite), p50/p99 latency of the acknowledged ones, and loss: requests without any answer
within `timeout` (aiocoap retransmits meanwhile). Other answers (4.xx/5.xx) are errors.

`vantrack bench gateway` runs the real gateway as its own process (`vantrack gateway`
via the CLI, waiting for its "listening" line), then the same gateway relaying to an MQTT
sink (Debian's mosquitto, started here) and a webhook sink (tools/http_receiver.py),
then the floor: a bare aiocoap resource in its own process that stores nothing and
answers 2.04 at once. With sinks, it also measures the relay: how long the outboxes take
to empty after the load stops, and the end-to-end rate (records stored and delivered to
every sink, per second of load plus drain). Everything it starts is stopped on the way
out, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import secrets
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vantrack.gateway import wire
from vantrack.tools.rig import free_udp_port, read_line, stop_process

CLI = [sys.executable, "-m", "vantrack.tools.cli"]
FLOOR = [sys.executable, "-m", "vantrack.tools.loadgen", "floor"]
T0 = 800_000_000  # GPS seconds (2025-05-08)


@dataclass
class Van:
    id: int
    key: bytes
    seq: int = 0


@dataclass
class Result:
    name: str
    seconds: float = 0.0
    sent: int = 0
    ok: int = 0
    errors: int = 0
    lost: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]


def make_report(van: Van, records: int) -> bytes:
    seq = van.seq
    van.seq += records
    t0 = T0 + seq
    recs: list[wire.Record] = [
        wire.Position(
            seq + i, wire.gps_time(t0 + i), 41_390_000 + 30 * i, 2_170_000 - 20 * i,
            60, 90, 9 if i == 0 else None, 8 if i == 0 else None,
        )
        for i in range(records)
    ]  # fmt: skip
    return wire.encode(van.id, seq, t0, recs, van.key)


async def drive(
    name: str, uri: str, vans: list[Van], *, seconds: float, records: int,
    concurrency: int, timeout: float = 5.0, progress: bool = True,
) -> Result:  # fmt: skip
    """Send reports from `vans` to `uri` for `seconds` with `concurrency` in flight."""
    import aiocoap

    result = Result(name)
    pick = itertools.cycle(vans)
    contexts = [await aiocoap.Context.create_client_context() for _ in range(concurrency)]
    start = time.monotonic()
    deadline = start + seconds

    async def worker(ctx: aiocoap.Context) -> None:
        while time.monotonic() < deadline:
            payload = make_report(next(pick), records)
            msg = aiocoap.Message(code=aiocoap.POST, uri=uri, payload=payload)
            msg.opt.content_format = 60
            sent = time.perf_counter()
            result.sent += 1
            try:
                resp = await asyncio.wait_for(ctx.request(msg).response, timeout)
            except (TimeoutError, aiocoap.error.Error):
                result.lost += 1
                continue
            if resp.code == aiocoap.CHANGED:
                result.ok += 1
                result.latencies.append(time.perf_counter() - sent)
            else:
                result.errors += 1

    async def report_progress() -> None:
        while True:
            await asyncio.sleep(1.0)
            elapsed = time.monotonic() - start
            print(
                f"  {name}: {elapsed:4.0f}s  {result.ok} acknowledged"
                f" ({result.ok / elapsed:,.0f}/s), {result.errors} errors, {result.lost} lost",
                file=sys.stderr, flush=True,
            )  # fmt: skip

    ticker = asyncio.create_task(report_progress()) if progress else None
    try:
        await asyncio.gather(*(worker(c) for c in contexts))
    finally:
        result.seconds = time.monotonic() - start
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        for c in contexts:
            await c.shutdown()
    return result


# ---- processes -------------------------------------------------------------------------
@contextmanager
def server_process(cmd: list[str], ready: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server, wait for its readiness line on stdout, always stop it."""
    with open(log, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
    try:
        line = read_line(proc, 30.0)
        if not line.startswith(ready):
            raise RuntimeError(f"{cmd[3]} did not start: {line!r}; see {log}")
        yield proc
    finally:
        stop_process(proc)


def register_vans(db: Path, n: int) -> list[Van]:
    from vantrack.gateway.store import Store

    store = Store(db)
    try:
        return [
            Van(store.add_device(f"loadgen-{i:05d}", secrets.token_bytes(16)).id, b"")
            for i in range(n)
        ]
    finally:
        store.close()


def _keys(db: Path, vans: list[Van]) -> list[Van]:
    with sqlite3.connect(db) as conn:
        keys = dict(conn.execute("SELECT id, key FROM devices").fetchall())
    return [Van(v.id, bytes(keys[v.id])) for v in vans]


# ---- the floor: bare aiocoap -------------------------------------------------------------
async def _floor(bind: str, port: int) -> None:
    import aiocoap
    import aiocoap.resource

    class Ack(aiocoap.resource.Resource):
        async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
            return aiocoap.Message(code=aiocoap.CHANGED)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    site = aiocoap.resource.Site()
    site.add_resource(("r",), Ack())
    ctx = await aiocoap.Context.create_server_context(site, bind=(bind, port))
    print(f"floor listening on {bind}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await ctx.shutdown()


# ---- vantrack bench gateway --------------------------------------------------------------
def setup_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    p = sub.add_parser(
        name,
        help="gateway reports/s, p50/p99 latency and loss; with MQTT and webhook sinks; "
        "vs a bare aiocoap resource",
        description="Run `vantrack gateway` in its own process on loopback with a temporary "
        "store and N registered vans, drive it with valid reports from the load generator "
        "(tools/loadgen.py); then the same with an MQTT sink (a mosquitto started here) and "
        "a webhook sink (a local HTTP receiver), measuring also how long the outboxes take "
        "to drain and the end-to-end rate; then the same load against a bare aiocoap "
        "resource that stores nothing (the floor). Prints reports/s committed (2.04), "
        "p50/p99 latency and loss.",
    )
    p.add_argument("--devices", type=int, default=100, help="virtual vans (default 100)")
    p.add_argument("--seconds", type=float, default=10.0, help="per run (default 10)")
    p.add_argument("--records", type=int, default=10, help="positions per report (default 10)")
    p.add_argument(
        "--concurrency", type=int, default=16,
        help="requests in flight, one UDP endpoint each (default 16)",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, default=5.0, help="a request is lost after (5 s)")
    p.add_argument(
        "--no-sinks", action="store_true", help="skip the run with MQTT and webhook sinks"
    )
    p.set_defaults(func=bench_gateway)


def bench_gateway(args: argparse.Namespace) -> int:
    if min(args.devices, args.records, args.concurrency) < 1 or args.seconds <= 0:
        print("bench gateway: --devices, --records, --concurrency, --seconds must be > 0",
              file=sys.stderr)  # fmt: skip
        return 1
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="vantrack-bench-") as tmp:
        db = Path(tmp) / "bench.db"
        log = Path(tmp) / "gateway.log"
        print(
            f"bench gateway: {args.devices} vans, {args.records} positions/report, "
            f"{args.concurrency} in flight, {args.seconds:g} s per run",
            file=sys.stderr,
        )
        vans = _keys(db, register_vans(db, args.devices))
        kw = dict(seconds=args.seconds, records=args.records, concurrency=args.concurrency,
                  timeout=args.timeout)  # fmt: skip
        port = free_udp_port()
        gw_cmd = [*CLI, "gateway", "--bind", "127.0.0.1", "--port", str(port), "--db", str(db),
                  "--log-level", "warning"]  # fmt: skip
        print("  starting vantrack gateway ...", file=sys.stderr, flush=True)
        with server_process(gw_cmd, "gateway listening on", log):
            results.append(asyncio.run(drive(
                "gateway (SQLite, WAL, synchronous=FULL)", f"coap://127.0.0.1:{port}/r",
                vans, **kw)))  # type: ignore[arg-type]  # fmt: skip
        with sqlite3.connect(db) as conn:
            committed = conn.execute("SELECT count(*) FROM positions").fetchone()[0]
        relay: Relayed | None = None
        if not args.no_sinks:
            relay = _with_sinks(Path(tmp), args, kw, log)
            if relay is not None:
                results.append(relay.result)
        port = free_udp_port()
        print("  starting the floor (bare aiocoap resource) ...", file=sys.stderr, flush=True)
        floor_cmd = [*FLOOR, "--bind", "127.0.0.1", "--port", str(port)]
        with server_process(floor_cmd, "floor listening on", log):
            results.append(asyncio.run(drive(
                "floor (aiocoap, answers 2.04, no work)", f"coap://127.0.0.1:{port}/r",
                [Van(v.id, v.key) for v in vans], **kw)))  # type: ignore[arg-type]  # fmt: skip
        problems = [line for line in log.read_text(errors="replace").splitlines()
                    if "level=error" in line]  # fmt: skip
    header = f"{'server':42} {'reports/s':>10} {'records/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
    print(f"\n{header} {'sent':>7} {'errors':>7} {'lost':>6}")
    for r in results:
        print(
            f"{r.name:42} {r.rate:>10,.0f} {r.rate * args.records:>10,.0f}"
            f" {r.pct(50) * 1e3:>8.2f} {r.pct(99) * 1e3:>8.2f} {r.sent:>7} {r.errors:>7}"
            f" {r.lost:>6}"
        )
    gw = results[0]
    print(f"\ngateway: {committed} positions in the store after the run "
          f"({gw.ok} reports x {args.records} acknowledged = {gw.ok * args.records}).")  # fmt: skip
    if relay is not None:
        e2e = relay.records / (relay.result.seconds + relay.drain_s)
        alone = gw.rate * args.records
        print(
            f"with sinks: {relay.records} records stored, delivered {relay.delivered}; the "
            f"outboxes held {relay.at_end} deliveries when the load stopped and drained in "
            f"{relay.drain_s:.1f} s ({relay.at_end / max(relay.drain_s, 1e-3):,.0f} deliveries/s "
            f"with no load coming in).\nEnd to end "
            f"(stored and delivered to every sink): {e2e:,.0f} records/s, against "
            f"{alone:,.0f} records/s stored with SQLite only ({e2e / max(1.0, alone):.2f}x)."
        )
        if relay.pending:
            print(f"bench gateway: {relay.pending} records still pending!", file=sys.stderr)
            return 1
    for line in problems[:5]:
        print(f"gateway error: {line}", file=sys.stderr)
    # Lost requests may still have been committed (the answer came too late), so the
    # store may hold more; it must never hold less than what was acknowledged.
    if committed < gw.ok * args.records:
        print("bench gateway: fewer positions stored than acknowledged!", file=sys.stderr)
        return 1
    return 0


@dataclass
class Relayed:
    result: Result
    records: int  # records stored in that run
    delivered: dict[str, int]  # per sink, from the sinks table
    drain_s: float  # load end to every outbox empty
    pending: int  # left when the drain timed out (0: all delivered)
    at_end: int  # outbox rows (all sinks) when the load stopped


def _with_sinks(
    tmp: Path, args: argparse.Namespace, kw: dict[str, object], log: Path
) -> Relayed | None:
    """The gateway with an MQTT sink (mosquitto) and a webhook sink (an HTTP receiver)."""
    from vantrack.tools.http_receiver import HttpReceiver, free_tcp_port
    from vantrack.tools.mosquitto import Mosquitto, mosquitto_binary

    db = tmp / "sinks.db"
    vans = _keys(db, register_vans(db, args.devices))
    sinks = ""
    with contextlib.ExitStack() as stack:
        if mosquitto_binary() is None:
            print("  no mosquitto (apt-get install mosquitto): the MQTT sink is left out",
                  file=sys.stderr)  # fmt: skip
        else:
            broker = stack.enter_context(Mosquitto())
            sinks += f'[[sink]]\ntype = "mqtt"\nname = "mqtt"\nurl = "{broker.url}"\n'
        rx = stack.enter_context(HttpReceiver(free_tcp_port(), tmp / "hooks.jsonl", "--no-sync"))
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        sinks += (f'[[sink]]\ntype = "webhook"\nname = "webhook"\nurl = "{rx.url}/hook"\n'
                  f'secret = "{secret}"\n')  # fmt: skip
        cfg = tmp / "sinks.toml"
        cfg.write_text(sinks)
        port = free_udp_port()
        cmd = [*CLI, "gateway", "--bind", "127.0.0.1", "--port", str(port), "--db", str(db),
               "--config", str(cfg), "--log-level", "warning"]  # fmt: skip
        print("  starting vantrack gateway with MQTT and webhook sinks ...", file=sys.stderr,
              flush=True)  # fmt: skip
        with server_process(cmd, "gateway listening on", log):
            result = asyncio.run(drive(
                "gateway + MQTT + webhook sinks", f"coap://127.0.0.1:{port}/r", vans,
                **kw))  # type: ignore[arg-type]  # fmt: skip
            ended = time.monotonic()
            with sqlite3.connect(db) as conn:
                at_end = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
            pending = -1
            while time.monotonic() - ended < 300:
                with sqlite3.connect(db) as conn:
                    pending = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
                if pending == 0:
                    break
                time.sleep(0.1)
            drain = time.monotonic() - ended
            print(f"  outboxes drained in {drain:.1f} s", file=sys.stderr, flush=True)
        with sqlite3.connect(db) as conn:
            records = conn.execute("SELECT count(*) FROM positions").fetchone()[0]
            delivered = dict(conn.execute("SELECT name, delivered FROM sinks").fetchall())
    return Relayed(result, records, delivered, drain, pending, at_end)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vantrack.tools.loadgen")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("floor", help="bare aiocoap POST /r resource answering 2.04 (no work)")
    f.add_argument("--bind", default="127.0.0.1")
    f.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    asyncio.run(_floor(args.bind, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
