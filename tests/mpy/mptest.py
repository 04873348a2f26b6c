# Minimal test runner for firmware unit tests under the MicroPython unix port.
# A test file defines test_* functions and ends with `mptest.main(globals())`.
# Output is one line per test (PASS/FAIL name) plus tracebacks, then a DONE line that
# tests/test_firmware_unit.py reads. CPython's unittest is not available on MicroPython.
import gc
import sys


class Fail(Exception):
    pass


def eq(a, b, msg=""):
    if a != b:
        raise Fail("%r != %r %s" % (a, b, msg))


def true(v, msg=""):
    if not v:
        raise Fail("not true: %r %s" % (v, msg))


def raises(exc, fn, *args):
    # Returns the exception, for the test to look at.
    try:
        fn(*args)
    except exc as e:
        return e
    raise Fail("%s not raised" % exc.__name__)


def main(g):
    only = sys.argv[1:]
    names = sorted(k for k in g if k.startswith("test_") and (not only or k in only))
    passed = failed = 0
    for name in names:
        gc.collect()
        try:
            g[name]()
        except Exception as e:  # noqa: BLE001 - report every failure, keep going
            failed += 1
            print("FAIL", name)
            sys.print_exception(e, sys.stdout)
        else:
            passed += 1
            print("PASS", name)
    print("DONE", passed, failed)
