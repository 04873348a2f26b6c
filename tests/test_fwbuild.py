"""`vantrack firmware build`: the device layout, its manifest, budgets, freezing, failures.

Every build here runs the real mpy-cross (and, with the check on, the real mypy) on the
real firmware or on a copy of it with one planted change.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vantrack.tools import fwbuild

FIRMWARE = fwbuild.FIRMWARE_DIR
# .mpy header: b"M", version, feature flags (native arch << 2 | sub-version), small-int
# bits. MP_NATIVE_ARCH_* numbering from MicroPython's py/persistentcode.h.
ARCH_NONE, ARCH_X86, ARCH_X64, ARCH_XTENSAWIN = 0, 1, 2, 10

NATIVE_MODULE = """\
import micropython


@micropython.native
def add(a: int, b: int) -> int:
    return a + b
"""


def _build(*argv: str) -> tuple[int, str, str]:
    """Run `vantrack firmware build ARGV` in a subprocess, as a user would (python -m)."""
    proc = subprocess.run(
        [sys.executable, "-m", "vantrack.tools.fwbuild", "build", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def _manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return data


def _expected_files(target: str, source: Path = FIRMWARE) -> set[str]:
    leave_out = {"esp32": "board_sim", "unix": "board_esp32"}[target]
    app = {f"app/{p.stem}.mpy" for p in source.glob("*.py") if p.stem != leave_out}
    return app | {"boot.py", "main.py"}


def _copy_firmware(dest: Path) -> Path:
    shutil.copytree(FIRMWARE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _mpy_cross_version() -> tuple[int, int]:
    found = re.search(r"mpy v(\d+)\.(\d+)", fwbuild.mpy_cross_version())
    assert found, fwbuild.mpy_cross_version()
    return int(found.group(1)), int(found.group(2))


def _first_qstr(data: bytes) -> str | None:
    """The source name a .mpy embeds (its first qstr, after n_qstr and n_obj).

    None when it is one of MicroPython's static qstrs (`main`, `start`...), which a .mpy
    stores as an index into the firmware's table (odd value) rather than as text.
    """
    pos = 4

    def vuint() -> int:
        nonlocal pos
        value = 0
        while True:
            b = data[pos]
            pos += 1
            value = value << 7 | (b & 0x7F)
            if not b & 0x80:
                return value

    vuint(), vuint()  # n_qstr, n_obj
    encoded = vuint()
    if encoded & 1:
        return None
    return data[pos : pos + (encoded >> 1)].decode()


@pytest.fixture(scope="module")
def esp32_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    out = tmp_path_factory.mktemp("esp32") / "firmware"
    rc, stdout, stderr = _build("--out", str(out))  # type check on: the default
    assert rc == 0, stderr
    return out, stdout, stderr


def test_esp32_build_of_the_real_firmware_writes_every_file_its_manifest_lists(
    esp32_build: tuple[Path, str, str],
) -> None:
    out, stdout, stderr = esp32_build
    manifest = _manifest(out)
    listed = [f["path"] for f in manifest["files"]]
    assert listed == sorted(listed), "manifest order is not deterministic"
    assert set(listed) == _expected_files("esp32")
    for entry in manifest["files"]:
        data = (out / entry["path"]).read_bytes()
        assert entry["size"] == len(data), entry["path"]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), entry["path"]
    # Nothing on the device side that the manifest does not list.
    on_disk = {
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"
    }
    assert on_disk == set(listed)
    # The loader is copied as source, byte for byte.
    for name in ("boot.py", "main.py"):
        assert (out / name).read_bytes() == (FIRMWARE / "loader" / name).read_bytes()
    assert manifest["target"] == "esp32"
    version = re.search(r'^VERSION = "([^"]+)"', (FIRMWARE / "tracker.py").read_text(), re.M)
    assert version and manifest["version"] == version.group(1)
    assert manifest["git"]
    assert manifest["mpy_cross"]["flags"] == ["-march=xtensawin", "-O3", "-s", "<module>"]
    assert "mpy v" in manifest["mpy_cross"]["version"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["built_at"])
    assert manifest["total_bytes"] == sum(f["size"] for f in manifest["files"])
    # The table: every file, then the total against the budget; progress on stderr.
    for path in listed:
        assert re.search(rf"^{re.escape(path)}\s+[\d,]+\s", stdout, re.M), path
    assert re.search(r"^total\s+[\d,]+\s+[\d,]+\s+196,608", stdout, re.M), stdout
    assert f"[ 1/{len(listed) - 2}] mpy-cross" in stderr
    assert "mypy" in stderr  # the type check ran


def test_compiled_modules_carry_the_module_name_and_an_arch_an_esp32_loads(
    esp32_build: tuple[Path, str, str],
) -> None:
    out, _, _ = esp32_build
    major, _ = _mpy_cross_version()
    mpys = sorted((out / "app").glob("*.mpy"))
    assert mpys
    for path in mpys:
        data = path.read_bytes()
        assert data[0:1] == b"M" and data[1] == major, (path.name, data[:4])
        # Bytecode-only modules carry no arch (portable); native code would say xtensawin.
        assert data[2] >> 2 in (ARCH_NONE, ARCH_XTENSAWIN), (path.name, data[:4])
        # `-s <module>`, as tools/mpy.py compiles. A static qstr (the module's name is a
        # built-in word) cannot be a file path either.
        assert _first_qstr(data) in (path.stem, None), path.name
    named = [p for p in mpys if _first_qstr(p.read_bytes()) is not None]
    assert len(named) > len(mpys) // 2


def test_native_code_is_compiled_for_xtensawin_on_esp32_and_the_host_on_unix(
    tmp_path: Path,
) -> None:
    src = _copy_firmware(tmp_path / "firmware")
    (src / "fast.py").write_text(NATIVE_MODULE)
    _, sub = _mpy_cross_version()
    rc, _, stderr = _build("--source", str(src), "--out", str(tmp_path / "esp32"), "--no-check")
    assert rc == 0, stderr
    header = (tmp_path / "esp32" / "app" / "fast.mpy").read_bytes()[:4]
    assert header[2] == ARCH_XTENSAWIN << 2 | sub, header
    # A bytecode-only module of the same build still carries no arch.
    assert (tmp_path / "esp32" / "app" / "nmea.mpy").read_bytes()[2] == 0
    host = fwbuild._host_arch()
    if host is None:
        return  # mpy-cross has no native emitter for this host (64-bit ARM): bytecode only
    rc, _, stderr = _build(
        "--source", str(src), "--out", str(tmp_path / "unix"), "--target", "unix", "--no-check"
    )  # fmt: skip
    assert rc == 0, stderr
    header = (tmp_path / "unix" / "app" / "fast.mpy").read_bytes()[:4]
    assert header[2] >> 2 == {"x64": ARCH_X64, "x86": ARCH_X86}[host], header


def test_unix_build_has_the_sim_board_and_not_the_esp32_board(tmp_path: Path) -> None:
    out = tmp_path / "unix"
    rc, _, stderr = _build("--target", "unix", "--out", str(out), "--no-check")
    assert rc == 0, stderr
    manifest = _manifest(out)
    listed = {f["path"] for f in manifest["files"]}
    assert listed == _expected_files("unix")
    assert "app/board_sim.mpy" in listed and "app/board_esp32.mpy" not in listed
    assert manifest["target"] == "unix"
    assert "-march=xtensawin" not in manifest["mpy_cross"]["flags"]


def test_esp32_build_leaves_the_sim_board_out(esp32_build: tuple[Path, str, str]) -> None:
    out, _, _ = esp32_build
    assert (out / "app" / "board_esp32.mpy").exists()
    assert not (out / "app" / "board_sim.mpy").exists()
    assert not (out / "app" / "boot.mpy").exists()  # the loader is not compiled into app/


def test_a_file_over_its_budget_fails_the_build_naming_it_and_keeps_the_last_build(
    tmp_path: Path, esp32_build: tuple[Path, str, str]
) -> None:
    good, _, _ = esp32_build
    sizes = {f["path"]: f["size"] for f in _manifest(good)["files"]}
    largest = max(sizes, key=lambda p: sizes[p])
    budget_kb = (sizes[largest] - 1) / 1024
    out = tmp_path / "firmware"
    shutil.copytree(good, out)
    before = (out / "manifest.json").read_bytes()
    rc, stdout, stderr = _build("--out", str(out), "--no-check", "--budget-file-kb", f"{budget_kb}")
    assert rc == 1
    assert f"{largest}: {sizes[largest]:,} bytes exceeds the per-file budget" in stderr, stderr
    assert re.search(rf"^{re.escape(largest)}\s.*OVER$", stdout, re.M), stdout
    # Files under the budget are not blamed.
    smallest = min(sizes, key=lambda p: sizes[p])
    assert f"{smallest}:" not in stderr
    # The previous build is still there, untouched, and no staging folder is left behind.
    assert (out / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["firmware"]


def test_the_whole_build_over_the_total_budget_fails(
    tmp_path: Path, esp32_build: tuple[Path, str, str]
) -> None:
    good, _, _ = esp32_build
    used = _manifest(good)["total_flash_bytes"]
    out = tmp_path / "firmware"
    rc, _, stderr = _build(
        "--out", str(out), "--no-check", "--budget-total-kb", f"{(used - 4096) / 1024}"
    )  # fmt: skip
    assert rc == 1
    assert f"total: {used:,} bytes of flash" in stderr, stderr
    assert "exceeds the total budget" in stderr
    assert not out.exists()


def test_freeze_writes_a_manifest_that_freezes_every_app_module_under_app(
    tmp_path: Path,
) -> None:
    out = tmp_path / "firmware"
    rc, _, stderr = _build("--out", str(out), "--no-check", "--freeze")
    assert rc == 0, stderr
    text = (out / "manifest.py").read_text()
    ast.parse(text, filename="manifest.py")
    # Run it as MicroPython's tools/manifestfile.py does: its functions as globals, paths
    # relative to the manifest's folder.
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def recorder(name: str) -> Any:
        return lambda *args, **kwargs: calls.append((name, args, kwargs))

    api = ("include", "module", "package", "freeze", "require", "metadata")
    exec(compile(text, "manifest.py", "exec"), {n: recorder(n) for n in api})  # noqa: S102
    assert ("include", ("$(PORT_DIR)/boards/manifest.py",), {}) in calls
    modules = [(args, kwargs) for name, args, kwargs in calls if name == "module"]
    frozen = {}
    for args, kwargs in modules:
        target = args[0]
        assert target.startswith("app/"), target  # never a top-level main.py or boot.py
        assert kwargs["opt"] == 3
        frozen[target] = (out / kwargs["base_path"] / target).read_bytes()
    app = fwbuild.app_sources(FIRMWARE, "esp32")
    assert frozen == {f"app/{p.name}": p.read_bytes() for p in app}
    # The frozen sources are in manifest.json too, with their digests.
    listed = {f["path"]: f["sha256"] for f in _manifest(out)["frozen"]["files"]}
    assert listed == {f"frozen/{t}": hashlib.sha256(b).hexdigest() for t, b in frozen.items()}


def test_a_syntax_error_fails_the_build_naming_the_file(tmp_path: Path) -> None:
    src = _copy_firmware(tmp_path / "firmware")
    broken = src / "fence.py"
    broken.write_text(broken.read_text() + "\ndef half_written(:\n")
    out = tmp_path / "out"
    rc, _, stderr = _build("--source", str(src), "--out", str(out))
    assert rc == 1
    assert f"{broken}: mpy-cross failed" in stderr, stderr
    assert "SyntaxError" in stderr
    assert "nmea.py: mpy-cross failed" not in stderr
    assert not out.exists()


def test_a_syntax_error_in_the_loader_fails_the_build_too(tmp_path: Path) -> None:
    src = _copy_firmware(tmp_path / "firmware")
    boot = src / "loader" / "boot.py"
    boot.write_text(boot.read_text() + "\nmatch x:\n    case 1:\n        pass\n")
    rc, _, stderr = _build("--source", str(src), "--out", str(tmp_path / "out"), "--no-check")
    assert rc == 1
    assert f"{boot}: mpy-cross failed" in stderr, stderr


def test_a_type_error_fails_the_checked_build_and_not_the_unchecked_one(tmp_path: Path) -> None:
    src = _copy_firmware(tmp_path / "firmware")
    tracker = src / "tracker.py"
    # Compiles (mpy-cross does not type-check) but time.sleep_ms takes an int.
    tracker.write_text(
        tracker.read_text() + '\n\ndef _wait():\n    import time\n    time.sleep_ms("10")\n'
    )
    rc, _, stderr = _build("--source", str(src), "--out", str(tmp_path / "checked"))
    assert rc == 1
    assert re.search(r"tracker\.py:\d+:\d+: error: .*sleep_ms", stderr), stderr
    assert not (tmp_path / "checked").exists()
    rc, _, stderr = _build("--source", str(src), "--out", str(tmp_path / "unchecked"), "--no-check")
    assert rc == 0, stderr


def test_a_missing_loader_fails_the_build_naming_it(tmp_path: Path) -> None:
    src = _copy_firmware(tmp_path / "firmware")
    (src / "loader" / "main.py").unlink()
    rc, _, stderr = _build("--source", str(src), "--out", str(tmp_path / "out"), "--no-check")
    assert rc == 1
    assert "loader/main.py: missing" in stderr, stderr


def test_the_build_refuses_to_replace_a_folder_that_is_not_a_build(tmp_path: Path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "van.jpg").write_bytes(b"\xff\xd8")
    rc, _, stderr = _build("--out", str(out), "--no-check")
    assert rc == 1
    assert "refusing to replace it" in stderr
    assert (out / "van.jpg").exists()


def test_firmware_command_registers_build_with_its_options() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="vantrack")
    fwbuild.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["firmware", "build", "--target", "unix", "--no-check", "--budget-file-kb", "8"]
    )
    assert (args.target, args.check, args.budget_file_kb, args.freeze) == ("unix", False, 8, False)
    assert args.budget_total_kb == fwbuild.DEFAULT_BUDGET_TOTAL_KB
    assert args.func is fwbuild.run_build
