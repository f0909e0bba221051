"""Helpers shared by the benchmarks: where they work, timing, running invoke."""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from selfhost.platform.runtime.dynos import PORT_BLOCK
from selfhost.platform.runtime.network import SPARE_PORT_BASES, free_port_base

REPO = Path(__file__).resolve().parents[1]
#: The benchmarks' own workspace (stacks and sources stay warm between runs).
WORKSPACE = Path(os.environ.get("SELFHOST_BENCH_WORKSPACE", "/var/tmp/selfhost-bench"))


def invoke_env() -> dict[str, str]:
    return {**os.environ, "INVOKE_SELFHOST_WORKSPACE": str(WORKSPACE)}


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``invoke ARGS`` in the benchmark workspace; fail loudly."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        env=invoke_env(),
        capture_output=True,
        text=True,
        check=True,
    )


def median_time(fn: Callable[[], object], rounds: int) -> float:
    """The median wall time of ``rounds`` calls of ``fn``."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@functools.cache
def platform_port_base() -> int:
    """The benchmarks' platforms' ``selfhost.dyno_port_base``: the highest spare base
    whose first 8 app blocks are free (not 20000, which a developer's own platform on
    this machine may hold)."""
    base = free_port_base(8 * PORT_BLOCK, reversed(SPARE_PORT_BASES))
    if base is None:
        sys.exit("no free ports for the benchmark platform's dynos in 21504..30720")
    return base


def platform_invoke(platform: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``invoke ARGS`` against a benchmark's own platform directory (its router on a
    free port, its dynos on free ports, a 2 s grace); exit with its output if it fails."""
    env = {
        **invoke_env(),
        "INVOKE_SELFHOST_PLATFORM_DIR": str(platform),
        "INVOKE_SELFHOST_ROUTER_PORT": "0",
        "INVOKE_SELFHOST_DYNO_PORT_BASE": str(platform_port_base()),
        "INVOKE_SELFHOST_DYNO_GRACE_SECONDS": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"invoke {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc
