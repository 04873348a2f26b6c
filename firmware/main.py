# Entry point on every board: picks the board layer for this platform and starts the
# tracker. On the ESP32 MicroPython runs this file after boot.py; on the unix port:
#   micropython -X heapsize=64K firmware/main.py --gps /dev/pts/N --flash DIR [--echo]
import sys


def _board():
    if sys.platform == "esp32":
        import board_esp32

        return board_esp32.Board()
    import board_sim

    return board_sim.Board()


def run():
    import tracker

    try:
        board = _board()
    except ValueError as e:
        print("E boot bad_options error=%s" % e)
        sys.exit(2)
    tracker.main(board)


run()
