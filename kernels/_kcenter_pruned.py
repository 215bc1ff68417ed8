"""Numba CPU kernels of k-center greedy with exact triangle-inequality pruning.

Every candidate keeps, besides its squared distance ``delta`` to the nearest centre,
the id of that centre (``assign``); every centre keeps its members as one segment
of a member list ``perm``, its radius ``rad`` (the largest bound on a member's
squared distance) and its own argmax. When centre u is added, a member x of centre
c has d(x, u) >= d(c, u) - d(x, c), so if d(c, u) >= 2 sqrt(rad[c]) no member of c
can get closer to u than to c: the whole segment is skipped without reading its
rows (Elkan's and Hamerly's bound, applied to greedy k-center). The test carries
the float32 rounding bound of the distance sums, so a skipped row is one whose
``min(delta, |x - u|^2)`` provably would not have changed: picks stay identical to
the unpruned pass, ties included.

Members that move to the new centre are appended to the end of ``perm`` as its
segment and their old slots become -1; ``perm`` holds twice the candidates, and
when it fills up a counting sort by ``assign`` rebuilds it (dead slots gone, every
segment in row order again), which happens at most once per m moved members.
The per-step argmax comes from the per-centre maxima, so Delta itself is never
scanned whole. Kernels never validate: ``assay.kernels.kcenter`` prepares them.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from numba import njit, prange

from assay.kernels.bits import LOADERS
from assay.kernels.config import FASTMATH

_FLAGS = {"parallel": True, "nogil": True, "fastmath": set(FASTMATH)}

#: Value held by chosen items (the unpruned kernel's sentinel).
CHOSEN = np.float32(-1.0)

#: Member-list slots per work chunk of a pruned pass (chunks are scheduled
#: dynamically, so a few large segments still spread over every thread).
CHUNK_SLOTS: int = 2048

#: Steps between checks of whether pruning pays, and the mean fraction of the rows
#: read over such a window from which the plain streaming pass takes over.
PROBE_STEPS: int = 64
DENSE_FRACTION: float = 0.9


def safety(d: int) -> tuple[float, float]:
    """Relative and absolute slack of the skip test for rows of width ``d``.

    A float32 sum of ``d`` squared differences carries a relative error below
    (d + 2) 2^-24 whatever order the vectorizer adds in (and FMA only removes
    roundings); twice that covers the test's own float64 arithmetic. The absolute
    term covers squares that underflow below the smallest normal float32.
    """
    return 2.0 * (d + 4) * 2.0**-24, (d + 1) * 2.0**-126


@njit(nogil=True)
def _better(v, p, val, pos):
    """True when (v, p) beats (val, pos): larger value, lower position on ties."""
    return p >= 0 and (pos < 0 or v > val or (v == val and p < pos))


@njit(nogil=True)
def rebuild(assign, delta, ub, perm, seg_start, seg_slots, live, rad, bval, bpos,
            active, meta, stats):
    """Counting sort of the live candidates by centre into ``perm``; per-centre counts,
    and with ``stats`` also each centre's radius and argmax, from scratch.

    ``meta[0]`` is the number of active (non-empty) centres listed in ``active``,
    ``meta[1]`` the end of the used part of ``perm``.
    """
    k = live.shape[0]
    live[:] = 0
    for i in range(assign.shape[0]):
        if assign[i] >= 0:
            live[assign[i]] += 1
    start = 0
    na = 0
    for c in range(k):
        seg_start[c] = start
        seg_slots[c] = live[c]
        start += live[c]
        if live[c] > 0:
            active[na] = c
            na += 1
    fill = seg_start.copy()
    for i in range(assign.shape[0]):
        c = assign[i]
        if c >= 0:
            perm[fill[c]] = i
            fill[c] += 1
    meta[0] = na
    meta[1] = start
    if stats:
        for c in range(k):
            rad[c] = -np.inf
            bval[c] = -np.inf
            bpos[c] = -1
        for i in range(assign.shape[0]):
            c = assign[i]
            if c >= 0:
                rad[c] = max(rad[c], ub[i])
                if _better(delta[i], i, bval[c], bpos[c]):
                    bval[c] = delta[i]
                    bpos[c] = i


def _build(load):
    """Compile the pruned kernels for one storage kind (``load`` widens a value)."""

    @njit(**_FLAGS)
    def init(x, rows, identity, centres, delta, assign, nchunks):
        """delta <- min over a small centre set of |x - c|^2, assign <- its first argmin.

        The loops of the unpruned ``init``, so Delta is bit-identical to it.
        """
        m = delta.shape[0]
        d = x.shape[1]
        nc = centres.shape[0]
        per = (m + nchunks - 1) // nchunks
        for t in prange(nchunks):
            row = np.empty(d, centres.dtype)
            for i in range(t * per, min(m, t * per + per)):
                r = i if identity else rows[i]
                for j in range(d):
                    row[j] = load(x[r, j])
                v = delta[i]
                a = 0
                for k in range(nc):
                    acc = np.float32(0.0)
                    for j in range(d):
                        diff = row[j] - centres[k, j]
                        acc += diff * diff
                    w = np.float32(acc)
                    if w < v:
                        a = k
                    v = min(v, w)
                delta[i] = v
                assign[i] = a

    @njit(**_FLAGS)
    def bound(x, rows, identity, centres, delta, assign, ub):
        """ub <- max(delta, |x - c_assign|^2): a bound for Deltas that came from elsewhere
        (FAISS' |x|^2 + |c|^2 - 2 x.c can sit far below the direct sum)."""
        d = x.shape[1]
        for t in prange(delta.shape[0]):
            i = np.int64(t)
            r = i if identity else rows[i]
            c = assign[i]
            acc = np.float32(0.0)
            for j in range(d):
                diff = load(x[r, j]) - centres[c, j]
                acc += diff * diff
            ub[i] = max(delta[i], np.float32(acc))

    @njit(**_FLAGS)
    def scan(x, rows, identity, centre, k, delta, ub, assign, perm, scratch,
             ch_seg, ch_lo, ch_hi, ch_base, ch_live, ch_moved, ch_rad, ch_bval, ch_bpos,
             ch_mval, ch_mpos):
        """One pass over the slots of the touched segments, split in chunks.

        Each live member gets its distance to ``centre``; a closer one moves to
        centre ``k`` (its slot becomes -1 and its position goes to the chunk's part
        of ``scratch``); the others give the segment's new radius and argmax.
        """
        d = x.shape[1]
        for t in prange(ch_seg.shape[0]):
            c = ch_seg[t]
            base = ch_base[t]
            nlive = 0
            nmoved = 0
            rmax = np.float32(-np.inf)
            bv = np.float32(-np.inf)
            bp = -1
            mv = np.float32(-np.inf)
            mp = -1
            for j in range(ch_lo[t], ch_hi[t]):
                i = perm[j]
                if i < 0:
                    continue
                if assign[i] != c:  # chosen since the last visit
                    perm[j] = -1
                    continue
                r = i if identity else rows[i]
                acc = np.float32(0.0)
                for q in range(d):
                    diff = load(x[r, q]) - centre[q]
                    acc += diff * diff
                v = np.float32(acc)
                if v < delta[i]:
                    delta[i] = v
                    ub[i] = v
                    assign[i] = k
                    perm[j] = -1
                    scratch[base + nmoved] = i
                    nmoved += 1
                    if v > mv or (v == mv and i < mp):
                        mv = v
                        mp = i
                else:
                    nlive += 1
                    rmax = max(rmax, ub[i])
                    w = delta[i]
                    if w > bv or (w == bv and i < bp):
                        bv = w
                        bp = i
            ch_live[t] = nlive
            ch_moved[t] = nmoved
            ch_rad[t] = rmax
            ch_bval[t] = bv
            ch_bpos[t] = bp
            ch_mval[t] = mv
            ch_mpos[t] = mp

    @njit(nogil=True)
    def step(x, rows, identity, centre, k, forced, delta, ub, assign, perm, scratch,
             seg_start, seg_slots, live, rad, bval, bpos, cvec, active, meta,
             rel, absolute, chunk):
        """Add ``centre`` as centre ``k`` and fold it into Delta, skipping every segment
        the bound clears (``forced``, the centre of the last pick, is always visited:
        its argmax was that pick). Returns the new argmax (value, position) and the
        number of rows read."""
        d = x.shape[1]
        for j in range(d):
            cvec[k, j] = centre[j]
        touch = _prune(centre, cvec, active[:meta[0]], rad, forced, rel, absolute)
        need = 0
        for c in touch:
            need += live[c]
        if meta[1] + need > perm.shape[0]:
            rebuild(assign, delta, ub, perm, seg_start, seg_slots, live, rad, bval, bpos,
                    active, meta, False)
        nch = 0
        for c in touch:
            nch += (seg_slots[c] + chunk - 1) // chunk
        ch_seg = np.empty(nch, np.int64)
        ch_lo = np.empty(nch, np.int64)
        ch_hi = np.empty(nch, np.int64)
        ch_base = np.empty(nch, np.int64)
        t = 0
        base = 0
        for c in touch:
            lo = seg_start[c]
            end = lo + seg_slots[c]
            while lo < end:
                ch_seg[t] = c
                ch_lo[t] = lo
                ch_hi[t] = min(end, lo + chunk)
                ch_base[t] = base
                base += ch_hi[t] - lo
                lo = ch_hi[t]
                t += 1
        ch_live = np.empty(nch, np.int64)
        ch_moved = np.empty(nch, np.int64)
        ch_rad = np.empty(nch, np.float32)
        ch_bval = np.empty(nch, np.float32)
        ch_bpos = np.empty(nch, np.int64)
        ch_mval = np.empty(nch, np.float32)
        ch_mpos = np.empty(nch, np.int64)
        scan(x, rows, identity, centre, k, delta, ub, assign, perm, scratch, ch_seg, ch_lo,
             ch_hi, ch_base, ch_live, ch_moved, ch_rad, ch_bval, ch_bpos, ch_mval, ch_mpos)
        # Per-segment results, and where each chunk's movers go in the new segment.
        dest = np.empty(nch, np.int64)
        tail = meta[1]
        moved = 0
        rad[k] = -np.inf
        bval[k] = -np.inf
        bpos[k] = -1
        for t in range(nch):
            c = ch_seg[t]
            if t == 0 or ch_seg[t - 1] != c:
                live[c] = 0
                rad[c] = -np.inf
                bval[c] = -np.inf
                bpos[c] = -1
            live[c] += ch_live[t]
            rad[c] = max(rad[c], ch_rad[t])
            if _better(ch_bval[t], ch_bpos[t], bval[c], bpos[c]):
                bval[c] = ch_bval[t]
                bpos[c] = ch_bpos[t]
            rad[k] = max(rad[k], ch_mval[t])
            if _better(ch_mval[t], ch_mpos[t], bval[k], bpos[k]):
                bval[k] = ch_mval[t]
                bpos[k] = ch_mpos[t]
            dest[t] = tail + moved
            moved += ch_moved[t]
        _gather(scratch, ch_base, ch_moved, dest, perm)
        seg_start[k] = tail
        seg_slots[k] = moved
        live[k] = moved
        meta[1] = tail + moved
        # Active centres, and the argmax over their maxima.
        na = meta[0]
        out = 0
        val = np.float32(-np.inf)
        pos = -1
        for a in range(na + 1):
            c = active[a] if a < na else k
            if live[c] > 0:
                active[out] = c
                out += 1
                if _better(bval[c], bpos[c], val, pos):
                    val = bval[c]
                    pos = bpos[c]
        meta[0] = out
        return val, pos, need

    return SimpleNamespace(init=init, bound=bound, step=step)


@njit(parallel=True, nogil=True)
def _prune(centre, cvec, active, rad, forced, rel, absolute):
    """Ids of the active centres whose members must be visited, in ``active`` order:
    d(c, u)^2 < 4 rad (1 + slack), the distance between centres in float64."""
    d = centre.shape[0]
    na = active.shape[0]
    keep = np.zeros(na, np.bool_)
    for a in prange(na):
        c = active[a]
        r = np.float64(rad[c])
        if c == forced or not r < np.inf:
            keep[a] = True
        elif r > 0.0:
            s = 0.0
            for j in range(d):
                diff = np.float64(cvec[c, j]) - np.float64(centre[j])
                s += diff * diff
            keep[a] = s * (1.0 - rel) < 4.0 * (r + absolute) * (1.0 + rel)
    return active[keep].copy()


@njit(parallel=True, nogil=True)
def _gather(scratch, ch_base, ch_moved, dest, perm):
    """Copy each chunk's movers from ``scratch`` to the new segment at the end of ``perm``."""
    for t in prange(ch_base.shape[0]):
        b = ch_base[t]
        o = dest[t]
        for q in range(ch_moved[t]):
            perm[o + q] = scratch[b + q]


_KERNELS: dict[str, SimpleNamespace] = {}


def kernels(kind: str) -> SimpleNamespace:
    """The compiled pruned kernels for a storage kind, built on first use."""
    if kind not in _KERNELS:
        _KERNELS[kind] = _build(LOADERS[kind])
    return _KERNELS[kind]


class PrunedStepper:
    """Holds Delta, the assignment and the member lists on the host; one pruned pass
    per greedy step, and the plain fused pass once pruning stops paying.

    Parameters
    ----------
    x : storage view [N, d] (see ``assay.kernels.bits.storage``)
    kind : its storage kind
    rows : int64[M] candidate rows; ``identity`` when they are all of [0, N)
    initial : number of initial (labeled) centres, 0 for none
    budget : picks to come, which bounds the number of centres
    compute : dtype of centre vectors (float64 for float64 pools, else float32)
    """

    name = "numba-cpu"

    def __init__(self, x: np.ndarray, kind: str, rows: np.ndarray, identity: bool,
                 initial: int, budget: int, compute: np.dtype):
        import numba

        from assay.kernels import config

        self.x, self.rows, self.identity, self.kind = x, rows, identity, kind
        self.k = kernels(kind)
        m, d = rows.size, x.shape[1]
        cap = max(initial, 1) + budget + 1
        self.delta = np.full(m, np.inf, dtype=np.float32)
        self.ub = self.delta
        self.assign = np.zeros(m, dtype=np.int64)
        self.perm = np.empty(2 * m + 1, dtype=np.int64)
        self.scratch = np.empty(m, dtype=np.int64)
        self.seg_start = np.zeros(cap, dtype=np.int64)
        self.seg_slots = np.zeros(cap, dtype=np.int64)
        self.live = np.zeros(cap, dtype=np.int64)
        self.rad = np.full(cap, -np.inf, dtype=np.float32)
        self.bval = np.full(cap, -np.inf, dtype=np.float32)
        self.bpos = np.full(cap, -1, dtype=np.int64)
        self.cvec = np.zeros((cap, d), dtype=compute)
        self.active = np.zeros(cap, dtype=np.int64)
        self.meta = np.zeros(2, dtype=np.int64)
        self.rel, self.absolute = safety(d)
        self.next_id = max(initial, 1)
        self.forced = -1
        self.nchunks = max(1, min(m, numba.get_num_threads() * config.CHUNKS_PER_THREAD))
        self.read: list[int] = []
        self.dense = False
        self._rebuild()

    def _rebuild(self) -> tuple[float, int]:
        rebuild(self.assign, self.delta, self.ub, self.perm, self.seg_start, self.seg_slots,
                self.live, self.rad, self.bval, self.bpos, self.active, self.meta, True)
        na = int(self.meta[0])
        if na == 0:
            return -np.inf, -1
        act = self.active[:na]
        vals = self.bval[act]
        best = act[vals == vals.max()]
        pos = int(self.bpos[best].min())
        return float(self.delta[pos]), pos

    def init(self, centres: np.ndarray) -> tuple[float, int]:
        """Delta and assignment to a small labeled set, by the fused loop."""
        from assay.kernels import config

        self.cvec[:centres.shape[0]] = centres
        with config.parallel_section():
            self.k.init(self.x, self.rows, self.identity, centres, self.delta, self.assign,
                        self.nchunks)
        return self._rebuild()

    def load(self, delta: np.ndarray, nearest: np.ndarray,
             centres: np.ndarray) -> tuple[float, int]:
        """Delta and nearest centre computed elsewhere (FAISS); a bound pass makes the
        pruning test safe whatever rounding that Delta carries."""
        from assay.kernels import config

        self.cvec[:centres.shape[0]] = centres
        self.delta[:] = delta
        self.assign[:] = nearest
        self.ub = np.empty_like(self.delta)
        with config.parallel_section():
            self.k.bound(self.x, self.rows, self.identity, self.cvec, self.delta,
                         self.assign, self.ub)
        return self._rebuild()

    def step(self, centre: np.ndarray) -> tuple[float, int]:
        """Fold ``centre`` into Delta; returns the new (max Delta, its position)."""
        import numba

        from assay.kernels import config

        if self.dense:
            with config.parallel_section():
                v, p = self._dense.step(self.x, self.rows, self.identity, centre, self.delta,
                                        self._best_val, self._best_pos)
            self.read.append(self.rows.size)
            return float(v), int(p)
        k = self.next_id
        self.next_id += 1
        with config.parallel_section(), numba.parallel_chunksize(1):
            v, p, need = self.k.step(
                self.x, self.rows, self.identity, centre, k, self.forced, self.delta, self.ub,
                self.assign, self.perm, self.scratch, self.seg_start, self.seg_slots,
                self.live, self.rad, self.bval, self.bpos, self.cvec, self.active, self.meta,
                self.rel, self.absolute, CHUNK_SLOTS)
        self.forced = -1
        self.read.append(int(need))
        self._maybe_go_dense()
        return float(v), int(p)

    def mark(self, pos: int) -> None:
        """Retire the pick at ``pos``: it leaves its centre's members for good."""
        self.delta[pos] = CHOSEN
        if not self.dense:
            c = int(self.assign[pos])
            self.assign[pos] = -1
            self.live[c] -= 1
            self.forced = c

    def _maybe_go_dense(self) -> None:
        """Switch to the plain fused pass for good when the recent steps read nearly every
        row anyway (isotropic data): streaming in row order then beats the member lists."""
        s = len(self.read)
        if s < PROBE_STEPS or s % PROBE_STEPS:
            return
        recent = np.asarray(self.read[-PROBE_STEPS:], dtype=np.float64)
        if recent.mean() >= DENSE_FRACTION * self.rows.size:
            from assay.kernels._kcenter_cpu import kernels as cpu_kernels

            self.dense = True
            self._dense = cpu_kernels(self.kind)
            self._best_val = np.empty(self.nchunks, dtype=np.float32)
            self._best_pos = np.empty(self.nchunks, dtype=np.int64)
