"""Hardware-in-the-loop fixtures.

The same scenarios run on a rig: today the simulated rig (gps-sim on a pty, the firmware
under `micropython -X heapsize=64K` on the sim board). The bench rig with a real ESP32
(GPS line from a USB-serial adapter, firmware flashed with mpremote) plugs in here as a
second choice of `--rig` when flashing lands (issue 8); until then only `sim` exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vantrack.tools import rig


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rig", default="sim", choices=["sim"],
        help="rig to run hil_tests on: sim = MicroPython unix port fed by gps-sim over a pty",
    )  # fmt: skip


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[rig.GatewayProcess]:
    """A real `vantrack gateway` process on loopback with its own store."""
    with rig.GatewayProcess(
        tmp_path / "gateway", config="[gateway]\nstats_interval_s = 0.5\n"
    ) as gw:
        yield gw


@pytest.fixture
def van(tmp_path: Path) -> Iterator[Callable[..., rig.SimVan]]:
    """Factory for started vans on the selected rig; every van is stopped at teardown."""
    started: list[rig.SimVan] = []

    def make(route: Path | str, **kwargs: Any) -> rig.SimVan:
        v = rig.SimVan(rig.sample_route(str(route)), tmp_path / f"flash{len(started)}", **kwargs)
        started.append(v)
        v.start()
        return v

    yield make
    for v in started:
        v.stop()
