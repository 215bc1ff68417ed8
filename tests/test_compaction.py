"""Compaction of a pool's segments into one: the bytes, the bounds on memory, and the
store that reads its pools in place through it."""

from __future__ import annotations

import errno
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from assay.server.pools import compaction
from assay.server.pools.compaction import compact
from assay.server.pools.store import ArraySpec, PoolStore
from assay.vocab.dtypes import BFLOAT16, stored_name
from assay.vocab.errors import NotFound

# role, dtype, shape with the item axis as None; the item axis is the role's.
ARRAYS = [
    ("probs", np.float32, (None, 5)),
    ("samples", np.float16, (4, None, 3)),
    ("predictions", np.int32, (3, None)),
    ("embeddings", BFLOAT16, (None, 8)),
    ("model_inputs", np.float32, (None, 2, 3, 4)),
    ("scores", np.float64, (None,)),
    ("loss", np.int64, (None,)),
]
COUNTS = {"several": [5, 1, 9, 3], "one-row segments": [1, 1, 1], "one segment": [7]}


def _array(rng, dtype, shape, n):
    shape = tuple(n if d is None else d for d in shape)
    if np.dtype(dtype).kind in "iu":
        return rng.integers(-1000, 1000, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _write_segments(root: Path, rng, arrays, counts) -> tuple[list[Path], list, dict]:
    """Segment directories as the store writes them (bfloat16 as its uint16 bits);
    returns them, the pool's specs and each role's parts."""
    dirs, parts = [], {name: [] for name, _, _ in arrays}
    for k, n in enumerate(counts):
        seg = root / f"seg-{k}"
        seg.mkdir(parents=True)
        for name, dtype, shape in arrays:
            a = _array(rng, dtype, shape, n)
            np.save(seg / f"{name}.npy", a.view(np.uint16) if a.dtype == BFLOAT16 else a)
            parts[name].append(a)
        dirs.append(seg)
    specs = []
    for name, dtype, shape in arrays:
        full = tuple(sum(counts) if d is None else d for d in shape)
        specs.append(ArraySpec(name, stored_name(dtype), full))
    return dirs, specs, parts


def _raw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


def _check(out: Path, specs, parts) -> None:
    for spec in specs:
        got = np.load(out / f"{spec.name}.npy", mmap_mode="r", allow_pickle=False)
        assert isinstance(got, np.memmap)
        assert got.shape == spec.shape
        assert got.dtype == compaction.disk_dtype(spec)
        if spec.dtype == "bfloat16":
            got = got.view(BFLOAT16)
        want = np.concatenate(parts[spec.name], axis=spec.item_axis)
        np.testing.assert_array_equal(_raw(got), _raw(want))


@pytest.mark.parametrize("counts", COUNTS.values(), ids=COUNTS.keys())
@pytest.mark.parametrize("array", ARRAYS, ids=[a[0] for a in ARRAYS])
def test_each_role_is_the_concatenation_along_its_item_axis(tmp_path, array, counts):
    rng = np.random.default_rng(len(counts))
    dirs, specs, parts = _write_segments(tmp_path / "pool", rng, [array], counts)
    written = compact(dirs, specs, tmp_path / "out")
    _check(tmp_path / "out", specs, parts)
    assert written == sum(a.nbytes for a in parts[array[0]])


def _no_kernel_copy(monkeypatch, buffer: int) -> None:
    """Make ``copy_file_range`` refuse, as across filesystems, and set the buffer size."""
    def refuse(*args):
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    monkeypatch.setattr(compaction, "COPY_BYTES", buffer)


def test_all_roles_at_once_through_the_buffer(tmp_path, monkeypatch):
    """Where the kernel cannot copy, the bytes go through a buffer smaller than a row
    and not a multiple of any item size: the same file."""
    _no_kernel_copy(monkeypatch, 7)
    rng = np.random.default_rng(0)
    dirs, specs, parts = _write_segments(tmp_path / "pool", rng, ARRAYS, [4, 1, 6])
    written = compact(dirs, specs, tmp_path / "out")
    _check(tmp_path / "out", specs, parts)
    assert written == sum(a.nbytes for p in parts.values() for a in p)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{s.name}.npy" for s in specs)


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "buffer"])
def test_memory_stays_far_below_one_segment(tmp_path, monkeypatch, kernel_copy):
    """Six 2 MB segments: the copy allocates less than a tenth of one, and never maps,
    loads or concatenates an array (mapped pages would not show in tracemalloc)."""
    if not kernel_copy:
        _no_kernel_copy(monkeypatch, 64 << 10)
    rng = np.random.default_rng(1)
    arrays = [("embeddings", np.float32, (None, 256)), ("samples", np.float32, (8, None, 64))]
    dirs, specs, parts = _write_segments(tmp_path / "pool", rng, arrays, [2048] * 6)
    segment = 2048 * 256 * 4

    def refuse(*args, **kwargs):
        raise AssertionError("compaction must stream bytes, not build arrays")

    for name in ("load", "memmap", "concatenate", "fromfile"):
        monkeypatch.setattr(np, name, refuse)
    tracemalloc.start()
    try:
        compact(dirs, specs, tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    monkeypatch.undo()
    assert peak < segment / 10
    _check(tmp_path / "out", specs, parts)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_every_file_and_the_directory_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    dirs, specs, _ = _write_segments(tmp_path / "pool", np.random.default_rng(2),
                                     ARRAYS[:3], [2, 3])
    out = tmp_path / "out"
    compact(dirs, specs, out)
    assert set(synced) >= {out.resolve(), *((out / f"{s.name}.npy").resolve() for s in specs)}
    # The directory entry is made durable after the files it names.
    assert synced.index(out.resolve()) > max(
        synced.index((out / f"{s.name}.npy").resolve()) for s in specs)


def _spoil_dtype(seg: Path) -> None:
    np.save(seg / "probs.npy", np.zeros((3, 5), dtype=np.float64))


def _spoil_width(seg: Path) -> None:
    np.save(seg / "probs.npy", np.zeros((3, 6), dtype=np.float32))


def _spoil_truncate(seg: Path) -> None:
    path = seg / "probs.npy"
    os.truncate(path, path.stat().st_size - 4)


def _spoil_fortran(seg: Path) -> None:
    np.save(seg / "probs.npy", np.asfortranarray(np.zeros((3, 5), dtype=np.float32)))


@pytest.mark.parametrize("spoil", [_spoil_dtype, _spoil_width, _spoil_truncate, _spoil_fortran])
def test_a_segment_that_disagrees_with_the_specs_is_refused_and_nothing_is_left(
        tmp_path, spoil):
    dirs, specs, _ = _write_segments(tmp_path / "pool", np.random.default_rng(3),
                                     ARRAYS[:1], [3, 3])
    spoil(dirs[1])
    with pytest.raises(ValueError):
        compact(dirs, specs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_item_counts_must_add_up_to_the_metadata(tmp_path):
    dirs, specs, _ = _write_segments(tmp_path / "pool", np.random.default_rng(4),
                                     ARRAYS[:2], [3, 2])
    with pytest.raises(ValueError, match="hold 3 items"):
        compact(dirs[:1], specs, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        compact(dirs, specs, tmp_path / "out")


# -- the store, reading in place --------------------------------------------------------


def _append(store: PoolStore, pool_id: str, arrays: dict[str, np.ndarray]) -> None:
    specs = [ArraySpec(name, stored_name(a.dtype), a.shape) for name, a in arrays.items()]
    writer = store.begin_append(pool_id, specs)
    for i, a in enumerate(arrays.values()):
        payload = np.ascontiguousarray(a).tobytes()
        for offset in range(0, len(payload), 1000):
            writer.write(i, offset, payload[offset:offset + 1000])
    writer.commit()


def _pool_arrays(rng, n: int) -> dict[str, np.ndarray]:
    probs = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
    return {"probs": probs,
            "samples": np.stack([probs] * 2),
            "embeddings": rng.standard_normal((n, 4)).astype(BFLOAT16)}


def _segment_dirs(store: PoolStore, pool_id: str) -> list[str]:
    return [r[0] for r in store._db.execute(
        "SELECT dir FROM segments WHERE pool_id = ? ORDER BY seq", (pool_id,))]


@pytest.fixture
def store(tmp_path):
    s = PoolStore(tmp_path / "data", min_free_bytes=0)
    yield s
    s.close()


def test_a_pool_of_appends_is_read_as_one_mapped_segment(store):
    rng = np.random.default_rng(5)
    store.create_pool("p")
    parts = [_pool_arrays(rng, n) for n in (4, 1, 6)]
    for arrays in parts:
        _append(store, "p", arrays)
    before = store.get_pool("p")
    old = _segment_dirs(store, "p")

    data = store.load("p")
    for spec in data.info.arrays:
        want = np.concatenate([p[spec.name] for p in parts], axis=spec.item_axis)
        got = data.arrays[spec.name]
        assert isinstance(got.base, np.memmap) or isinstance(got, np.memmap)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(_raw(got), _raw(want))
    (seg,) = _segment_dirs(store, "p")
    after = store.get_pool("p")
    assert (after.version, after.item_count, after.size_bytes) == (
        before.version, before.item_count, before.size_bytes)
    assert not any((store.pools_dir / d).exists() for d in old)
    assert (store.pools_dir / seg).is_dir()


def test_label_rounds_reuse_the_mapped_arrays(store):
    rng = np.random.default_rng(6)
    store.create_pool("p")
    for n in (5, 5):
        _append(store, "p", _pool_arrays(rng, n))
    first = store.load("p")
    for r in range(5):
        store.label("p", [r], [r % 3])
        data = store.load("p")
        assert data.info.version == first.info.version + r + 1
        assert data.labeled.tolist() == list(range(r + 1))
        for name, array in first.arrays.items():
            assert data.arrays[name] is array


def test_appends_after_a_compaction_compact_again(store, tmp_path):
    rng = np.random.default_rng(7)
    store.create_pool("p")
    parts = [_pool_arrays(rng, n) for n in (3, 2, 4, 1)]
    _append(store, "p", parts[0])
    _append(store, "p", parts[1])
    held = store.load("p")
    _append(store, "p", parts[2])
    _append(store, "p", parts[3])
    data = store.load("p")
    assert len(_segment_dirs(store, "p")) == 1
    want = np.concatenate([p["samples"] for p in parts], axis=1)
    np.testing.assert_array_equal(data.arrays["samples"], want)
    # Arrays read before the second compaction stay readable: their files are unlinked,
    # still mapped.
    np.testing.assert_array_equal(held.arrays["samples"], want[:, :5])
    store.close()
    reopened = PoolStore(tmp_path / "data", min_free_bytes=0)
    try:
        np.testing.assert_array_equal(reopened.load("p").arrays["samples"], want)
        (seg,) = _segment_dirs(reopened, "p")
        uid, name = seg.split("/")
        assert os.listdir(reopened.pools_dir) == [uid]
        assert os.listdir(reopened.pools_dir / uid) == [name]
    finally:
        reopened.close()


def test_a_compaction_interrupted_before_its_commit_is_swept(store, tmp_path):
    """A merged copy renamed into the pool but never committed (a crash) is removed at
    start-up; the pool keeps its segments."""
    rng = np.random.default_rng(8)
    store.create_pool("p")
    for n in (2, 3):
        _append(store, "p", _pool_arrays(rng, n))
    dirs = _segment_dirs(store, "p")
    uid = dirs[0].split("/")[0]
    info = store.get_pool("p")
    orphan = store.pools_dir / uid / "seg-orphan"
    compact([store.pools_dir / d for d in dirs], info.arrays, orphan)
    store.close()
    reopened = PoolStore(tmp_path / "data", min_free_bytes=0)
    try:
        assert not orphan.exists()
        assert _segment_dirs(reopened, "p") == dirs
    finally:
        reopened.close()


def _during_compaction(monkeypatch, store: PoolStore, action) -> None:
    """Run ``action`` right after the store's compaction wrote its copy, before it commits."""
    def compact_then(*args, **kwargs):
        written = compact(*args, **kwargs)
        action()
        return written

    monkeypatch.setattr(compaction, "compact", compact_then)
    names = type(store)._compact.__globals__  # the namespace of the store's module
    if "compact" in names:
        monkeypatch.setitem(names, "compact", compact_then)


def test_an_append_during_a_compaction_stays_after_it(store, monkeypatch):
    rng = np.random.default_rng(11)
    store.create_pool("p")
    parts = [_pool_arrays(rng, n) for n in (2, 3, 4)]
    _append(store, "p", parts[0])
    _append(store, "p", parts[1])
    _during_compaction(monkeypatch, store, lambda: _append(store, "p", parts[2]))
    data = store.load("p")
    monkeypatch.undo()
    assert data.info.item_count == 9
    want = np.concatenate([p["probs"] for p in parts])
    np.testing.assert_array_equal(data.arrays["probs"], want)
    assert len(_segment_dirs(store, "p")) == 2  # the merged two, then the new append
    np.testing.assert_array_equal(store.load("p").arrays["probs"], want)
    assert len(_segment_dirs(store, "p")) == 1


def test_a_pool_deleted_during_its_compaction_stays_deleted(store, monkeypatch, tmp_path):
    rng = np.random.default_rng(12)
    store.create_pool("p")
    for n in (2, 3):
        _append(store, "p", _pool_arrays(rng, n))
    uid = store.pool_uid("p")
    _during_compaction(monkeypatch, store, lambda: store.delete_pool("p"))
    with pytest.raises(NotFound):
        store.load("p")
    monkeypatch.undo()
    assert not (store.pools_dir / uid).exists()
    assert list(store.tmp_dir.iterdir()) == []


def test_deleting_a_compacted_pool_removes_it(store):
    rng = np.random.default_rng(9)
    store.create_pool("p")
    for n in (2, 2):
        _append(store, "p", _pool_arrays(rng, n))
    uid = store.pool_uid("p")
    store.load("p")
    store.delete_pool("p")
    assert not (store.pools_dir / uid).exists()
    store.create_pool("p")
    assert store.get_pool("p").item_count == 0


def test_compaction_sizes_match_one_append_of_everything(tmp_path):
    """The compacted file is byte for byte the segment one append of all rows writes."""
    rng = np.random.default_rng(10)
    parts = [_pool_arrays(rng, n) for n in (3, 4)]
    whole = {name: np.concatenate([p[name] for p in parts],
                                  axis=1 if name == "samples" else 0) for name in parts[0]}
    stores = {}
    for kind, batches in (("one", [whole]), ("two", parts)):
        s = PoolStore(tmp_path / kind, min_free_bytes=0)
        s.create_pool("p")
        for arrays in batches:
            _append(s, "p", arrays)
        stores[kind] = s
    try:
        out = tmp_path / "merged"
        info = stores["two"].get_pool("p")
        compact([stores["two"].pools_dir / d for d in _segment_dirs(stores["two"], "p")],
                info.arrays, out)
        (single,) = _segment_dirs(stores["one"], "p")
        for spec in info.arrays:
            a = (stores["one"].pools_dir / single / f"{spec.name}.npy").read_bytes()
            assert (out / f"{spec.name}.npy").read_bytes() == a
    finally:
        for s in stores.values():
            s.close()
