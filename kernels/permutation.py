"""A few entries of a seeded permutation, without drawing all of it.

The tie rule (``assay.vocab.ties``) orders equal scores by ``rng.permutation(n)``
read at the positions of the tied items. A Select over millions of items keeps a
few hundred of them, yet drawing the permutation shuffles an n-sized array in
place: one random access per position, about 230 ms for n = 2M, ten times the
rest of such a Select.

``permutation_at`` gives the same entries and leaves the generator in the same
state, from the same random numbers. NumPy's ``Generator.permutation(n)``
shuffles ``arange(n)`` by Fisher-Yates: for i = n-1 down to 1 it swaps positions
i and j = ``random_interval(i)`` (a 32-bit draw masked to the smallest
all-ones mask >= i, drawn again while above i; PCG64 hands out each 64-bit
output as its low half, then its high half). Here the j are computed from the
raw 64-bit outputs, then each wanted position is followed back through the swaps
in reverse order to where it started, which in ``arange(n)`` is its value. Only
the swaps that touch a followed position do any work: a bitmap of 2^21 bits
(256 KB at n = 2M) answers "is this one followed" from the cache.

Where the generator is not a PCG64, or NumPy draws differently (checked once
against ``permutation`` itself), the whole permutation is drawn as before.
"""

from __future__ import annotations

import threading

import numpy as np

from .jit import kernel

#: Below this n the whole permutation is as cheap.
MIN_N = 1 << 15

_checked: bool | None = None
_lock = threading.Lock()


@kernel(nogil=True)
def _swaps(raw, buffered, has_buffered, n, js):
    """js[k] = NumPy's random_interval(i) for i = n - 1 - k (k = 0 .. n - 2), from
    the 32-bit stream ``buffered`` (if ``has_buffered``), then each raw 64-bit
    output's low and high halves. Returns the halves of ``raw`` consumed, or -1
    when ``raw`` ran out."""
    pos = 0
    pending = has_buffered
    halves = 2 * raw.size
    for k in range(n - 1):
        i = np.uint64(n - 1 - k)
        mask = i
        mask |= mask >> np.uint64(1)
        mask |= mask >> np.uint64(2)
        mask |= mask >> np.uint64(4)
        mask |= mask >> np.uint64(8)
        mask |= mask >> np.uint64(16)
        while True:
            if pending:
                v = np.uint64(buffered)
                pending = False
            else:
                if pos >= halves:
                    return -1
                w = raw[pos >> 1]
                v = (w & np.uint64(0xFFFFFFFF)) if pos & 1 == 0 else (w >> np.uint64(32))
                pos += 1
            v &= mask
            if v <= i:
                break
        js[k] = np.int64(v)
    return pos


@kernel(nogil=True)
def _origins(js, n, positions):
    """Where each of ``positions`` (distinct) started before the swaps of ``js``."""
    m = positions.size
    cur = positions.copy()
    bits = np.zeros((n + 63) >> 6, dtype=np.uint64)
    owner = np.empty(n, dtype=np.int64)  # read only where a bit is set
    one = np.uint64(1)
    for t in range(m):
        p = cur[t]
        bits[p >> 6] |= one << np.uint64(p & 63)
        owner[p] = t
    for k in range(n - 2, -1, -1):
        i = n - 1 - k
        j = js[k]
        if i == j:
            continue
        bi = (bits[i >> 6] >> np.uint64(i & 63)) & one
        bj = (bits[j >> 6] >> np.uint64(j & 63)) & one
        if bi == 0 and bj == 0:
            continue
        ti = owner[i] if bi else -1
        tj = owner[j] if bj else -1
        # the followed item at i came from j, and the one at j from i
        if ti >= 0:
            cur[ti] = j
            owner[j] = ti
        if tj >= 0:
            cur[tj] = i
            owner[i] = tj
        if bi != bj:  # one side followed: its bit moves across
            bits[i >> 6] ^= one << np.uint64(i & 63)
            bits[j >> 6] ^= one << np.uint64(j & 63)
    return cur


def _by_swaps(rng: np.random.Generator, n: int, positions: np.ndarray) -> np.ndarray:
    """``permutation_at`` for a PCG64 ``rng``; ``positions`` int64."""
    bitgen = rng.bit_generator
    start = bitgen.state
    buffered, has_buffered = start["uinteger"], bool(start["has_uint32"])
    js = np.empty(max(n - 1, 0), dtype=np.int64)
    size = n + 64  # 2n halves: about 1.4n are needed
    while True:
        bitgen.state = start
        raw = bitgen.random_raw(size)
        used = _swaps(raw, np.uint64(buffered), has_buffered, n, js)
        if used >= 0:
            break
        size *= 2
    # the state permutation(n) leaves: ceil(used / 2) outputs drawn, the high half of
    # the last one still buffered when an odd number of halves was used
    bitgen.state = start
    bitgen.advance((used + 1) // 2)
    state = bitgen.state
    if used % 2:
        state["has_uint32"], state["uinteger"] = 1, int(raw[(used - 1) // 2] >> np.uint64(32))
    else:
        state["has_uint32"], state["uinteger"] = 0, 0
    bitgen.state = state
    return _origins(js, n, positions)


def _agrees() -> bool:
    """Whether ``_by_swaps`` gives what this NumPy's ``permutation`` gives (and the
    generator's next draws), on a few sizes and seeds."""
    for n, seed in ((2, 1), (3, 2), (17, 3), (1000, 4), (MIN_N + 5, 5)):
        for buffered in (False, True):
            a, b = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 1])
            if buffered:
                a.integers(0, 10, dtype=np.uint32), b.integers(0, 10, dtype=np.uint32)
            positions = np.unique(np.random.default_rng(seed).integers(0, n, size=min(n, 50)))
            want = a.permutation(n)[positions]
            got = _by_swaps(b, n, positions)
            if not np.array_equal(want, got):
                return False
            for dtype in (np.uint32, np.uint64):  # a waiting 32-bit half, then whole outputs
                if a.integers(0, 1 << 31, dtype=dtype) != b.integers(0, 1 << 31, dtype=dtype):
                    return False
    return True


def permutation_at(rng: np.random.Generator, n: int, positions: np.ndarray) -> np.ndarray:
    """``rng.permutation(n)[positions]`` (``positions``: distinct, in [0, n)), leaving
    ``rng`` in the state ``rng.permutation(n)`` leaves it in."""
    global _checked
    positions = np.asarray(positions, dtype=np.int64)
    if n >= MIN_N and isinstance(rng.bit_generator, np.random.PCG64):
        with _lock:
            if _checked is None:
                _checked = _agrees()
        if _checked:
            return _by_swaps(rng, n, positions)
    return rng.permutation(n)[positions]
