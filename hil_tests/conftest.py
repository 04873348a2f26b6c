"""Hardware-in-the-loop fixtures.

The same scenarios run on a rig: today the simulated rig (gps-sim on a pty, the firmware
under `micropython -X heapsize=64K` on the sim board). The bench rig with a real ESP32
(GPS line from a USB-serial adapter, firmware flashed with mpremote) plugs in here as a
second choice, `--rig serial:PORT --gps-port GPS`: hil_tests/test_van_rig.py runs there
unchanged (flash, provision, a round, a reset, a rollback); the tests that drive the
firmware through tools/rig.py's host-side harness are skipped on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vantrack.tools import rig


def _rig(value: str) -> str:
    if value == "sim" or (value.startswith("serial:") and len(value) > 7):
        return value
    raise pytest.UsageError(f"--rig {value!r}: sim or serial:PORT")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rig", default="sim", type=_rig,
        help="rig to run hil_tests on: sim = MicroPython unix port fed by gps-sim over a pty "
        "(default); serial:PORT = a bench ESP32 on PORT (docs/flashing.md)",
    )  # fmt: skip
    parser.addoption(
        "--gps-port", default=None,
        help="with --rig serial:PORT: the USB-serial adapter wired to the board's GPS UART",
    )  # fmt: skip


def _sim_only(request: pytest.FixtureRequest) -> None:
    if request.config.getoption("--rig") != "sim":
        pytest.skip("runs the firmware on the sim rig's host side (tools/rig.py)")


@pytest.fixture
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[rig.GatewayProcess]:
    """A real `vantrack gateway` process on loopback with its own store."""
    _sim_only(request)
    with rig.GatewayProcess(
        tmp_path / "gateway", config="[gateway]\nstats_interval_s = 0.5\n"
    ) as gw:
        yield gw


@pytest.fixture
def van(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., rig.SimVan]]:
    """Factory for started vans on the selected rig; every van is stopped at teardown."""
    _sim_only(request)
    started: list[rig.SimVan] = []

    def make(route: Path | str, **kwargs: Any) -> rig.SimVan:
        v = rig.SimVan(rig.sample_route(str(route)), tmp_path / f"flash{len(started)}", **kwargs)
        started.append(v)
        v.start()
        return v

    yield make
    for v in started:
        v.stop()
