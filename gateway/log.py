"""Structured logs for the gateway: one event per line, key=value (default) or JSON.

    ts=2026-05-09T07:35:25.123Z level=info event=report_stored device=3 seq=120 records=10
    {"ts": "2026-05-09T07:35:25.123Z", "level": "info", "event": "report_rejected", ...}

Built on the standard `logging` module so that aiocoap's own messages come out in the
same shape (as `event=log logger=coap-server msg="..."`). Call `emit(log, "event_name",
key=value, ...)`; the formatter renders the fields in the order given. Logs go to
stderr; stdout is reserved for command output and the gateway's readiness line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, TextIO

from .config import LogConfig

LOGGER = "vantrack.gateway"
_FIELDS = "vt_fields"


def _ts(created: float) -> str:
    t = dt.datetime.fromtimestamp(created, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _kv_value(v: Any) -> str:
    if v is None:
        return "-"
    s = v if isinstance(v, str) else str(v)
    if s and not any(c in s for c in ' "=\\\n\r\t') and s.isprintable():
        return s
    return json.dumps(s, ensure_ascii=True)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] | None = getattr(record, _FIELDS, None)
    if fields is not None:
        return {"event": record.getMessage(), **fields}
    # A plain logging call (aiocoap, asyncio): keep it one line, say where it came from.
    out: dict[str, Any] = {"event": "log", "logger": record.name, "msg": record.getMessage()}
    if record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    return out


class KVFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        head = f"ts={_ts(record.created)} level={record.levelname.lower()}"
        body = " ".join(f"{k}={_kv_value(v)}" for k, v in _fields(record).items())
        return f"{head} {body}"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": _ts(record.created), "level": record.levelname.lower()}
        out.update(_fields(record))
        return json.dumps(out, default=str, ensure_ascii=False)


def setup(cfg: LogConfig, stream: TextIO | None = None) -> logging.Logger:
    """Route all logging (ours and aiocoap's) to `stream` (stderr) in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if cfg.format == "json" else KVFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    level = getattr(logging, cfg.level.upper())
    root.setLevel(level)
    # aiocoap is chatty at info (every retransmission, every unknown option): keep it to
    # warnings unless we are debugging.
    logging.getLogger("coap-server").setLevel(max(level, logging.WARNING))
    logging.getLogger("coap").setLevel(max(level, logging.WARNING))
    return logging.getLogger(LOGGER)


def emit(log: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event."""
    if log.isEnabledFor(level):
        log.log(level, event, extra={_FIELDS: fields})
