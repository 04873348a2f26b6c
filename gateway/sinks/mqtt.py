"""The MQTT sink: each relayed record published to a broker, QoS 1, one topic per kind.

Topics (docs/mqtt.md), under `topic_prefix` (default "vantrack"):

- `<prefix>/<fleet>/<device>/position` a position;
- `<prefix>/<fleet>/<device>/event/<type>` an event (`arrived`, `status`, ...);
- `<prefix>/<fleet>/<device>/state` retained: the van's newest record with a fix.

`send()` returns once the broker acknowledged every publish of the record (PUBACK for
QoS 1, PUBCOMP for QoS 2) and raises SinkError otherwise. One connection is shared by all
concurrent sends; it is opened by the first send and, once lost, by the next one. This
module does not retry or back off (the relay does), does not subscribe, and keeps no
session on the broker: an unacknowledged record stays in the outbox, not in a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any, cast

import aiomqtt
import cbor2
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .base import Record, Sink, SinkConfig, SinkConfigError, SinkError

SCHEMES = {"mqtt": 1883, "mqtts": 8883}
FORMATS = {"json": "application/json", "cbor": "application/cbor"}
PROTOCOLS = {"5": aiomqtt.ProtocolVersion.V5, "3.1.1": aiomqtt.ProtocolVersion.V311}


@dataclass(frozen=True)
class MqttConfig(SinkConfig):
    """The keys of an `[[sink]]` table with `type = "mqtt"` (docs/mqtt.md)."""

    url: str = ""  # required: mqtt://host[:1883] or mqtts://host[:8883]
    topic_prefix: str = "vantrack"
    format: str = "json"  # or "cbor"
    # 1 or 2. QoS 0 is refused: the broker never acknowledges it, so a record could
    # leave the outbox without having arrived.
    qos: int = 1
    retain_state: bool = True  # publish the retained <device>/state topic
    protocol: str = "5"  # or "3.1.1"
    client_id: str = ""  # default vantrack-<fleet>-<name>
    username: str | None = None
    password: str | None = None
    password_file: str | None = None  # read at start; one trailing newline dropped
    tls: bool = False  # implied by mqtts://
    ca_file: str | None = None  # default: the system's trusted CAs
    cert_file: str | None = None  # client certificate (PEM), for brokers that ask
    key_file: str | None = None  # its key, if not in cert_file
    keepalive_s: int = 30

    def check(self) -> None:
        super().check()
        if not self.url:
            raise SinkConfigError("url", "required (mqtt://host:1883 or mqtts://host:8883)")
        try:
            u = urllib.parse.urlsplit(self.url)
            port = u.port
        except ValueError as e:
            raise SinkConfigError("url", f"{self.url!r}: {e}") from None
        if u.scheme not in SCHEMES:
            raise SinkConfigError("url", f"scheme must be mqtt:// or mqtts://, not {u.scheme!r}")
        if not u.hostname:
            raise SinkConfigError("url", f"{self.url!r} has no host")
        if port == 0:
            raise SinkConfigError("url", "port must be in 1..65535")
        if u.username is not None or u.password is not None:
            raise SinkConfigError("url", "put credentials in username and password_file")
        if u.path not in ("", "/") or u.query or u.fragment:
            raise SinkConfigError("url", "must be only scheme://host[:port]")
        levels = self.topic_prefix.split("/")
        if not self.topic_prefix or "" in levels or any(c in self.topic_prefix for c in "+#"):
            raise SinkConfigError(
                "topic_prefix", "must be topic levels without +, # or empty levels"
            )
        if self.format not in FORMATS:
            raise SinkConfigError("format", f"must be json or cbor, not {self.format!r}")
        if self.qos not in (1, 2):
            raise SinkConfigError(
                "qos", "must be 1 or 2 (the broker does not acknowledge QoS 0 messages)"
            )
        if self.protocol not in PROTOCOLS:
            raise SinkConfigError("protocol", f'must be "5" or "3.1.1", not {self.protocol!r}')
        if not 1 <= self.keepalive_s <= 65535:
            raise SinkConfigError("keepalive_s", "must be in 1..65535")
        if self.password is not None and self.password_file is not None:
            raise SinkConfigError("password_file", "set password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and not self.username:
            raise SinkConfigError("username", "required with a password")
        for key in ("password_file", "ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path is not None and not os.path.isfile(path):
                raise SinkConfigError(key, f"{path}: no such file")
        if not self.uses_tls:
            for key in ("ca_file", "cert_file", "key_file"):
                if getattr(self, key) is not None:
                    raise SinkConfigError(key, "needs TLS (mqtts:// or tls = true)")
        if self.key_file is not None and self.cert_file is None:
            raise SinkConfigError("key_file", "needs cert_file")

    @property
    def uses_tls(self) -> bool:
        return self.tls or urllib.parse.urlsplit(self.url).scheme == "mqtts"

    @property
    def host_port(self) -> tuple[str, int]:
        u = urllib.parse.urlsplit(self.url)
        return u.hostname or "", u.port or SCHEMES.get(u.scheme, 1883)


class MqttSink(Sink):
    config_class = MqttConfig

    def __init__(self, cfg: SinkConfig, fleet: str) -> None:
        super().__init__(cfg, fleet)
        assert isinstance(cfg, MqttConfig)
        self.mcfg = cfg
        self._password: str | None = cfg.password
        self._lock = asyncio.Lock()  # one connect at a time
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    def target(self) -> str:
        host, port = self.mcfg.host_port
        scheme = "mqtts" if self.mcfg.uses_tls else "mqtt"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    def topic(self, record: Record, leaf: str) -> str:
        return f"{self.mcfg.topic_prefix}/{self.fleet}/{record.device}/{leaf}"

    def body(self, record: Record) -> bytes:
        data = record.to_json()
        if self.mcfg.format == "cbor":
            return cbor2.dumps(data)
        return json.dumps(data, separators=(",", ":")).encode()

    async def start(self) -> None:
        self._read_password()

    async def send(self, record: Record) -> None:
        leaf = "position" if record.is_position else f"event/{record.event_name}"
        messages = [(self.topic(record, leaf), False)]
        has_fix = record.lat_e6 is not None and record.lon_e6 is not None
        if self.mcfg.retain_state and record.latest and has_fix:
            messages.append((self.topic(record, "state"), True))
        body = self.body(record)
        props: Properties | None = None
        if self.mcfg.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = FORMATS[self.mcfg.format]
            props.UserProperty = [("key", record.key)]
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                conn, fresh = await self._connection()
                try:
                    await conn.publish(messages, body, self.mcfg.qos, props)
                except _Lost:
                    if fresh:
                        raise
                    # A connection that died while idle (a broker restart) is noticed
                    # only on use; opening a new one is this send's one connect attempt.
                    conn, _ = await self._connection()
                    await conn.publish(messages, body, self.mcfg.qos, props)
        except TimeoutError:
            raise SinkError(
                f"no acknowledgement from {self.target()} within {self.cfg.timeout_s:g} s"
            ) from None
        except (_Lost, _Refused) as e:
            raise SinkError(str(e)) from None
        except SinkConfigError as e:
            raise SinkError(str(e), retry=False) from None

    async def close(self) -> None:
        async with self._lock:
            task, self._connecting = self._connecting, None
            conn, self._conn = self._conn, None
        if task is not None:
            # A connect runs in a thread that cannot be cancelled: wait for it (bounded
            # by timeout_s twice) so that no connection is left open after close().
            with contextlib.suppress(Exception):
                conn = await task
        if conn is not None:
            await conn.close()

    def _read_password(self) -> None:
        path = self.mcfg.password_file
        if path is None or self._password is not None:
            return
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise SinkConfigError("password_file", f"{path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise SinkConfigError("password_file", f"{path}: not UTF-8 text") from None
        self._password = text[:-1] if text.endswith("\n") else text

    async def _connection(self) -> tuple[_Connection, bool]:
        """The shared live connection, and whether this call opened it. Concurrent
        callers wait for the same connect."""
        async with self._lock:
            conn = self._conn
            if conn is not None and conn.alive:
                return conn, False
            if conn is not None:
                self._conn = None
                await conn.close()
            task = self._connecting
            if task is None or (task.done() and (task.cancelled() or task.exception())):
                task = self._connecting = asyncio.create_task(self._connect())
        # Shielded: a send that times out leaves the connect running for the next send
        # (its thread cannot be stopped) rather than abandoning its socket.
        try:
            conn = await asyncio.shield(task)
        except (aiomqtt.MqttError, OSError) as e:
            raise _Lost(f"cannot connect to {self.target()}: {_reason(e)}") from None
        async with self._lock:
            if self._connecting is task:
                self._connecting = None
                self._conn = conn
        return conn, True

    async def _connect(self) -> _Connection:
        self._read_password()
        cfg = self.mcfg
        host, port = cfg.host_port
        protocol = PROTOCOLS[cfg.protocol]
        v5 = protocol == aiomqtt.ProtocolVersion.V5
        client = aiomqtt.Client(
            host,
            port,
            username=cfg.username or None,
            password=self._password,
            identifier=cfg.client_id or f"vantrack-{self.fleet}-{cfg.name}",
            protocol=protocol,
            # No session kept on the broker: what is not acknowledged stays in the outbox.
            clean_session=None if v5 else True,
            clean_start=True if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,  # v5's flag only
            timeout=cfg.timeout_s,  # the CONNACK
            keepalive=cfg.keepalive_s,
            tls_context=self._tls_context() if cfg.uses_tls else None,
        )
        conn = _Connection(client, self.target())
        conn.paho.connect_timeout = cfg.timeout_s  # the TCP (and TLS) connect
        try:
            await client.__aenter__()
        except BaseException:
            # aiomqtt leaves the socket open when the CONNACK times out.
            conn.paho._sock_close()
            raise
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        cfg = self.mcfg
        ctx = ssl.create_default_context(cafile=cfg.ca_file)
        if cfg.cert_file is not None:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        return ctx


class _Lost(Exception):
    """The connection failed or dropped: the send may try one new connection."""


class _Refused(Exception):
    """The broker answered a publish with an MQTT 5 failure reason code."""


class _Connection:
    """One connected aiomqtt client and the acknowledgements awaited on it.

    aiomqtt's own publish() waits for the acknowledgement but drops its MQTT 5 reason
    code (a broker refusing a topic still answers PUBACK, with 0x87 Not authorized) and
    wakes only at its timeout when the connection drops. So publishing goes through its
    paho client, with futures resolved from paho's on_publish; aiomqtt keeps the rest
    (connecting in a thread, the socket in the event loop, keepalive, disconnecting).
    """

    def __init__(self, client: aiomqtt.Client, target: str) -> None:
        self.client = client
        self.target = target
        self.paho: paho.Client = client._client  # aiomqtt has no public handle on it
        self.acks: dict[int, asyncio.Future[ReasonCode]] = {}  # mid -> its PUBACK
        inner = cast("paho.CallbackOnPublish_v2 | None", self.paho.on_publish)

        def on_publish(c: Any, userdata: Any, mid: int, rc: ReasonCode, props: Any) -> None:
            fut = self.acks.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(rc)
            if inner is not None:
                inner(c, userdata, mid, rc, props)

        self.paho.on_publish = on_publish

    @property
    def lost(self) -> asyncio.Future[None]:
        # Done once the connection is gone: set by aiomqtt from paho's on_disconnect and
        # from socket errors. aiomqtt's own message iterator waits on it the same way.
        fut: asyncio.Future[None] = self.client._disconnected
        return fut

    @property
    def alive(self) -> bool:
        return not self.lost.done()

    async def publish(
        self,
        messages: list[tuple[str, bool]],
        body: bytes,
        qos: int,
        props: Properties | None,
    ) -> None:
        """Publish body to each (topic, retain) in order, then wait for every ack."""
        loop = asyncio.get_running_loop()
        pending: list[tuple[str, asyncio.Future[ReasonCode]]] = []
        try:
            for topic, retain in messages:
                try:
                    info = self.paho.publish(topic, body, qos, retain, props)
                except ValueError as e:  # a topic with + or #, a body over 256 MB
                    raise SinkError(f"cannot publish to {topic!r}: {e}", retry=False) from None
                if info.rc != paho.MQTT_ERR_SUCCESS:
                    why = paho.error_string(info.rc)
                    raise _Lost(f"cannot publish to {self.target}: {why}")
                # No ack can come before this line: paho reads only in the event loop.
                fut: asyncio.Future[ReasonCode] = loop.create_future()
                self.acks[info.mid] = fut
                pending.append((topic, fut))
            for topic, fut in pending:
                await asyncio.wait((fut, self.lost), return_when=asyncio.FIRST_COMPLETED)
                if not fut.done():
                    raise _Lost(f"connection to {self.target} lost before the acknowledgement")
                rc = fut.result()
                if rc.is_failure:
                    raise _Refused(f"{self.target} refused {topic}: {rc}")
        finally:
            for _, fut in pending:
                fut.cancel()
            for mid in [m for m, f in self.acks.items() if f.done()]:
                del self.acks[mid]

    async def close(self) -> None:
        lost = self.lost
        if lost.done() and not lost.cancelled():
            lost.exception()  # retrieved: a dropped connection is no asyncio warning
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            await self.client.__aexit__(None, None, None)


def _reason(e: BaseException) -> str:
    return str(e) or type(e).__name__
