"""The gateway's CoAP ingest: `POST /r` reports from the vans into the store.

Flow per request (docs/wire-format.md, "Responses"): method and Content-Format, size,
`wire.decode()` (4.00 with a short text/plain diagnostic), device lookup (4.01 "unknown
device"), `wire.verify()` (4.01 "bad mac"), then every record in one SQLite transaction
through the store's writer thread; only after the commit does the van get 2.04 with
`{0: highest seq stored}`. A store failure gets 5.03 with Max-Age, so nothing is
acknowledged that is not on disk. Every rejection is counted by reason and logged as
one structured line; the counters are logged periodically and at shutdown.

What it does not do: decoding rules (gateway/wire.py), SQL (gateway/store.py), relaying
to MQTT/webhooks (later issues). aiocoap does message deduplication and retransmission;
this module only holds the resource and the service's start and stop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import signal
import sys
from concurrent.futures import Executor, ProcessPoolExecutor

import aiocoap
import aiocoap.resource
import cbor2
from aiocoap.numbers import ContentFormat

from . import wire
from .config import Config
from .log import emit
from .store import StoreError, UnstorableReport, Writer, now_ms, report_rows

REPORT_PATH = ("r",)
log = logging.getLogger("vantrack.gateway.server")


class Counters:
    """Reports accepted and rejected, by reason (a later issue exports them)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def _text(code: aiocoap.numbers.codes.Code, text: str) -> aiocoap.Message:
    msg = aiocoap.Message(code=code, payload=text.encode("utf-8", "replace")[:200])
    msg.opt.content_format = ContentFormat.TEXT
    return msg


class ReportResource(aiocoap.resource.Resource):
    """`/r`: one report per POST."""

    def __init__(
        self, cfg: Config, writer: Writer, counters: Counters, decoder: Executor | None = None
    ) -> None:
        self.decoder = decoder
        super().__init__()
        self.cfg = cfg.gateway
        self.writer = writer
        self.counters = counters

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        # A report fits one datagram; reassembling Block1 transfers would only let a
        # peer make us buffer what we refuse anyway. Block1 requests get 4.13 below.
        return False

    def _reject(
        self, request: aiocoap.Message, code: aiocoap.numbers.codes.Code, reason: str,
        detail: str, device: int | None = None, diag: str | None = None,
    ) -> aiocoap.Message:  # fmt: skip
        self.counters.add(f"rejected_{reason}")
        emit(
            log, "report_rejected", logging.WARNING, reason=reason, device=device,
            peer=_peer(request), code=str(code).split(" ")[0], detail=detail,
        )  # fmt: skip
        return _text(code, diag if diag is not None else f"{reason}: {detail}")

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        try:
            return await self._render(request)
        except Exception as e:  # never let one request take the service down
            self.counters.add("internal_error")
            emit(
                log, "internal_error", logging.ERROR, peer=_peer(request),
                detail=f"{type(e).__name__}: {e}",
            )  # fmt: skip
            return _text(aiocoap.INTERNAL_SERVER_ERROR, "internal error")

    async def _render(self, request: aiocoap.Message) -> aiocoap.Message:
        code = aiocoap.numbers.codes.Code
        if request.code != code.POST:
            return self._reject(
                request, code.METHOD_NOT_ALLOWED, "method", f"{request.code} (POST only)"
            )
        cf = request.opt.content_format
        if cf != ContentFormat.CBOR:
            return self._reject(
                request, code.UNSUPPORTED_CONTENT_FORMAT, "content_format",
                f"content-format {cf if cf is None else int(cf)}, want 60 (application/cbor)",
            )  # fmt: skip
        limit = self.cfg.max_report_bytes
        block1 = request.opt.block1
        if block1 is not None or len(request.payload) > limit:
            size = len(request.payload) if block1 is None else "block-wise transfer"
            resp = self._reject(
                request, code.REQUEST_ENTITY_TOO_LARGE, "too_large",
                f"{size} > {limit} bytes", diag=f"too_large: max {limit} bytes",
            )  # fmt: skip
            resp.opt.size1 = limit
            return resp
        try:
            if self.decoder is None:
                report = wire.decode(request.payload)
            else:
                loop = asyncio.get_running_loop()
                report = await loop.run_in_executor(self.decoder, wire.decode, request.payload)
        except wire.WireError as e:
            return self._reject(request, code.BAD_REQUEST, e.reason, e.detail)
        device = report.device_id
        try:
            key = await self.writer.device_key(device)
        except StoreError as e:
            return self._unavailable(request, device, str(e))
        if key is None:
            return self._reject(
                request, code.UNAUTHORIZED, "unknown_device", "not registered", device,
                diag="unknown device",
            )  # fmt: skip
        if not wire.verify(report, key):
            return self._reject(
                request, code.UNAUTHORIZED, "bad_mac", "MAC does not verify", device,
                diag="bad mac",
            )  # fmt: skip
        received = now_ms()
        try:
            positions, events = report_rows(report, received)
        except UnstorableReport as e:
            return self._reject(request, code.BAD_REQUEST, "range", str(e), device)
        try:
            saved = await self.writer.save(device, positions, events, received)
        except StoreError as e:
            return self._unavailable(request, device, str(e))
        n = len(report.records)
        self.counters.add("reports_stored")
        self.counters.add("records_stored", saved.new_records)
        if saved.new_records < n:
            self.counters.add("records_duplicate", n - saved.new_records)
        emit(
            log, "report_stored", device=device, seq=report.seq,
            last_seq=report.last_seq, records=n, new=saved.new_records,
            highest=saved.highest_seq,
        )  # fmt: skip
        ack: dict[int, int] = {} if saved.highest_seq is None else {0: saved.highest_seq}
        resp = aiocoap.Message(code=code.CHANGED, payload=cbor2.dumps(ack))
        resp.opt.content_format = ContentFormat.CBOR
        return resp

    def _unavailable(self, request: aiocoap.Message, device: int, detail: str) -> aiocoap.Message:
        resp = self._reject(
            request, aiocoap.SERVICE_UNAVAILABLE, "store_unavailable", detail, device,
            diag="store unavailable, retry later",
        )  # fmt: skip
        resp.opt.max_age = self.cfg.max_age_s
        return resp


