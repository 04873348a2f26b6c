"""The webhook sink: each record is one signed HTTP POST of a CloudEvents 1.0 event.

The body is a structured-mode CloudEvent (`application/cloudevents+json`) whose `data`
is `Record.to_json()`; the request is signed as Standard Webhooks prescribe
(https://www.standardwebhooks.com): `webhook-id` (the record's key, the same on every
retry), `webhook-timestamp`, `webhook-signature`. docs/webhooks.md is the user's view.

The first part of this module, `sign()` and `verify()`, uses only the standard library
so a receiver can import it, or copy it, to check what we send. The sink itself sends
one record per request, does not follow redirects, and turns every failure of the
endpoint into `SinkError`; retrying, backoff and disabling belong to the relay
(gateway/outbox.py).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import hashlib
import hmac
import importlib.metadata
import json
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from .. import wire
from .base import Record, Sink, SinkConfig, SinkConfigError, SinkError, iso_ms

# ---------------------------------------------------------------------------------------
# Standard Webhooks signatures (stdlib only)

SECRET_PREFIX = "whsec_"
KEY_MIN_BYTES = 24  # the spec's bounds for the decoded secret
KEY_MAX_BYTES = 64


class WebhookVerificationError(Exception):
    """A request that is not a genuine, fresh webhook from the holder of the secret."""


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; ValueError saying what is wrong."""
    secret = secret.strip()
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX!r} (whsec_ + base64 of the key)")
    b64 = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the part after {SECRET_PREFIX!r} is not base64") from None
    if not KEY_MIN_BYTES <= len(key) <= KEY_MAX_BYTES:
        raise ValueError(
            f"the key is {len(key)} bytes, must be {KEY_MIN_BYTES}..{KEY_MAX_BYTES} (32 is usual)"
        )
    return key


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The `webhook-signature` value: `v1,` + base64(HMAC-SHA256(key, id.timestamp.body)).

    `secret` is the `whsec_...` string or the key it decodes to."""
    key = decode_secret(secret) if isinstance(secret, str) else secret
    if isinstance(body, str):
        body = body.encode()
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int = 300,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a received webhook and return its parsed JSON body.

    Raises WebhookVerificationError for a missing header, a timestamp more than
    `tolerance_s` from `now` (replays), or no `v1,` signature matching `secret`. Header
    names are case-insensitive; the signature header may hold several signatures
    separated by spaces (during a secret rotation) and one match is enough."""
    lower = {k.lower(): v for k, v in headers.items()}
    missing = [
        h for h in ("webhook-id", "webhook-timestamp", "webhook-signature") if not lower.get(h)
    ]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    msg_id = lower["webhook-id"]
    try:
        timestamp = int(lower["webhook-timestamp"])
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not integer Unix seconds") from None
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise WebhookVerificationError(
            f"webhook-timestamp {timestamp} is {now - timestamp:+.0f} s from now "
            f"(tolerance {tolerance_s} s): replayed, or a clock is wrong"
        )
    expected = sign(secret, msg_id, timestamp, body).encode()
    for candidate in lower["webhook-signature"].split():
        if candidate.startswith("v1,") and hmac.compare_digest(candidate.encode(), expected):
            break
    else:
        raise WebhookVerificationError("no v1 signature matches (wrong secret or altered body)")
    try:
        parsed: dict[str, Any] = json.loads(body)
    except ValueError as e:
        raise WebhookVerificationError(f"body is not JSON: {e}") from None
    return parsed


# ---------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class WebhookConfig(SinkConfig):
    """`[[sink]]` with `type = "webhook"` (docs/webhooks.md)."""

    url: str = ""  # http:// or https://; required
    secret: str | None = field(default=None, repr=False)  # whsec_<base64>; or secret_file
    secret_file: str | None = None  # a file holding the whsec_ secret (one line)

    def check(self) -> None:
        super().check()
        if not self.url:
            raise SinkConfigError("url", "required (http:// or https:// address)")
        try:
            parts = urlsplit(self.url)
        except ValueError as e:
            raise SinkConfigError("url", f"{self.url!r}: {e}") from None
        if parts.scheme not in ("http", "https"):
            raise SinkConfigError("url", f"must be http:// or https://, not {self.url!r}")
        try:
            host, port = parts.hostname, parts.port  # .port raises for a bad port
        except ValueError as e:
            raise SinkConfigError("url", str(e)) from None
        if port == 0:
            raise SinkConfigError("url", f"port 0 in {self.url!r}")
        if not host:
            raise SinkConfigError("url", f"has no host: {self.url!r}")
        self.key()

    def key(self) -> bytes:
        """The HMAC key from `secret` or `secret_file`; SinkConfigError naming the key."""
        if self.secret is not None and self.secret_file is not None:
            raise SinkConfigError("secret", "set secret or secret_file, not both")
        if self.secret_file is not None:
            try:
                text = Path(self.secret_file).read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise SinkConfigError("secret_file", f"cannot read: {e}") from None
            try:
                return decode_secret(text)
            except ValueError as e:
                raise SinkConfigError("secret_file", f"{self.secret_file}: {e}") from None
        if not self.secret:
            raise SinkConfigError(
                "secret", "required (or secret_file); generate one as docs/webhooks.md shows"
            )
        try:
            return decode_secret(self.secret)
        except ValueError as e:
            raise SinkConfigError("secret", str(e)) from None


# ---------------------------------------------------------------------------------------
# The event

CONTENT_TYPE = "application/cloudevents+json"

