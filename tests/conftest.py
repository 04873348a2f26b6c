"""Shared pytest configuration for tests/.

tests/mpy/ holds MicroPython scripts: they run under the `micropython` binary through
tests/test_firmware_unit.py and must not be imported by CPython's pytest.
"""

collect_ignore_glob = ["mpy/*"]
