"""The served process hands the interpreter lock over less often (``switching``)."""

from __future__ import annotations

import sys

from assay.server.wiring import switching


def test_tune_sets_the_serving_interval_and_returns_the_previous_one():
    before = sys.getswitchinterval()
    try:
        assert switching.tune() == before
        # the interpreter keeps the interval in whole microseconds
        assert abs(sys.getswitchinterval() - switching.SWITCH_INTERVAL_SECONDS) < 1e-6
    finally:
        sys.setswitchinterval(before)
