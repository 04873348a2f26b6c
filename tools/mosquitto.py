"""A real mosquitto broker on loopback, and a persistent MQTT subscriber.

`Mosquitto` runs Debian's broker (installed by dev.sh) on a free TCP port of 127.0.0.1
with a config written to its own temp dir: persistence on (a persistent subscriber's
queued QoS 1 messages survive `restart()`), optional password file, log to a file that
start errors quote. It always stops its process (SIGTERM, then SIGKILL). The MQTT tests
and `vantrack bench gateway` use it.

`Subscriber` is a paho-mqtt threaded client with a persistent session (MQTT 3.1.1,
clean_session=False) subscribed at QoS 1, reconnecting by itself, so it keeps receiving
across a broker restart: `from vantrack.tools.mosquitto import Mosquitto, Subscriber`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Mosquitto:
    """One mosquitto process. `users` ({name: password}) turns anonymous access off;
    `extra` lines are appended to its config (`acl_file ...`)."""

    def __init__(
        self,
        users: dict[str, str] | None = None,
        port: int | None = None,
        extra: Iterable[str] = (),
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto not found (apt-get install mosquitto; see dev.sh)")
        self.binary = binary
        self.port = port or free_tcp_port()
        self.host = "127.0.0.1"
        self._tmp = tempfile.TemporaryDirectory(prefix="vantrack-mosquitto-")
        self.dir = Path(self._tmp.name)
        self.log_path = self.dir / "mosquitto.log"
        self.conf_path = self.dir / "mosquitto.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} {self.host}",
            # Run as whoever runs the tests: as root, mosquitto would otherwise switch to
            # the `mosquitto` user, who cannot write the temp dir.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "persistence true",
            f"persistence_location {self.dir}/",
            f"log_dest file {self.log_path}",
            "log_type all",
        ]
        if users:
            passwd = self.dir / "passwd"
            passwd.touch(mode=0o600)
            for name, password in users.items():
                subprocess.run(
                    [mosquitto_passwd(), "-b", str(passwd), name, password],
                    check=True,
                    capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        lines += extra
        self.conf_path.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        """Start the broker and wait until its port accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            return
        out = open(self.dir / "stdout.log", "ab")
        try:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            out.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                self._fail(f"mosquitto exited with {self.proc.returncode}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                self._fail(f"mosquitto not listening on {self.port} after {START_TIMEOUT_S} s")
            time.sleep(0.02)

    def _fail(self, why: str) -> None:
        stdout = (self.dir / "stdout.log").read_text(errors="replace")
        raise RuntimeError(f"{why}\n--- output ---\n{stdout}\n--- log ---\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file), SIGKILL after a timeout."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port, with the same persistence file."""
        self.stop()
        self.start()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._tmp.cleanup()

    def __enter__(self) -> Mosquitto:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def mosquitto_passwd() -> str:
    return shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


class Message(NamedTuple):
    topic: str
    payload: bytes
    retain: bool


class Subscriber:
    """A persistent-session QoS 1 subscriber; `messages` fills from paho's thread."""

    def __init__(
        self,
        port: int,
        topics: str | Iterable[str] = "vantrack/#",
        client_id: str = "vantrack-test-subscriber",
        clean_session: bool = False,
        host: str = "127.0.0.1",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=paho.MQTTv311,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise RuntimeError(f"subscriber not subscribed to {self.topics} within {timeout} s")

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if rc.is_failure:
            return
        if flags.session_present:
            # The broker kept our subscriptions; subscribing again would also resend
            # every retained message.
            self._subscribed.set()
        else:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, rcs: Any, props: Any
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def snapshot(self) -> list[Message]:
        with self._cond:
            return list(self.messages)

    def wait_for(
        self, predicate: Callable[[list[Message]], bool], timeout: float = 10.0
    ) -> list[Message]:
        """Wait until predicate(messages) is true; AssertionError with them otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"not received within {timeout} s; got {len(self.messages)}: "
                        f"{[(m.topic, m.payload[:80], m.retain) for m in self.messages]}"
                    )
                self._cond.wait(left)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
