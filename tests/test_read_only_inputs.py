"""Every strategy runs on read-only arrays, as the server hands them out.

Arrays decoded from a request's bytes and pool arrays mapped from disk are read-only;
a strategy that writes into its input (``x -= mean``) fails only through the server,
with INTERNAL. Each registered strategy runs here once on the warm-up's small read-only
inputs (every required and optional role), float32, default parameters.
"""

from __future__ import annotations

import numpy as np
import pytest

from assay.server.acquisition import selection
from assay.server.strategies import registry
from assay.server.wiring import warmup
from assay.vocab.errors import AssayError

SEED = 20261201


#: Added to a strategy's own roles, so a strategy that reads a base score's inputs (a
#: prefilter, ``information_density``, ``seals``, ``stochastic``) has them.
COMMON = ("probs", "samples", "embeddings")


@pytest.mark.parametrize("strategy", [s for s in registry.all_strategies()
                                      if "model_inputs" not in s.required],
                         ids=lambda s: s.name)
def test_a_strategy_never_writes_into_its_inputs(strategy):
    rng = np.random.default_rng(SEED)
    role_sets = [*warmup._role_sets(strategy),
                 tuple(dict.fromkeys((*strategy.required, *COMMON)))]
    ran = 0
    for roles in role_sets:
        arrays = {role: warmup._array(role, np.dtype(np.float32), rng) for role in roles}
        before = {role: a.copy() for role, a in arrays.items()}
        try:
            result = selection.select(strategy.name, 3, arrays, {}, seed=0)
        except AssayError:
            continue  # a combination the strategy refuses (its own tests cover why)
        ran += 1
        assert len(result.indices) == 3, f"{strategy.name} with {roles} (seed {SEED})"
        for role, a in arrays.items():
            assert not a.flags.writeable and np.array_equal(a, before[role], equal_nan=True)
    assert ran, f"{strategy.name}: every input combination was refused (seed {SEED})"
