"""The loader (firmware/loader/boot.py and main.py) under MicroPython, on a directory laid
out as the board's filesystem: it finishes or undoes a switch cut short by a power cut,
gives a firmware on trial one boot, rolls back one that did not confirm, and restarts a
firmware that crashed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vantrack.tools import mpy

LOADER = Path(__file__).resolve().parent.parent / "firmware" / "loader"


def app(root: Path, name: str, version: str, body: str = "") -> None:
    d = root / name
    d.mkdir()
    (d / "main.py").write_text(f"print('I boot start version={version}')\n{body}")


def boot(root: Path) -> subprocess.CompletedProcess[str]:
    """MicroPython's start on a board: boot.py, then main.py, in the filesystem root."""
    for f in ("boot.py", "main.py"):
        (root / f).write_text((LOADER / f).read_text())
    script = root / "_start.py"
    script.write_text(
        "import sys\nsys.path[:] = ['']\n"  # as the ESP32's '' first (and no host paths)
        "exec(open('boot.py').read())\nexec(open('main.py').read())\n"
    )
    return subprocess.run(
        [mpy.micropython_binary(), "-X", "heapsize=64K", "_start.py"],
        cwd=root, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def entries(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()} - {"boot.py", "main.py", "_start.py"}


def test_a_normal_start_runs_app(tmp_path: Path) -> None:
    app(tmp_path, "app", "1")
    out = boot(tmp_path)
    assert out.returncode == 0 and "version=1" in out.stdout
    assert entries(tmp_path) == {"app"}


@pytest.mark.parametrize("left", ["app.new", "app.old"])
def test_a_power_cut_between_the_two_renames_leaves_a_firmware_that_runs(
    tmp_path: Path, left: str
) -> None:
    app(tmp_path, left, "2")
    out = boot(tmp_path)
    assert f"W loader recovered from={left}" in out.stdout and "version=2" in out.stdout
    assert "app" in entries(tmp_path) and left not in entries(tmp_path)


def test_a_firmware_on_trial_gets_one_boot_then_is_rolled_back_if_unconfirmed(
    tmp_path: Path,
) -> None:
    app(tmp_path, "app", "2")
    app(tmp_path, "app.old", "1")
    (tmp_path / "boot.trial").write_text("0")
    first = boot(tmp_path)
    assert "I loader trial" in first.stdout and "version=2" in first.stdout
    assert (tmp_path / "boot.trial").read_text() == "1"
    # It never confirmed (board.confirm_boot() removes boot.trial): the next start
    # goes back to version 1 and keeps version 2 aside.
    second = boot(tmp_path)
    assert "W loader rollback reason=unconfirmed kept=app.bad" in second.stdout
    assert "version=1" in second.stdout
    assert entries(tmp_path) == {"app", "app.bad"}
    assert "version=2" in (tmp_path / "app.bad" / "main.py").read_text()


def test_a_confirmed_firmware_stays(tmp_path: Path) -> None:
    app(tmp_path, "app", "2", body="import os\nos.remove('boot.trial')\n")  # confirms
    app(tmp_path, "app.old", "1")
    (tmp_path / "boot.trial").write_text("0")
    boot(tmp_path)
    out = boot(tmp_path)
    assert "rollback" not in out.stdout and "version=2" in out.stdout
    assert entries(tmp_path) == {"app", "app.old"}


def test_a_firmware_that_crashes_at_start_is_restarted_and_then_rolled_back(
    tmp_path: Path,
) -> None:
    app(tmp_path, "app", "2", body="raise ValueError('broken build')\n")
    app(tmp_path, "app.old", "1")
    (tmp_path / "boot.trial").write_text("0")
    first = boot(tmp_path)
    # The loader's main.py ends with the restart status (a soft reset on the ESP32).
    assert first.returncode == 3
    assert "ValueError: broken build" in first.stdout and "E loader crashed" in first.stdout
    second = boot(tmp_path)
    assert second.returncode == 0 and "W loader rollback" in second.stdout
    assert "version=1" in second.stdout


def test_without_a_previous_firmware_a_trial_just_ends(tmp_path: Path) -> None:
    app(tmp_path, "app", "1")
    (tmp_path / "boot.trial").write_text("1")
    out = boot(tmp_path)
    assert "version=1" in out.stdout and "rollback" not in out.stdout
    assert entries(tmp_path) == {"app"}


def test_a_board_without_firmware_says_so_and_stays_at_the_prompt(tmp_path: Path) -> None:
    out = boot(tmp_path)
    assert out.returncode == 0 and "E loader no_firmware" in out.stdout
