# vantrack loader, part 2: run the firmware in app/ (boot.py put it first on sys.path).
# A firmware that crashes ends main.py with SystemExit: on the ESP32 that is a soft reset
# (boot.py and main.py run again, and boot.py rolls back a firmware on trial); on the sim
# rig the interpreter exits with the restart code and the rig starts it again. A van
# never sits at a REPL prompt.
import sys

try:
    import main  # noqa: F401  (app/main.mpy: runs the van until it resets)

    # Back here only if `main` is this file: no firmware in app/ nor frozen.
    print("E loader no_firmware (flash it: vantrack flash)")
except Exception as e:
    sys.print_exception(e)
    print("E loader crashed error=%r" % e)
    sys.exit(3)
