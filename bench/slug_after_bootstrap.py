"""Benchmark: `invoke slug` right after `invoke bootstrap` (nothing is rebuilt).

The slug ships the final stage as it was built, so `invoke slug` after a bootstrap is
cache lookups, lints and packing. Baseline, measured in the same run on the same
tree (the slug's own ./app, unpacked):
`tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -c . | gzip -6`.
Target (issue 12): at most 1.2x.

    .venv/bin/python bench/slug_after_bootstrap.py [--compiler tcc|gauche] [--app-dir DIR]
        [--rounds N]

The first run bootstraps the compiler in the benchmark workspace (not measured; for
gauche that is the whole three-stage build).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from common import invoke, median_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compiler", default="tcc")
    parser.add_argument("--app-dir", default=None, help="a user app (default: the worker app)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    boot = json.loads(invoke("bootstrap", "--compiler", args.compiler, "--json").stdout)
    print(
        f"bootstrap of {args.compiler}: {time.perf_counter() - started:.1f} s "
        f"({sum(not s['cached'] for s in boot['stages'])} stages built)"
    )
    argv = ["slug", "--compiler", args.compiler, "--json"]
    if args.app_dir:
        argv += ["--app-dir", str(Path(args.app_dir).resolve())]
    slug = json.loads(invoke(*argv).stdout)
    assert all(s["cached"] for s in slug["stages"]), "invoke slug rebuilt a stage"
    assert slug["tree_digest"] == boot["stages"][-1]["tree_digest"]
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        # our own slug, just written: unpacked with tar to measure tar on the same tree
        subprocess.run(["tar", "-xzf", slug["path"], "-C", str(tree)], check=True)
        files = sum(1 for p in tree.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
        out = Path(tmp) / "tar.tgz"

        def ours() -> None:
            invoke(*argv)

        def baseline() -> None:
            subprocess.run(
                "tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 "
                f"-C {tree} -cf - . | gzip -6 > {out}",
                shell=True,
                check=True,
            )

        o, b = [], []
        for _ in range(args.rounds):  # interleaved, so drift hits both equally
            o.append(median_time(ours, 1))
            b.append(median_time(baseline, 1))
        o.sort(), b.sort()
        ours_s, base_s = o[len(o) // 2], b[len(b) // 2]
        print(
            f"invoke slug --compiler {args.compiler}"
            f"{' --app-dir ' + args.app_dir if args.app_dir else ''}: "
            f"{ours_s:.2f} s (median of {args.rounds}); tar --sort=name | gzip -6 of the "
            f"same tree ({files} files, {size / 1e6:.1f} MB): {base_s:.2f} s; "
            f"ratio {ours_s / base_s:.2f} (target <= 1.2); slug {slug['size']} bytes, "
            f"tar.gz {out.stat().st_size} bytes"
        )


if __name__ == "__main__":
    main()
