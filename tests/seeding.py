"""Seeds of the tests' random data: stable per test, replayable, printed on failure.

A test draws its data from ``seeding.rng()`` (or the ``rng`` fixture), never from an
unseeded generator. The seed of a test is ``crc32(node id) + ASSAY_TEST_SEED`` (the
variable defaults to 0), so a failure replays with the same command, and setting
``ASSAY_TEST_SEED`` explores other data. The ``k``-th generator a test asks for draws
stream ``[seed, k]``, so two generators of one test are independent yet replayable.
tests/conftest.py starts each test's seed and adds it to the report of a failing test.
"""

from __future__ import annotations

import os
import zlib

import numpy as np

#: Added to every test's seed; the default 0 makes every run the same run.
BASE_SEED = int(os.environ.get("ASSAY_TEST_SEED", "0"))

_state: dict[str, int] = {"seed": BASE_SEED, "drawn": 0}


def seed_for(nodeid: str) -> int:
    """The seed of the test with pytest node id ``nodeid`` (stable across machines:
    str hash() is salted per process, crc32 is not)."""
    return (zlib.crc32(nodeid.encode()) + BASE_SEED) % 2**32


def begin(nodeid: str) -> int:
    """Start the test ``nodeid``: its generators restart from its own seed."""
    _state["seed"], _state["drawn"] = seed_for(nodeid), 0
    return _state["seed"]


def current() -> int:
    """The running test's seed."""
    return _state["seed"]


def rng() -> np.random.Generator:
    """A generator for the running test: stream ``[seed, k]`` for its k-th call."""
    k = _state["drawn"]
    _state["drawn"] += 1
    return np.random.default_rng([_state["seed"], k])


def describe(seed: int) -> str:
    """The line a failing test's report carries."""
    return (f"seed {seed} (crc32 of the test id + ASSAY_TEST_SEED={BASE_SEED}); "
            "rerun the test with the same ASSAY_TEST_SEED to replay its data")
