"""`vantrack bench soak`'s reading of the firmware console (tools/soakbench.py): hours
cut by GPS time, per-hour deltas of the cumulative uplink counters, errors kept verbatim.
No firmware runs here: the console lines are written as firmware/tracker.py prints them."""

from __future__ import annotations

import argparse

import pytest

from vantrack.tools import soakbench
from vantrack.tools.soakbench import Boot, Period

T0 = 837_410_400  # 2026-07-15T06:00:00Z in GPS seconds since 2000


def fix(t: int) -> str:
    return f"F {t} 0 41404925 2199582 8333 9000 2550 1 3 12 90 1"


def gps_stats(free: int) -> str:
    return (
        'I gps stats fixes=61 drops={"checksum": 0, "late": 0} '
        f"mem_free={free} sentences=305 valid=61 events=0"
    )


def uplink_stats(records: int, acked: int, queued: int, writes: int) -> str:
    return (
        f"I uplink stats reports=3 queued={queued} lost=0 records={records} "
        f"writes={writes} acked={acked} dropped=0 failures=0"
    )


def test_dead_zone_is_read_as_start_and_end_hours() -> None:
    assert soakbench.parse_hours("3:5") == (3.0, 5.0)
    assert soakbench.parse_hours("2.5:4") == (2.5, 4.0)
    assert soakbench.parse_hours("none") == (0.0, 0.0)
    for bad in ("3", "5:3", "a:b", "-1:2"):
        with pytest.raises(argparse.ArgumentTypeError):
            soakbench.parse_hours(bad)


def test_stats_lines_give_their_integer_fields_and_json_is_skipped() -> None:
    got = soakbench.stats_fields(gps_stats(10208))
    assert got is not None
    kind, f = got
    assert kind == "gps" and f["mem_free"] == 10208 and "checksum" not in f
    got = soakbench.stats_fields(uplink_stats(12, 3, 9, 14))
    assert got is not None
    kind, f = got
    assert kind == "uplink" and (f["records"], f["acked"], f["queued"], f["writes"]) == (
        12, 3, 9, 14,
    )  # fmt: skip
    assert soakbench.stats_fields("I fence event t=1 type=1 x=null n=0") is None
    assert soakbench.fix_time(fix(T0)) == T0
    assert soakbench.fix_time("F None None None") is None


def test_stats_go_to_the_hour_of_the_last_fix_and_counters_become_per_hour() -> None:
    boot = Boot(hours=3)
    lines = [
        "I boot ready mem_free=14000 fences=0",
        fix(T0), gps_stats(11000), uplink_stats(2, 0, 2, 3),
        fix(T0 + 1800), gps_stats(10500), uplink_stats(60, 40, 20, 63),
        fix(T0 + 3600), gps_stats(10400), uplink_stats(130, 100, 30, 140),
        fix(T0 + 7199), gps_stats(10600), uplink_stats(200, 150, 50, 215),
        fix(T0 + 9000), gps_stats(10700), uplink_stats(290, 250, 40, 310),
        fix(T0 + 10800), gps_stats(10300), uplink_stats(300, 260, 40, 321),  # clamped: hour 3
        "I gps end_of_stream fix_failures=0",
        gps_stats(12800), uplink_stats(301, 301, 0, 366),
    ]  # fmt: skip
    for line in lines:
        boot.feed(line)
    p = boot.periods
    assert list(p) == ["1", "2", "3", "drain"]
    assert (p["1"].least_free, p["1"].last_free, p["1"].samples) == (10500, 10500, 2)
    assert (p["1"].records, p["1"].acked, p["1"].queued, p["1"].writes) == (60, 40, 20, 63)
    assert (p["2"].least_free, p["2"].last_free) == (10400, 10600)
    assert (p["2"].records, p["2"].acked, p["2"].queued, p["2"].writes) == (140, 110, 50, 152)
    assert (p["3"].least_free, p["3"].records, p["3"].writes) == (10300, 100, 106)
    assert (p["drain"].records, p["drain"].acked, p["drain"].queued) == (1, 41, 0)
    assert boot.last_uplink["records"] == 301
    assert soakbench.first_hour_fall([p["1"], p["2"], p["3"]]) == 200
    assert soakbench.heap_growth([p["1"], p["2"], p["3"]]) == 200  # 10500 -> 10300


