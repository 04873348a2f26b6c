"""Gateway commands: `vantrack gateway`, `devices`, `route`, `sinks`, `positions`, `events`,
`stops`, `decode`.

Each handler builds the configuration once (TOML file + flags, gateway/config.py) and
hands it down. A bad configuration is one line on stderr and exit code 2, as is a route
file that does not pass (every problem on its own line, nothing stored). Query output
is a table by default and JSON lines with --json; times are ISO-8601 UTC.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import secrets
import sys
import zoneinfo
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cbor2

from . import config as configmod
from . import route as routemod
from . import wire
from .sinks.base import jsonable
from .store import (
    EXTRA_ROUTE,
    EXTRA_VALUE,
    Device,
    Query,
    Reporting,
    StopsDay,
    Store,
    StoreError,
    from_ms,
    now_ms,
    to_ms,
)  # fmt: skip
from .wire import STATUS_NAMES, VALUE_NAMES

EXIT_CONFIG = 2
EXIT_BAD_ROUTE = 2

GATEWAY_HELP = """\
Receive the vans' reports (CoAP POST /r, CBOR, docs/wire-format.md) over UDP, check each
one (size, CDDL, device, MAC), store its records in SQLite in one transaction and answer
2.04 only after the commit. Serve each van its route (GET /rt, docs/routes.md) as loaded
with `vantrack route load`. Logs go to stderr, one event per line; when ready, one line
`gateway listening on HOST:PORT` goes to stdout. SIGINT/SIGTERM stop it cleanly.
See docs/gateway.md and docs/gateway.example.toml.
"""


def _config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration")
    g.add_argument(
        "--config", type=Path, metavar="FILE",
        help="TOML configuration file (docs/gateway.example.toml); flags override it",
    )  # fmt: skip
    g.add_argument(
        "--db", type=Path, metavar="PATH",
        help=f"SQLite database (default: config, else ${configmod.DB_ENV}, "
        f"else ./{configmod.DEFAULT_DB})",
    )  # fmt: skip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "gateway", help="run the CoAP gateway: receive, check and store the vans' reports",
        description=GATEWAY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _config_args(p)
    p.add_argument("--bind", metavar="ADDR", help="address to listen on (default :: = all)")
    p.add_argument("--port", type=int, help=f"UDP port (default {configmod.COAP_PORT})")
    p.add_argument(
        "--max-report-bytes", type=int, metavar="N",
        help="larger payloads get 4.13 (default 1024)",
    )  # fmt: skip
    p.add_argument(
        "--busy-timeout-ms", type=int, metavar="MS",
        help="how long a write waits for a database lock before 5.03 (default 2000)",
    )  # fmt: skip
    p.add_argument(
        "--metrics-port", type=int, metavar="PORT",
        help="serve Prometheus metrics on http://[metrics.bind]:PORT/metrics (default: off)",
    )  # fmt: skip
    p.add_argument("--log-format", choices=configmod.LOG_FORMATS, help="kv (default) or json")
    p.add_argument("--log-level", choices=configmod.LOG_LEVELS, help="default info")
    p.set_defaults(func=cmd_gateway)

    d = sub.add_parser(
        "devices", help="register, list and remove vans (device ids and keys)",
        description="The device registry in the store. Each van has a numeric id (in every "
        "report) and a 128-bit key that signs its reports; `add` writes the credentials "
        "file to flash onto the van.",
    )  # fmt: skip
    dsub = d.add_subparsers(dest="devices_cmd", metavar="ACTION", required=True)
    a = dsub.add_parser(
        "add", help="register a van and write its credentials file",
        description="Register a device: a new random 128-bit key, a numeric id (next free "
        "one unless --id), and the credentials file CREDENTIALS_DIR/NAME.json (mode 0600) "
        "holding device_id, device_name and key. The key is never printed. An existing "
        "name is reused (its file rewritten from the store) unless --new-key.",
    )  # fmt: skip
    a.add_argument("name", metavar="NAME", help="unique device name, e.g. van-07")
    a.add_argument("--id", type=int, dest="device_id", metavar="N", help="numeric device id")
    a.add_argument(
        "--new-key", action="store_true",
        help="give an existing device a new key (the old one stops working)",
    )  # fmt: skip
    a.add_argument(
        "--credentials-dir", type=Path, metavar="DIR",
        help="where to write NAME.json (default: config, else ./credentials)",
    )  # fmt: skip
    _config_args(a)
    a.set_defaults(func=cmd_devices_add)
    ls = dsub.add_parser(
        "list", help="list registered devices, what they sent and what their vans hold",
        description=DEVICES_LIST_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    _config_args(ls)
    ls.set_defaults(func=cmd_devices_list)
    rm = dsub.add_parser(
        "remove", help="forget a device (its stored records stay)",
        description="Remove a device from the registry: its reports are refused (4.01) from "
        "now on. Positions and events already stored are kept and still listed by id. "
        "The credentials file is left where it is.",
    )  # fmt: skip
    rm.add_argument("device", metavar="NAME|ID")
    _config_args(rm)
    rm.set_defaults(func=cmd_devices_remove)
    rep = dsub.add_parser(
        "reporting", help="show or set a van's reporting thresholds (sent in acks)",
        description=REPORTING_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    rep.add_argument("device", metavar="DEVICE", help="device name or id")
    for opt in REPORTING_OPTIONS:
        rep.add_argument(
            opt.flag, dest=opt.field, metavar=opt.metavar, type=float if opt.scale else int,
            help=f"{opt.help} ({opt.low}..{opt.high})",
        )  # fmt: skip
    rep.add_argument(
        "--reset", action="store_true",
        help="remove every override first (the van goes back to its own defaults); "
        "with value options, only those are set afterwards",
    )  # fmt: skip
    rep.add_argument("--json", action="store_true", help="the overrides as one JSON object")
    _config_args(rep)
    rep.set_defaults(func=cmd_devices_reporting)

    _register_route(sub)
    _register_sinks(sub)

    for kind in ("positions", "events"):
        q = sub.add_parser(
            kind, help=f"query stored {kind}",
            description=f"Stored {kind}, ordered by device then device time (UTC). "
            "T is ISO-8601 (2026-05-09T07:30:00Z; no zone means UTC) or a time ago: "
            "30s, 10m, 2h, 1d.",
        )  # fmt: skip
        q.add_argument("--device", metavar="NAME|ID", help="only this device")
        q.add_argument("--since", metavar="T", help="device time at or after T")
        q.add_argument("--until", metavar="T", help="device time at or before T")
        q.add_argument("--limit", type=int, metavar="N", help="at most N rows")
        q.add_argument("--json", action="store_true", help="one JSON object per line")
        _config_args(q)
        q.set_defaults(func=cmd_positions if kind == "positions" else cmd_events)

    st = sub.add_parser(
        "stops", help="a van's day: planned stops against arrivals, departures and dwell",
        description=STOPS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    st.add_argument("device", metavar="DEVICE", help="device name or id")
    st.add_argument("--date", metavar="YYYY-MM-DD", help="the day, in --tz (default: today there)")
    st.add_argument(
        "--tz", metavar="ZONE", default="UTC",
        help="IANA time zone that days and times are in, e.g. Europe/Madrid (default UTC)",
    )  # fmt: skip
    st.add_argument("--json", action="store_true", help="one JSON object for the day")
    _config_args(st)
    st.set_defaults(func=cmd_stops)

    dec = sub.add_parser(
        "decode", help="show what a report payload holds (CBOR diagnostic + fields)",
        description="Decode one report: CBOR diagnostic notation, then the decoded fields "
        "(device, seq range, t0, each record with absolute time, position, speed). "
        "Exit code 1 if it is not a valid report.",
    )  # fmt: skip
    dec.add_argument(
        "payload", metavar="HEX|-",
        help="the payload in hex, or '-' to read it from stdin (raw bytes or hex text)",
    )  # fmt: skip
    dec.add_argument(
        "--verify", action="store_true",
        help="also check the MAC with the device's key from the store",
    )  # fmt: skip
    _config_args(dec)
    dec.set_defaults(func=cmd_decode)


DEVICES_LIST_HELP = """\
The registered devices: id, name, when registered, last seen (gateway time of the latest
report stored), last fix (device GPS time of the newest record, the one with the highest
seq), last seq, positions and events stored, and the van's flash queue as its status
records (event type 16) tell it: queued, the records the van still holds (what its
latest status said it held, less the older records received since), and dropped, the
positions it thinned out of a full queue (summed over its status records). queued and
dropped are "-" (null in JSON) for a van that never sent a status record.
"""
REPORTING_HELP = """\
A van's reporting thresholds: when it sends a position while moving (at most every
--period seconds, and when it has moved --distance metres, turned --angle degrees or
changed speed by --speed-delta km/h) and how often while stopped (--stopped-period).
Only the values set here are sent, in the answer to each report (keys 2..6 of the ack,
docs/wire-format.md), so the van applies them on its next report; for the rest it keeps
its own defaults. With no value option, shows the overrides. --reset removes them all
(the keys stop being sent; the van goes back to its defaults). Works while the gateway
runs. Exit code 1 for a value out of range or an unknown device.
"""


@dataclasses.dataclass(frozen=True)
class _ReportingOption:
    flag: str
    field: str  # store.Reporting field
    metavar: str
    low: int  # range of the value as given (km/h for --speed-delta)
    high: int
    help: str
    scale: float = 0  # given in another unit: stored value = round(given / scale)


KMH_PER_DMS = 0.36
# fmt: off
REPORTING_OPTIONS = (
    _ReportingOption("--period", "period_s", "S", 1, 86400, "minimum period while moving, s"),
    _ReportingOption("--stopped-period", "stopped_period_s", "S", 1, 86400,
                     "period while stopped, s"),
    _ReportingOption("--distance", "distance_m", "M", 1, 100000, "distance moved, m"),
    _ReportingOption("--angle", "angle_deg", "DEG", 1, 180, "heading change, degrees"),
    _ReportingOption("--speed-delta", "speed_delta_dms", "KMH", 1, 200,
                     "speed change, km/h, sent as dm/s rounded", KMH_PER_DMS),
)
# fmt: on


ROUTE_HELP = """\
The day's route of one van: its ordered stops, its depot and plain zones, from a GeoJSON
FeatureCollection ([lon, lat]; docs/routes.md). The gateway serves it to the van as CBOR
on CoAP GET /rt; each load replaces the van's route under a new version number, which
the van learns from the answer to its next report and then fetches.
"""
ROUTE_LOAD_HELP = """\
Check FILE and store it as DEVICE's route (replacing the one it has, version + 1).
Stops: Point (radius_m, or radius_in_m/radius_out_m; default 60/150 m) or Polygon
(buffer_m, default 90 m) with properties stop_id and seq, optional window_start,
window_end (ISO 8601 with offset) and service_s. One feature with role "depot", any with
role "zone" and a zone_id. Thresholds in the collection's "properties" (hdop_max,
sats_min, confirm_s, hold_s, depot_leave_s). Every problem is printed with the feature it
is in; then nothing is stored and the exit code is 2. Works while the gateway runs.
"""

STOPS_HELP = """\
What the van recorded against its route for one day: for each planned stop (the route
version in force that day, in seq order) the arrival (first fix inside the arrived
boundary: the arrived event's time minus the seconds it had been inside), the departure
(when the van decided it had left: hold_s after its last fix near the stop), the dwell
the van measured (first fix inside to last fix inside or near) and whether it was
visited in sequence (no out_of_sequence event named it); then stops never visited. A day
runs from 00:00 to 24:00 in --tz by the events' device (GPS) time. Events map their
fence numbers through the route version they were decided under, so a route replaced
mid-day counts each stop once, by stop id. Exit code 1 for an unknown device or a day
with no route. See docs/routes.md.
"""


def _register_route(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser(
        "route", help="load, show and remove a van's route (stops, depot, zones)",
        description=ROUTE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    rsub = r.add_subparsers(dest="route_cmd", metavar="ACTION", required=True)
    load = rsub.add_parser(
        "load", help="check a GeoJSON route file and store it for a van",
        description=ROUTE_LOAD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    load.add_argument("device", metavar="DEVICE", help="device name or id")
    load.add_argument("file", metavar="FILE", type=Path, help="GeoJSON FeatureCollection")
    _config_args(load)
    load.set_defaults(func=cmd_route_load)
    check = rsub.add_parser(
        "check", help="check a route file without storing it",
        description="Check FILE as `route load` does and print what the van would get "
        "(counts, CBOR size); nothing is stored. Exit code 2 if it does not pass.",
    )  # fmt: skip
    check.add_argument("file", metavar="FILE", type=Path, help="GeoJSON FeatureCollection")
    check.set_defaults(func=cmd_route_check)
    show = rsub.add_parser(
        "show", help="show a van's route as the van gets it",
        description="The route stored for DEVICE, decoded from the CBOR the gateway "
        "serves: version, size, ETag, thresholds, depot, stops in order, zones.",
    )  # fmt: skip
    show.add_argument("device", metavar="DEVICE", help="device name or id")
    fmt = show.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object")
    fmt.add_argument("--geojson", action="store_true", help="the GeoJSON file it was loaded from")
    _config_args(show)
    show.set_defaults(func=cmd_route_show)
    rm = rsub.add_parser(
        "rm", help="remove a van's route",
        description="Delete DEVICE's route: GET /rt answers 4.04 and reports' answers stop "
        "carrying a route version. A van keeps the route it holds; to clear it during a "
        "round, load a FeatureCollection with no stops instead.",
    )  # fmt: skip
    rm.add_argument("device", metavar="DEVICE", help="device name or id")
    _config_args(rm)
    rm.set_defaults(func=cmd_route_rm)


SINKS_HELP = """\
The backends the gateway relays to ([[sink]] tables in its TOML file, docs/sinks.md):
MQTT brokers, webhooks, Traccar. Every record stored enters the outbox of each enabled
sink that takes it, in the same transaction, and leaves it once the backend has it.
These commands read and change the outboxes in the database; they work while the
gateway runs (it notices within a second) and while it is stopped.
"""


def _register_sinks(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser(
        "sinks", help="relays to MQTT, webhooks, Traccar: status, replay, enable",
        description=SINKS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    ssub = s.add_subparsers(dest="sinks_cmd", metavar="ACTION", required=True)
    st = ssub.add_parser(
        "status", help="per sink: enabled, pending, oldest pending, delivered, last error",
        description="One line per sink the gateway was ever configured with: whether it "
        "relays (or why not), records pending in its outbox and the age of the oldest, "
        "records delivered, the last delivery and the last error.",
    )  # fmt: skip
    st.add_argument("--json", action="store_true", help="one JSON object per sink")
    _config_args(st)
    st.set_defaults(func=cmd_sinks_status)
    rp = ssub.add_parser(
        "replay", help="deliver stored records to a sink again",
        description="Put the records the gateway stored (received) since T into SINK's "
        "outbox again, in the order they were stored, filtered by the sink's filter. "
        "Records still pending stay where they are. Receivers see the same idempotency "
        "keys as the first time (deduplicating receivers will drop them). T is ISO-8601 "
        "or a time ago: 30s, 10m, 2h, 1d.",
    )  # fmt: skip
    rp.add_argument("sink", metavar="SINK", help="sink name (see `vantrack sinks status`)")
    rp.add_argument("--since", metavar="T", required=True, help="stored at or after T")
    rp.add_argument("--until", metavar="T", help="stored before T (default: now)")
    rp.add_argument("--device", metavar="NAME|ID", help="only this device's records")
    _config_args(rp)
    rp.set_defaults(func=cmd_sinks_replay)
    en = ssub.add_parser(
        "enable", help="resume a sink the gateway disabled after failing too long",
        description="Clear a sink disabled by the gateway (failing for retry_for_s, or its "
        "backend answered that it is gone); its outbox, kept meanwhile, is delivered.",
    )  # fmt: skip
    en.add_argument("sink", metavar="SINK", help="sink name")
    _config_args(en)
    en.set_defaults(func=cmd_sinks_enable)


# ---- shared ----------------------------------------------------------------------------
class _Exit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _fail(code: int, message: str) -> int:
    print(f"vantrack: {message}", file=sys.stderr)
    return code


def _config(args: argparse.Namespace, **overrides: Any) -> configmod.Config:
    try:
        return configmod.load(
            getattr(args, "config", None), {"gateway.db": getattr(args, "db", None), **overrides}
        )
    except configmod.ConfigError as e:
        raise _Exit(EXIT_CONFIG, f"config: {e}") from None


def _open(cfg: configmod.Config) -> Store:
    try:
        return Store(cfg.gateway.db, busy_timeout_ms=cfg.gateway.busy_timeout_ms)
    except StoreError as e:
        raise _Exit(1, f"cannot open the store: {e}") from None


def _handler(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except _Exit as e:
            return _fail(e.code, str(e))
        except StoreError as e:
            return _fail(1, f"store: {e}")

    run.__doc__ = fn.__doc__
    return run


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    t = from_ms(ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 100000}Z"


def _iso_s(ms: int | None) -> str:
    return "-" if ms is None else from_ms(ms).strftime("%Y-%m-%dT%H:%M:%SZ")


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: dt.datetime | None = None) -> int:
    """ISO-8601 (UTC unless it says otherwise) or a time ago (10m, 2h); Unix ms."""
    m = _RELATIVE.match(text.strip())
    if m:
        now = now or dt.datetime.now(dt.UTC)
        return to_ms(now - dt.timedelta(seconds=float(m[1]) * _UNITS[m[2]]))
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise _Exit(1, f"bad time {text!r}: use ISO-8601 or 30s/10m/2h/1d") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return to_ms(t)


def _resolve(store: Store, ref: str) -> Device:
    dev = store.device(ref)
    if dev is None and ref.isdigit():
        dev = store.device(int(ref))
    if dev is None:
        raise _Exit(1, f"no device {ref!r} (see `vantrack devices list`)")
    return dev


def _table(headers: list[str], rows: Iterable[list[str]], right: set[int]) -> None:
    rows = list(rows)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(line(headers))
    for r in rows:
        print(line(r))


# ---- gateway ---------------------------------------------------------------------------
@_handler
def cmd_gateway(args: argparse.Namespace) -> int:
    from . import log, server  # aiocoap import only for the service

    cfg = _config(
        args,
        **{
            "gateway.bind": args.bind,
            "gateway.port": args.port,
            "gateway.max_report_bytes": args.max_report_bytes,
            "gateway.busy_timeout_ms": args.busy_timeout_ms,
            "metrics.port": args.metrics_port,
            "log.format": args.log_format,
            "log.level": args.log_level,
        },
    )
    log.setup(cfg.log)
    return server.run(cfg)


# ---- sinks -----------------------------------------------------------------------------
def _age(ms: int | None, now: int) -> str:
    """A duration as 45s, 12m05s, 3h02m, 2d04h."""
    if ms is None:
        return "-"
    s = max(0, (now - ms) // 1000)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _sink_state(st: Any) -> str:
    if not st.configured:
        return "no: not in the config"
    if not st.enabled:
        return "no: enabled = false"
    if st.disabled_ms is not None:
        return f"DISABLED {_iso_s(st.disabled_ms)}"
    if st.failing_since_ms is not None:
        return "yes, failing"
    return "yes"


@_handler
def cmd_sinks_status(args: argparse.Namespace) -> int:
    from .outbox import Outbox

    with contextlib.closing(_open(_config(args))) as store:
        states = Outbox(store).status()
    now = now_ms()
    if args.json:
        for st in states:
            print(
                json.dumps(
                    {
                        "sink": st.name, "type": st.type, "target": st.target,
                        "enabled": st.active, "configured": st.configured,
                        "disabled": None if st.disabled_ms is None else _iso_s(st.disabled_ms),
                        "disabled_reason": st.disabled_reason,
                        "pending": st.pending,
                        "oldest_pending_s": None if st.oldest_pending_ms is None
                        else max(0, now - st.oldest_pending_ms) / 1000,
                        "delivered": st.delivered,
                        "last_delivered": None if st.last_delivered_ms is None
                        else _iso_s(st.last_delivered_ms),
                        "failing_since": None if st.failing_since_ms is None
                        else _iso_s(st.failing_since_ms),
                        "last_error": st.last_error,
                        "last_error_at": None if st.last_error_ms is None
                        else _iso_s(st.last_error_ms),
                    }
                )
            )  # fmt: skip
        return 0
    if not states:
        print("no sinks: add [[sink]] tables to the gateway's config (docs/sinks.md)")
        return 0
    _table(
        ["sink", "type", "enabled", "pending", "oldest", "delivered", "last delivery",
         "last error"],
        (
            [
                st.name, st.type, _sink_state(st), str(st.pending),
                _age(st.oldest_pending_ms, now), str(st.delivered),
                _iso_s(st.last_delivered_ms),
                "-" if st.last_error is None
                else f"{_age(st.last_error_ms, now)} ago: {st.last_error[:70]}",
            ]
            for st in states
        ),
        right={3, 4, 5},
    )  # fmt: skip
    for st in states:
        if st.disabled_reason:
            print(f"{st.name} was disabled: {st.disabled_reason}")
            print(f"  resume with: vantrack sinks enable {st.name}")
    return 0


@_handler
def cmd_sinks_replay(args: argparse.Namespace) -> int:
    from .outbox import Outbox

    since = parse_time(args.since)
    until = None if args.until is None else parse_time(args.until)
    with contextlib.closing(_open(_config(args))) as store:
        device = None if args.device is None else _resolve(store, args.device).id
        try:
            queued, pending = Outbox(store).replay(args.sink, since, until, device)
        except KeyError:
            names = ", ".join(st.name for st in Outbox(store).status()) or "none"
            return _fail(1, f"no sink {args.sink!r} (sinks: {names})")
    print(
        f"queued {_plural(queued, 'record')} for {args.sink} (stored since {_iso_s(since)})"
        + (f"; {pending} already pending" if pending else "")
    )
    return 0


@_handler
def cmd_sinks_enable(args: argparse.Namespace) -> int:
    from .outbox import Outbox

    with contextlib.closing(_open(_config(args))) as store:
        box = Outbox(store)
        before = {st.name: st for st in box.status()}
        if args.sink not in before:
            return _fail(1, f"no sink {args.sink!r} (sinks: {', '.join(before) or 'none'})")
        box.enable(args.sink)
    st = before[args.sink]
    if st.disabled_ms is None:
        print(f"{args.sink} was not disabled; {st.pending} pending")
    else:
        print(f"{args.sink} enabled again; {st.pending} pending will be delivered")
    return 0


# ---- devices ---------------------------------------------------------------------------
def write_credentials(directory: Path, dev: Device) -> Path:
    """<dir>/<name>.json, readable by its owner only (it holds the key)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{dev.name}.json"
    body = json.dumps(
        {"device_id": dev.id, "device_name": dev.name, "key": dev.key.hex()}, indent=2
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        os.write(fd, (body + "\n").encode())
    finally:
        os.close(fd)
    return path


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@_handler
def cmd_devices_add(args: argparse.Namespace) -> int:
    cfg = _config(args, **{"gateway.credentials_dir": args.credentials_dir})
    if not _NAME.match(args.name):
        return _fail(1, f"bad device name {args.name!r}: letters, digits, . _ - (max 64)")
    if args.device_id is not None and not 0 <= args.device_id <= 0xFFFFFFFF:
        return _fail(1, f"--id {args.device_id}: a device id is 0..4294967295")
    with contextlib.closing(_open(cfg)) as store:
        dev = store.device(args.name)
        if dev is not None:
            if args.device_id is not None and args.device_id != dev.id:
                return _fail(1, f"device {dev.name} exists with id {dev.id}, not {args.device_id}")
            if args.new_key:
                store.set_key(dev.id, secrets.token_bytes(16))
                dev = store.device(dev.id)
                assert dev is not None
                what = "new key for existing device"
            else:
                what = "device exists, reusing its id and key:"
        else:
            if args.device_id is not None and store.device(args.device_id) is not None:
                return _fail(1, f"device id {args.device_id} is taken")
            dev = store.add_device(args.name, secrets.token_bytes(16), args.device_id)
            what = "added device"
        path = write_credentials(cfg.gateway.credentials_dir, dev)
    print(f"{what} {dev.name} (id {dev.id}); credentials: {path}")
    return 0


@_handler
def cmd_devices_list(args: argparse.Namespace) -> int:
    with contextlib.closing(_open(_config(args))) as store:
        devices = store.devices()
    if args.json:
        for d in devices:
            print(
                json.dumps(
                    {
                        "device_id": d.id,
                        "device_name": d.name,
                        "created": _iso_s(d.created_ms),
                        "last_seen": None if d.last_seen_ms is None else _iso_s(d.last_seen_ms),
                        "last_fix": None if d.last_fix_ms is None else _iso(d.last_fix_ms),
                        "last_seq": d.last_seq,
                        "positions": d.positions,
                        "events": d.events,
                        "queued": None if d.queue is None else d.queue.queued,
                        "dropped": None if d.queue is None else d.queue.dropped,
                    }  # fmt: skip
                )
            )
        return 0
    _table(
        [
            "id",
            "name",
            "created",
            "last seen",
            "last fix",
            "last seq",
            "positions",
            "events",
            "queued",
            "dropped",
        ],
        (
            [
                str(d.id),
                d.name,
                _iso_s(d.created_ms),
                _iso_s(d.last_seen_ms),
                _iso_s(d.last_fix_ms),
                "-" if d.last_seq is None else str(d.last_seq),
                str(d.positions),
                str(d.events),
                "-" if d.queue is None else str(d.queue.queued),
                "-" if d.queue is None else str(d.queue.dropped),
            ]
            for d in devices
        ),  # fmt: skip
        right={0, 5, 6, 7, 8, 9},
    )
    return 0


@_handler
def cmd_devices_remove(args: argparse.Namespace) -> int:
    with contextlib.closing(_open(_config(args))) as store:
        dev = _resolve(store, args.device)
        counts = {d.id: d for d in store.devices()}[dev.id]
        store.remove_device(dev.id)
    print(
        f"removed device {dev.name} (id {dev.id}); its reports are refused from now on. "
        f"{counts.positions} positions and {counts.events} events stay in the store."
    )
    return 0


def _reporting_values(args: argparse.Namespace) -> Reporting:
    """The value options given, checked and in the stored units; _Exit(1) naming the option."""
    values: dict[str, int] = {}
    for opt in REPORTING_OPTIONS:
        given = getattr(args, opt.field)
        if given is None:
            continue
        if not opt.low <= given <= opt.high:  # also refuses nan
            unit = opt.metavar.lower() if opt.metavar != "DEG" else "degrees"
            raise _Exit(1, f"{opt.flag} {given:g}: must be {opt.low}..{opt.high} {unit}")
        values[opt.field] = round(given / opt.scale) if opt.scale else given
    return Reporting(**values)


def _reporting_json(r: Reporting) -> dict[str, Any]:
    out: dict[str, Any] = dict(r.set())
    if r.speed_delta_dms is not None:
        out["speed_delta_kmh"] = round(r.speed_delta_dms * KMH_PER_DMS, 2)
    return out


def _reporting_text(r: Reporting) -> str:
    parts = []
    for opt in REPORTING_OPTIONS:
        v = getattr(r, opt.field)
        if v is None:
            continue
        shown = f"{v} dm/s ({v * KMH_PER_DMS:.1f} km/h)" if opt.scale else f"{v}"
        parts.append(f"{opt.flag.lstrip('-')} {shown}")
    return ", ".join(parts) if parts else "none (the van's own defaults)"


@_handler
def cmd_devices_reporting(args: argparse.Namespace) -> int:
    values = _reporting_values(args)
    with contextlib.closing(_open(_config(args))) as store:
        dev = _resolve(store, args.device)
        if values.set() or args.reset:
            current = store.set_reporting(dev.id, values, reset=args.reset)
            what = "reporting overrides now"
        else:
            current = store.reporting(dev.id)
            what = "reporting overrides"
    if args.json:
        print(json.dumps({"device_id": dev.id, "device_name": dev.name}
                         | _reporting_json(current)))  # fmt: skip
    else:
        print(f"{dev.name} (id {dev.id}) {what}: {_reporting_text(current)}")
    return 0


# ---- route -----------------------------------------------------------------------------
def _route_file(path: Path) -> routemod.Loaded:
    """The checked route file; every problem to stderr and _Exit(2) if it does not pass."""
    try:
        loaded = routemod.load_file(path)
    except routemod.RouteFileError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        n = sum(not line.startswith(f"{path}: ... and") for line in e.errors)
        raise _Exit(EXIT_BAD_ROUTE, f"{path}: {_plural(n, 'error')}; nothing stored") from None
    for line in loaded.warnings:
        print(f"warning: {line}", file=sys.stderr)
    try:  # the contract holds for any version number: check with the widest one
        routemod.encode_checked(loaded.route, routemod.MAX_VERSION)
    except routemod.RouteFormatError as e:
        raise _Exit(1, f"{path}: the encoded route breaks route.cddl (a bug): {e}") from None
    return loaded


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _blocks(size: int) -> str:
    return f"{_plural(-(-size // 256), 'block')} of 256 bytes"


@_handler
def cmd_route_check(args: argparse.Namespace) -> int:
    loaded = _route_file(args.file)
    payload = loaded.route.encode(1)
    print(
        f"{args.file}: ok: {routemod.summary(loaded.route)}; {len(payload)} bytes of CBOR "
        f"({_blocks(len(payload))})"
    )
    return 0


@_handler
def cmd_route_load(args: argparse.Namespace) -> int:
    cfg = _config(args)
    loaded = _route_file(args.file)
    with contextlib.closing(_open(cfg)) as store:
        dev = _resolve(store, args.device)
        stored = store.put_route(dev.id, loaded.route.encode, loaded.text)
    print(
        f"loaded route version {stored.version} for {dev.name} (id {dev.id}): "
        f"{routemod.summary(loaded.route)}; {len(stored.cbor)} bytes of CBOR "
        f"({_blocks(len(stored.cbor))}), etag {stored.etag.hex()}"
    )
    return 0


@_handler
def cmd_route_rm(args: argparse.Namespace) -> int:
    with contextlib.closing(_open(_config(args))) as store:
        dev = _resolve(store, args.device)
        old = store.remove_route(dev.id)
    if old is None:
        return _fail(1, f"{dev.name} (id {dev.id}) has no route")
    print(f"removed route version {old.version} of {dev.name} (id {dev.id})")
    return 0


def _fence_json(f: routemod.Fence) -> dict[str, Any]:
    out: dict[str, Any] = {"id": f.id}
    if f.name:
        out["name"] = f.name
    if f.seq is not None:
        out["seq"] = f.seq
    verts = [[lat / 1e6, lon / 1e6] for lat, lon in f.vertices]
    if f.kind == routemod.Kind.CIRCLE:
        out |= {"kind": "circle", "lat": verts[0][0], "lon": verts[0][1],
                "radius_in_m": f.inner_m, "radius_out_m": f.outer_m}  # fmt: skip
    else:
        out |= {"kind": "polygon", "vertices": verts, "buffer_m": f.outer_m}
    for key, t in (("window_start", f.window_start), ("window_end", f.window_end)):
        if t is not None:
            out[key] = f"{wire.gps_time(t):%Y-%m-%dT%H:%M:%SZ}"
    if f.service_s is not None:
        out["service_s"] = f.service_s
    return out


def _fence_cells(f: routemod.Fence) -> list[str]:
    lat, lon = f.vertices[0]
    where = f"{lat / 1e6:.6f} {lon / 1e6:.6f}"
    if f.kind == routemod.Kind.CIRCLE:
        shape, size = "circle", f"{f.inner_m}/{f.outer_m}"
    else:  # the first vertex stands for where it is; the buffer for its size
        shape, size = f"polygon/{len(f.vertices)}", f"+{f.outer_m}"
    window = "-"
    if f.window_start is not None or f.window_end is not None:
        window = "..".join(
            "" if t is None else f"{wire.gps_time(t):%Y-%m-%dT%H:%MZ}"
            for t in (f.window_start, f.window_end)
        )
    return [f.id, shape, where, size, window, _opt(f.service_s), f.name or "-"]


@_handler
def cmd_route_show(args: argparse.Namespace) -> int:
    with contextlib.closing(_open(_config(args))) as store:
        dev = _resolve(store, args.device)
        stored = store.route(dev.id)
    if stored is None:
        return _fail(1, f"{dev.name} (id {dev.id}) has no route (vantrack route load)")
    if args.geojson:
        sys.stdout.write(stored.geojson)
        return 0
    version, route = routemod.decode(stored.cbor)
    # Names are not sent to the van; take them from the file the route came from.
    try:
        names = {f.id: f.name for f in routemod.load_geojson(stored.geojson).route.fences()}
    except routemod.RouteFileError:  # stored by a gateway with other rules: no names then
        names = {}
    route = routemod.Route(
        route.params,
        None if route.depot is None else _named(route.depot, names),
        tuple(_named(s, names) for s in route.stops),
        tuple(_named(z, names) for z in route.zones),
    )
    params = dict(routemod.param_names(route.params))
    if args.json:
        print(json.dumps({
            "device_id": dev.id, "device_name": dev.name, "version": version,
            "loaded": _iso_s(stored.loaded_ms), "bytes": len(stored.cbor),
            "etag": stored.etag.hex(), "params": params,
            "depot": None if route.depot is None else _fence_json(route.depot),
            "stops": [_fence_json(s) for s in route.stops],
            "zones": [_fence_json(z) for z in route.zones],
        }))  # fmt: skip
        return 0
    print(
        f"{dev.name} (id {dev.id}): route version {version}, loaded {_iso_s(stored.loaded_ms)}, "
        f"{len(stored.cbor)} bytes, etag {stored.etag.hex()}"
    )
    print("thresholds: " + (", ".join(f"{k} {v:g}" for k, v in params.items()) or "defaults"))
    print(routemod.summary(route))
    rows = []
    if route.depot is not None:
        rows.append(["depot", *_fence_cells(route.depot)])
    rows += [[str(s.seq), *_fence_cells(s)] for s in route.stops]
    rows += [["zone", *_fence_cells(z)] for z in route.zones]
    print()
    _table(["seq", "id", "fence", "lat lon", "radii m", "window (UTC)", "service s", "name"],
           rows, right={0})  # fmt: skip
    return 0


def _named(f: routemod.Fence, names: dict[str, str]) -> routemod.Fence:
    return dataclasses.replace(f, name=names.get(f.id, ""))


# ---- positions / events ----------------------------------------------------------------
def _query(args: argparse.Namespace, store: Store) -> Query:
    if args.limit is not None and args.limit < 0:
        raise _Exit(1, "--limit must be >= 0")
    return Query(
        device_id=None if args.device is None else _resolve(store, args.device).id,
        since_ms=None if args.since is None else parse_time(args.since),
        until_ms=None if args.until is None else parse_time(args.until),
        limit=args.limit,
    )


def _opt(v: Any, fmt: str = "{}") -> str:
    return "-" if v is None else fmt.format(v)


def _kmh(speed_dms: int | None) -> float | None:
    return None if speed_dms is None else round(speed_dms * 0.36, 2)


@_handler
def cmd_positions(args: argparse.Namespace) -> int:
    with contextlib.closing(_open(_config(args))) as store:
        rows = store.positions(_query(args, store))
        if args.json:
            for r in rows:
                print(
                    json.dumps(
                        {
                            "device_id": r["device_id"],
                            "device_name": r["name"],
                            "seq": r["seq"],
                            "time": _iso(r["time_ms"]),
                            "lat": r["lat_e6"] / 1e6,
                            "lon": r["lon_e6"] / 1e6,
                            "speed_kmh": _kmh(r["speed_dms"]),
                            "course": r["course_deg"],
                            "hdop": None if r["hdop_x10"] is None else r["hdop_x10"] / 10,
                            "sats": r["sats"],
                            "received": _iso(r["received_ms"]),
                        }  # fmt: skip
                    )
                )
            return 0
        _table(
            ["device", "seq", "time (UTC)", "lat", "lon", "km/h", "course", "hdop", "sats"],
            (
                [
                    r["name"] or f"#{r['device_id']}",
                    str(r["seq"]),
                    _iso(r["time_ms"]),
                    f"{r['lat_e6'] / 1e6:.6f}",
                    f"{r['lon_e6'] / 1e6:.6f}",
                    _opt(_kmh(r["speed_dms"]), "{:.1f}"),
                    _opt(r["course_deg"]),
                    _opt(r["hdop_x10"] and r["hdop_x10"] / 10),
                    _opt(r["sats"]),
                ]
                for r in rows
            ),  # fmt: skip
            right={1, 3, 4, 5, 6, 7, 8},
        )
    return 0


class _FenceIds:
    """Fence number -> id through the route version an event names (or, without one,
    the device's current route); versions decoded once per command."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cache: dict[tuple[int, int], list[str] | None] = {}
        self.current: dict[int, int | None] = {}

    def __call__(self, device_id: int, fence: Any, version: Any) -> str | None:
        if isinstance(fence, str):
            return fence
        if not isinstance(fence, int):
            return None
        if not isinstance(version, int):
            if device_id not in self.current:
                stored = self.store.route(device_id)
                self.current[device_id] = None if stored is None else stored.version
            version = self.current[device_id]
            if version is None:
                return None
        if (device_id, version) not in self.cache:
            self.cache[device_id, version] = self.store.fence_ids(device_id, version)
        ids = self.cache[device_id, version]
        return ids[fence] if ids is not None and 0 <= fence < len(ids) and ids[fence] else None


@_handler
def cmd_events(args: argparse.Namespace) -> int:
    with contextlib.closing(_open(_config(args))) as store:
        rows = store.events(_query(args, store))
        fence_ids = _FenceIds(store)

        def raw(r: Any) -> dict[Any, Any]:
            return {} if r["extra"] is None else dict(cbor2.loads(r["extra"]))

        def extra(r: Any) -> dict[str, Any]:
            return {} if r["extra"] is None else jsonable(raw(r))

        def fence_id(r: Any) -> str | None:
            return fence_ids(r["device_id"], r["fence"], raw(r).get(EXTRA_ROUTE))

        def named(r: Any) -> dict[str, Any]:
            x = raw(r)
            out: dict[str, Any] = {"fence_id": fence_id(r), "route_version": x.get(EXTRA_ROUTE)}
            if r["type"] == wire.EventType.STATUS:
                for key, field in STATUS_NAMES.items():
                    if key in x:
                        out[field] = jsonable(x[key])
                cause = x.get(wire.StatusKey.CAUSE)
                if isinstance(cause, int):
                    out["cause_name"] = wire.cause_name(cause)
                return out
            name = VALUE_NAMES.get(r["type"])
            if name is not None and EXTRA_VALUE in x:
                out[name] = jsonable(x[EXTRA_VALUE])
                if r["type"] == wire.EventType.OUT_OF_SEQUENCE:
                    out["expected_id"] = fence_ids(
                        r["device_id"], x[EXTRA_VALUE], x.get(EXTRA_ROUTE)
                    )
            return out

        def fence_cell(r: Any) -> str:
            if r["fence"] is None or isinstance(r["fence"], str):
                return _opt(r["fence"])
            sid = fence_id(r)
            return str(r["fence"]) if sid is None else f"{r['fence']} {sid}"

        if args.json:
            for r in rows:
                print(
                    json.dumps(
                        {
                            "device_id": r["device_id"],
                            "device_name": r["name"],
                            "seq": r["seq"],
                            "time": _iso(r["time_ms"]),
                            "type": r["type"],
                            "event": wire.event_name(r["type"]),
                            "lat": None if r["lat_e6"] is None else r["lat_e6"] / 1e6,
                            "lon": None if r["lon_e6"] is None else r["lon_e6"] / 1e6,
                            "fence": r["fence"],
                            "hdop": None if r["hdop_x10"] is None else r["hdop_x10"] / 10,
                            "sats": r["sats"],
                            "extra": extra(r),
                            "received": _iso(r["received_ms"]),
                        }  # fmt: skip
                        | named(r)
                    )
                )
            return 0
        _table(
            ["device", "seq", "time (UTC)", "event", "lat", "lon", "fence", "extra"],
            (
                [
                    r["name"] or f"#{r['device_id']}",
                    str(r["seq"]),
                    _iso(r["time_ms"]),
                    wire.event_name(r["type"]),
                    _opt(r["lat_e6"] and r["lat_e6"] / 1e6, "{:.6f}"),
                    _opt(r["lon_e6"] and r["lon_e6"] / 1e6, "{:.6f}"),
                    fence_cell(r),
                    json.dumps(extra(r)) if r["extra"] is not None else "-",
                ]
                for r in rows
            ),  # fmt: skip
            right={1, 4, 5},
        )
    return 0


# ---- stops -----------------------------------------------------------------------------
def _zone(name: str) -> dt.tzinfo:
    if name.upper() == "UTC":
        return dt.UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise _Exit(1, f"--tz {name!r}: not a known IANA time zone (e.g. Europe/Madrid)") from None


def _day(text: str | None, tz: dt.tzinfo) -> tuple[dt.date, int, int]:
    """The day and its [start, end) in Unix ms, midnight to midnight in tz."""
    if text is None:
        day = dt.datetime.now(tz).date()
    else:
        try:
            day = dt.date.fromisoformat(text)
        except ValueError:
            raise _Exit(1, f"--date {text!r}: use YYYY-MM-DD") from None
    start = dt.datetime.combine(day, dt.time(), tz)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tz)
    return day, to_ms(start), to_ms(end)


def _local(ms: int | None, tz: dt.tzinfo, fmt: str = "%H:%M:%S") -> str:
    return "-" if ms is None else from_ms(ms).astimezone(tz).strftime(fmt)


def _local_iso(ms: int | None, tz: dt.tzinfo) -> str | None:
    if ms is None:
        return None
    t = from_ms(ms).astimezone(tz)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if tz is dt.UTC else t.isoformat()


def _window(ws: int | None, we: int | None, tz: dt.tzinfo, day: dt.date) -> str:
    if ws is None and we is None:
        return "-"

    def one(ms: int | None) -> str:
        if ms is None:
            return ""
        t = from_ms(ms).astimezone(tz)
        return t.strftime("%H:%M") if t.date() == day else t.strftime("%Y-%m-%dT%H:%M")

    return f"{one(ws)}-{one(we)}"


def _stops_summary(day: StopsDay) -> str:
    planned = [s for s in day.stops if s.seq is not None]
    visited = sum(s.visited for s in planned)
    late = sum(s.out_of_sequence for s in day.stops)
    line = f"visited {visited} of {len(planned)}, out of sequence {late}"
    missed = [s.stop_id for s in planned if not s.visited]
    if missed:
        line += f"; not visited: {', '.join(missed)}"
    return line


@_handler
def cmd_stops(args: argparse.Namespace) -> int:
    cfg = _config(args)
    tz = _zone(args.tz)
    date, since, until = _day(args.date, tz)
    with contextlib.closing(_open(cfg)) as store:
        dev = _resolve(store, args.device)
        day = store.stops(dev.id, since, until)
    zone = "UTC" if tz is dt.UTC else args.tz
    if day is None:
        return _fail(
            1, f"{dev.name} (id {dev.id}) had no route on {date} ({zone}) (vantrack route load)"
        )
    if args.json:
        print(json.dumps({
            "device_id": dev.id, "device_name": dev.name, "date": str(date), "tz": zone,
            "route_version": day.version, "event_versions": list(day.versions),
            "stops": [{
                "seq": s.seq, "stop_id": s.stop_id, "planned": s.seq is not None,
                "window_start": _local_iso(s.window_start_ms, tz),
                "window_end": _local_iso(s.window_end_ms, tz),
                "visited": s.visited, "arrived": _local_iso(s.arrived_ms, tz),
                "departed": _local_iso(s.departed_ms, tz), "dwell_s": s.dwell_s,
                "in_sequence": None if not s.visited else not s.out_of_sequence,
                "expected": s.expected,
            } for s in day.stops],
            "visited": sum(s.visited for s in day.stops if s.seq is not None),
            "planned": sum(s.seq is not None for s in day.stops),
            "out_of_sequence": sum(s.out_of_sequence for s in day.stops),
            "unmapped_events": day.unmapped,
        }))  # fmt: skip
        return 0
    under = ", ".join(str(v) for v in day.versions) or "none"
    print(
        f"{dev.name} (id {dev.id}) on {date} ({zone}): route version {day.version}, "
        f"events under versions {under}"
    )
    rows = []
    for s in day.stops:
        if not s.visited:
            in_seq = "-"
        elif s.out_of_sequence:
            in_seq = "no" if s.expected is None else f"no (expected {s.expected})"
        else:
            in_seq = "yes"
        rows.append([
            "-" if s.seq is None else str(s.seq), s.stop_id,
            _window(s.window_start_ms, s.window_end_ms, tz, date),
            _local(s.arrived_ms, tz), _local(s.departed_ms, tz),
            _opt(s.dwell_s), in_seq,
        ])  # fmt: skip
    _table(["seq", "stop", "window", "arrived", "departed", "dwell s", "in sequence"],
           rows, right={0, 5})  # fmt: skip
    print(_stops_summary(day))
    if any(s.seq is None for s in day.stops):
        print("seq -: a stop of an earlier route version that day, not in this one")
    if day.unmapped:
        print(f"{_plural(day.unmapped, 'stop event')} name a fence no stored route explains")
    return 0


# ---- decode ----------------------------------------------------------------------------
def _read_payload(arg: str) -> bytes:
    if arg != "-":
        try:
            return bytes.fromhex(arg.replace(" ", ""))
        except ValueError:
            raise _Exit(1, "the payload argument must be hex (or '-' for stdin)") from None
    data = sys.stdin.buffer.read()
    text = re.sub(rb"\s+", b"", data)
    if text and re.fullmatch(rb"[0-9A-Fa-f]+", text) and len(text) % 2 == 0:
        return bytes.fromhex(text.decode())
    return data


def describe(report: wire.Report) -> list[str]:
    """The decoded fields of a report, one line each."""
    lines = [
        f"device {report.device_id}  seq {report.seq}..{report.last_seq}"
        f"  ({len(report.records)} records)",
        f"t0 {report.t0} = {wire.gps_time(report.t0):%Y-%m-%dT%H:%M:%SZ}",
        f"mac {report.mac.hex()}",
    ]
    for r in report.records:
        t = _iso(to_ms(r.time))
        if isinstance(r, wire.Position):
            speed = "--" if r.speed_dms is None else f"{r.speed_dms * 0.36:.1f}"
            quality = "" if r.hdop_x10 is None else f"  hdop {r.hdop_x10 / 10} sats {r.sats}"
            lines.append(
                f"  {r.seq:>10}  {t}  position {r.lat:.6f} {r.lon:.6f}  {speed} km/h"
                f"  course {_opt(r.course_deg)}{quality}"
            )
        else:
            pos = (
                ""
                if r.lat_e6 is None or r.lon_e6 is None
                else f" {r.lat_e6 / 1e6:.6f} {r.lon_e6 / 1e6:.6f}"
            )
            fence = "" if r.fence is None else f"  fence {r.fence}"
            extra = f"  {jsonable(r.extra)}" if r.extra else ""
            lines.append(f"  {r.seq:>10}  {t}  {r.name}{pos}{fence}{extra}")
    return lines


@_handler
def cmd_decode(args: argparse.Namespace) -> int:
    payload = _read_payload(args.payload)
    try:
        print(wire.diagnostic(payload))
    except Exception as e:  # cbor-diag raises assorted errors on non-CBOR
        print(f"(no CBOR diagnostic: {str(e)[:100] or type(e).__name__})")
    try:
        report = wire.decode(payload)
    except wire.WireError as e:
        return _fail(1, f"not a valid report: {e.reason}: {e.detail}")
    except (OverflowError, ValueError) as e:
        return _fail(1, f"not a valid report: {e}")
    print()
    for line in describe(report):
        print(line)
    if args.verify:
        with contextlib.closing(_open(_config(args))) as store:
            key = store.device_key(report.device_id)
        if key is None:
            return _fail(1, f"mac: device {report.device_id} is not registered")
        if not wire.verify(report, key):
            return _fail(1, "mac: BAD (does not verify with the registered key)")
        print("mac: ok")
    return 0
