"""Benchmark: slug packing and the release round trip.

1. Packing a tree as a reproducible slug, against
   `tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -c . | gzip -6`
   on the same tree (target: at most 1.2x). Trees: the tcc slug's compiler, and the
   stack's /usr/lib/gcc (a bigger tree of binaries).
2. The release round trip on loopback against a real platform daemon: create the
   slug, upload, verify, release; against a bare HTTP PUT of the same bytes.

    .venv/bin/python bench/slug_release.py
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import requests
from common import WORKSPACE, invoke, median_time

from selfhost.platform import daemon
from selfhost.platform.client import PlatformClient
from selfhost.platform.paths import PlatformPaths
from selfhost.platform.slugs.slug import SlugContents, pack


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def bench_pack(label: str, root: Path, out_dir: Path, rounds: int = 3) -> None:
    def ours() -> None:
        contents = SlugContents()
        contents.add_tree(root, under="vendor")
        pack(contents, out_dir / "ours.tgz", mtime=0, process_types={})

    def tar() -> None:
        subprocess.run(
            f"tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 "
            f"-C {root} -cf - . | gzip -6 > {out_dir / 'tar.tgz'}",
            shell=True,
            check=True,
        )

    o, t = median_time(ours, rounds), median_time(tar, rounds)
    size = tree_size(root)
    print(
        f"   {label:<28} {size / 1e6:7.1f} MB   selfhost {o:6.2f} s   tar|gzip {t:6.2f} s   "
        f"ratio {o / t:.2f} (target <= 1.2)   sizes {os.path.getsize(out_dir / 'ours.tgz')}"
        f" / {os.path.getsize(out_dir / 'tar.tgz')} bytes"
    )


def main() -> None:
    slug = json.loads(invoke("slug", "--compiler", "tcc", "--json").stdout)
    stack = json.loads(invoke("stack", "--json").stdout)
    stage = (WORKSPACE / "stages/tcc/stage3").resolve() / "tree/app/vendor/tcc"
    print("1. packing (medians of 3)")
    with tempfile.TemporaryDirectory() as tmp:
        bench_pack("tcc compiler tree", stage, Path(tmp))
        bench_pack("stack /usr/lib/gcc", Path(stack["path"]) / "usr/lib/gcc", Path(tmp))

    print("2. release round trip on loopback (medians of 20)")
    with tempfile.TemporaryDirectory() as tmp:
        paths = PlatformPaths(Path(tmp) / "platform")
        info, _ = daemon.start(paths, port=0, stack="bookworm", max_blob_bytes=500_000_000)
        try:
            client = PlatformClient(info.url, paths.ensure_token())
            client.create_app("bench")
            path = Path(slug["path"])

            def release() -> None:
                client.release_slug(
                    "bench",
                    path,
                    checksum=slug["checksum"],
                    size=slug["size"],
                    process_types=slug["process_types"],
                )

            # Baseline: only the upload of the same bytes to a blob URL (slugs made ahead).
            blobs = iter(
                [
                    client.create_slug(
                        "bench",
                        {"process_types": slug["process_types"], "checksum": slug["checksum"]},
                    )["blob"]
                    for _ in range(20)
                ]
            )
            session = requests.Session()
            r = median_time(release, 20)
            p = median_time(lambda: client.upload(next(blobs), path), 20)
            h = median_time(lambda: session.get(f"{info.url}/health", timeout=30), 20)
            print(
                f"   release ({slug['size']} bytes)  {r * 1000:7.1f} ms   "
                f"(app check, create slug, upload, verify, release)"
            )
            print(
                f"   upload only                 {p * 1000:7.1f} ms   ratio release/upload "
                f"{r / p:.1f}"
            )
            print(f"   GET /health                 {h * 1000:7.1f} ms")
            print(f"   releases made: {len(client.releases('bench'))}")
        finally:
            daemon.stop(paths)


if __name__ == "__main__":
    main()
