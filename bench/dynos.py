"""Benchmark: dyno start latency, from the API request to the command's first output.

Three platforms in one run, each with the tcc slug, against a bare sandbox start
measured in the same run (`bwrap --ro-bind <stack> / ... true`):

- **hardened** (the real sandbox: unprivileged host id, no capabilities, seccomp, its
  own network namespace with pasta and a firewall, a bounded tmpfs, a scoped token);
- **before** (the attack suite's weakened sandbox, which is what dynos were before the
  security model: root, the host network, plain directories);
- Docker (hardened), against `docker run --rm <stack image> true`.

Target (issue 11): a median hardened bwrap dyno start of at most 20 ms.

    .venv/bin/python bench/dynos.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import invoke

from selfhost.platform import daemon
from selfhost.platform.client import PlatformClient
from selfhost.platform.paths import PlatformPaths
from selfhost.platform.runtime.dynos import DynoSettings
from selfhost.stages.security import INSECURE_ENV


def first_output(client: PlatformClient, app: str, engine: str) -> float:
    """Seconds from POST /dynos to the first byte of the dyno's output."""
    started = time.perf_counter()
    dyno = client.create_dyno(app, {"command": "echo first", "attach": True, "engine": engine})
    for chunk in client.stream(dyno["attach_http_url"]):
        if chunk:
            elapsed = time.perf_counter() - started
            break
    for _ in client.stream(dyno["attach_http_url"]):  # let it finish before the next one
        pass
    return elapsed


def median_ms(samples: list[float]) -> str:
    return (
        f"{statistics.median(samples) * 1000:7.1f} ms (p90 "
        f"{sorted(samples)[int(len(samples) * 0.9) - 1] * 1000:.1f})"
    )


def platform(tmp: Path, name: str, stacks: str, slug: dict, weak: bool) -> tuple:
    """A platform with the slug released as app 'bench'; (paths, client)."""
    paths = PlatformPaths(tmp / name)
    settings = DynoSettings(
        stacks=stacks,
        suite="bookworm",
        variant="minbase",
        base_packages=("build-essential",),
        mirror=None,
        grace_seconds=2,
    )
    if weak:
        os.environ[INSECURE_ENV] = "1"  # inherited by the daemon only
    try:
        info, _ = daemon.start(
            paths, port=0, stack="bookworm", max_blob_bytes=10**9, dynos=settings
        )
    finally:
        os.environ.pop(INSECURE_ENV, None)
    client = PlatformClient(info.url, paths.ensure_token())
    client.create_app("bench", "bookworm")
    client.release_slug(
        "bench",
        Path(slug["path"]),
        checksum=slug["checksum"],
        size=slug["size"],
        process_types=slug["process_types"],
    )
    return paths, client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    slug = json.loads(invoke("slug", "--compiler", "tcc", "--json").stdout)
    stack = json.loads(invoke("stack", "--json").stdout)
    rootfs = stack["path"]
    stacks = str(Path(rootfs).parents[1])
    with tempfile.TemporaryDirectory() as tmp:
        started = []
        try:
            hardened = platform(Path(tmp), "hardened", stacks, slug, weak=False)
            started.append(hardened[0])
            before = platform(Path(tmp), "before", stacks, slug, weak=True)
            started.append(before[0])
            samples: dict[str, list[float]] = {"hardened": [], "before": [], "bare": []}
            for client in (hardened[1], before[1]):
                first_output(client, "bench", "bwrap")  # warm: unpack the slug once
            for _ in range(args.rounds):  # interleaved, so drift hits all equally
                samples["hardened"].append(first_output(hardened[1], "bench", "bwrap"))
                samples["before"].append(first_output(before[1], "bench", "bwrap"))
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
                samples["bare"].append(time.perf_counter() - t)
            bare = statistics.median(samples["bare"])
            for name, label in (("hardened", "hardened"), ("before", "before  ")):
                ratio = statistics.median(samples[name]) / bare
                print(
                    f"bwrap dyno start, {label} (request -> first output) "
                    f"{median_ms(samples[name])}   ratio to bare bwrap {ratio:.1f}"
                    + ("   target <= 20 ms" if name == "hardened" else "")
                )
            print(
                f"bare `bwrap ... true`                                {median_ms(samples['bare'])}"
            )
            try:
                client = hardened[1]
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
                ratio = statistics.median(docker_dyno) / statistics.median(bare_docker)
                print(
                    f"docker dyno start, hardened                        {median_ms(docker_dyno)}"
                    f"   ratio to bare docker run {ratio:.1f}"
                )
                print(
                    f"bare `docker run --rm ... true`                     {median_ms(bare_docker)}"
                )
            except Exception as exc:  # no Docker engine here
                print(f"docker: skipped ({exc})")
        finally:
            for paths in started:
                daemon.stop(paths)


if __name__ == "__main__":
    main()
