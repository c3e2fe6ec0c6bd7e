"""Internal: time-ordered ids (UUIDv7, RFC 9562) drawn from the engine clock.

Within one process ids are strictly increasing even when the clock stands still (a
frozen test clock), because the 12-bit ``rand_a`` field carries a counter.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime

_lock = threading.Lock()
_last_ms = -1
_counter = 0


def uuid7(now: datetime) -> str:
    """Return a new UUIDv7 string whose timestamp is ``now`` (milliseconds)."""
    return uuid7_batch(now, 1)[0]


def uuid7_batch(now: datetime, n: int) -> list[str]:
    """Return ``n`` new, increasing UUIDv7 strings whose timestamp is ``now``."""
    global _last_ms, _counter
    ms_now = int(now.timestamp() * 1000)
    stamps = []
    with _lock:
        for _ in range(n):
            if ms_now > _last_ms:
                _last_ms = ms_now
                _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF  # room to count
            else:
                _counter += 1
                if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                    _last_ms += 1
                    _counter = 0
            stamps.append((_last_ms, _counter))
    noise = os.urandom(8 * n)
    out = []
    for i, (ms, rand_a) in enumerate(stamps):
        rand_b = int.from_bytes(noise[8 * i:8 * i + 8], "big") & ((1 << 62) - 1)
        value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
        h = f"{value:032x}"
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out
