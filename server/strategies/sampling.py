"""Random sampling, the baseline every other strategy must beat."""

from __future__ import annotations

from .registry import Context, Inputs, Selection, Strategy, register


def random_sample(inputs: Inputs, budget: int, params: dict, ctx: Context) -> Selection:
    """A seeded uniform sample of ``budget`` candidates without replacement."""
    return Selection(indices=ctx.rng.choice(ctx.candidates, size=budget, replace=False))


register(Strategy("random", "batch", random_sample, (),
                  "Seeded uniform sample without replacement (baseline)."))
