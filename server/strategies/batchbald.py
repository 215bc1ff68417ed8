"""BatchBALD (Kirsch et al. 2019): the batch with the largest joint mutual information.

Exact joint entropy while the configuration count fits ``max_exact_configs``,
``num_samples`` seeded configurations beyond; the work lives in
``assay.kernels.batchbald``. Figures reported in the response metrics: how many
picks were scored exactly and how many configurations scored the last one.
"""

from __future__ import annotations

from assay.kernels import dispatch
from assay.kernels.batchbald import BACKENDS, PRECISIONS, batchbald_greedy

from .registry import Context, Inputs, Param, Selection, Strategy, register


def batchbald(inputs: Inputs, budget: int, params: dict, ctx: Context) -> Selection:
    """Greedy BatchBALD among the candidates; scores are a(A_k) after each pick k."""
    result = batchbald_greedy(
        inputs["samples"], budget, candidates=ctx.candidates,
        num_samples=params["num_samples"], max_exact_configs=params["max_exact_configs"],
        rng=ctx.rng, tiebreak_rng=ctx.tiebreak_rng, precision=params["precision"],
        check_cancelled=ctx.check_cancelled, backend=params["backend"])
    ctx.backend = result.backend
    ctx.metrics["batchbald_exact_steps"] = float(result.exact_steps)
    ctx.metrics["batchbald_configurations"] = float(result.configurations)
    return Selection(indices=result.indices, scores=result.scores)


register(Strategy(
    name="batchbald",
    kind="batch",
    fn=batchbald,
    required=("samples",),
    description="BatchBALD (Kirsch et al. 2019): greedy batch maximizing the joint mutual "
                "information H(y_A) - sum E_s H(y_i | w_s); exact joint entropy while C^|A| "
                "fits max_exact_configs, num_samples seeded configurations beyond.",
    params=(
        Param("num_samples", int, 10_000,
              "M, configurations of the batch's labels sampled once the exact enumeration "
              "exceeds max_exact_configs (Kirsch et al. use 10,000).",
              minimum=1, maximum=1 << 24),
        Param("max_exact_configs", int, 10_000,
              "Largest number of label configurations C^|A| scored exactly; memory is about "
              "max_exact_configs x S x 12 bytes.", minimum=1, maximum=1 << 24),
        Param("precision", str, "float32",
              "Arithmetic of the per-candidate joint entropy: float32 (vectorized) or float64.",
              choices=PRECISIONS),
        Param("backend", str, dispatch.AUTO,
              "Kernel backend: auto (torch on a CUDA GPU for large pools, else numba-cpu), "
              "numba-cpu, or torch (its CUDA device when present, else the CPU).",
              choices=(dispatch.AUTO, *BACKENDS)),
    ),
))
