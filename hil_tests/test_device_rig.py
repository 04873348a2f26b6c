"""A whole van on the sim rig with the device's own concerns on: its watchdog armed (config
wdt_s), and a freshly flashed firmware on trial (the loader's boot.trial in the rig's
working directory). While the van tracks and reports a round the supervisor keeps the
watchdog fed (no reset), the boot is confirmed once, and the status LED shows a fix with
a link.
"""

from __future__ import annotations

import pytest

from vantrack.tools import rig

START = "2026-11-26T08:00:00Z"


def test_a_running_van_is_fed_confirms_its_boot_once_and_never_logs_its_key(
    van, gateway, tmp_path, monkeypatch: pytest.MonkeyPatch
):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # the sim board's filesystem root: the working directory
    (tmp_path / "boot.trial").write_text("1")
    cfg = gateway.van_config("van-d1", wdt_s=8)
    v = van("urban-round", config=cfg, echo=False, speedup=80,
            sim_args=["--seed", "3", "--start", START])  # fmt: skip
    lines = list(v.console())
    assert v.wait(120) == 0, lines[-10:]
    wdt = [ln for ln in lines if ln.split()[1:2] == ["wdt"]]
    assert v.restarts == 0 and not wdt, wdt  # never reset nor starved: fed all along
    assert not [ln for ln in lines if ln.startswith("E ")], lines
    assert lines.count("I boot confirmed") == 1
    assert not (tmp_path / "boot.trial").exists()
    boot = next(ln for ln in lines if ln.startswith("I boot start "))
    assert f"gateway=127.0.0.1:{gateway.port}" in boot.split()
    assert cfg["key"] not in "\n".join(lines)
    # Positions reached the gateway (the van reported while its watchdog was on).
    assert any(ln.startswith("I uplink stats reports=") and " acked=0 " not in ln
               for ln in lines)  # fmt: skip
    assert rig.queue_state(v.flash_dir).pending == 0