def test_error_lines_are_kept_verbatim_with_their_hour() -> None:
    boot = Boot(hours=2)
    oom = "E gps fix_failed error=\"MemoryError('memory allocation failed',)\" n=1"
    for line in (fix(T0), "W uplink timeout code=0 reason=- seq=5 wait_ms=5000",
                 fix(T0 + 4000), oom, "E uplink round_failed error=\"OSError(28,)\""):  # fmt: skip
        boot.feed(line)
    assert boot.errors == [("2", oom), ("2", 'E uplink round_failed error="OSError(28,)"')]
    crash = ["Traceback (most recent call last):", '  File "main", in <module>',
             "MemoryError: memory allocation failed, allocating 512 bytes"]  # fmt: skip
    for line in [*crash, "I boot stop"]:
        boot.feed(line)
    assert [ln for _, ln in boot.errors[2:]] == crash


def test_a_redelivery_boot_without_fixes_is_one_period() -> None:
    boot = Boot(label="reboot 1")
    for line in ("I uplink gateway host=127.0.0.1 port=5683 queued=500", gps_stats(12000),
                 uplink_stats(1, 501, 0, 40)):  # fmt: skip
        boot.feed(line)
    assert list(boot.periods) == ["reboot 1"]
    assert boot.periods["reboot 1"].acked == 501


def test_a_one_off_low_in_the_boot_hour_is_not_growth_but_a_falling_heap_is() -> None:
    steady = [Period(str(i + 1), least_free=f) for i, f in
              enumerate((8896, 10176, 10112, 10112, 10112, 10112))]  # fmt: skip
    assert soakbench.heap_growth(steady) == -1216
    assert soakbench.first_hour_fall(steady) == -1216
    leaking = [Period(str(i + 1), least_free=10208 - 100 * i) for i in range(6)]
    assert soakbench.heap_growth(leaking) == 300  # 10008 -> 9708 in the last hour
    one_low = [Period(str(i + 1), least_free=f) for i, f in
               enumerate((10304, 10272, 10208, 10208, 10208, 10112, 10208, 10208))]  # fmt: skip
    assert soakbench.heap_growth(one_low) == 0
    assert soakbench.heap_growth(steady[:1]) is None
    assert soakbench.least([None, 5, 3]) == 3 and soakbench.least([None]) is None


def test_gps_sim_repeat_drives_the_round_again_with_the_clock_running_on() -> None:
    # The soak's day is one round driven again and again (gps-sim --repeat).
    from vantrack.tools import gpssim, rig

    route = str(rig.sample_route("sao-paulo-paulista"))
    args = gpssim.build_parser().parse_args(
        [route, "--repeat", "3", "--start", "2026-11-26T06:00:00Z", "--faults", "nofix=5@1344"]
    )
    items, total_s = gpssim._load_items(args, gpssim.parse_faults("nofix=5@1344"))
    played = list(items)
    offsets = [offset for offset, _, _ in played]
    # The outage counts from the first epoch, across the end of the first lap.
    fixed = [lines[0].split(b",")[2] for _, lines, _ in played[1342:1351]]
    assert fixed == [b"A", b"A"] + [b"V"] * 5 + [b"A", b"A"]
    one_lap = len([e for e in gpssim.epochs(gpssim.load_route(route))])
    assert len(offsets) == 3 * one_lap
    assert offsets == [float(k) for k in range(len(offsets))]  # 1 Hz, no gap, no repeat
    assert total_s == offsets[-1]
    args.repeat = 1
    assert len(list(gpssim._load_items(args, gpssim.Faults())[0])) == one_lap
