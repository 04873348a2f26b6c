"""A real HTTP server for tests and benchmarks, run as its own process, and its driver.

    python -m vantrack.tools.http_receiver --port P --log FILE [--fail-every N] [--fail-first N]
                                  [--status CODE] [--retry-after S] [--delay S]

accepts any method on any path and appends one JSON line per request to FILE (flushed
and fsynced before answering, so a test reads it at once): `n` (1, 2, ..., counted from
this process's start), `time`, `method`, `path`, `query` (list of [name, value]),
`headers` (names lower-cased), `body` (text), `peer` (the client's address:port, to see
connection reuse) and `status`.
It answers 200, or `--status` (default 500) for the requests chosen to fail:
`--fail-first N` fails requests 1..N, `--fail-every N` fails every Nth; `--status` alone
fails every request. `--retry-after` adds that Retry-After header to failures; a 3xx
failure carries `Location: /moved`. When ready it prints `listening on 127.0.0.1:P`.

It runs in a separate process so a test can kill it and start it again on the same port
(an endpoint that goes away and comes back). Tests use the class:

    from vantrack.tools.http_receiver import HttpReceiver, free_tcp_port
    with HttpReceiver(free_tcp_port(), tmp_path / "rx.jsonl", "--fail-every", "3") as rx:
        ... POST to rx.url ...
        rx.requests()

It does not speak TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

from vantrack.tools.rig import read_line, stop_process

START_TIMEOUT_S = 15.0
READY = "listening on"


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------------
# The server (the child process)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", type=Path, required=True, help="JSON lines, one per request")
    p.add_argument("--fail-every", type=int, default=0, metavar="N", help="fail every Nth")
    p.add_argument("--fail-first", type=int, default=0, metavar="N", help="fail requests 1..N")
    p.add_argument("--status", type=int, default=None, metavar="CODE", help="failure status")
    p.add_argument("--retry-after", default=None, metavar="S", help="Retry-After on failures")
    p.add_argument("--delay", type=float, default=0.0, metavar="S", help="wait before answering")
    p.add_argument(
        "--no-sync", action="store_true", help="do not fsync the log per request (benchmarks)"
    )
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    status = args.status if args.status is not None else 500
    fail_all = args.status is not None and not args.fail_every and not args.fail_first
    count = 0
    log = open(args.log, "a", encoding="utf-8")

    def fails(n: int) -> bool:
        every = args.fail_every > 0 and n % args.fail_every == 0
        return fail_all or n <= args.fail_first or every

    async def handle(request: web.Request) -> web.Response:
        nonlocal count
        count += 1
        n = count
        body = await request.read()
        answer = status if fails(n) else 200
        peer = request.transport.get_extra_info("peername") if request.transport else None
        line = {
            "n": n,
            "time": time.time(),
            "method": request.method,
            "path": request.path,
            "query": [[k, v] for k, v in request.query.items()],
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body.decode("utf-8", errors="replace"),
            "peer": f"{peer[0]}:{peer[1]}" if peer else None,
            "status": answer,
        }
        log.write(json.dumps(line) + "\n")
        log.flush()
        if not args.no_sync:
            os.fsync(log.fileno())
        if args.delay:
            await asyncio.sleep(args.delay)
        if answer == 200:
            return web.Response(text="ok\n")
        headers = {}
        if args.retry_after is not None:
            headers["Retry-After"] = args.retry_after
        if 300 <= answer < 400:
            headers["Location"] = "/moved"
        return web.Response(
            status=answer, text=f"failure {answer} injected by http_receiver\n", headers=headers
        )

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{READY} 127.0.0.1:{args.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        log.close()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(_serve(_args(argv)))
    return 0


# ---------------------------------------------------------------------------------------
# The test side


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


class HttpReceiver:
    """The server above in a child process on 127.0.0.1:`port`, logging to `log_path`;
    `args` are extra command-line options ("--fail-every", "3"). Stopped by `stop()`,
    by leaving the `with` block, or at the latest when the test process exits."""

    def __init__(self, port: int, log_path: Path | str, *args: str) -> None:
        self.port = port
        self.log_path = Path(log_path)
        self.args = tuple(str(a) for a in args)
        self.url = f"http://127.0.0.1:{port}"
        self.stderr_path = self.log_path.with_name(self.log_path.name + ".stderr")
        self.proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def start(self) -> HttpReceiver:
        """Spawn the server and return once it listens; RuntimeError, with the child's
        stderr, if it exits or is not ready within START_TIMEOUT_S."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"http_receiver on port {self.port} is already running")
        self.log_path.touch()
        cmd = [sys.executable, "-m", "vantrack.tools.http_receiver", "--port", str(self.port),
               "--log", str(self.log_path)]  # fmt: skip
        with open(self.stderr_path, "ab") as err:
            proc = subprocess.Popen([*cmd, *self.args], stdout=subprocess.PIPE, stderr=err)
        self.proc = proc
        self._finalizer = weakref.finalize(self, _kill, proc)
        line = read_line(proc, START_TIMEOUT_S)
        if not line.startswith(READY):
            try:  # stdout closed: the child is exiting
                code: int | None = proc.wait(1.0)
            except subprocess.TimeoutExpired:
                code = None
            self.stop()
            why = (
                f"exited with code {code}"
                if code is not None
                else f"not ready in {START_TIMEOUT_S} s"
            )
            raise RuntimeError(
                f"http_receiver on port {self.port} {why} (stdout {line!r}); stderr:\n"
                + self.stderr_path.read_text(errors="replace")[-2000:]
            )
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit code (None if not started)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if self._finalizer is not None:
            self._finalizer.detach()
        return stop_process(proc, timeout)

    def kill(self) -> None:
        """SIGKILL at once: an endpoint that crashes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.stop()

    def restart(self) -> HttpReceiver:
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def requests(self) -> list[dict[str, Any]]:
        """Every request logged so far (across restarts), oldest first."""
        try:
            text = self.log_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        # A line without its newline is still being written: leave it for the next call.
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The log once it holds at least `count` requests; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.requests()
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(got)} requests after {timeout} s, expected {count}")
            time.sleep(0.05)

    def __enter__(self) -> HttpReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
