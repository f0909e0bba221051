"""Benchmark: compile workers. Job dispatch latency (submit -> a worker claims it) on the
SQLite and the Redis queue, against a bare Huey consumer on the same storage measured in
the same run; and the throughput of N small compile jobs (app-compile of a tiny C app:
fetch, make with the slug's tcc, pack, release) with 1, 2 and 3 workers.

    .venv/bin/python bench/workers.py [--rounds N] [--jobs N]

Needs redis-server (started here on a free loopback port).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import invoke

from selfhost.config import Settings
from selfhost.platform import daemon
from selfhost.platform.client import PlatformClient
from selfhost.platform.jobs.queue import make_huey, register
from selfhost.platform.paths import PlatformPaths
from selfhost.platform.runtime.dynos import DynoSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_app(root: Path, n: int) -> Path:
    d = root / f"app{n}"
    d.mkdir(parents=True)
    (d / "hello.c").write_text(
        f'#include <stdio.h>\nint main(void) {{ puts("app {n}"); return 0; }}\n'
    )
    (d / "Makefile").write_text("hello: hello.c\n\t$(CC) -o hello hello.c\n")
    (d / "Procfile").write_text("hello: ./hello\n")
    return d


def wait(client: PlatformClient, app: str, job_id: int) -> dict[str, Any]:
    while True:
        job = client.job(app, job_id)
        if job["state"] in ("succeeded", "failed", "cancelled"):
            if job["state"] != "succeeded":
                raise SystemExit(f"job {job_id} {job['state']}: {job['error']}")
            return job
        time.sleep(0.02)


def scale(client: PlatformClient, app: str, n: int) -> None:
    client.update_formation(app, [{"type": "worker", "quantity": n, "size": "standard-2x"}])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        up = [d for d in client.dynos(app) if d["type"] == "worker" and d["state"] == "up"]
        if len(up) == n:
            time.sleep(2.0)  # the consumers start after the dynos are up
            return
        time.sleep(0.2)
    raise SystemExit(f"{app}: {n} workers did not come up")


def bare_huey_latency(url: str, rounds: int) -> list[float]:
    """Enqueue -> task start with a bare Huey consumer (same storage and polling)."""
    huey = make_huey(url, "bare-bench")
    started: dict[int, float] = {}
    done = threading.Event()

    def run(job_id: int, attempt: int) -> None:
        started[job_id] = time.perf_counter()
        done.set()

    task = register(huey, run)
    consumer = huey.create_consumer(
        workers=1, periodic=False, initial_delay=0.05, backoff=1.5, max_delay=0.5
    )
    consumer.start()
    samples = []
    try:
        time.sleep(1.0)
        for i in range(rounds):
            done.clear()
            t = time.perf_counter()
            task(i, 1)
            done.wait(10)
            samples.append(started[i] - t)
            time.sleep(0.6)  # let the poller back off, as between real submissions
    finally:
        consumer.stop()
        consumer.stop_flag.set()
    return samples


def ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    return (
        f"median {statistics.median(samples) * 1000:6.1f} ms, p90 "
        f"{ordered[max(0, int(len(ordered) * 0.9) - 1)] * 1000:6.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=12)
    args = parser.parse_args()
    slug = json.loads(invoke("slug", "--compiler", "tcc", "--json").stdout)
    stack = json.loads(invoke("stack", "--json").stdout)
    defaults = Settings()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        redis = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
        )
        redis_url = f"redis://127.0.0.1:{port}/0"
        paths = PlatformPaths(Path(tmp) / "platform")
        settings = DynoSettings(
            stacks=str(Path(stack["path"]).parents[1]),
            suite="bookworm",
            variant="minbase",
            base_packages=defaults.base_packages,
            mirror=None,
            grace_seconds=2,
        )
        info, _ = daemon.start(
            paths, port=0, stack="bookworm", max_blob_bytes=10**9, dynos=settings
        )
        try:
            client = PlatformClient(info.url, paths.ensure_token())
            queues = {"sqlite": "bench-sqlite", "redis": "bench-redis"}
            for app in queues.values():
                client.create_app(app, "bookworm")
                if app == "bench-redis":
                    client.update_config(app, {"SELFHOST_QUEUE_URL": redis_url})
                client.release_slug(
                    app,
                    Path(slug["path"]),
                    checksum=slug["checksum"],
                    size=slug["size"],
                    process_types=slug["process_types"],
                )
            counter = iter(range(10**6))
            print(
                f"dispatch latency (submit -> claimed by a worker), {args.rounds} jobs, "
                "one idle worker:"
            )
            for name, app in queues.items():
                scale(client, app, 1)
                samples = []
                for _ in range(args.rounds):
                    src = tiny_app(Path(tmp) / "apps", next(counter))
                    job = client.submit_job(
                        app,
                        {
                            "kind": "app-compile",
                            "params": {"source": str(src), "target": f"t{name}"},
                        },
                    )
                    done = wait(client, app, job["id"])
                    samples.append(done["started"] - done["created"])
                    time.sleep(0.6)
                bare = bare_huey_latency(
                    redis_url if name == "redis" else f"sqlite://{tmp}/bare.db", args.rounds
                )
                ratio = statistics.median(samples) / statistics.median(bare)
                print(f"  {name:6} selfhost  {ms(samples)}")
                print(f"  {name:6} bare Huey {ms(bare)}   ratio {ratio:.1f}")
                scale(client, app, 0)
            print(f"throughput: {args.jobs} app-compile jobs submitted at once")
            for name, app in queues.items():
                base = None
                for workers in (1, 2, 3):
                    scale(client, app, workers)
                    sources = [
                        tiny_app(Path(tmp) / "apps", next(counter)) for _ in range(args.jobs)
                    ]
                    started = time.perf_counter()
                    ids = [
                        client.submit_job(
                            app,
                            {
                                "kind": "app-compile",
                                "params": {"source": str(s), "target": f"t{name}"},
                            },
                        )["id"]
                        for s in sources
                    ]
                    jobs = [wait(client, app, i) for i in ids]
                    elapsed = time.perf_counter() - started
                    rate = args.jobs / elapsed
                    base = base or rate
                    used = len({j["worker"]["name"] for j in jobs})
                    work = statistics.median(j["result"]["seconds"] for j in jobs)
                    print(
                        f"  {name:6} {workers} worker(s): {elapsed:5.2f} s, {rate:5.2f} jobs/s,"
                        f" scaling x{rate / base:.2f} (workers used: {used}; median job "
                        f"{work:.2f} s)"
                    )
                scale(client, app, 0)
        finally:
            daemon.stop(paths)
            redis.terminate()


if __name__ == "__main__":
    main()
