"""Benchmark: `invoke verify` with every variation, on tcc's final stage.

Prints the time of each variation's rebuild and the total, against two baselines
measured in the same run:

1. the sum of plain rebuilds: the control rebuild's time times the number of rebuilds
   verify makes (what the same builds cost with nothing varied and nothing compared);
2. reprotest (Debian's package, when installed): for each variation both tools have, one
   `reprotest --vary=-all,+VARIATION` run on the same build (the same source, configure
   and make commands, stage2 at the same prefix on the host), with its own control
   build and without diffoscope. reprotest builds twice per variation, verify once
   plus one control for all.

    .venv/bin/python bench/verify.py

It needs the host's /app/vendor/tcc for reprotest (the stage2 is put there for the
time of the run, and removed); it refuses if something else is there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import WORKSPACE, invoke_env

#: verify's variation -> reprotest's (None: reprotest has no such variation)
EQUIVALENT = {
    "build-path": "build_path",
    "time": "time",
    "locale": "locales",
    "timezone": "timezone",
    "umask": "umask",
    "jobs": "num_cpus",
    "user": None,  # reprotest's user_group needs a configured second user
    "hostname": "domain_host",
    "file-ordering": "fileordering",
    "engine": None,
}
PREFIX = Path("/app/vendor/tcc")
BUILD = (
    "export SOURCE_DATE_EPOCH=1597363200; ./configure --prefix=/app/vendor/tcc "
    "--cc=/app/vendor/tcc/bin/tcc >/dev/null && make -j$(nproc) >/dev/null "
    "&& make install DESTDIR=$PWD/out >/dev/null"
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=Path(__file__).resolve().parents[1],
        env=invoke_env(),
        capture_output=True,
        text=True,
    )


def main() -> None:
    boot = run("bootstrap", "--compiler", "tcc")
    if boot.returncode != 0:
        raise SystemExit(f"invoke bootstrap failed:\n{boot.stdout}{boot.stderr}")
    started = time.perf_counter()
    proc = run("verify", "--compiler", "tcc", "--json")
    total = time.perf_counter() - started
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise SystemExit(f"invoke verify failed:\n{proc.stdout}{proc.stderr}")
    result = json.loads(proc.stdout)
    rows = [result["control"], *result["variations"]]
    built = [r for r in rows if r["status"] != "skipped"]
    control = result["control"]["seconds"]
    print(f"invoke verify, tcc stage{result['stage']}, {len(built)} rebuilds")
    print(f"  {'variation':14} {'result':10} {'seconds':>8}")
    for r in rows:
        print(f"  {r['variation']:14} {r['status']:10} {r['seconds']:8.2f}")
    rebuilds = sum(r["seconds"] for r in built)
    plain = control * len(built)
    print(
        f"  total {total:.1f} s wall ({rebuilds:.1f} s of rebuilds, the rest: the cached "
        f"bootstrap's check, the other engine's start, the comparisons)"
    )
    print(
        f"  baseline: {len(built)} plain rebuilds = {plain:.1f} s; "
        f"ratio verify/plain {total / plain:.2f} (rebuilds only: {rebuilds / plain:.2f})"
    )
    print(f"  {result['reproducible_percent']}% of {result['artifacts']} artifacts reproducible")
    reprotest = shutil.which("reprotest")
    if not reprotest:
        print("reprotest: not installed (apt-get install reprotest): no second baseline")
        return
    if PREFIX.exists():
        print(f"reprotest: {PREFIX} exists on the host: not touched, no second baseline")
        return
    ws = WORKSPACE
    stage2 = ws / "stages" / "tcc" / f"stage{result['stage'] - 1}" / "tree" / "app/vendor/tcc"
    source = next((ws / "sources" / "trees").glob("*/tree"))
    ours = {r["variation"]: r["seconds"] for r in result["variations"]}
    theirs: dict[str, float] = {}
    try:
        PREFIX.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(stage2, PREFIX, symlinks=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "src"
            shutil.copytree(source, src, symlinks=True)
            for name, other in EQUIVALENT.items():
                if other is None:
                    continue
                t = time.perf_counter()
                done = subprocess.run(
                    [
                        *(reprotest, f"--vary=-all,+{other}", "--no-diffoscope"),
                        *("-s", str(src), BUILD, "out/**/*", "--", "null"),
                    ],
                    cwd=tmp,
                    capture_output=True,
                    text=True,
                )
                theirs[name] = time.perf_counter() - t
                verdict = "reproducible" if done.returncode == 0 else f"exit {done.returncode}"
                print(f"  reprotest +{other:13} {theirs[name]:6.2f} s  {verdict}")
    finally:
        shutil.rmtree(PREFIX, ignore_errors=True)
    both = [n for n in theirs if n in ours]
    a, b = sum(ours[n] for n in both), sum(theirs[n] for n in both)
    print(f"reprotest, the {len(both)} variations both have, one run each:")
    for n in both:
        print(f"  {n:14} verify {ours[n]:6.2f} s   reprotest {theirs[n]:6.2f} s")
    print(
        f"  sum: verify {a:.1f} s (+ {control:.1f} s control once), reprotest {b:.1f} s; "
        f"ratio verify/reprotest {(a + control) / b:.2f}"
    )


if __name__ == "__main__":
    main()
