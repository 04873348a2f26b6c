# Send CoAP requests with the firmware client (firmware/coap.py), under MicroPython.
# ruff: noqa: UP031 (MicroPython: %-formatting is the lean choice there)
#
#   coap_post.py [options] HOST PORT PATH [PAYLOAD ...]
#       PAYLOAD: text (UTF-8), or hex with --hex; "-" reads one payload per stdin line.
#       Requests go one after another over one client; the process exits 0 once all ran.
#   stdout: one JSON object per request, in order:
#       {"i": 0, "decision": "done", "code": "2.04", "reason": null, "tx": 1,
#        "separate": false, "retry_after": null, "payload": "<hex>",
#        "options": [[number, "<hex>"], ...], "ticks": n, "alloc": bytes}
#     then {"stats": {...}} with the client's counters.
#     "ticks" counts a 5 ms ticker task that ran beside the request (it stays at 0 if the
#     request blocked the event loop); "alloc" (with --mem) is gc.mem_alloc() growth over
#     the request with the collector paused.
# options:
#   --method GET|POST|PUT|DELETE (POST)   --cf N|none (60 for POST/PUT)   --accept N
#   --query Q (repeatable)   --uri-host H   --hex   --mem
#   --ack-timeout-ms N   --random-factor F   --max-retransmit N   --lifetime-ms N
#   --token-len N
#   --concurrent: issue all requests at once (the client still sends one at a time)
#   --fragment: run the requests one after another in a heap cut into holes smaller than
#     the client's receive buffer, as a van's can be (see fragment()); exits 3 if the
#     heap could not be cut so
# --uri-host, --query and --accept travel as generic options (number, bytes).
# The client first: its modules compile from source on the unix port, and compiling
# them into a heap already cut up by this script's own objects can run out at 64 KB.
import coap  # isort: skip
import coapmsg  # isort: skip

import asyncio
import gc
import json
import sys
from binascii import hexlify, unhexlify

METHODS = {"GET": 1, "POST": 2, "PUT": 3, "DELETE": 4}  # RFC 7252 12.1.1
URI_HOST, URI_QUERY, ACCEPT = 3, 15, 17  # option numbers, RFC 7252 5.10
USAGE = "usage: coap_post.py [options] HOST PORT PATH [PAYLOAD ...]  (see the file's header)"


def hexs(b):
    return hexlify(b).decode() if b else ""


def result_json(i, r, ticks, alloc):
    return json.dumps(
        {
            "i": i,
            "decision": r.decision,
            "code": coapmsg.code_str(r.code) if r.code is not None else None,
            "reason": r.reason,
            "tx": r.tx,
            "separate": r.separate,
            "retry_after": r.retry_after,
            "payload": hexs(r.payload),
            "options": [[n, hexs(v)] for n, v in r.options],
            "ticks": ticks,
            "alloc": alloc,
        }
    )


def parse_args(argv):
    o = {
        "method": "POST",
        "cf": None,
        "accept": None,
        "query": [],
        "uri_host": None,
        "hex": False,
        "mem": False,
        "concurrent": False,
        "fragment": False,
        "client": {},
    }
    ints = {
        "--ack-timeout-ms": "ack_timeout_ms",
        "--max-retransmit": "max_retransmit",
        "--lifetime-ms": "lifetime_ms",
        "--token-len": "token_len",
    }
    pos = []
    i = 0
    while i < len(argv):
        a = argv[i]
        v = argv[i + 1] if i + 1 < len(argv) else None
        if a in ints:
            o["client"][ints[a]] = int(v)
        elif a == "--random-factor":
            o["client"]["ack_random_factor"] = float(v)
        elif a == "--method":
            o["method"] = v.upper()
        elif a == "--cf":
            o["cf"] = v
        elif a == "--accept":
            o["accept"] = int(v)
        elif a == "--query":
            o["query"].append(v)
        elif a == "--uri-host":
            o["uri_host"] = v
        elif a in ("--hex", "--mem", "--concurrent", "--fragment"):
            o[a[2:]] = True
            i += 1
            continue
        elif a.startswith("--"):
            raise ValueError("unknown option " + a)
        else:
            pos.append(a)
            i += 1
            continue
        i += 2
    if len(pos) < 3 or o["method"] not in METHODS:
        raise ValueError(USAGE)
    o["host"], o["port"], o["path"] = pos[0], int(pos[1]), pos[2]
    o["payloads"] = pos[3:]
    return o


