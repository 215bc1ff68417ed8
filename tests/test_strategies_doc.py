"""docs/strategies.md defines every registered strategy, with its inputs and parameters.

The page is the definition the float64 references are written from; this keeps it
from falling behind the registry (a new strategy, input or parameter).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from assay.server.strategies import registry

PAGE = Path(__file__).resolve().parents[1] / "docs" / "strategies.md"


def _sections() -> dict[str, str]:
    """Strategy name -> the text of its ``### `name` `` section."""
    parts = re.split(r"^### `([a-z_]+)`.*$", PAGE.read_text(), flags=re.MULTILINE)
    return {name: body.split("\n## ")[0] for name, body in zip(parts[1::2], parts[2::2],
                                                               strict=True)}


def test_every_section_is_a_registered_strategy():
    assert set(_sections()) == {s.name for s in registry.all_strategies()}


@pytest.mark.parametrize("strategy", registry.all_strategies(), ids=lambda s: s.name)
def test_the_section_names_its_inputs_and_parameters(strategy):
    text = _sections()[strategy.name]
    missing = [f"input {r}" for r in (*strategy.required, *strategy.optional)
               if f"`{r}`" not in text]
    missing += [f"parameter {p.name}" for p in strategy.params if f"`{p.name}`" not in text]
    missing += [f"choice {c}" for p in strategy.params for c in p.choices if f"`{c}`" not in text]
    assert not missing, f"docs/strategies.md, section {strategy.name}: {missing}"
