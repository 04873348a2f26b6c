# Entry point on every board: picks the board layer for this platform, boots the van
# (start.py, unloaded afterwards) and runs the tracker. On the ESP32 MicroPython runs this
# file after boot.py; on the unix port:
#   micropython -X heapsize=64K firmware/main.py --gps /dev/pts/N --flash DIR [--echo]
import sys


def _board():
    if sys.platform == "esp32":
        import board_esp32

        return board_esp32.Board()
    import board_sim

    return board_sim.Board()


def run():
    try:
        board = _board()
    except ValueError as e:
        print("E boot bad_options error=%s" % e)
        sys.exit(2)
    # Not bound to a name here: once it is out of sys.modules nothing holds it.
    t = __import__("start").boot(board)
    del sys.modules["start"]
    t.main()


run()
