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
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._kcenter_cpu import reduce_argmax
from .bits import LOADERS
from .config import FASTMATH
from .jit import kernel

_FLAGS = {"parallel": True, "nogil": True, "fastmath": set(FASTMATH)}

#: Member slots ahead of the current one whose row is prefetched: a pruned pass
#: gathers rows out of order, where a hint some rows ahead keeps enough cache misses
#: in flight to triple the rows read per second.
PREFETCH_AHEAD = 8

#: Value held by chosen items (the unpruned kernel's sentinel).
CHOSEN = np.float32(-1.0)

#: Member-list slots per work chunk of a pruned pass (chunks are scheduled
#: dynamically, so a few large segments still spread over every thread).
CHUNK_SLOTS: int = 2048

#: Member-list slots up to which a pruned pass runs on the calling thread alone: a
#: parallel region costs tens of microseconds on an idle machine and milliseconds on
#: a busy one, more than reading a few thousand rows.
SERIAL_SLOTS: int = 16_384

#: Fraction of the rows read by a pruned step above which the next ``DENSE_STEPS``
#: steps stream every row in row order instead: rows gathered out of order through
#: the member lists cost about three times a streamed row, even prefetched. The
#: member lists are then rebuilt and the next step tries pruning again; each failed
#: try doubles the run (up to ``DENSE_STEPS_MAX``), so on isotropic data the tries
#: cost a few percent.
DENSE_FRACTION: float = 0.3
DENSE_STEPS: int = 16
DENSE_STEPS_MAX: int = 256


def safety(d: int) -> tuple[float, float]:
    """Relative and absolute slack of the skip test for rows of width ``d``.

    A float32 sum of ``d`` squared differences carries a relative error below
    (d + 2) 2^-24 whatever order the vectorizer adds in (and FMA only removes
    roundings); twice that covers the test's own float64 arithmetic. The absolute
    term covers squares that underflow below the smallest normal float32.
    """
    return 2.0 * (d + 4) * 2.0**-24, (d + 1) * 2.0**-126


