"""Benchmark: examples/montecarlo with 1, 2, 4 and 8 child dynos on the same total trials,
against one dyno doing all trials (``--workers 0``), and the cost of one fork, in one run.

A platform in a temporary directory releases the tcc slug as ``builders`` with one
compile worker, which compiles the example (an app-compile job) into app
``montecarlo``. It prints, for each worker count, the wall time the parent reports and
the speed-up against the single dyno, then the per-fork overhead: the median time from
``fork()`` to the child's first output byte, for a child with almost no work.

    .venv/bin/python bench/montecarlo.py [--trials 400000000] [--forks 5]

(The machine has 2 cores: past 2 workers the speed-up is bounded by them.)
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from pathlib import Path

from common import REPO, platform_invoke

FORK_PROBE = (
    "import time, selfhost_fork as f\n"
    "t = time.perf_counter()\n"
    "c = f.fork(['montecarlo', '--child', '--trials', '1'])\n"
    "next(iter(c.stdout()))\n"
    "print('fork-to-output', time.perf_counter() - t)\n"
    "c.wait()\n"
)


def cli(platform: Path, *args: str) -> str:
    return platform_invoke(platform, *args).stdout


def seconds(report: str) -> float:
    match = re.search(r"^time\s+([\d.]+) s", report, re.M)
    if not match:
        raise SystemExit(f"no time in the report:\n{report}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=400_000_000)
    parser.add_argument("--forks", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        platform = Path(tmp) / "platform"
        try:
            cli(platform, "release", "--app", "builders")
            cli(platform, "scale", "--app", "builders", "worker=1")
            source = str(REPO / "examples" / "montecarlo")
            cli(
                platform,
                "jobs.submit",
                "--app",
                "builders",
                "--kind",
                "app-compile",
                "--source",
                source,
                "--target",
                "montecarlo",
                "--wait",
            )
            cli(platform, "scale", "--app", "builders", "worker=0")
            run = f"montecarlo --trials {args.trials} --workers"
            base = seconds(cli(platform, "run", "--app", "montecarlo", "--", f"{run} 0"))
            print(f"trials {args.trials}: one dyno, no fork: {base:.2f} s")
            print("workers  wall (s)  speed-up")
            for workers in (1, 2, 4, 8):
                wall = seconds(
                    cli(platform, "run", "--app", "montecarlo", "--", f"{run} {workers}")
                )
                print(f"{workers:>7}  {wall:8.2f}  {base / wall:8.2f}")
            overheads = []
            for _ in range(args.forks):
                out = cli(
                    platform, "run", "--app", "montecarlo", "--", f'python3 -c "{FORK_PROBE}"'
                )
                match = re.search(r"fork-to-output ([\d.]+)", out)
                if not match:
                    raise SystemExit(f"the fork probe printed no time:\n{out}")
                overheads.append(float(match.group(1)))
            print(
                f"per fork (fork() to the child's first output, median of {args.forks}): "
                f"{statistics.median(overheads) * 1000:.0f} ms"
            )
        finally:
            cli(platform, "platform.down")


if __name__ == "__main__":
    main()
