"""The start-up heap, kept out of the cyclic garbage collector's full passes.

A full (generation 2) collection walks every container object the process holds.
After start-up that is mostly what never dies: the strategy registry, NumPy,
Numba's typing and compiled-kernel tables, gRPC and protobuf descriptors: about
a million objects, walked in 150-600 ms on a 2-core machine, with the GIL held.
Under steady traffic such a pass came every few seconds, and every call in
flight waited for it: those stalls, not the load, filled the admission queue of
a server at 70 % of its saturation rate and refused Selects, and set the p99.

``settle`` collects once and then freezes what survived (``gc.freeze``): the
frozen objects are never walked again, so later passes cost what the requests
allocate. Objects created later (a kernel compiled on first use, a loaded model)
are walked as before; that is bounded by what the server loads, not by traffic.
"""

from __future__ import annotations

import gc
import threading
import time

_lock = threading.Lock()
_settled = False


def settle() -> tuple[int, float] | None:
    """Collect the start-up garbage, then freeze the survivors, once per process.

    Returns the number of objects frozen and the seconds it took, or None when an
    earlier server in this process (the tests start many) settled already: frozen
    objects are never collected if they later die in a cycle, so freezing again
    would keep every stopped server's objects. Call when start-up is over (the
    kernels warm), before traffic is served.
    """
    global _settled
    with _lock:
        if _settled:
            return None
        _settled = True
        began = time.perf_counter()
        gc.collect()
        gc.freeze()
        return gc.get_freeze_count(), time.perf_counter() - began
