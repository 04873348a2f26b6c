"""The gateway's CoAP resources: `POST /r` reports in, `GET /rt` routes out.

Reports, per request (docs/wire-format.md, "Responses"): method and Content-Format,
size, `wire.decode()` (4.00 with a short text/plain diagnostic), device lookup (4.01
"unknown device"), `wire.verify()` (4.01 "bad mac"), then every record in one SQLite
transaction through the store's writer thread; only after the commit does the van get
2.04 with `{0: highest seq stored, 1: route version, 2..6: reporting overrides}` (key 1
when the device has a route, keys 2..6 only for the overrides set for it, all read in
the report's transaction). A store failure gets 5.03 with Max-Age, so nothing is
acknowledged that is not on disk.

Routes (docs/routes.md): `GET /rt?d=ID&m=MAC` answers the device's route CBOR with its
ETag (2.03 Valid when the van already holds it), 4.01 for an unknown device or a wrong
MAC, 4.04 when it has no route. Block2 (RFC 7959) is served here, not by aiocoap, and
without state: every block is cut from the route as stored now, so a van can ask for
any block at any time (after a reboot, from a new address) and sees from the ETag when
the route changed between blocks.

Every rejection is counted by reason and logged as one structured line, as is every
route served; the counters are logged periodically and at shutdown.

Relaying: the same transaction puts each new record into the outbox of every enabled
sink that takes it (gateway/outbox.py); after the commit the relays are woken. The
Prometheus endpoint, when configured, is started here (gateway/metrics.py).

What it does not do: decoding rules (gateway/wire.py, gateway/route.py), SQL
(gateway/store.py), delivery to backends (gateway/outbox.py, gateway/sinks/). aiocoap
does message deduplication and retransmission; this module only holds the resources and
the service's start and stop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import logging
import multiprocessing
import signal
import sys
from concurrent.futures import Executor, ProcessPoolExecutor
from enum import IntEnum

import aiocoap
import aiocoap.resource
import cbor2
from aiocoap.numbers import ContentFormat

from . import metrics, route, wire
from .config import Config
from .log import emit
from .outbox import Relays, SinkStartError
from .store import MAX_DEVICE_ID, StoreError, UnstorableReport, Writer, now_ms, report_rows

REPORT_PATH = ("r",)
ROUTE_PATH = ("rt",)
# The largest Block2 block we send (szx 6): what fits a CoAP datagram without IP
# fragmentation on common links. A route larger than this is sent block-wise even to a
# client that did not ask for blocks (RFC 7959 section 2.4, server-initiated).
MAX_BLOCK_SZX = 6


class AckKey(IntEnum):
    """Keys of the 2.04 answer to a report (wire.cddl `ack`)."""

    HIGHEST_SEQ = 0  # highest seq stored for the device
    ROUTE_VERSION = 1  # the device's current route version, when it has a route
    # Reporting overrides (`vantrack devices reporting`), each only when set for the device;
    # the van uses its own default for a key that is absent.
    PERIOD_S = 2  # minimum period while moving, s
    STOPPED_PERIOD_S = 3  # period while stopped, s
    DISTANCE_M = 4  # distance, m
    ANGLE_DEG = 5  # heading change, degrees
    SPEED_DELTA_DMS = 6  # speed change, dm/s


# Reporting override (store.Reporting field) -> ack key.
REPORTING_KEYS = {
    "period_s": AckKey.PERIOD_S,
    "stopped_period_s": AckKey.STOPPED_PERIOD_S,
    "distance_m": AckKey.DISTANCE_M,
    "angle_deg": AckKey.ANGLE_DEG,
    "speed_delta_dms": AckKey.SPEED_DELTA_DMS,
}


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


class _Resource(aiocoap.resource.Resource):
    """What both resources share: counted, logged rejections and a catch-all."""

    REJECTED = "rejected"  # log event `<REJECTED>` and counters `<REJECTED>_<reason>`
    EVENT = "report_rejected"

    def __init__(self, cfg: Config, writer: Writer, counters: Counters) -> None:
        super().__init__()
        self.cfg = cfg.gateway
        self.writer = writer
        self.counters = counters

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        # Requests fit one datagram (reassembling Block1 would only let a peer make us
        # buffer what we refuse anyway); /rt cuts its own Block2 blocks.
        return False

    def _reject(
        self, request: aiocoap.Message, code: aiocoap.numbers.codes.Code, reason: str,
        detail: str, device: int | None = None, diag: str | None = None,
    ) -> aiocoap.Message:  # fmt: skip
        self.counters.add(f"{self.REJECTED}_{reason}")
        emit(
            log, self.EVENT, logging.WARNING, reason=reason, device=device,
            peer=_peer(request), code=str(code).split(" ")[0], detail=detail,
        )  # fmt: skip
        return _text(code, diag if diag is not None else f"{reason}: {detail}")

    def _unavailable(self, request: aiocoap.Message, device: int, detail: str) -> aiocoap.Message:
        resp = self._reject(
            request, aiocoap.SERVICE_UNAVAILABLE, "store_unavailable", detail, device,
            diag="store unavailable, retry later",
        )  # fmt: skip
        resp.opt.max_age = self.cfg.max_age_s
        return resp

    async def _device_key(self, request: aiocoap.Message, device: int) -> bytes | aiocoap.Message:
        """The device's key, or the answer to send: 5.03 (store down), 4.01 (unknown)."""
        try:
            key = await self.writer.device_key(device)
        except StoreError as e:
            return self._unavailable(request, device, str(e))
        if key is None:
            return self._reject(
                request, aiocoap.UNAUTHORIZED, "unknown_device", "not registered", device,
                diag="unknown device",
            )  # fmt: skip
        return key

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
        raise NotImplementedError


