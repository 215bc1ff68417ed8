"""Input generators and references for every score strategy, shared by the tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import reference as ref


def dirichlet(rng, shape, c, alpha=1.0):
    return rng.dirichlet(np.full(c, alpha), size=shape)


@dataclass
class Case:
    make: Callable  # (rng, n, c) -> inputs dict
    reference: Callable  # (inputs, candidates) -> float64[N]
    params: dict


def _probs(rng, n, c):
    return {"probs": dirichlet(rng, n, c)}


def _samples(rng, n, c):
    return {"samples": dirichlet(rng, (5, n), c, alpha=0.5)}


CASES: dict[str, Case] = {
    "least_confident": Case(_probs, lambda x, cand: ref.least_confident(x["probs"]), {}),
    "margin": Case(_probs, lambda x, cand: ref.margin(x["probs"]), {}),
    "entropy": Case(_probs, lambda x, cand: ref.entropy(x["probs"]), {}),
    "vote_entropy": Case(_samples, lambda x, cand: ref.vote_entropy(x["samples"]), {}),
    "consensus_entropy": Case(_samples, lambda x, cand: ref.consensus_entropy(x["samples"]), {}),
    "kl_disagreement": Case(_samples, lambda x, cand: ref.kl_disagreement(x["samples"]), {}),
    "bald": Case(_samples, lambda x, cand: ref.bald(x["samples"]), {}),
    "variation_ratio": Case(_samples, lambda x, cand: ref.variation_ratio(x["samples"]), {}),
    "mean_std": Case(_samples, lambda x, cand: ref.mean_std(x["samples"]), {}),
    "egl": Case(
        lambda rng, n, c: {"probs": dirichlet(rng, n, c), "embeddings": rng.normal(size=(n, 4))},
        lambda x, cand: ref.egl(x["probs"], x["embeddings"]), {}),
    "loss_prediction": Case(lambda rng, n, c: {"loss": rng.gamma(2.0, size=n)},
                            lambda x, cand: np.asarray(x["loss"], np.float64), {}),
    "discriminator": Case(lambda rng, n, c: {"discriminator": rng.uniform(size=n)},
                          lambda x, cand: -np.asarray(x["discriminator"], np.float64), {}),
    "mal": Case(
        lambda rng, n, c: {"discriminator": rng.uniform(size=n), "probs": dirichlet(rng, n, c)},
        lambda x, cand: ref.mal(x["discriminator"], x["probs"], cand, 0.3), {"alpha": 0.3}),
    "label_dispersion": Case(
        lambda rng, n, c: {"predictions": rng.integers(0, c, size=(7, n))},
        lambda x, cand: ref.label_dispersion(x["predictions"]), {}),
    "information_density": Case(
        lambda rng, n, c: {"probs": dirichlet(rng, n, c),
                           "embeddings": rng.normal(size=(n, 3)) + 0.5},
        lambda x, cand: ref.information_density(ref.margin(x["probs"]), x["embeddings"], cand, 2.0),
        {"base": "margin", "beta": 2.0}),
    # C is capped at 16: EPIG costs C^2 per (item, target) pair, and C = 1000 adds nothing
    # the kernel's own tests (tests/test_epig.py) do not cover. Every case has at most
    # target_size (1000) candidates, so the target is all of them: no draw.
    "epig": Case(lambda rng, n, c: {"samples": dirichlet(rng, (5, n), min(c, 16), alpha=0.5)},
                 lambda x, cand: ref.epig_pool_target(x["samples"], cand), {}),
    "precomputed": Case(lambda rng, n, c: {"scores": rng.normal(size=n)},
                        lambda x, cand: np.asarray(x["scores"], np.float64), {}),
}
