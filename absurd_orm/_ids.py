"""Internal: time-ordered ids (UUIDv7, RFC 9562) drawn from the engine clock.

Within one process ids are strictly increasing even when the clock stands still (a
frozen test clock), because the 12-bit ``rand_a`` field carries a counter.
"""

from __future__ import annotations

import os
import threading
import uuid
from datetime import datetime

_lock = threading.Lock()
_last_ms = -1
_counter = 0


def uuid7(now: datetime) -> str:
    """Return a new UUIDv7 string whose timestamp is ``now`` (milliseconds)."""
    global _last_ms, _counter
    ms = int(now.timestamp() * 1000)
    with _lock:
        if ms > _last_ms:
            _last_ms = ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF  # leave room to count
        else:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                ms = _last_ms
                _counter = 0
        rand_a = _counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))
