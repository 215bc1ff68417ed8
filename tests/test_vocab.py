"""The leaf vocabulary: one role table that agrees with the proto, one tie rule, and
errors that kernels raise in their own words and the acquisition layer names once."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from assay.kernels import batchbald, dispatch
from assay.server.acquisition.selection import qualify, select
from assay.server.strategies import registry, validation
from assay.v1 import assay_pb2
from assay.vocab import roles, ties
from assay.vocab.errors import FailedPrecondition, InvalidInput

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT / "clients" / "python" / "vocab"
PROTO = ROOT / "protos" / "assay" / "v1" / "assay.proto"


# -- the role table ------------------------------------------------------------------------

def _proto_inputs_comments() -> dict[str, str]:
    """Field name -> the comment above it in ``message Inputs`` of the proto source."""
    body = re.search(r"message Inputs \{(.*?)\n\}", PROTO.read_text(), re.S).group(1)
    comments, pending = {}, []
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("//"):
            pending.append(line[2:].strip())
        elif (m := re.match(r"Tensor (\w+) = \d+;", line)):
            comments[m.group(1)] = " ".join(pending)
            pending = []
    return comments


def test_the_role_table_is_the_proto_inputs_message():
    # named_model_inputs (a map) carries the model_inputs.<name> arrays of the model_inputs role.
    fields = {f.name: f.number for f in assay_pb2.Inputs.DESCRIPTOR.fields if not f.is_repeated}
    assert {r.name: r.number for r in roles.ROLES} == fields
    comments = _proto_inputs_comments()
    assert set(comments) == set(fields)
    for r in roles.ROLES:
        # Every proto comment opens with the role's documented shape.
        assert comments[r.name].startswith(r.shape + " "), (r.name, comments[r.name])


def test_each_role_is_consistent_with_itself():
    for r in roles.ROLES:
        axes = r.axis_names()
        if r.rank is None:
            assert axes[-1] == "...", r
        else:
            assert len(axes) == r.rank, r
        assert axes[r.item_axis] == ("L" if r.labeled else "M" if r.target else "N"), r
        assert not r.labeled or r.derived, r  # the labeled set always comes from labels
    assert len({r.name for r in roles.ROLES}) == len(roles.ROLES)
    assert len({r.number for r in roles.ROLES}) == len(roles.ROLES)


def test_the_views_partition_the_table():
    assert (set(roles.stored_roles()) | set(roles.derived_roles())
            | set(roles.target_roles())) == set(roles.names())
    assert not set(roles.stored_roles()) & set(roles.derived_roles())
    assert not set(roles.target_roles()) & (set(roles.stored_roles())
                                            | set(roles.derived_roles()))
    assert set(roles.own_count_roles()) == set(roles.labeled_roles()) | set(roles.target_roles())
    assert set(roles.labeled_roles()) <= set(roles.derived_roles())
    assert roles.row_local_roles() <= set(roles.names())
    assert set(roles.geometric_roles()) == {"embeddings", "labeled_embeddings"}
    assert roles.derived_roles() == ("labeled_embeddings", "labeled_probs", "labels")


def test_the_registry_and_validation_read_the_table():
    assert registry.INPUT_ROLES == {r.name: (r.rank, r.item_axis) for r in roles.ROLES}
    assert registry.LABELED_ROLES == roles.labeled_roles()
    for r in roles.ROLES:
        assert validation.shape_doc(r.name) == r.shape
        assert roles.item_axis(r.name) == r.item_axis


def test_every_strategy_names_roles_of_the_table():
    for s in registry.all_strategies():
        assert set(s.required) | set(s.optional) <= set(roles.names()), s.name


# -- the leaf --------------------------------------------------------------------------------

_PROBE = """
import sys
import assay.vocab.roles
assert "numpy" not in sys.modules, "assay.vocab.roles imported numpy"
import assay.vocab, assay.vocab.dtypes, assay.vocab.errors, assay.vocab.ties
print(" ".join(sorted(m for m in sys.modules if m == "assay" or m.startswith("assay."))))
"""


def test_the_vocabulary_imports_nothing_of_assay():
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(done.stdout.split())
    assert {m for m in loaded if m not in ("assay", "assay.vocab")
            and not m.startswith("assay.vocab.")} == set(), loaded


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module, level) of every import statement in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


def test_vocabulary_sources_import_only_each_other():
    for path in sorted(VOCAB.glob("*.py")):
        for module, level in _imports(path):
            assert level <= 1, (path.name, module)
            assert level == 1 or not module.startswith("assay"), (path.name, module)


def test_no_kernel_imports_the_server():
    for path in sorted((ROOT / "kernels").glob("*.py")):
        for module, level in _imports(path):
            assert level <= 1, (path.name, module)
            assert not module.startswith("assay.server"), (path.name, module)


# -- the tie rule ------------------------------------------------------------------------------

def test_ties_go_to_the_lower_index_without_a_seed():
    scores = np.array([1.0, 3.0, 2.0, 3.0, 3.0, 0.5])
    assert ties.argselect(scores, 4).tolist() == [1, 3, 4, 2]
    cand = np.array([0, 3, 4, 5], dtype=np.int64)
    assert ties.argselect(scores, 2, cand).tolist() == [3, 4]


def test_seeded_ties_follow_one_permutation_of_the_candidates():
    scores = np.zeros(50)
    first = ties.argselect(scores, 10, None, ties.tiebreak_generator(7))
    again = ties.argselect(scores, 10, None, ties.tiebreak_generator(7))
    assert first.tolist() == again.tolist()
    order = np.argsort(ties.tiebreak_generator(7).permutation(50), kind="stable")
    assert first.tolist() == order[:10].tolist()
    # Its own stream: not the strategy's generator of the same seed.
    assert not np.array_equal(ties.tiebreak_generator(7).permutation(50),
                              np.random.default_rng(7).permutation(50))


def test_the_tie_rule_refuses_nan_and_bad_budgets():
    with pytest.raises(InvalidInput) as err:
        ties.argselect(np.array([0.1, np.nan]), 1)
    assert err.value.field == "inputs"
    with pytest.raises(InvalidInput) as err:
        ties.argselect(np.zeros(3), 4)
    assert err.value.field == "budget"


# -- kernels' own words, qualified once --------------------------------------------------------

def test_kernels_name_their_own_arguments():
    samples = np.random.default_rng(3).dirichlet(np.ones(3), size=(4, 20))
    with pytest.raises(InvalidInput) as err:
        batchbald.batchbald_greedy(samples, 2, backend="numba-cuda")
    assert err.value.field == "backend"
    with pytest.raises(InvalidInput) as err:
        batchbald.batchbald_greedy(samples, 2, precision="float16")
    assert err.value.field == "precision"
    with pytest.raises(InvalidInput) as err:
        dispatch.choose("torch", (dispatch.NUMBA_CPU,), 10)
    assert err.value.field == "backend"


def test_the_acquisition_layer_names_kernel_fields_as_request_fields():
    samples = np.random.default_rng(3).dirichlet(np.ones(3), size=(4, 20))
    with pytest.raises(InvalidInput) as err:
        select("batchbald", 2, {"samples": samples}, {"backend": "numba-cuda"})
    assert err.value.field == "params.backend"
    strategy = registry.get("coreset")
    cases = {"backend": "params.backend", "embeddings": "inputs.embeddings",
             "labeled_embeddings": "inputs.labeled_embeddings", "budget": "budget",
             "candidates": "candidates", "params.prune": "params.prune", None: None}
    for raised, named in cases.items():
        assert qualify(FailedPrecondition("x", field=raised), strategy).field == named
