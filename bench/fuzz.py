"""The long fuzz profile: ``tests/test_fuzz.py`` with many randomized examples.

    python bench/fuzz.py --examples 2000

Prints the number of answers per gRPC status and fails on the first INTERNAL/UNKNOWN
answer, process exit, stall or state change after a refusal (Hypothesis prints the seed
and the shrunk request).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000,
                        help="examples per RPC family (inline Select, pool lifecycle, models)")
    parser.add_argument("--seed", type=int, help="Hypothesis seed (default: random, printed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "counts.json"
        env = {**os.environ, "ASSAY_FUZZ_EXAMPLES": str(args.examples), "ASSAY_FUZZ_LONG": "1",
               "ASSAY_FUZZ_REPORT": str(report)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "--timeout", "0", str(ROOT / "tests" / "test_fuzz.py")]
        if args.seed is not None:
            command += ["--hypothesis-seed", str(args.seed)]
        done = subprocess.run(command, env=env, cwd=ROOT)
        if report.exists():
            counts = json.loads(report.read_text())
            print("answers by status:", json.dumps(counts, sort_keys=True),
                  f"({sum(counts.values())} calls)")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
