# vantrack loader, run by MicroPython at every start (before main.py): picks the firmware
# to run and finishes or undoes an update that `vantrack flash` was making.
#
# The filesystem root holds boot.py and main.py (this loader), app/ (the firmware, .mpy),
# data/ (config.json and the flash queue; never touched here). An update is written to
# app.new/ and switched in by two renames (app -> app.old, app.new -> app), so a power cut
# at any point leaves one complete firmware to run:
#   no app/, app.new/ there: the cut came between the renames; finish the switch.
#   no app/, app.old/ there: undo it.
# A new firmware is on trial (file boot.trial) until it confirms it came up
# (board.confirm_boot() removes the file). boot.trial holds the boots it was given: the
# first boot on trial writes "1"; a firmware that boots again without confirming (it
# crashed, hung and the watchdog fired, or the power went) is rolled back to app.old/.
import os
import sys


def _is(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _rmtree(path):
    for entry in os.ilistdir(path):
        p = path + "/" + entry[0]
        if entry[1] == 0x4000:
            _rmtree(p)
        else:
            os.remove(p)
    os.rmdir(path)


def _select():
    if not _is("app"):
        for other in ("app.new", "app.old"):
            if _is(other):
                os.rename(other, "app")
                print("W loader recovered from=" + other)
                break
    if not _is("boot.trial"):
        return
    with open("boot.trial") as f:
        boots = f.read().strip()
    if boots == "0":
        with open("boot.trial", "w") as f:
            f.write("1")
        print("I loader trial")
        return
    # On trial and booting again unconfirmed: go back to the firmware before it.
    if _is("app.old"):
        if _is("app.bad"):
            _rmtree("app.bad")
        os.rename("app", "app.bad")
        os.rename("app.old", "app")
        print("W loader rollback reason=unconfirmed kept=app.bad")
    os.remove("boot.trial")


try:
    _select()
except OSError as e:
    print("E loader error=%r" % e)  # never stop the van over this: run what is there
# The firmware: app/ on the filesystem, else frozen into the image under app/ (docs/
# firmware-build.md: a frozen top-level main.py would run instead of this loader).
sys.path[0:0] = ["app", ".frozen/app"]
del _is, _rmtree, _select
