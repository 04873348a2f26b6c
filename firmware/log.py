# Console log for the device: one event per line, "<level> <topic> <event> k=v ...".
#
# The same lines come out of the ESP32's USB serial console and the sim board's stdout,
# so host tools (demo, tests, `vantrack console`) read one format. Values are printed
# with repr-free formatting so a line stays parseable: strings containing spaces are
# quoted as JSON strings. Not for the per-fix hot path unless echo is switched on.
import json


def _emit(level, topic, event, kv):
    parts = [level, topic, event]
    for k in kv:
        v = kv[k]
        if isinstance(v, str) and (" " in v or not v):
            v = json.dumps(v)
        elif not isinstance(v, (int, str)):
            v = json.dumps(v)
        parts.append("%s=%s" % (k, v))
    print(" ".join(parts))


def info(topic, event, **kv):
    _emit("I", topic, event, kv)


def warn(topic, event, **kv):
    _emit("W", topic, event, kv)


def error(topic, event, **kv):
    _emit("E", topic, event, kv)
