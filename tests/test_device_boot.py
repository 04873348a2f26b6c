"""The van's boot and watchdog, whole firmware under `micropython -X heapsize=64K` on the
sim board: the boot line says what the van runs with and never a secret, and a van whose
GPS reader hangs is reset by the watchdog (exit code 3: tools/rig.py starts it again).

The supervisor's decisions (fed only while the tasks progress, the LED's pattern, the
end of the loader's trial) are unit-tested in tests/mpy/test_device.py, the ESP32 board
(reset cause, Wi-Fi backoff, the hardware watchdog, the LED) in tests/mpy/test_board_esp32.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from vantrack.tools import mpy, rig

MPY_TESTS = Path(__file__).parent / "mpy"
NMEA = Path(__file__).parent / "data" / "nmea" / "ac12.log"
KEY = "00112233445566778899aabbccddeeff"


def _flash(tmp_path: Path, **cfg: object) -> Path:
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "config.json").write_text(json.dumps(cfg))
    return flash


def test_boot_line_shows_config_summary_and_never_the_key(tmp_path: Path) -> None:
    flash = _flash(tmp_path, device_id=7, device_name="van-07", key=KEY,
                   gateway_host="127.0.0.1", gateway_port=rig.free_udp_port(),
                   report_period_s=20, queue_kb=512, wifi_password="s3cret")  # fmt: skip
    cfg = json.loads((flash / "config.json").read_text())
    proc = mpy.popen(mpy.FIRMWARE_MAIN, ["--gps", "/dev/null", "--flash", str(flash)],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        lines = [rig.read_line(proc, 30).strip() for _ in range(3)]
    finally:
        rig.stop_process(proc)
    boot = next(ln for ln in lines if ln.startswith("I boot start "))
    fields = dict(kv.split("=", 1) for kv in boot.split()[3:])
    assert fields["gateway"] == f"127.0.0.1:{cfg['gateway_port']}"
    assert fields["period_s"] == "20"
    assert fields["queue_kb"] == "512"
    assert fields["device"] == "van-07"
    assert fields["board"] == "sim"
    assert KEY not in "\n".join(lines) and "s3cret" not in "\n".join(lines)


def test_a_van_whose_gps_reader_hangs_is_reset_by_the_sim_watchdog(tmp_path: Path) -> None:
    # The GPS line has bytes the hung reader never takes; no gateway: nothing else runs.
    flash = _flash(tmp_path, wdt_s=1)
    proc = mpy.run(MPY_TESTS / "wdt_hang.py", ["--gps", str(NMEA), "--flash", str(flash)],
                   extra_path=[MPY_TESTS], timeout=120)  # fmt: skip
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == rig.RESTART_EXIT, out
    lines = out.splitlines()
    assert "W wdt not_fed stalled=gps" in lines, out
    assert lines.index("W wdt not_fed stalled=gps") < lines.index("E wdt reset timeout_ms=1000")
    assert "I boot ready fences=0" in "\n".join(lines)
    assert "NOT RESET" not in out
