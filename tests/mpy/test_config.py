# Device configuration under MicroPython: a broken config file must never stop a van.
import os

import config
import mptest

# The unix port has no os.getpid(): a random suffix keeps parallel runs apart.
DIR = "/tmp/vantrack-mpy-config-" + "".join("%02x" % b for b in os.urandom(4))


def _write(text):
    try:
        os.mkdir(DIR)
    except OSError:
        pass
    with open(DIR + "/config.json", "w") as f:
        f.write(text)


def _clear():
    try:
        os.remove(DIR + "/config.json")
    except OSError:
        pass


def test_missing_file_gives_defaults():
    _clear()
    cfg = config.load(DIR)
    mptest.eq(cfg, config.DEFAULTS)
    mptest.true(cfg is not config.DEFAULTS, "defaults must be copied, not shared")


def test_values_from_file_override_defaults():
    _write('{"gps_baud": 115200, "gps_rx": 4, "device_name": "van-7", "device_id": 7}')
    cfg = config.load(DIR)
    mptest.eq(cfg["gps_baud"], 115200)
    mptest.eq(cfg["gps_rx"], 4)
    mptest.eq(cfg["device_name"], "van-7")
    mptest.eq(cfg["device_id"], 7)
    mptest.eq(cfg["gps_tx"], 17)


def test_broken_json_falls_back_to_defaults():
    _write('{"gps_baud": 1152')
    mptest.eq(config.load(DIR), config.DEFAULTS)


def test_wrong_type_is_ignored_per_key():
    _write('{"gps_baud": "fast", "gps_rx": 5}')
    cfg = config.load(DIR)
    mptest.eq(cfg["gps_baud"], 9600)
    mptest.eq(cfg["gps_rx"], 5)


def test_non_object_and_unknown_keys_are_ignored():
    _write("[1, 2, 3]")
    mptest.eq(config.load(DIR), config.DEFAULTS)
    _write('{"gps_bauds": 4800}')
    mptest.eq(config.load(DIR), config.DEFAULTS)


def test_overrides_win_over_file():
    _write('{"echo_fixes": false}')
    mptest.eq(config.load(DIR, {"echo_fixes": True})["echo_fixes"], True)


mptest.main(globals())
_clear()
os.rmdir(DIR)
