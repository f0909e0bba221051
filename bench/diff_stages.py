"""Benchmark: `invoke diff-stages`.

1. The verdict on identical stages (tcc stage2 vs stage3) from manifests, in-process and
   through the CLI, against `diff -r` of the two trees (the same question answered by
   reading every byte). Target: under 0.2 s.
2. The analysis of a differing pair of ~1 MB ELF binaries (-O0 vs -O2 of a generated
   program), against the classic `diff <(strings a) <(strings b) | wc -l`, and against
   diffoscope when it is installed (set DIFFOSCOPE=/path/to/diffoscope). Target: under 1 s.

    .venv/bin/python bench/diff_stages.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, WORKSPACE, invoke, invoke_env, median_time

from selfhost.compilers import find_recipe
from selfhost.stages.analysis import analyse
from selfhost.stages.diff import stage_job
from selfhost.workspace import Workspace


def shell(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=False, capture_output=True, executable="/bin/bash")


def generate_program(directory: Path, functions: int = 3000) -> None:
    lines = ["#include <stdio.h>", "#include <string.h>"]
    for i in range(functions):
        lines.append(
            f"int f{i}(int x, const char *s) {{ int acc = {i}; "
            f"for (int k = 0; k < x; k++) {{ acc = acc * 31 + s[k % (int)strlen(s)] + k * {i}; "
            f"if (acc % 7 == {i % 7}) acc ^= {i * 13}; }} "
            f'printf("function {i} of the benchmark: %d\\n", acc); return acc; }}'
        )
    calls = " + ".join(f'f{i}(argc, "text {i}")' for i in range(0, functions, 50))
    lines.append(f"int main(int argc, char **argv) {{ return ({calls}) & 1; }}")
    (directory / "big.c").write_text("\n".join(lines) + "\n")


def main() -> None:
    ws = Workspace(WORKSPACE)
    env = invoke_env()
    invoke("bootstrap", "--compiler", "tcc")  # a current bootstrap (a cache hit if it is)
    recipe = find_recipe("tcc")
    report = stage_job(ws, recipe, None, None).run()
    assert report.identical, report.verdict_line()
    in_process = median_time(lambda: stage_job(ws, recipe, None, None).run(), 20)
    cli = median_time(
        lambda: subprocess.run(
            [sys.executable, "-m", "invoke", "diff-stages"],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
        ),
        5,
    )
    startup = median_time(
        lambda: subprocess.run(
            [sys.executable, "-m", "invoke", "--list"], cwd=REPO, check=True, capture_output=True
        ),
        5,
    )
    s2, s3 = ((ws.stages_of("tcc") / f"stage{n}").resolve() / "tree" for n in (2, 3))
    diff_r = median_time(lambda: shell(f"diff -r {s2} {s3}"), 5)
    print("1. verdict on identical tcc stage2/stage3 (15 artifacts) from manifests")
    print(f"   in-process                 {in_process * 1000:7.1f} ms   (target < 200 ms)")
    print(
        f"   invoke diff-stages (CLI)   {cli * 1000:7.1f} ms   of which invoke start-up "
        f"{startup * 1000:.0f} ms"
    )
    print(
        f"   baseline diff -r trees     {diff_r * 1000:7.1f} ms   ratio in-process/diff -r "
        f"{in_process / diff_r:.2f}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        generate_program(d)
        subprocess.run(["gcc", "-O0", "big.c", "-o", "a"], cwd=d, check=True)
        subprocess.run(["gcc", "-O2", "big.c", "-o", "b"], cwd=d, check=True)
        a, b = (d / "a").read_bytes(), (d / "b").read_bytes()
        result = analyse(a, b)
        ours = median_time(lambda: analyse(a, b), 5)
        classic = median_time(lambda: shell(f"diff <(strings {d}/a) <(strings {d}/b) | wc -l"), 5)
        print(
            f"2. analysis of a differing pair: {len(a) / 1e6:.2f} MB vs {len(b) / 1e6:.2f} MB "
            f"(cause: {result.cause.value}, {len(result.sections)} sections differ)"
        )
        print(f"   selfhost analyse()         {ours * 1000:7.1f} ms   (target < 1000 ms)")
        print(
            f"   diff <(strings) | wc -l    {classic * 1000:7.1f} ms   "
            f"ratio selfhost/classic {ours / classic:.1f}"
        )
        tool = os.environ.get("DIFFOSCOPE") or shutil.which("diffoscope")
        if tool:
            scope = median_time(
                lambda: shell(f"{tool} --no-progress --text /dev/null {d}/a {d}/b"), 1
            )
            print(
                f"   diffoscope                 {scope * 1000:7.1f} ms   ratio "
                f"diffoscope/selfhost {scope / ours:.1f}x"
            )
        else:
            print("   diffoscope: not installed (pip install diffoscope; or set DIFFOSCOPE)")


if __name__ == "__main__":
    main()
