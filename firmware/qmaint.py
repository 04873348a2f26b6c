# The flash queue's rare work (queue.py), imported for it and unloaded after, so its code
# is in the heap only meanwhile: recovery at boot and thinning a full queue.
import os

from micropython import const

_SLOT = const(36)  # queue.py


def recover(q):
    # Finds the segments, the tail (the last complete entry of `ack`), the newest valid
    # record (the end of the head segment's valid slots: a short or bad slot there is a
    # write a power cut tore, and writing goes on in a fresh segment after it), the
    # cursor and the count of records not acknowledged.
    lo = hi = -1
    for e in os.ilistdir(q.d[:-1]):  # one entry at a time: a full queue has 256 segments
        if e[0].isdigit():
            n = int(e[0])
            lo = n if lo < 0 else min(lo, n)
            hi = max(hi, n)
    lo = q.lo = max(lo, 0)
    hi = q.hi = max(hi, 0)
    tail = 0
    try:
        with open(q.d + "ack", "rb") as f:
            a = f.read()
        i = len(a) & ~3
        if i:
            tail = int.from_bytes(a[i - 4 : i], "little")
    except OSError:
        pass
    q.tail = tail
    n = last = 0
    torn = False
    f = q._open(hi)
    if f:
        while q._slot(f):
            n += 1
            last = q.seq() + 1
        torn = f.seek(0, 2) != n * _SLOT
        f.close()
    s = hi - 1
    while not last and s >= lo:  # the head holds none: the newest record is before it
        f = q._open(s)
        if f:
            while q._slot(f):
                last = q.seq() + 1
            f.close()
        s -= 1
    if torn:  # a write a power cut tore: go on in a fresh segment
        q.hi = hi = hi + 1
        n = 0
    q.n = n
    q.next = max(tail, last)
    q.cs = lo
    q.co = 0
    q._advance()
    # Records waiting: whole slots after the cursor, but for a bad last slot in a
    # segment (a torn write can only be last: writing goes on in a fresh segment).
    c = 0
    for s in range(q.cs, hi + 1):
        size = q._size(s)
        k = size // _SLOT
        f = q._open(s) if k else None
        if f:
            f.seek((k - 1) * _SLOT)
            if not q._slot(f):
                k -= 1
            f.close()
        c += k - (q.co // _SLOT if s == q.cs else 0)
    q.count = max(0, c)


def thin(q):
    # Merges the two oldest segments into the second: every event and status record,
    # every other position; records already acknowledged go too. Counted in q.dropped
    # once the merged segment is in place (a failed write changes nothing).
    a = q.lo
    tmp = q.d + "t"
    keep = gone = 0
    with open(tmp, "wb") as out:
        for s in (a, a + 1):
            f = q._open(s)
            while f and q._slot(f):
                n = q.seq()
                if n < q.tail or n in q.done:
                    continue
                if q.buf[23] == 0:  # a position (event type 0)
                    keep ^= 1
                    if not keep:
                        gone += 1
                        continue
                out.write(q.buf)
            if f:
                f.close()
    os.rename(tmp, q.d + str(a + 1))
    q.writes += 1
    q.dropped += gone
    q.count = max(0, q.count - gone)
    try:
        os.remove(q.d + str(a))
    except OSError:
        pass
    q.lo = a + 1
    if q.cs <= a + 1:
        q.cs = a + 1
        q.co = 0
        q._advance()