EVENT_TYPES: dict[int, str] = {
    wire.EventType.APPROACHING: "vantrack.stop.approaching",
    wire.EventType.ARRIVED: "vantrack.stop.arrived",
    wire.EventType.DEPARTED: "vantrack.stop.departed",
    wire.EventType.OUT_OF_SEQUENCE: "vantrack.stop.out_of_sequence",
    wire.EventType.ROUTE_STARTED: "vantrack.route.started",
    wire.EventType.ROUTE_FINISHED: "vantrack.route.finished",
    wire.EventType.ZONE_ENTER: "vantrack.zone.enter",
    wire.EventType.ZONE_EXIT: "vantrack.zone.exit",
    wire.EventType.STATUS: "vantrack.device.status",
}


def event_type(record: Record) -> str:
    """The CloudEvents `type` of a record."""
    if record.event is None:
        return "vantrack.position"
    return EVENT_TYPES.get(record.event) or f"vantrack.event.{wire.event_name(record.event)}"


def cloudevent(record: Record, fleet: str) -> dict[str, Any]:
    """The record as a structured-mode CloudEvents 1.0 event."""
    return {
        "specversion": "1.0",
        "id": record.key,
        "source": "/vantrack/" + quote(fleet, safe=""),
        "type": event_type(record),
        "subject": record.device,
        "time": iso_ms(record.time_ms),
        "datacontenttype": "application/json",
        "data": record.to_json(),
    }


def _user_agent() -> str:
    try:
        return f"vantrack/{importlib.metadata.version('vantrack')}"
    except importlib.metadata.PackageNotFoundError:
        return "vantrack"


USER_AGENT = _user_agent()
BODY_SNIPPET = 100  # characters of an error response kept in the message

# ---------------------------------------------------------------------------------------
# The sink


class WebhookSink(Sink):
    """POSTs each record to `cfg.url` over one keep-alive aiohttp session."""

    config_class = WebhookConfig
    cfg: WebhookConfig

    def __init__(self, cfg: SinkConfig, fleet: str) -> None:
        if not isinstance(cfg, WebhookConfig):
            raise TypeError(f"WebhookSink needs a WebhookConfig, not {type(cfg).__name__}")
        super().__init__(cfg, fleet)
        self._key = cfg.key()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # Connects nothing: the first send() opens the connection.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
                connector=aiohttp.TCPConnector(limit=max(self.cfg.concurrency, 1)),
                headers={"user-agent": USER_AGENT},
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def target(self) -> str:
        # Without user:password or query, which may hold credentials.
        parts = urlsplit(self.cfg.url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    async def send(self, record: Record) -> None:
        if self._session is None:
            await self.start()
        assert self._session is not None
        body = json.dumps(
            cloudevent(record, self.fleet), ensure_ascii=False, separators=(",", ":")
        ).encode()
        timestamp = int(time.time())
        headers = {
            "content-type": CONTENT_TYPE,
            "webhook-id": record.key,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, record.key, timestamp, body),
        }
        try:
            async with self._session.post(
                self.cfg.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                if 200 <= resp.status < 300:
                    await resp.read()  # read to the end so the connection is reused
                    return
                error = await self._failure(resp)
        except TimeoutError:
            raise SinkError(f"no answer within {self.cfg.timeout_s:g} s") from None
        except aiohttp.ClientSSLError as e:
            raise SinkError(f"TLS error with {e.host}:{e.port}: {_reason(e)}") from None
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, socket.gaierror):  # ClientConnectorDNSError (3.11+)
                raise SinkError(f"cannot resolve {e.host}: {_reason(e)}") from None
            raise SinkError(f"cannot connect to {e.host}:{e.port}: {_reason(e)}") from None
        except aiohttp.ClientError as e:
            raise SinkError(f"HTTP error: {type(e).__name__}: {e}") from None
        except OSError as e:
            raise SinkError(f"network error: {e.strerror or e}") from None
        raise error

    async def _failure(self, resp: aiohttp.ClientResponse) -> SinkError:
        status = resp.status
        what = f"HTTP {status} {resp.reason or ''}".rstrip()
        if 300 <= status < 400:
            where = resp.headers.get("location", "?")
            return SinkError(f"{what}: redirect to {where} not followed; set url to the target")
        if status == 410:
            return SinkError(
                f"{what}: the endpoint asks to stop deliveries (410 Gone)", retry=False
            )
        snippet = await _snippet(resp)
        message = f"{what}: {snippet!r}" if snippet else what
        retry_after = None
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
        return SinkError(message, retry_after=retry_after)


def _reason(e: aiohttp.ClientConnectorError | aiohttp.ClientSSLError) -> str:
    os_error = getattr(e, "os_error", None)
    if isinstance(os_error, OSError):
        return os_error.strerror or str(os_error) or type(os_error).__name__
    return str(e)


async def _snippet(resp: aiohttp.ClientResponse) -> str:
    """The start of an error response's body; never fails."""
    buf = b""
    try:
        while len(buf) < 4 * BODY_SNIPPET:
            chunk = await resp.content.read(4 * BODY_SNIPPET - len(buf))
            if not chunk:
                break
            buf += chunk
    except (aiohttp.ClientError, OSError, TimeoutError):
        pass
    text = " ".join(buf.decode("utf-8", errors="replace").split())
    return text[:BODY_SNIPPET] + ("..." if len(text) > BODY_SNIPPET else "")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or HTTP-date); None if absent
    or unreadable; never negative."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000"; an HTTP-date is always UTC (RFC 9110)
        when = when.replace(tzinfo=dt.UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)