class ReportResource(_Resource):
    """`/r`: one report per POST."""

    def __init__(
        self, cfg: Config, writer: Writer, counters: Counters, decoder: Executor | None = None,
        relays: Relays | None = None,
    ) -> None:  # fmt: skip
        self.decoder = decoder
        self.relays = relays
        super().__init__(cfg, writer, counters)

    async def _render(self, request: aiocoap.Message) -> aiocoap.Message:
        code = aiocoap.numbers.codes.Code
        self.counters.add("reports_received")
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
        key = await self._device_key(request, device)
        if isinstance(key, aiocoap.Message):
            return key
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
        targets = self.relays.targets if self.relays is not None else ()
        try:
            saved = await self.writer.save(device, positions, events, received, targets)
        except StoreError as e:
            return self._unavailable(request, device, str(e))
        if self.relays is not None and saved.new_records:
            self.relays.stored()
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
        ack: dict[int, int] = {}
        if saved.highest_seq is not None:
            ack[AckKey.HIGHEST_SEQ] = saved.highest_seq
        if saved.route_version is not None:
            ack[AckKey.ROUTE_VERSION] = saved.route_version
        for name, value in saved.reporting.set().items():
            ack[REPORTING_KEYS[name]] = value
        resp = aiocoap.Message(code=code.CHANGED, payload=cbor2.dumps(ack, canonical=True))
        resp.opt.content_format = ContentFormat.CBOR
        return resp


def _route_query(request: aiocoap.Message) -> tuple[int, bytes | None] | str:
    """(device id, MAC or None) from `?d=ID&m=HEX`, or what is wrong with the query."""
    params: dict[str, str] = {}
    for q in request.opt.uri_query:
        name, _, value = q.partition("=")
        params[name] = value
    d = params.get("d", "")
    if not (d.isascii() and d.isdigit()) or len(d) > 10 or int(d) > MAX_DEVICE_ID:
        return f"d={d!r} is not a device id" if "d" in params else "no d=<device id>"
    m = params.get("m")
    try:
        mac = None if m is None else bytes.fromhex(m)
    except ValueError:
        mac = b""  # not hex: fails the MAC check like any other wrong MAC
    return int(d), mac


