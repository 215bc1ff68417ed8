"""How often the interpreter hands its lock from one busy thread to another.

A serving process runs Python on many threads (gRPC's poller, the workers, upload
readers), and only the thread holding the interpreter lock runs Python. When
several want it, CPython makes the holder let go every *switch interval* (5 ms by
default). Small inline Selects each touch a few hundred KB (checksum, validation,
scores), so every forced hand-over also evicts the cache the next thread needs:
at 8-32 calls in flight on 2 cores, a server with the default interval did less
per second than with 8 (290 -> 234 Select/s) and refused Selects at 80 % of its
closed-loop rate. With a 50 ms interval a thread keeps the lock until it blocks
(I/O, a lock, a compiled kernel that releases it) or 50 ms pass; a call that
waits for the lock waits at most that long per hand-over (docs/benchmarks.md).
"""

from __future__ import annotations

import sys

#: Seconds a thread may hold the interpreter lock while others wait for it.
SWITCH_INTERVAL_SECONDS = 0.05


def tune() -> float:
    """Set the serving process's switch interval; returns the one it had."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    return before
