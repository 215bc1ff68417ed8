"""The Python client refuses ambiguous calls and sends every array in the wire's byte order."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

from assay.client import AssayError, little_endian

SEED = 2718


def _data(n: int = 30, c: int = 4, d: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return rng.dirichlet(np.ones(c), size=n), rng.normal(size=(n, d))


def test_select_with_a_pool_and_inline_arrays_is_refused_before_sending(client):
    probs, embeddings = _data()
    # The pool does not exist: a ValueError, not NOT_FOUND, shows nothing was sent.
    with pytest.raises(ValueError, match="choose one") as caught:
        client.select("egl", 3, pool="missing", probs=probs, embeddings=embeddings)
    assert "['embeddings', 'probs']" in str(caught.value)
    with pytest.raises(ValueError, match="pool='missing'"):
        client.select("entropy", 3, pool="missing", labels=np.zeros(30, np.int64))
    with pytest.raises(AssayError, match="missing"):
        client.select("entropy", 3, pool="missing")


@pytest.mark.parametrize("order", [">", "<"])
def test_either_byte_order_gives_the_same_answer_inline_and_from_a_pool(client, order):
    probs, embeddings = _data()
    typed = {"probs": probs.astype(f"{order}f4"), "embeddings": embeddings.astype(f"{order}f8")}
    assert typed["probs"].dtype.byteorder in (order, "=")
    want = ref.egl(typed["probs"].astype(np.float64), embeddings)
    expected = ref.top_b(want, 5)
    inline = client.select("egl", 5, **typed)
    np.testing.assert_array_equal(inline.indices, expected, err_msg=f"seed={SEED}")
    np.testing.assert_allclose(inline.scores, want[expected], rtol=1e-12, err_msg=f"seed={SEED}")
    client.create_pool("bo")
    client.append("bo", chunk_bytes=64, **typed)  # several chunks per array
    pooled = client.select("egl", 5, pool="bo")
    np.testing.assert_array_equal(pooled.indices, expected, err_msg=f"seed={SEED}")
    np.testing.assert_allclose(pooled.scores, want[expected], rtol=1e-12, err_msg=f"seed={SEED}")


def test_little_endian_converts_big_endian_and_leaves_little_endian_alone():
    values = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    big = values.astype(">f4")
    assert big.tobytes() != values.tobytes()
    out = little_endian(big)
    assert out.dtype == np.dtype("<f4")
    assert out.tobytes() == values.astype("<f4").tobytes()
    same = values.astype("<f4")
    assert little_endian(same) is same
    ints = np.arange(5, dtype=">i8")
    assert little_endian(ints).tobytes() == np.arange(5, dtype="<i8").tobytes()


def test_create_pool_sends_shards_and_expected_items(client):
    # A server without Ray refuses a sharded pool: proof that `shards` reached it.
    with pytest.raises(AssayError) as refused:
        client.create_pool("sharded", shards=2, expected_items=1_000_000)
    assert refused.value.code.name == "FAILED_PRECONDITION"
    assert (refused.value.reason, refused.value.field) == ("NO_RAY", "shards")
    assert "sharded" not in {p.pool_id for p in client.list_pools()}
    # Without shards the size hint alone (no --auto-shard-items) gives a pool on one machine.
    pool = client.create_pool("hinted", expected_items=1_000_000)
    assert (pool.pool_id, pool.item_count, pool.shards) == ("hinted", 0, 0)
