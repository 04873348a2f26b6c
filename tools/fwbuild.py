"""`vantrack firmware build`: the van's firmware as it goes onto the device, with a manifest.

Compiles every top-level module of firmware/ with mpy-cross for the target and lays the
result out as the device's filesystem holds it:

    OUT/boot.py, OUT/main.py   the loader (firmware/loader/), copied as source: MicroPython
                               runs boot.py and main.py from source, by name, at startup
    OUT/app/<module>.mpy       every other firmware/*.py, compiled (the app's own main.py
                               becomes app/main.mpy); board_sim only in a `unix` build,
                               board_esp32 only in an `esp32` build
    OUT/manifest.json          version, git revision, target, mpy-cross version and flags,
                               build time, and each device file's path, size and sha256
    OUT/manifest.py            with --freeze: a MicroPython manifest to freeze the app into
    OUT/frozen/app/*.py        a custom image, and the sources it freezes

mpy-cross runs with the flags of tools/mpy.py (-O3, `-s <module>`) plus `-march=xtensawin`
for the ESP32 (the architecture only matters for native code; bytecode is portable).

Flash budgets (docs/firmware-build.md has the measurements behind them):

- per file, 16 KB: a module costs at least its .mpy's size in heap once imported (bytecode,
  qstrs, constants, unless frozen), and the van has ~64 KB of heap. The largest module
  today, nmea.mpy, is 3.5 KB; a module past 16 KB (a quarter of the heap) should be split.
- total, 192 KB of flash: files are counted as LittleFS stores them, in whole 4 KB blocks
  (MicroPython inlines only files under 128 bytes). When this was written the ESP32 build
  was 21 files, 35,756 bytes taking 92 KB of flash. The filesystem is 2 MB on a 4 MB
  module; the flash queue takes up to 1024 KB (`queue_kb`), and during `vantrack flash`
  the board holds three copies of the firmware (app/, app.old/, app.new/): 3 x 192 KB
  still leaves over 400 KB for the configuration, the route and LittleFS's free blocks.

The build fails (exit 1) on a compile error, a type error (`--check`, the default: the
ESP32-stubs type check of tools/fwcheck.py) or a budget exceeded. It builds into a staging
folder beside OUT and replaces OUT only when everything passed, so a failed build never
leaves half a firmware to flash. It does not copy anything to a device.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import fwcheck, mpy

REPO_ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = REPO_ROOT / "firmware"
LOADER_DIR_NAME = "loader"
LOADER_FILES = ("boot.py", "main.py")
APP_DIR = "app"
FROZEN_DIR = "frozen"
MANIFEST_JSON = "manifest.json"
MANIFEST_PY = "manifest.py"

TARGETS = ("esp32", "unix")
# For --freeze: the port's own manifest each image starts from (ESP32_GENERIC has none of
# its own; the unix port's is its standard variant's), and how to build the image.
BASE_MANIFESTS = {
    "esp32": "$(PORT_DIR)/boards/manifest.py",
    "unix": "$(PORT_DIR)/variants/standard/manifest.py",
}
IMAGE_MAKE = {
    "esp32": "make -C ports/esp32 BOARD=ESP32_GENERIC",
    "unix": "make -C ports/unix",
}
# Board modules: each target ships its own and leaves the other's out.
BOARD_MODULES = {"esp32": "board_esp32", "unix": "board_sim"}

# LittleFS on the ESP32's SPI flash: 4 KB erase blocks; a file over the inline limit
# (4 x 32-byte cache in MicroPython's vfs_lfs = 128 bytes) takes whole blocks.
FLASH_BLOCK = 4096
INLINE_MAX = 128
DEFAULT_BUDGET_FILE_KB = 16
DEFAULT_BUDGET_TOTAL_KB = 192

VERSION_LINE = re.compile(r"""^VERSION\s*=\s*["']([^"']+)["']""", re.MULTILINE)


class BuildError(RuntimeError):
    """The build failed; the message says which file and why."""


@dataclass
class BuildOptions:
    out: Path
    target: str = "esp32"
    source: Path = FIRMWARE_DIR
    freeze: bool = False
    check: bool = True
    budget_file_kb: float = DEFAULT_BUDGET_FILE_KB
    budget_total_kb: float = DEFAULT_BUDGET_TOTAL_KB
    # Streams, or None for silence; "stderr"/"stdout" mean sys.stderr/sys.stdout at the
    # time of writing (so a redirected or captured stream is honoured).
    progress: Any = field(default="stderr", repr=False)
    table: Any = field(default="stdout", repr=False)


@dataclass
class DeviceFile:
    path: str  # on the device, relative to its root: "boot.py", "app/nmea.mpy"
    size: int
    sha256: str

    @property
    def flash(self) -> int:
        """Bytes of flash LittleFS gives the file."""
        if self.size <= INLINE_MAX:
            return 0
        return -(-self.size // FLASH_BLOCK) * FLASH_BLOCK


# --- what goes into a build -------------------------------------------------------------


def app_sources(source: Path, target: str) -> list[Path]:
    """The app modules of `target`: firmware/*.py (top level), minus the other board."""
    if target not in TARGETS:
        raise BuildError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    other = {mod for tgt, mod in BOARD_MODULES.items() if tgt != target}
    return sorted(p for p in source.glob("*.py") if p.stem not in other)


def loader_sources(source: Path) -> list[Path]:
    loader = source / LOADER_DIR_NAME
    paths = [loader / name for name in LOADER_FILES]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise BuildError(
            ", ".join(_show(p) for p in missing)
            + ": missing (the loader MicroPython runs from source at startup)"
        )
    return paths


def mpy_cross_flags(target: str) -> list[str]:
    """Flags for every module of `target` (plus `-s <module>` per file)."""
    arch = {"esp32": fwcheck.MPY_ARCH, "unix": _host_arch()}[target]
    return [*([f"-march={arch}"] if arch else []), *mpy.MPY_CROSS_FLAGS]


def _host_arch() -> str | None:
    # The unix port runs on the host: native code needs the host's arch. mpy-cross knows
    # no 64-bit ARM, so there the build is bytecode only (as tools/mpy.py's cache is).
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "x64"
    if re.fullmatch(r"i[3-6]86", machine):
        return "x86"
    return None


def firmware_version(source: Path) -> str:
    tracker = source / "tracker.py"
    try:
        found = VERSION_LINE.search(tracker.read_text())
    except OSError as exc:
        raise BuildError(f"{_show(tracker)}: cannot read the firmware version ({exc})") from exc
    if not found:
        raise BuildError(f'{_show(tracker)}: no VERSION = "..." line')
    return found.group(1)


def git_revision(where: Path) -> str:
    try:
        proc = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "unknown"


def mpy_cross_version() -> str:
    proc = subprocess.run(
        [*fwcheck.mpy_cross_command(), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return (proc.stdout + proc.stderr).strip()


# --- steps ------------------------------------------------------------------------------


def _stream(where: Any) -> Any:
    if where == "stderr":
        return sys.stderr
    if where == "stdout":
        return sys.stdout
    return where


def _say(opts: BuildOptions, text: str) -> None:
    out = _stream(opts.progress)
    if out is not None:
        print(text, file=out, flush=True)


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def compile_app(opts: BuildOptions, sources: Sequence[Path], app_dir: Path) -> None:
    """mpy-cross every module into `app_dir`; every failure is reported, then raised."""
    app_dir.mkdir(parents=True, exist_ok=True)
    flags = mpy_cross_flags(opts.target)
    failures = []
    for i, src in enumerate(sources, 1):
        out = app_dir / f"{src.stem}.mpy"
        _say(opts, f"[{i:2}/{len(sources)}] mpy-cross {_show(src)} -> {APP_DIR}/{out.name}")
        proc = subprocess.run(
            [*fwcheck.mpy_cross_command(), *flags, "-s", src.stem, "-o", str(out), str(src)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0 or not out.exists():
            message = (proc.stdout + proc.stderr).strip() or "no output"
            failures.append(
                f"{_show(src)}: mpy-cross failed:\n    " + message.replace("\n", "\n    ")
            )
    if failures:
        raise BuildError("\n".join(failures))


def check_syntax(sources: Sequence[Path]) -> None:
    """The loader ships as source, but MicroPython must still accept it: compile, discard."""
    with tempfile.TemporaryDirectory(prefix="vantrack-loader-") as tmp:
        results = fwcheck.compile_all(tmp, files=sources)
    failures = [f"{_show(p)}: mpy-cross failed:\n    {msg}" for p, ok, msg in results if not ok]
    if failures:
        raise BuildError("\n".join(failures))


def typecheck(opts: BuildOptions, sources: Sequence[Path]) -> None:
    """tools/fwcheck.py's checks on exactly the files of this build."""
    _say(opts, f"checking {len(sources)} files: imports, mypy against the ESP32 stubs")
    problems = [
        f"{_show(p)}:{line}: imports hardware module {mod!r}; only "
        f"{fwcheck.HARDWARE_BOARD_FILE} may"
        for p, line, mod in fwcheck.hardware_imports(sources)
    ]
    problems += [
        f"{_show(p)}:{line}: imports {mod!r}, which the ESP32 firmware does not have"
        for p, line, mod in fwcheck.unavailable_imports(sources)
    ]
    with tempfile.TemporaryDirectory(prefix="vantrack-fwbuild-mypy-") as tmp:
        ok, output = fwcheck.typecheck(sources, config=_mypy_config(opts.source, Path(tmp)))
    if not ok:
        problems.append("mypy (ESP32 stubs) reported:\n" + output)
    if problems:
        raise BuildError("firmware check failed:\n" + "\n".join(problems))


def _mypy_config(source: Path, tmp: Path) -> Path:
    # firmware/mypy.ini resolves imports from its own folder ($MYPY_CONFIG_FILE_DIR); a
    # source folder elsewhere needs the same settings pointed at itself.
    own = source / "mypy.ini"
    if own.is_file():
        return own
    text = fwcheck.MYPY_CONFIG.read_text().replace("$MYPY_CONFIG_FILE_DIR", str(source.resolve()))
    config = tmp / "mypy.ini"
    config.write_text(text)
    return config


def describe(root: Path, rel: str) -> DeviceFile:
    data = (root / rel).read_bytes()
    return DeviceFile(rel, len(data), hashlib.sha256(data).hexdigest())


def check_budgets(opts: BuildOptions, files: Sequence[DeviceFile]) -> list[str]:
    """Every budget exceeded, one message each naming the file (or the total)."""
    per_file = int(opts.budget_file_kb * 1024)
    total = int(opts.budget_total_kb * 1024)
    over = [
        f"{f.path}: {f.size:,} bytes exceeds the per-file budget of {per_file:,} bytes "
        f"({opts.budget_file_kb:g} KB)"
        for f in files
        if f.size > per_file
    ]
    used = flash_used(files)
    if used > total:
        over.append(
            f"total: {used:,} bytes of flash ({sum(f.size for f in files):,} bytes in "
            f"{len(files)} files) exceeds the total budget of {total:,} bytes "
            f"({opts.budget_total_kb:g} KB)"
        )
    return over


def flash_used(files: Sequence[DeviceFile]) -> int:
    """Flash the files take on LittleFS, plus the app/ directory's metadata pair."""
    return sum(f.flash for f in files) + 2 * FLASH_BLOCK


def report(opts: BuildOptions, files: Sequence[DeviceFile]) -> None:
    out = _stream(opts.table)
    if out is None:
        return
    per_file = int(opts.budget_file_kb * 1024)
    total = int(opts.budget_total_kb * 1024)
    width = max([len(f.path) for f in files] + [len("total")])
    print(f"{'file':<{width}}  {'size':>8}  {'flash':>8}  {'budget':>8}", file=out)
    for f in files:
        mark = "  OVER" if f.size > per_file else ""
        print(f"{f.path:<{width}}  {f.size:>8,}  {f.flash:>8,}  {per_file:>8,}{mark}", file=out)
    size = sum(f.size for f in files)
    used = flash_used(files)
    mark = "  OVER" if used > total else ""
    print(f"{'total':<{width}}  {size:>8,}  {used:>8,}  {total:>8,}{mark}", file=out)
    print(
        f"{len(files)} files, {size / 1024:.1f} KB; {used / 1024:.0f} KB of flash in "
        f"{FLASH_BLOCK // 1024} KB blocks (app/ directory included) = "
        f"{100 * used / total:.0f}% of the {opts.budget_total_kb:g} KB budget",
        file=out,
    )


def freeze_manifest(version: str, revision: str, target: str, modules: Sequence[str]) -> str:
    """A MicroPython manifest freezing the app as `app/<module>.py`, the device's layout.

    Frozen under app/ (not at the top level) because a frozen `main.py` would be run at
    boot instead of the loader's main.py on the filesystem (pyexec_file_if_exists looks
    for frozen modules first). The loader finds them with ".frozen/app" in sys.path.
    Sources, not our .mpy files: a frozen .mpy is named by its embedded source name, and
    ours are compiled with `-s <module>` for the filesystem; the MicroPython tree compiles
    these sources itself, with its own mpy-cross, at `opt=3` as we do.
    """
    lines = [
        f"# vantrack firmware {version} ({revision}), target {target}: the app frozen into a",
        "# custom MicroPython image. Written by `vantrack firmware build --freeze`.",
        "# Build from the MicroPython tree (docs/firmware-build.md):",
        f"#   {IMAGE_MAKE[target]} FROZEN_MANIFEST=<this file's absolute path>",
        "# Relative paths below are relative to this file.",
        "",
        "# The port's own frozen modules (asyncio, networking helpers, ...).",
        f'include("{BASE_MANIFESTS[target]}")',
        "",
        "# The app, as app/<module>.py: found through '.frozen/app' in sys.path.",
    ]
    lines += [f'module("{APP_DIR}/{name}.py", base_path="{FROZEN_DIR}", opt=3)' for name in modules]
    return "\n".join(lines) + "\n"


def _built_at() -> str:
    # SOURCE_DATE_EPOCH (reproducible-builds.org) pins the time for byte-identical builds.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
        if epoch and epoch.isdigit()
        else datetime.datetime.now(datetime.UTC)
    )
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _replace_out(staging: Path, out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise BuildError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and not (out / MANIFEST_JSON).exists():
            raise BuildError(
                f"{out}: not empty and not a firmware build (no {MANIFEST_JSON}); "
                "refusing to replace it"
            )
        shutil.rmtree(out)
    os.replace(staging, out)


# --- the build --------------------------------------------------------------------------


def build(
    out: Path | str | None = None,
    target: str = "esp32",
    *,
    source: Path | str = FIRMWARE_DIR,
    freeze: bool = False,
    check: bool = True,
    budget_file_kb: float = DEFAULT_BUDGET_FILE_KB,
    budget_total_kb: float = DEFAULT_BUDGET_TOTAL_KB,
    progress: Any = "stderr",
    table: Any = "stdout",
) -> dict[str, Any]:
    """Build the firmware into `out` (default: default_out(target)); returns the manifest.

    Raises BuildError, whose message names the file and the reason. Progress lines go to
    `progress`, the size table to `table` (either may be None).
    """
    return _build(
        BuildOptions(
            out=Path(out) if out is not None else default_out(target),
            target=target,
            source=Path(source),
            freeze=freeze,
            check=check,
            budget_file_kb=budget_file_kb,
            budget_total_kb=budget_total_kb,
            progress=progress,
            table=table,
        )
    )


def _build(opts: BuildOptions) -> dict[str, Any]:
    source = opts.source
    if not source.is_dir():
        raise BuildError(f"{source}: no such firmware folder")
    app = app_sources(source, opts.target)
    if not app:
        raise BuildError(f"{_show(source)}: no firmware modules (*.py)")
    loader = loader_sources(source)
    version = firmware_version(source)

    out = opts.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would become OUT's mode
    try:
        _say(opts, f"building vantrack firmware {version} for {opts.target} into {out}")
        compile_app(opts, app, staging / APP_DIR)
        check_syntax(loader)
        for src in loader:
            shutil.copyfile(src, staging / src.name)
        if opts.check:
            typecheck(opts, [*app, *loader])

        rels = [src.name for src in loader] + [f"{APP_DIR}/{src.stem}.mpy" for src in app]
        files = sorted((describe(staging, rel) for rel in rels), key=lambda f: f.path)
        report(opts, files)
        over = check_budgets(opts, files)
        if over:
            raise BuildError("flash budget exceeded:\n" + "\n".join(over))

        revision = git_revision(source)
        frozen: dict[str, Any] | None = None
        if opts.freeze:
            frozen_app = staging / FROZEN_DIR / APP_DIR
            frozen_app.mkdir(parents=True)
            for src in app:
                shutil.copyfile(src, frozen_app / src.name)
            text = freeze_manifest(version, revision, opts.target, [s.stem for s in app])
            (staging / MANIFEST_PY).write_text(text)
            frozen = {
                "manifest": MANIFEST_PY,
                "files": [
                    _file_entry(describe(staging, f"{FROZEN_DIR}/{APP_DIR}/{s.name}")) for s in app
                ],
            }

        manifest: dict[str, Any] = {
            "version": version,
            "git": revision,
            "target": opts.target,
            "mpy_cross": {
                "version": mpy_cross_version(),
                "flags": [*mpy_cross_flags(opts.target), "-s", "<module>"],
            },
            "built_at": _built_at(),
            "budgets": {
                "file_bytes": int(opts.budget_file_kb * 1024),
                "total_flash_bytes": int(opts.budget_total_kb * 1024),
            },
            "total_bytes": sum(f.size for f in files),
            "total_flash_bytes": flash_used(files),
            "files": [_file_entry(f) for f in files],
            "frozen": frozen,
        }
        (staging / MANIFEST_JSON).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_out(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    _say(opts, f"wrote {out} ({len(files)} device files, {MANIFEST_JSON})")
    return manifest


def _file_entry(f: DeviceFile) -> dict[str, Any]:
    return {"path": f.path, "size": f.size, "sha256": f.sha256}


# --- command line -----------------------------------------------------------------------

BUILD_DESCRIPTION = f"""\
Compile the firmware for a target and lay it out as the device holds it:
  OUT/boot.py, OUT/main.py   the loader (firmware/loader/), as source
  OUT/app/<module>.mpy       every other firmware/*.py, compiled with mpy-cross
  OUT/manifest.json          version, git revision, mpy-cross version and flags, and each
                             file's device path, size and sha256
The build fails (exit 1) on a compile or type error, or when a file or the whole build
passes its flash budget (defaults: {DEFAULT_BUDGET_FILE_KB} KB a file,
{DEFAULT_BUDGET_TOTAL_KB} KB of flash in all; see docs/firmware-build.md). OUT is replaced
only by a build that passed. Progress goes to stderr, the size table to stdout.
"""


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        choices=TARGETS,
        default="esp32",
        help="esp32 (the van: -march=xtensawin, board_esp32) or unix (the simulated rig: "
        "board_sim); default %(default)s",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder, replaced on success (default build/firmware, or "
        "build/firmware-unix for --target unix)",
    )
    p.add_argument(
        "--freeze",
        action="store_true",
        help="also write OUT/manifest.py (and OUT/frozen/) to freeze the app into a custom "
        "MicroPython image",
    )
    p.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="type-check the firmware against the ESP32 stubs and check its imports first "
        "(default on)",
    )
    p.add_argument(
        "--budget-file-kb",
        type=float,
        default=DEFAULT_BUDGET_FILE_KB,
        metavar="N",
        help="largest file allowed, KB (default %(default)s)",
    )
    p.add_argument(
        "--budget-total-kb",
        type=float,
        default=DEFAULT_BUDGET_TOTAL_KB,
        metavar="N",
        help="flash the whole build may take on the device's filesystem, KB, counted in "
        "4 KB blocks (default %(default)s)",
    )
    p.add_argument(
        "--source",
        type=Path,
        default=FIRMWARE_DIR,
        help="firmware folder to build (default: the repository's firmware/)",
    )
    p.set_defaults(func=run_build)


def _add_actions(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build_p = actions.add_parser(
        "build",
        help="compile the firmware into a device layout with a manifest",
        description=BUILD_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_build_arguments(build_p)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "firmware",
        help="build the van's firmware (mpy-cross, manifest, flash budgets)",
        description="Build the van's MicroPython firmware.",
    )
    _add_actions(parser)


def default_out(target: str) -> Path:
    return REPO_ROOT / "build" / ("firmware" if target == "esp32" else f"firmware-{target}")


def run_build(args: argparse.Namespace) -> int:
    try:
        build(
            args.out,
            args.target,
            source=args.source,
            freeze=args.freeze,
            check=args.check,
            budget_file_kb=args.budget_file_kb,
            budget_total_kb=args.budget_total_kb,
        )
    except BuildError as exc:
        print(f"firmware build failed: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vantrack firmware", description="Build the van's MicroPython firmware."
    )
    _add_actions(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
