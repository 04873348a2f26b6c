# The van's boot sequence, for main.py: configuration, the route's fences, the uplink.
# Imported once and unloaded before the tracker runs, so none of this code stays in the
# heap (the configuration module neither).
import gc
import sys

import log
import tracker


def _provisioned(cfg):
    # Reporting needs a provisioned identity and a gateway; without them the van still
    # tracks (and logs why it does not report).
    if cfg["device_id"] and cfg["key"] and cfg["gateway_host"]:
        return True
    log.warn("uplink", "not_provisioned", reason="device_id, key and gateway_host needed")
    return False


def _uplink(cfg, flash_dir):
    import coap
    import report
    import uplink

    # Requests: our largest report plus CoAP header and options. Responses: an ack map, a
    # one-line diagnostic, or a 256-byte block of the route with its header and options
    # (ETag, Block2, Content-Format).
    tx = cfg["report_max_records"] * report.POSITION_MAX + report.ENVELOPE_MAX + 32
    gc.collect()  # buffers need contiguous heap: collect the import garbage first
    client = coap.Client(cfg["gateway_host"], cfg["gateway_port"], rx_size=300, tx_size=tx,
                         ack_timeout_ms=cfg["coap_ack_timeout_ms"])  # fmt: skip
    try:
        up = uplink.Uplink(cfg, flash_dir, client)
    except ValueError as e:
        # A key that is not 32 hex digits: say so and keep tracking without reporting.
        log.error("uplink", "bad_key", error=str(e))
        return None
    log.info("uplink", "gateway", host=cfg["gateway_host"], port=cfg["gateway_port"],
             queued=up.q.count)  # fmt: skip
    return up


def boot(board):
    # Returns the Tracker, ready to run.
    # Collect once a quarter of the heap was allocated since the last collection, not
    # only when an allocation fails: garbage then goes while holes are small.
    gc.threshold((gc.mem_free() + gc.mem_alloc()) // 4)
    import config

    cfg = config.load(board.flash_dir, board.overrides)
    del sys.modules["config"]
    board.configure(cfg)
    info = board.describe()
    # What a van runs with, in one line: the board's (reset cause on the ESP32) and a
    # summary of the configuration. Never a secret (the key, the Wi-Fi password).
    host = cfg["gateway_host"]
    log.info("boot", "start", version=tracker.VERSION, device=cfg["device_name"] or "-",
             gateway="%s:%d" % (host, cfg["gateway_port"]) if host else "-",
             period_s=cfg["report_period_s"], queue_kb=cfg["queue_kb"], **info)  # fmt: skip
    # The heap is packed, not compacted, so the order matters: the uplink first, its
    # code and then its buffers and queue (reporting comes first: a van must never stop
    # reporting); the route's fences last, built by Tracker.main() once this module and
    # the configuration are gone, in what is left (a route too large for it is left out).
    t = tracker.Tracker(board, cfg)
    up = None
    if _provisioned(cfg):
        try:
            __import__("coap")
            __import__("uplink")
            gc.collect()
            up = _uplink(cfg, board.flash_dir)
        except (MemoryError, OSError) as e:
            # Never a boot loop: track without reporting rather than not at all (no heap,
            # or a flash that will not take the queue); the next boot tries again.
            up = None
            gc.collect()
            log.error("uplink", "not_started", error=repr(e), mem_free=gc.mem_free())
    t.uplink = up
    # The configuration has been read into the objects that use it: let it go.
    board.cfg = cfg = info = None
    return t
