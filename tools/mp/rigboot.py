# The sim rig's "ROM": what MicroPython's ESP32 port does at every (soft) reset, for the
# unix port that tools/mprig.py starts as `micropython -X heapsize=64K -i rigboot.py` in
# the rig's flash directory. It mounts that directory as the device's "/", sets sys.path
# and sys.argv as the sim board needs them, runs boot.py, then main.py (not after a soft
# reset in the raw REPL, as on the ESP32), prints what they raised and falls through to
# the REPL (-i). A SystemExit from them ends the process (killed: under -i it would
# reach the REPL): the rig starts it again, as a board reboots.
# It does not touch the firmware: the firmware is only what was copied to flash.


def _rig_boot():
    # Imported here, not at module level: __main__'s names are the REPL's and main.py's.
    import os
    import sys

    # Tell the rig the interpreter is up (Ctrl-C now interrupts it): one byte on the pipe
    # it passed (closing our file leaves the inherited descriptor alone).
    fd = os.getenv("VANTRACK_RIG_READY_FD")
    if fd:
        f = open("/proc/self/fd/" + fd, "wb")
        f.write(b"1")
        f.close()
    # The flash directory (our cwd) becomes the device's "/", as the ESP32's flash is:
    # mpremote's ":" and ":/x" mean the same there, and no path reaches the host's "/".
    import vfs

    root = os.getcwd()
    vfs.umount("/")
    vfs.mount(vfs.VfsPosix(root), "/")
    os.chdir("/")
    # The ESP32's sys.path is ['', '.frozen', '/lib'] (MICROPYPATH, set by the rig, holds
    # the last two); the script's directory (tools/mp) must not leak in.
    sys.path[0] = ""
    # The sim board's options (firmware/board_sim.py): GPS pty and data dir on flash.
    # The GPS is <rig dir>/gps, a link to its pty, one level above the flash.
    sys.argv[:] = ["main.py", "--gps", "/../gps", "--flash", "data"]
    files = ("boot.py",) if os.getenv("VANTRACK_RIG_RAW") == "1" else ("boot.py", "main.py")
    for name in files:
        try:
            f = open(name)
        except OSError:
            continue
        try:
            src = f.read()
        finally:
            f.close()
        try:
            # In __main__'s globals, as pyexec_file does: the REPL sees what they defined.
            exec(compile(src, name, "exec"), globals())
        except SystemExit:
            # A board restarts here (soft reset). Under `micropython -i` a SystemExit from
            # the script would land in the REPL instead, so end this interpreter (the
            # shell's parent) and let the rig start the next one.
            os.system("kill -KILL $PPID")
            raise
        except BaseException as e:  # KeyboardInterrupt too: to the REPL, as on a board
            sys.print_exception(e)
        src = None


_rig_boot()
del _rig_boot