class RouteResource(_Resource):
    """`/rt?d=ID&m=MAC`: the device's route (docs/routes.md), block-wise when large."""

    REJECTED = "route_rejected"
    EVENT = "route_rejected"

    async def _render(self, request: aiocoap.Message) -> aiocoap.Message:
        code = aiocoap.numbers.codes.Code
        if request.code != code.GET:
            return self._reject(
                request, code.METHOD_NOT_ALLOWED, "method", f"{request.code} (GET only)"
            )
        accept = request.opt.accept
        if accept is not None and accept != ContentFormat.CBOR:
            return self._reject(
                request, code.NOT_ACCEPTABLE, "accept",
                f"accept {int(accept)}, have 60 (application/cbor)",
            )  # fmt: skip
        query = _route_query(request)
        if isinstance(query, str):
            return self._reject(request, code.BAD_REQUEST, "query", query)
        device, mac = query
        key = await self._device_key(request, device)
        if isinstance(key, aiocoap.Message):
            return key
        if mac is None or not hmac.compare_digest(mac, route.request_mac(key, device)):
            detail = "no m=<mac>" if mac is None else "MAC does not verify"
            return self._reject(
                request, code.UNAUTHORIZED, "bad_mac", detail, device, diag="bad mac"
            )
        try:
            stored = await self.writer.route(device)
        except StoreError as e:
            return self._unavailable(request, device, str(e))
        if stored is None:
            self.counters.add("route_not_found")
            emit(log, "route_not_found", device=device, peer=_peer(request))
            return _text(code.NOT_FOUND, "no route for this device")
        if stored.etag in request.opt.etags:
            self.counters.add("routes_not_modified")
            emit(
                log, "route_served", device=device, version=stored.version,
                bytes=len(stored.cbor), not_modified=True,
            )  # fmt: skip
            valid = aiocoap.Message(code=code.VALID)
            valid.opt.etag = stored.etag
            return valid
        return self._content(request, device, stored.version, stored.cbor, stored.etag)

    def _content(
        self, request: aiocoap.Message, device: int, version: int, payload: bytes, etag: bytes
    ) -> aiocoap.Message:
        block = request.opt.block2
        whole = block is None and len(payload) <= 2 ** (MAX_BLOCK_SZX + 4)
        if whole:
            num, szx, part, more = 0, MAX_BLOCK_SZX, payload, False
        else:
            num, szx = (0, MAX_BLOCK_SZX) if block is None else (block[0], block[2])
            if szx == 7:  # BERT is for CoAP over TCP/WebSockets, not UDP
                return self._reject(
                    request, aiocoap.BAD_REQUEST, "block", "szx 7 (BERT) over UDP", device
                )
            size = 2 ** (szx + 4)
            if num * size >= len(payload):
                return self._reject(
                    request, aiocoap.BAD_REQUEST, "block",
                    f"block {num} of {size} bytes is beyond the {len(payload)}-byte route",
                    device, diag="block out of range",
                )  # fmt: skip
            part = payload[num * size : (num + 1) * size]
            more = (num + 1) * size < len(payload)
        resp = aiocoap.Message(code=aiocoap.CONTENT, payload=part)
        resp.opt.content_format = ContentFormat.CBOR
        resp.opt.etag = etag
        if not whole:
            resp.opt.block2 = (num, more, szx)
            if num == 0:
                resp.opt.size2 = len(payload)
        if more:
            self.counters.add("route_blocks_served")
            return resp
        # The whole route, or its last block: the transfer is complete.
        self.counters.add("routes_served")
        blocks = 1 if whole else num + 1
        emit(
            log, "route_served", device=device, version=version, bytes=len(payload),
            blocks=blocks, block_size=None if whole else 2 ** (szx + 4), not_modified=False,
        )  # fmt: skip
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
    relays: Relays | None = None
    endpoint: metrics.Endpoint | None = None
    try:
        if g.decode_workers:
            decoder = await _start_decoder(g.decode_workers)
        await writer.open()
        if cfg.sinks:
            relays = Relays(cfg.sinks, g.fleet, g.db, g.busy_timeout_ms)
            await relays.start()
        if cfg.metrics.port:
            endpoint = metrics.start(cfg.metrics, counters, relays)
            emit(log, "metrics_started", bind=cfg.metrics.bind, port=endpoint.port)
        site = aiocoap.resource.Site()
        site.add_resource(REPORT_PATH, ReportResource(cfg, writer, counters, decoder, relays))
        site.add_resource(ROUTE_PATH, RouteResource(cfg, writer, counters))
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
        if relays is not None:
            await relays.stop()
        if endpoint is not None:
            endpoint.stop()
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
        except SinkStartError as e:
            emit(log, "start_failed", logging.ERROR, reason="sink", detail=str(e))
            print(f"vantrack gateway: {e}", file=sys.stderr)
            return 2
        except metrics.MetricsError as e:
            emit(log, "start_failed", logging.ERROR, reason="metrics", detail=str(e))
            print(f"vantrack gateway: {e}", file=sys.stderr)
            return 1
        except OSError as e:
            emit(log, "start_failed", logging.ERROR, reason="socket", detail=str(e))
            where = _hostport(cfg.gateway.bind, cfg.gateway.port)
            print(f"vantrack gateway: cannot listen on {where}: {e.strerror or e}", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(main())
