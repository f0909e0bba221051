"""Benchmark: dyno start latency, from the API request to the command's first output.

For bwrap and for Docker, against a bare sandbox start measured in the same run:
`bwrap --ro-bind <stack> / ... true` and `docker run --rm <stack image> true`.
Target: a median bwrap dyno start of at most 50 ms.

    .venv/bin/python bench/dynos.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import invoke

from selfhost.platform import daemon
from selfhost.platform.client import PlatformClient
from selfhost.platform.dynos import DynoSettings
from selfhost.platform.store import PlatformPaths


def first_output(client: PlatformClient, app: str, engine: str) -> float:
    """Seconds from POST /dynos to the first byte of the dyno's output."""
    started = time.perf_counter()
    dyno = client.create_dyno(app, {"command": "echo first", "attach": True, "engine": engine})
    for chunk in client.stream(dyno["attach_url"]):
        if chunk:
            elapsed = time.perf_counter() - started
            break
    for _ in client.stream(dyno["attach_url"]):  # let it finish before the next one
        pass
    return elapsed


def median_ms(samples: list[float]) -> str:
    return (
        f"{statistics.median(samples) * 1000:7.1f} ms (p90 "
        f"{sorted(samples)[int(len(samples) * 0.9) - 1] * 1000:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    slug = json.loads(invoke("slug", "--compiler", "tcc", "--json").stdout)
    stack = json.loads(invoke("stack", "--json").stdout)
    rootfs = stack["path"]
    with tempfile.TemporaryDirectory() as tmp:
        paths = PlatformPaths(Path(tmp) / "platform")
        settings = DynoSettings(
            stacks=str(Path(rootfs).parents[1]),
            suite="bookworm",
            variant="minbase",
            base_packages=("build-essential",),
            mirror=None,
            grace_seconds=2,
        )
        info, _ = daemon.start(
            paths, port=0, stack="bookworm", max_blob_bytes=10**9, dynos=settings
        )
        try:
            client = PlatformClient(info.url, paths.ensure_token())
            client.create_app("bench", "bookworm")
            client.release_slug(
                "bench",
                Path(slug["path"]),
                checksum=slug["checksum"],
                size=slug["size"],
                process_types=slug["process_types"],
            )
            first_output(client, "bench", "bwrap")  # warm: unpack the slug once
            bwrap_dyno = [first_output(client, "bench", "bwrap") for _ in range(args.rounds)]
            bare_bwrap = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                subprocess.run(
                    [
                        "bwrap",
                        "--ro-bind",
                        rootfs,
                        "/",
                        "--proc",
                        "/proc",
                        "--dev",
                        "/dev",
                        "--unshare-all",
                        "--",
                        "/bin/true",
                    ],
                    check=True,
                )
                bare_bwrap.append(time.perf_counter() - t)
            print(
                f"bwrap  dyno start (request -> first output) {median_ms(bwrap_dyno)}"
                "   target <= 50 ms"
            )
            print(
                f"bwrap  bare `bwrap ... true`               {median_ms(bare_bwrap)}"
                f"   ratio {statistics.median(bwrap_dyno) / statistics.median(bare_bwrap):.1f}"
            )
            try:
                first_output(client, "bench", "docker")
                docker_dyno = [
                    first_output(client, "bench", "docker") for _ in range(max(5, args.rounds // 4))
                ]
                image = f"selfhost/stack:{stack['digest']}"
                bare_docker = []
                for _ in range(max(5, args.rounds // 4)):
                    t = time.perf_counter()
                    subprocess.run(
                        ["docker", "run", "--rm", "--network", "none", image, "true"],
                        check=True,
                        capture_output=True,
                    )
                    bare_docker.append(time.perf_counter() - t)
                print(f"docker dyno start (request -> first output) {median_ms(docker_dyno)}")
                ratio = statistics.median(docker_dyno) / statistics.median(bare_docker)
                print(
                    f"docker bare `docker run --rm ... true`     {median_ms(bare_docker)}"
                    f"   ratio {ratio:.1f}"
                )
            except Exception as exc:  # no Docker engine here
                print(f"docker: skipped ({exc})")
        finally:
            daemon.stop(paths)


if __name__ == "__main__":
    main()
