# Console log for the device: one event per line, "<level> <topic> <event> k=v ...".
#
# The same lines come out of the ESP32's USB serial console and the sim board's stdout,
# so host tools (demo, tests, `vantrack console`) read one format. Values are printed
# with repr-free formatting so a line stays parseable: strings containing spaces are
# quoted as JSON strings. Not for the per-fix hot path unless echo is switched on.
import json
import sys


def _emit(level, topic, event, kv):
    # Written piece by piece, not joined first: no line-sized string to find room for
    # when the heap is tight (the stats lines are the longest).
    out = sys.stdout
    out.write(level + " " + topic + " " + event)
    for k in kv:
        v = kv[k]
        out.write(" " + k + "=")
        if isinstance(v, int) or isinstance(v, str) and v and " " not in v:
            out.write(str(v))
        else:
            json.dump(v, out)
    out.write("\n")


def info(topic, event, **kv):
    _emit("I", topic, event, kv)


def warn(topic, event, **kv):
    _emit("W", topic, event, kv)


def error(topic, event, **kv):
    _emit("E", topic, event, kv)
