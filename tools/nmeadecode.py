"""`vantrack nmea-decode`: decode NMEA 0183 with the van's own parser, on the host.

The bytes go through firmware/nmea.py running under the real `micropython` binary with an
ESP32-sized heap (tools/mp/nmea_decode.py), streamed in chunks like a UART delivers them,
so what this prints is what a van would conclude. One JSON object per fix on stdout, a
summary (sentences, fixes, drops by reason) on stderr. This module does not parse NMEA.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from . import mpy

SCRIPT = Path(__file__).parent / "mp" / "nmea_decode.py"

EPILOG = """\
output (one JSON object per line, per fix = one receiver epoch):
  time        ISO-8601 UTC ("2026-11-26T10:15:03.200Z"), null until the receiver sent a date
  lat, lon    degrees (1e-6 resolution), null when the receiver says the fix is invalid
  speed_mps, course_deg, alt_m, quality (GGA), mode (GSA), sats, hdop, valid
summary on stderr: sentences read, fixes, ignored sentence types, dropped lines by reason
  (checksum, no_checksum, overlong, garbage, truncated, malformed, late)

examples:
  vantrack nmea-decode tests/data/nmea/bu353s4.log
  cat /dev/ttyUSB0 | vantrack nmea-decode -
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "nmea-decode",
        help="decode NMEA with the firmware parser (under micropython), print fixes as JSON",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", nargs="?", default="-", help="NMEA log to read ('-' or absent: stdin)")
    p.add_argument(
        "--sentences",
        action="store_true",
        help="also print what each accepted sentence decoded to (debugging)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=256,
        metavar="BYTES",
        help="bytes per feed() call, like one UART read (default 256)",
    )
    p.add_argument(
        "--keep-comments",
        action="store_true",
        help="feed '#' lines too (by default they are stripped: gpsd test logs use them)",
    )
    p.add_argument(
        "--heap", default=mpy.DEFAULT_HEAP, help="micropython heap (default %(default)s)"
    )
    p.set_defaults(func=handler)


def strip_comments(data: bytes) -> bytes:
    """Drop whole lines starting with '#' (gpsd's annotations in its receiver logs)."""
    return b"".join(ln for ln in data.splitlines(keepends=True) if not ln.startswith(b"#"))


def _args(sentences: bool, chunk: int) -> list[str]:
    args = ["--chunk", str(chunk)]
    if sentences:
        args.append("--sentences")
    return args


def _parse_summary(stderr: bytes) -> dict[str, Any]:
    for line in reversed(stderr.decode(errors="replace").splitlines()):
        if line.startswith('{"summary"'):
            summary: dict[str, Any] = json.loads(line)
            summary.pop("summary")
            return summary
    raise RuntimeError("micropython nmea_decode failed:\n" + stderr.decode(errors="replace"))


def decode(
    data: bytes, *, sentences: bool = False, chunk: int = 256, heap: str = mpy.DEFAULT_HEAP
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Decode `data` with the firmware parser: (fixes, summary).

    With sentences=True the list also holds one {"sentence": ...} dict per accepted
    sentence, in stream order with the fixes.
    """
    proc = mpy.run(SCRIPT, _args(sentences, chunk), heap=heap, input=data, timeout=300)
    summary = _parse_summary(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"micropython nmea_decode exited {proc.returncode}")
    out = [json.loads(line) for line in proc.stdout.decode().splitlines() if line]
    return out, summary


def decode_cases(cases: list[tuple[bytes, int]], heap: str = mpy.DEFAULT_HEAP) -> list[dict]:
    """Run many (data, chunk) cases, each with a fresh parser, in one micropython process."""
    payload = b"".join(b"%d %d\n" % (chunk, len(data)) + data for data, chunk in cases)
    proc = mpy.run(SCRIPT, ["--cases"], heap=heap, input=payload, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError("micropython nmea_decode --cases failed:\n" + proc.stderr.decode())
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line]


def _pump(src: IO[bytes], dst: IO[bytes], keep_comments: bool) -> None:
    # Stream: a live receiver never ends, so never read all of it first.
    try:
        for line in iter(src.readline, b""):
            if keep_comments or not line.startswith(b"#"):
                dst.write(line)
                dst.flush()
    except BrokenPipeError:
        pass
    finally:
        try:
            dst.close()
        except BrokenPipeError:
            pass


def handler(args: argparse.Namespace) -> int:
    src = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    proc = mpy.popen(
        SCRIPT,
        _args(args.sentences, args.chunk),
        heap=args.heap,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    feeder = threading.Thread(target=_pump, args=(src, proc.stdin, args.keep_comments))
    feeder.daemon = True
    feeder.start()
    assert proc.stdout is not None and proc.stderr is not None
    try:
        shutil.copyfileobj(proc.stdout, sys.stdout.buffer, 4096)  # type: ignore[misc]
        sys.stdout.flush()
    finally:
        err = proc.stderr.read()
        rc = proc.wait()
        if src is not sys.stdin.buffer:
            src.close()
    try:
        summary = _parse_summary(err)
    except RuntimeError as e:
        print(f"nmea-decode: {e}", file=sys.stderr)
        return rc or 1
    drops = ", ".join(f"{k} {v}" for k, v in summary["drops"].items() if v) or "none"
    print(
        f"nmea-decode: {summary['sentences']} sentences, {summary['fixes']} fixes, "
        f"{summary['ignored']} ignored (other types), dropped: {drops}",
        file=sys.stderr,
    )
    return rc