@intrinsic
def _prefetch(typingctx, arr, r, c):
    """Hint the CPU to fetch the cache line of ``arr[r, c]`` (LLVM ``llvm.prefetch``,
    read, high locality); no effect on results."""
    sig = types.void(arr, r, c)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer2(
            context, builder, data=ary.data, shape=cgutils.unpack_tuple(builder, ary.shape),
            strides=cgutils.unpack_tuple(builder, ary.strides), layout=aryty.layout,
            inds=[args[1], args[2]])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _prefetch_row(x, r):
    """Prefetch every cache line of row ``r``."""
    step = max(1, 64 // x.itemsize)
    for c in range(0, x.shape[1], step):
        _prefetch(x, r, c)


@kernel(nogil=True)
def _better(v, p, val, pos):
    """True when (v, p) beats (val, pos): larger value, lower position on ties."""
    return p >= 0 and (pos < 0 or v > val or (v == val and p < pos))


@kernel(nogil=True)
def rebuild(byrow, byslot, centres, stats):
    """Counting sort of the live candidates by centre into the member list, the
    per-slot copies of Delta and of its bound, the counts, and with ``stats`` each
    centre's radius and argmax, all from the per-row arrays.

    ``meta[0]`` is the number of active (non-empty) centres listed in ``active`` (in
    increasing id), ``meta[1]`` the end of the used part of the member list,
    ``meta[2]`` counts the rebuilds forced by a full member list.
    """
    delta, ub, assign, slot = byrow
    perm, sd, su = byslot
    seg_start, seg_slots, live, rad, bval, bpos, active, meta = centres
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
            j = fill[c]
            fill[c] += 1
            perm[j] = i
            sd[j] = delta[i]
            su[j] = ub[i]
            slot[i] = j
    meta[0] = na
    meta[1] = start
    if stats:
        rad[:] = -np.inf
        bval[:] = -np.inf
        bpos[:] = -1
        for i in range(assign.shape[0]):
            c = assign[i]
            if c >= 0:
                rad[c] = max(rad[c], ub[i])
                if _better(delta[i], i, bval[c], bpos[c]):
                    bval[c] = delta[i]
                    bpos[c] = i


def _build(load):
    """Compile the pruned kernels for one storage kind (``load`` widens a value)."""

    @kernel(**_FLAGS)
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

    @kernel(**_FLAGS)
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

    @kernel(**_FLAGS)
    def dense(x, rows, identity, centre, k, byrow, best_val, best_pos):
        """The unpruned fused pass over every row, in row order, that also keeps the
        assignment: for the steps where the bound would clear too little to pay for
        gathering rows through the member lists."""
        delta, ub, assign, _ = byrow
        m = delta.shape[0]
        d = x.shape[1]
        nchunks = best_val.shape[0]
        per = (m + nchunks - 1) // nchunks
        for t in prange(nchunks):
            lo = t * per
            hi = min(m, lo + per)
            top = np.float32(-np.inf)
            arg = -1
            for i in range(lo, hi):
                r = i if identity else rows[i]
                acc = np.float32(0.0)
                for j in range(d):
                    diff = load(x[r, j]) - centre[j]
                    acc += diff * diff
                v = np.float32(acc)
                w = delta[i]
                if v < w:
                    w = v
                    delta[i] = v
                    ub[i] = v
                    assign[i] = k
                if w > top:
                    top = w
                    arg = i
            best_val[t] = top
            best_pos[t] = arg
        return reduce_argmax(best_val, best_pos)

    def scan(x, rows, identity, centre, k, byrow, byslot, movers, chunks, out_i, out_f):
        """One pass over the slots of the visited segments, split in chunks.

        A member whose own bound clears it keeps its slot unread but for its two
        per-slot floats; the others get their distance to ``centre``. A closer one
        moves to centre ``k`` (its slot becomes -1, its position and Delta go to the
        chunk's part of ``movers``); the rest give the segment's new radius and argmax.
        Per chunk: out_i = (live, moved, rows read, argmax, movers' argmax), out_f =
        (radius, max Delta, movers' max Delta).
        """
        delta, ub, assign, _ = byrow
        perm, sd, su = byslot
        mi, mv_ = movers
        ch_lo, ch_hi, ch_base, ch_thr = chunks
        d = x.shape[1]
        for t in prange(ch_lo.shape[0]):
            base = ch_base[t]
            thr = ch_thr[t]
            nread = 0
            nlive = 0
            nmoved = 0
            rmax = np.float32(-np.inf)
            bv = np.float32(-np.inf)
            bp = -1
            mv = np.float32(-np.inf)
            mp = -1
            hi = ch_hi[t]
            for j in range(ch_lo[t], hi):
                ja = j + PREFETCH_AHEAD
                if ja < hi and perm[ja] >= 0 and su[ja] > thr:
                    _prefetch_row(x, perm[ja] if identity else rows[perm[ja]])
                i = perm[j]
                if i < 0:
                    continue
                w = sd[j]
                if su[j] > thr:
                    nread += 1
                    r = i if identity else rows[i]
                    acc = np.float32(0.0)
                    for q in range(d):
                        diff = load(x[r, q]) - centre[q]
                        acc += diff * diff
                    v = np.float32(acc)
                    if v < w:
                        delta[i] = v
                        ub[i] = v
                        assign[i] = k
                        perm[j] = -1
                        mi[base + nmoved] = i
                        mv_[base + nmoved] = v
                        nmoved += 1
                        if v > mv or (v == mv and i < mp):
                            mv = v
                            mp = i
                        continue
                nlive += 1
                rmax = max(rmax, su[j])
                if w > bv or (w == bv and i < bp):
                    bv = w
                    bp = i
            out_i[t, 0] = nlive
            out_i[t, 1] = nmoved
            out_i[t, 2] = nread
            out_i[t, 3] = bp
            out_i[t, 4] = mp
            out_f[t, 0] = rmax
            out_f[t, 1] = bv
            out_f[t, 2] = mv

    scan_parallel = kernel(**_FLAGS)(scan)
    scan_serial = kernel(nogil=True, fastmath=set(FASTMATH))(scan)

    @kernel(nogil=True)
    def step(x, rows, identity, centre, k, forced, byrow, byslot, movers, centres, cvec,
             rel, absolute, chunk, serial):
        """Add ``centre`` as centre ``k`` and fold it into Delta, skipping every segment
        and every member the bound clears (``forced``, the centre of the last pick, is
        always visited: its argmax was that pick). Returns the new argmax (value,
        position) and the number of rows read."""
        seg_start, seg_slots, live, rad, bval, bpos, active, meta = centres
        cvec[k, :] = centre
        touch, thr = _prune(centre, cvec, active[:meta[0]], rad, forced, rel, absolute)
        nch = 0
        for c in touch:
            nch += (seg_slots[c] + chunk - 1) // chunk
        ch_seg = np.empty(nch, np.int64)
        ch_lo = np.empty(nch, np.int64)
        ch_hi = np.empty(nch, np.int64)
        ch_base = np.empty(nch, np.int64)
        ch_thr = np.empty(nch, np.float64)
        t = 0
        base = 0
        for a in range(touch.shape[0]):
            c = touch[a]
            lo = seg_start[c]
            end = lo + seg_slots[c]
            while lo < end:
                ch_seg[t] = c
                ch_thr[t] = thr[a]
                ch_lo[t] = lo
                ch_hi[t] = min(end, lo + chunk)
                ch_base[t] = base
                base += ch_hi[t] - lo
                lo = ch_hi[t]
                t += 1
        out_i = np.empty((nch, 5), np.int64)
        out_f = np.empty((nch, 3), np.float32)
        if base <= serial:  # a small pass: waking the thread pool would cost more
            scan_serial(x, rows, identity, centre, k, byrow, byslot, movers,
                        (ch_lo, ch_hi, ch_base, ch_thr), out_i, out_f)
        else:
            scan_parallel(x, rows, identity, centre, k, byrow, byslot, movers,
                          (ch_lo, ch_hi, ch_base, ch_thr), out_i, out_f)
        # Per-segment results, and where each chunk's movers go in the new segment.
        dest = np.empty(nch, np.int64)
        tail = meta[1]
        moved = 0
        read = 0
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
            live[c] += out_i[t, 0]
            rad[c] = max(rad[c], out_f[t, 0])
            if _better(out_f[t, 1], out_i[t, 3], bval[c], bpos[c]):
                bval[c] = out_f[t, 1]
                bpos[c] = out_i[t, 3]
            rad[k] = max(rad[k], out_f[t, 2])
            if _better(out_f[t, 2], out_i[t, 4], bval[k], bpos[k]):
                bval[k] = out_f[t, 2]
                bpos[k] = out_i[t, 4]
            dest[t] = tail + moved
            moved += out_i[t, 1]
            read += out_i[t, 2]
        rebuilt = tail + moved > byslot[0].shape[0]
        if rebuilt:  # the member list is full: a counting sort drops the dead slots
            rebuild(byrow, byslot, centres, False)
            meta[2] += 1
        else:
            _gather(movers, ch_base, out_i[:, 1], dest, byslot, byrow[3])
            seg_start[k] = tail
            seg_slots[k] = moved
            live[k] = moved
            meta[1] = tail + moved
        # Active centres, and the argmax over their maxima.
        na = meta[0]
        out = 0
        val = np.float32(-np.inf)
        pos = -1
        for a in range(na + (0 if rebuilt else 1)):
            c = active[a] if a < na else k
            if live[c] > 0:
                active[out] = c
                out += 1
                if _better(bval[c], bpos[c], val, pos):
                    val = bval[c]
                    pos = bpos[c]
        meta[0] = out
        return val, pos, read

    return SimpleNamespace(init=init, bound=bound, dense=dense, step=step)


@kernel(nogil=True)
def _prune(centre, cvec, active, rad, forced, rel, absolute):
    """The active centres whose members must be visited, in ``active`` order, and for
    each the bound below which a member is cleared on its own.

    With D = d(c, u) in float64, member x of c cannot move when
    D^2 >= 4 ub(x) (1 + slack); the centre is visited unless that holds for its
    radius, and the returned threshold lets the pass skip the rows of the members
    for which it holds.
    """
    d = centre.shape[0]
    na = active.shape[0]
    keep = np.zeros(na, np.bool_)
    thr = np.full(na, -1.0)
    for a in range(na):
        c = active[a]
        r = np.float64(rad[c])
        if r <= 0.0 and c != forced:
            continue
        s = 0.0
        for j in range(d):
            diff = np.float64(cvec[c, j]) - np.float64(centre[j])
            s += diff * diff
        thr[a] = s * (1.0 - rel) / (4.0 * (1.0 + rel)) - absolute
        keep[a] = c == forced or not r <= thr[a]
    return active[keep].copy(), thr[keep].copy()


@kernel(nogil=True)
def _gather(movers, ch_base, ch_moved, dest, byslot, slot):
    """Copy each chunk's movers to the new segment at the end of the member list."""
    mi, mv = movers
    perm, sd, su = byslot
    for t in range(ch_base.shape[0]):
        b = ch_base[t]
        o = dest[t]
        for q in range(ch_moved[t]):
            i = mi[b + q]
            perm[o + q] = i
            sd[o + q] = mv[b + q]
            su[o + q] = mv[b + q]
            slot[i] = o + q


_KERNELS: dict[str, SimpleNamespace] = {}


def kernels(kind: str) -> SimpleNamespace:
    """The compiled pruned kernels for a storage kind, built on first use."""
    if kind not in _KERNELS:
        _KERNELS[kind] = _build(LOADERS[kind])
    return _KERNELS[kind]


class PrunedStepper:
    """Holds Delta, the assignment and the member lists on the host; one pruned pass
    per greedy step, or runs of plain streaming passes while pruning does not pay.

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

        from . import config

        self.x, self.rows, self.identity = x, rows, identity
        self.k = kernels(kind)
        m, d = rows.size, x.shape[1]
        cap = max(initial, 1) + budget + 1
        slots = 2 * m + 1
        self.delta = np.full(m, np.inf, dtype=np.float32)
        self.assign = np.zeros(m, dtype=np.int64)  # centre 0 stands for "none yet"
        self.slot = np.empty(m, dtype=np.int64)
        self.perm = np.empty(slots, dtype=np.int64)
        self.sd = np.empty(slots, dtype=np.float32)
        self.movers = (np.empty(slots, dtype=np.int64), np.empty(slots, dtype=np.float32))
        self._bounds(self.delta, self.sd)
        self.live = np.zeros(cap, dtype=np.int64)
        self.rad = np.zeros(cap, dtype=np.float32)
        self.bval = np.zeros(cap, dtype=np.float32)
        self.bpos = np.zeros(cap, dtype=np.int64)
        self.active = np.zeros(cap, dtype=np.int64)
        self.meta = np.zeros(3, dtype=np.int64)
        self.centres = (np.zeros(cap, dtype=np.int64), np.zeros(cap, dtype=np.int64),
                        self.live, self.rad, self.bval, self.bpos, self.active, self.meta)
        self.cvec = np.zeros((cap, d), dtype=compute)
        self.rel, self.absolute = safety(d)
        self.next_id = max(initial, 1)
        self.forced = -1
        nchunks = max(1, min(m, numba.get_num_threads() * config.CHUNKS_PER_THREAD))
        self.nchunks = nchunks
        self.best_val = np.empty(nchunks, dtype=np.float32)
        self.best_pos = np.empty(nchunks, dtype=np.int64)
        self.read: list[int] = []
        self.dense_left = 0
        self.dense_run = DENSE_STEPS
        self._rebuild()

    @property
    def repacks(self) -> int:
        """Times a full member list was rebuilt during a step."""
        return int(self.meta[2])

    def _reserve(self, ids: int) -> None:
        """Room for centre ids below ``ids`` in the per-centre tables, which the kernels
        index without bounds checks: a stepper driven past its budget (a shard steps
        on the driver's word) grows them, keeping their contents."""
        cap = self.cvec.shape[0]
        if ids <= cap:
            return
        old = (*self.centres[:7], self.cvec)
        new = [np.zeros((max(ids, 2 * cap), *a.shape[1:]), dtype=a.dtype) for a in old]
        for a, b in zip(new, old, strict=True):
            a[:cap] = b
        self.live, self.rad, self.bval, self.bpos, self.active = new[2:7]
        self.centres = (*new[:7], self.meta)
        self.cvec = new[7]

    def _bounds(self, ub: np.ndarray, su: np.ndarray) -> None:
        """Per-row and per-slot bound arrays (the Delta arrays themselves unless a
        start from elsewhere needs separate bounds)."""
        self.ub, self.su = ub, su
        self.byrow = (self.delta, ub, self.assign, self.slot)
        self.byslot = (self.perm, self.sd, su)

    def _rebuild(self) -> tuple[float, int]:
        rebuild(self.byrow, self.byslot, self.centres, True)
        na = int(self.meta[0])
        if na == 0:
            return -np.inf, -1
        act = self.active[:na]
        vals = self.bval[act]
        pos = int(self.bpos[act[vals == vals.max()]].min())
        return float(self.delta[pos]), pos

    def init(self, centres: np.ndarray) -> tuple[float, int]:
        """Delta and assignment to a small labeled set, by the fused loop."""
        from . import config

        self._reserve(centres.shape[0] + 1)
        self.next_id = max(self.next_id, centres.shape[0])
        self.cvec[:centres.shape[0]] = centres
        with config.parallel_section():
            self.k.init(self.x, self.rows, self.identity, centres, self.delta, self.assign,
                        self.nchunks)
        return self._rebuild()

    def load(self, delta: np.ndarray, nearest: np.ndarray,
             centres: np.ndarray) -> tuple[float, int]:
        """Delta and nearest centre computed elsewhere (FAISS); a bound pass makes the
        pruning test safe whatever rounding that Delta carries."""
        from . import config

        self._reserve(centres.shape[0] + 1)
        self.next_id = max(self.next_id, centres.shape[0])
        self.cvec[:centres.shape[0]] = centres
        self.delta[:] = delta
        self.assign[:] = nearest
        self._bounds(np.empty_like(self.delta), np.empty_like(self.sd))
        with config.parallel_section():
            self.k.bound(self.x, self.rows, self.identity, self.cvec, self.delta,
                         self.assign, self.ub)
        return self._rebuild()

    def step(self, centre: np.ndarray) -> tuple[float, int]:
        """Fold ``centre`` into Delta; returns the new (max Delta, its position)."""
        import numba

        from . import config

        k = self.next_id
        self.next_id += 1
        self._reserve(k + 1)
        if self.dense_left > 0:
            self.dense_left -= 1
            self.cvec[k] = centre
            with config.parallel_section():
                v, p = self.k.dense(self.x, self.rows, self.identity, centre, k, self.byrow,
                                    self.best_val, self.best_pos)
            self.read.append(self.rows.size)
            if self.dense_left == 0:
                self._rebuild()
            return float(v), int(p)
        with config.parallel_section(), numba.parallel_chunksize(1):
            v, p, read = self.k.step(
                self.x, self.rows, self.identity, centre, k, self.forced, self.byrow,
                self.byslot, self.movers, self.centres, self.cvec, self.rel, self.absolute,
                CHUNK_SLOTS, SERIAL_SLOTS)
        self.forced = -1
        self.read.append(int(read))
        if read > DENSE_FRACTION * self.rows.size:
            self.dense_left = self.dense_run
            self.dense_run = min(2 * self.dense_run, DENSE_STEPS_MAX)
        else:
            self.dense_run = DENSE_STEPS
        return float(v), int(p)

    def mark(self, pos: int) -> None:
        """Retire the pick at ``pos``: it leaves its centre's members for good."""
        self.delta[pos] = CHOSEN
        c = int(self.assign[pos])
        self.assign[pos] = -1
        if self.dense_left == 0:
            self.perm[self.slot[pos]] = -1
            self.live[c] -= 1
            self.forced = c
