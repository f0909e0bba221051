"""Benchmark: `invoke bootstrap --compiler tcc --force` against a plain shell script.

Both run the same three bubblewrap builds of tcc on the same stack and source; the
difference is selfhost's overhead (Python start-up, hashing every output, manifests,
the cache, the UI). Also times a warm re-run (everything cached).

    .venv/bin/python bench/bootstrap.py [--rounds N]

Targets (issue 2): cold overhead at most 10 %, warm re-run at most 1 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from common import REPO, WORKSPACE, invoke, invoke_env, median_time


def timed(argv: list[str], **kw) -> float:
    """One timed run of a command."""
    return median_time(lambda: subprocess.run(argv, check=True, capture_output=True, **kw), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    # Warm-up: build the stack and fetch the source once (not measured).
    first = json.loads(invoke("bootstrap", "--compiler", "tcc", "--json").stdout)
    stack = json.loads(invoke("stack", "--compiler", "tcc", "--json").stdout)
    rootfs = stack["path"]
    source = next((WORKSPACE / "sources" / "trees").glob("*/tree"))
    env = invoke_env()
    ours, plain, warm = [], [], []
    for _ in range(args.rounds):  # interleaved, so drift hits both equally
        plain.append(
            timed(
                [
                    str(REPO / "bench/plain_bootstrap.sh"),
                    rootfs,
                    str(source),
                    str(WORKSPACE / "plain"),
                ]
            )
        )
        ours.append(
            timed(
                [sys.executable, "-m", "invoke", "bootstrap", "--compiler", "tcc", "--force"],
                cwd=REPO,
                env=env,
            )
        )
        warm.append(
            timed(
                [sys.executable, "-m", "invoke", "bootstrap", "--compiler", "tcc"],
                cwd=REPO,
                env=env,
            )
        )
    p, o, w = statistics.median(plain), statistics.median(ours), statistics.median(warm)
    print(f"tcc, 3 stages, bwrap, {args.rounds} rounds (medians); fixpoint={first['fixpoint']}")
    print(f"  plain shell script          {p:7.2f} s")
    print(
        f"  invoke bootstrap --force    {o:7.2f} s   ratio {o / p:.3f} "
        f"(overhead {100 * (o / p - 1):+.1f} %, target <= +10 %)"
    )
    print(f"  invoke bootstrap (warm)     {w:7.2f} s   (target <= 1 s)")


if __name__ == "__main__":
    main()
