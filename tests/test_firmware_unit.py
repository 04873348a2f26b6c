"""Runs the firmware unit tests in tests/mpy/ under the real `micropython` binary.

Each tests/mpy/test_*.py file is executed once with the heap capped at 64 KB (like an
ESP32's free heap), and each of its test_* functions becomes one pytest item here.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

from vantrack.tools import mpy

MPY_TESTS = Path(__file__).parent / "mpy"
DATA = Path(__file__).parent / "data"


def _cases() -> list[tuple[str, str]]:
    cases = []
    for path in sorted(MPY_TESTS.glob("test_*.py")):
        for name in re.findall(r"^def (test_\w+)\(", path.read_text(), re.M):
            cases.append((path.name, name))
    return cases


@cache
def _run_file(filename: str) -> tuple[dict[str, str], str]:
    proc = mpy.run(MPY_TESTS / filename, heap="64K", extra_path=[MPY_TESTS], timeout=300)
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    assert "DONE" in out, f"{filename} did not finish (rc={proc.returncode}):\n{out}\n{err}"
    results: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"^(PASS|FAIL) (test_\w+)$", line)
        if m:
            current = m.group(2)
            results[current] = m.group(1)
        elif current and results.get(current, "").startswith("FAIL"):
            results[current] += "\n" + line
    return results, out


@pytest.mark.parametrize(("filename", "name"), _cases())
def test_firmware(filename: str, name: str) -> None:
    results, out = _run_file(filename)
    assert name in results, f"{name} did not run under micropython:\n{out}"
    assert results[name] == "PASS", results[name]
