# Fetch a device's route from a gateway with the firmware's own code (coap.Client and
# rtfetch.fetch), under MicroPython, as the van does it; then read it back
# with routefile.
# ruff: noqa: UP031 (MicroPython: %-formatting is the lean choice there)
#
#   route_fetch.py HOST PORT DEVICE_ID KEYHEX PATH [ETAGHEX|-] [REPEAT]
# stdout: one JSON object per fetch: {"decision", "code", "changed", "sent" (datagrams),
#   "etag"}, then {"version", "params" ([key, value] pairs), "depot", "stops", "zones"}
#   read back from PATH with routefile.open_route (fences as lists, ids as hashes), or
#   null if there is no route file.
import coap  # isort: skip
import config  # isort: skip
import routefile  # isort: skip
import rtfetch  # isort: skip
import uplink  # isort: skip

import asyncio
import binascii
import gc
import json
import sys


async def main(host, port, device_id, key, path, etag, repeat):
    client = coap.Client(host, port, rx_size=320, tx_size=160)
    flash = path.rsplit("/", 1)[0]
    cfg = dict(config.DEFAULTS)
    cfg["device_id"] = device_id
    cfg["key"] = binascii.hexlify(key).decode()
    up = uplink.Uplink(cfg, flash, client)
    up.route_path = path
    try:
        for _ in range(repeat):
            sent = client.stats["sent"]
            up.route_etag = etag
            res, changed = await rtfetch.fetch(up)
            tag = None
            for num, value in res.options:
                if num == 4:
                    tag = binascii.hexlify(value).decode()
            print(
                json.dumps(
                    {
                        "decision": res.decision,
                        "code": None
                        if res.code is None
                        else "%d.%02d" % (res.code >> 5, res.code & 31),
                        "changed": changed,
                        "sent": client.stats["sent"] - sent,
                        "etag": tag,
                    }
                )
            )
            if tag:
                etag = binascii.unhexlify(tag)
    finally:
        client.close()


argv = sys.argv[1:]
etag_arg = argv[5] if len(argv) > 5 and argv[5] != "-" else None
asyncio.run(
    main(
        argv[0],
        int(argv[1]),
        int(argv[2]),
        binascii.unhexlify(argv[3]),
        argv[4],
        binascii.unhexlify(etag_arg) if etag_arg else None,
        int(argv[6]) if len(argv) > 6 else 1,
    )
)
gc.collect()
try:
    with open(argv[4], "rb") as f:
        r = routefile.open_route(f)
        out = {"version": r[1], "params": sorted(r[2].items()), "depot": r[3]}
        out["stops"] = [s for s in r[4]]
        out["zones"] = [z for z in r[5]]
    print(json.dumps(out))
except OSError:
    print(json.dumps(None))
