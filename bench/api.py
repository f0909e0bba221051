"""Benchmark: platform API latency, the Starlette/uvicorn server against the old one.

``GET /apps/{app}/releases`` (an app with :data:`RELEASES` releases) with 1, 8 and 32
concurrent clients, each on its own keep-alive connection, against two servers started
in the same run on copies of the same platform directory:

- **before**: the hand-written ``http.server`` API at :data:`BASELINE` (the commit
  before the move to Starlette), checked out from this repository's history;
- **after**: the API of this tree.

Each server runs in a process of its own; the clients are threads of this process. It
prints p50 and p99 latency and requests per second for each, and after ÷ before.

    .venv/bin/python bench/api.py [--seconds 5] [--baseline COMMIT]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfhost.platform.paths import PlatformPaths  # noqa: E402
from selfhost.platform.store.db import Store  # noqa: E402

BASELINE = "9f8ea15"  # main before the API moved to Starlette and uvicorn
RELEASES = 20
CLIENTS = (1, 8, 32)

SERVE = """
import sys
from pathlib import Path
sys.setswitchinterval(0.001)  # as the daemon does
from selfhost.platform.api.server import PlatformServer, serve_in_thread
from selfhost.platform.paths import PlatformPaths
server = PlatformServer(("127.0.0.1", 0), PlatformPaths(Path(sys.argv[1])),
                        stack="bookworm", max_blob_bytes=1 << 20)
serve_in_thread(server)
print(server.url, flush=True)
sys.stdin.read()
"""


def seed(root: Path) -> str:
    """A platform directory with one app and its releases; the API token."""
    paths = PlatformPaths(root)
    store = Store(paths)
    store.create_app("bench", "bookworm")
    for n in range(RELEASES):
        slug, _ = store.create_slug("bench", {"process_types": {"web": "bin/web"}})
        store.attach_blob(slug["id"], f"{n:064x}", 100 + n)
        store.create_release("bench", slug["id"], f"release {n}")
    store.close()
    return paths.ensure_token()


def start(source: Path, root: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(source)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=source,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"the server from {source} did not start")
    return proc, url


def load(url: str, token: str, clients: int, seconds: float) -> tuple[list[float], int]:
    """Latencies (s) of every request made by ``clients`` threads for ``seconds``."""
    host, port = url.removeprefix("http://").split(":")
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/vnd.heroku+json; version=3",
    }
    samples: list[list[float]] = [[] for _ in range(clients)]
    errors = [0]
    start_line = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        start_line.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            conn.request("GET", "/apps/bench/releases", headers=headers)
            response = conn.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - t0
            if response.status != 200 or len(json.loads(body)) != RELEASES:
                errors[0] += 1
            samples[i].append(elapsed)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    start_line.wait()
    for t in threads:
        t.join()
    return [s for per in samples for s in per], errors[0]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per server and level")
    parser.add_argument("--baseline", default=BASELINE, help="the commit of 'before'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="selfhost-bench-api-") as tmp_name:
        tmp = Path(tmp_name)
        old = tmp / "before"
        old.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.baseline, "selfhost"],
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            raise SystemExit(
                f"git archive {args.baseline} failed (a full clone is needed): "
                f"{archive.stderr.decode().strip()}"
            )
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        token = seed(tmp / "platform-before")
        shutil.copytree(tmp / "platform-before", tmp / "platform-after")
        servers = {
            "before": start(old, tmp / "platform-before"),
            "after": start(REPO, tmp / "platform-after"),
        }
        results: dict[tuple[str, int], tuple[float, float, float, int]] = {}
        try:
            for _, url in servers.values():  # warm up both
                load(url, token, 2, 0.5)
            for clients in CLIENTS:
                for name, (_, url) in servers.items():
                    latencies, errors = load(url, token, clients, args.seconds)
                    results[name, clients] = (
                        statistics.median(latencies) * 1000,
                        percentile(latencies, 0.99) * 1000,
                        len(latencies) / args.seconds,
                        errors,
                    )
        finally:
            for proc, _ in servers.values():
                proc.kill()
                proc.wait()
    print(f"GET /apps/bench/releases ({RELEASES} releases), {args.seconds:g} s per level")
    print(f"before: {args.baseline} (http.server); after: this tree (Starlette on uvicorn)")
    print(f"{'clients':>7} {'server':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'errors':>6}")
    for clients in CLIENTS:
        for name in ("before", "after"):
            p50, p99, rate, errors = results[name, clients]
            print(f"{clients:>7} {name:>7} {p50:8.2f} {p99:8.2f} {rate:8.0f} {errors:>6}")
        b, a = results["before", clients], results["after", clients]
        print(
            f"{clients:>7} {'after÷before':>7}  p50 {a[0] / b[0]:.2f}×  p99 {a[1] / b[1]:.2f}×  "
            f"req/s {a[2] / b[2]:.2f}×"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