def payloads(o):
    # No PAYLOAD: one request with an empty payload.
    out = []
    for p in o["payloads"] or [""]:
        if p == "-":
            for line in sys.stdin:
                line = line.rstrip("\n")
                out.append(unhexlify(line) if o["hex"] else line.encode())
        else:
            out.append(unhexlify(p) if o["hex"] else p.encode())
    return out


async def one(client, o, i, payload):
    ticks = [0]
    running = [True]

    async def ticker():
        while running[0]:
            await asyncio.sleep_ms(5)
            ticks[0] += 1

    t = asyncio.create_task(ticker())
    cf = o["cf"]
    method = METHODS[o["method"]]
    if cf is None:
        cf = 60 if method in (2, 3) else None  # application/cbor for POST, PUT
    elif cf == "none":
        cf = None
    else:
        cf = int(cf)
    alloc = None
    if o["mem"]:
        gc.collect()
        gc.disable()
        a = gc.mem_alloc()
    r = await client.request(method, o["uri_path"], payload, cf, o["options"])
    if o["mem"]:
        alloc = gc.mem_alloc() - a
        gc.enable()
    running[0] = False
    await t
    return result_json(i, r, ticks[0], alloc)


def fragment(size):
    # Fills the free heap with two chains of 448-byte buffers, interleaved, and drops one
    # chain: after a collection the free heap is holes of ~500 bytes (room for a
    # request's coroutines), none of `size` bytes (checked). Returns the chain kept.
    keep = drop = None
    gc.collect()  # garbage left now would be large holes later
    try:
        while True:
            keep = (keep, bytearray(448))
            drop = (drop, bytearray(448))
    except MemoryError:
        pass
    drop = None
    gc.collect()
    try:
        bytearray(size)
    except MemoryError:
        return keep
    print("the heap still has a hole of %d bytes" % size, file=sys.stderr)
    sys.exit(3)


async def fragmented(client, o, items):
    # --fragment: each result is printed, and let go, before the next request.
    method = METHODS[o["method"]]
    cf = 60 if method in (2, 3) else None
    held = fragment(client.rx_size + 1)
    for i, p in enumerate(items):
        r = await client.request(method, o["uri_path"], p, cf, o["options"])
        print(result_json(i, r, 0, None))
    return held


async def main(o):
    kw = o["client"]
    o["uri_path"] = coapmsg.path(o["path"])  # split once, as the tracker does
    opts = []
    if o["uri_host"]:
        opts.append((URI_HOST, o["uri_host"].encode()))
    for q in o["query"]:
        opts.append((URI_QUERY, q.encode()))
    if o["accept"] is not None:
        opts.append((ACCEPT, coapmsg.uint(o["accept"])))
    o["options"] = opts
    client = coap.Client(o["host"], o["port"], **kw)
    try:
        items = payloads(o)
        if o["fragment"]:
            await fragmented(client, o, items)
        elif o["concurrent"]:
            lines = await asyncio.gather(*[one(client, o, i, p) for i, p in enumerate(items)])
            for line in lines:
                print(line)
        else:
            for i, p in enumerate(items):
                print(await one(client, o, i, p))
    finally:
        client.close()
    print(json.dumps({"stats": client.stats}))


try:
    opts = parse_args(sys.argv[1:])
except ValueError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
asyncio.run(main(opts))