def _peer(request: aiocoap.Message) -> str:
    try:
        return str(request.remote.hostinfo)
    except Exception:
        return "-"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _log_stats(counters: Counters, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        emit(log, "stats", **counters.snapshot())


async def _start_decoder(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: this process already runs the store's writer thread. The workers
    # start now (zcbor compiles the CDDL once in each), not on the first report.
    pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"))
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(pool, wire.warm_up) for _ in range(workers)))
    return pool


async def serve(cfg: Config, stop: asyncio.Event, counters: Counters | None = None) -> None:
    """Run the gateway until `stop` is set; print the readiness line when listening."""
    g = cfg.gateway
    counters = counters or Counters()
    writer = Writer(g.db, busy_timeout_ms=g.busy_timeout_ms)
    decoder: ProcessPoolExecutor | None = None
    context: aiocoap.Context | None = None
    stats: asyncio.Task[None] | None = None
    try:
        if g.decode_workers:
            decoder = await _start_decoder(g.decode_workers)
        await writer.open()
        site = aiocoap.resource.Site()
        site.add_resource(REPORT_PATH, ReportResource(cfg, writer, counters, decoder))
        context = await aiocoap.Context.create_server_context(site, bind=(g.bind, g.port))
        emit(log, "gateway_started", bind=g.bind, port=g.port, db=str(g.db))
        print(f"gateway listening on {_hostport(g.bind, g.port)}", flush=True)
        if g.stats_interval_s > 0:
            stats = asyncio.create_task(_log_stats(counters, g.stats_interval_s))
        await stop.wait()
    finally:
        if stats is not None:
            stats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stats
        if context is not None:
            await context.shutdown()
        await writer.close()
        if decoder is not None:
            decoder.shutdown(cancel_futures=True)
        emit(log, "gateway_stopped", **counters.snapshot())


def run(cfg: Config) -> int:
    """The `vantrack gateway` process: serve until SIGINT/SIGTERM. Returns an exit code."""

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await serve(cfg, stop)
        except StoreError as e:
            emit(log, "start_failed", logging.ERROR, reason="store", detail=str(e))
            print(f"vantrack gateway: cannot open the store: {e}", file=sys.stderr)
            return 1
        except OSError as e:
            emit(log, "start_failed", logging.ERROR, reason="socket", detail=str(e))
            where = _hostport(cfg.gateway.bind, cfg.gateway.port)
            print(f"vantrack gateway: cannot listen on {where}: {e.strerror or e}", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(main())
