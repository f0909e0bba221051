"""Compile workers on real parts: worker dynos (bwrap) running Huey consumers on SQLite
and on a real redis-server, jobs through the real API, two distccd dynos."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from selfhost.platform.client import PlatformClient
from tests.integration.conftest import Run, invoke

GRACE = "3"
WORKERS = "worker=3:standard-2x"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A real redis-server on loopback, started by the test."""
    server = shutil.which("redis-server")
    if not server:
        pytest.fail("the worker tests need redis-server: run ./setup --dev")
    port = _free_port()
    data = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("redis-server did not answer within 10 s")
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def plat(tcc_slug, stacks, tmp_path_factory, redis_url) -> Iterator[Callable[..., Run]]:
    """One platform; the tcc slug released as 'jobs-sqlite' (the embedded queue) and
    'jobs-redis' (SELFHOST_QUEUE_URL on the test's redis-server), 3 workers each."""
    ws, _ = tcc_slug
    env = {
        "INVOKE_SELFHOST_PLATFORM_DIR": str(tmp_path_factory.mktemp("plat") / "platform"),
        "INVOKE_SELFHOST_DYNO_GRACE_SECONDS": GRACE,
        # the platform owns this Redis: its apps may choose it as their queue
        "INVOKE_SELFHOST_QUEUES": redis_url,
    }

    def cli(*args: str, timeout: float = 900, **extra: str) -> Run:
        return invoke(list(args), ws, stacks, timeout=timeout, **{**env, **extra})

    for app in ("jobs-sqlite", "jobs-redis"):
        released = cli("release", "--app", app)
        assert released.code == 0, released.output
    assert cli("config", "--app", "jobs-redis", f"SELFHOST_QUEUE_URL={redis_url}").code == 0
    for app in ("jobs-sqlite", "jobs-redis"):
        assert cli("scale", "--app", app, WORKERS).code == 0
    cli.env = env  # type: ignore[attr-defined]
    cli.ws = ws  # type: ignore[attr-defined]
    client = client_of(cli)
    for app in ("jobs-sqlite", "jobs-redis"):
        wait_for(
            lambda app=app: (
                sum(d["type"] == "worker" and d["state"] == "up" for d in client.dynos(app)) == 3
            ),
            120,
            f"{app} workers",
        )
    yield cli
    cli("platform.down")


def client_of(plat: Any) -> PlatformClient:
    root = Path(plat.env["INVOKE_SELFHOST_PLATFORM_DIR"])
    info = json.loads((root / "daemon.json").read_text())
    return PlatformClient(info["url"], (root / "token").read_text().strip())


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def stage3_digest(ws: Path) -> str:
    """The tree digest of the slug bootstrap's stage3, from its manifest in the cache."""
    for manifest in (ws / "cache" / "stages").glob("*/manifest.json"):
        m = json.loads(manifest.read_text())
        if m["prefix"] == "/app/vendor/tcc" and m["stage"] == 3:
            return str(m["tree_digest"])
    raise AssertionError("no stage3 of the slug bootstrap in the workspace")


def submit(plat: Any, app: str, *args: str) -> dict[str, Any]:
    run = plat("jobs.submit", "--app", app, *args, "--json")
    assert run.code == 0, run.output
    return dict(run.json)


def app_dir(tmp_path: Path, make_body: str, name: str = "app") -> Path:
    """A C app with a Procfile whose Makefile runs ``make_body`` before compiling."""
    d = tmp_path / name
    d.mkdir()
    (d / "hello.c").write_text(
        '#include <stdio.h>\nint main(void) { puts("hello from a '
        'platform-compiled app"); return 0; }\n'
    )
    (d / "Makefile").write_text(f"hello: hello.c\n\t{make_body}\n\t$(CC) -o hello hello.c\n")
    (d / "Procfile").write_text("hello: ./hello\n")
    return d


def sandbox_pids(marker: str) -> list[int]:
    """Host pids of processes whose command line contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def worker_pid(dyno_id: str) -> int:
    """The host pid of the Huey consumer (python3 -m selfhost.platform.jobs.worker) of a dyno."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if (
            b"selfhost.platform.jobs.worker" in cmdline
            and f"SELFHOST_DYNO_ID={dyno_id}".encode() in environ.split(b"\0")
        ):
            return int(entry.name)
    raise AssertionError(f"no worker process for dyno {dyno_id}")


def finished(
    client: PlatformClient, app: str, job_id: int, timeout: float = 180, log: int = 200
) -> dict[str, Any]:
    """The job once it has ended (any final state), with its last log lines."""
    return wait_for(
        lambda: (lambda j: j if j["state"] in ("succeeded", "failed", "cancelled") else None)(
            client.job(app, job_id, log=log)
        ),
        timeout,
        f"job {job_id} to end",
    )


def running_on(client: PlatformClient, app: str, job_id: int, progress: str) -> dict[str, Any]:
    return wait_for(
        lambda: (
            lambda j: j if j["state"] == "running" and progress in (j["progress"] or "") else None
        )(client.job(app, job_id)),
        120,
        f"job {job_id} running {progress}",
    )


@pytest.mark.parametrize("app", ["jobs-redis", "jobs-sqlite"])
def test_self_rebuild_equals_stage3(plat, app):
    run = plat("jobs.submit", "--app", app, "--kind", "self-rebuild", "--wait", "--json")
    assert run.code == 0, run.output
    job = run.json
    assert job["state"] == "succeeded"
    assert job["result"]["identical"] is True
    assert job["result"]["tree_digest"] == stage3_digest(plat.ws)
    assert job["worker"]["name"].startswith("worker.")


def test_bootstrap_fans_out_into_cached_stage_jobs(plat):
    client = client_of(plat)
    run = plat(
        "jobs.submit",
        "--app",
        "jobs-sqlite",
        "--kind",
        "bootstrap",
        "--no-test",
        "--wait",
        "--json",
    )
    assert run.code == 0, run.output
    boot = run.json
    assert boot["result"]["fixpoint"] is True and boot["result"]["identical"] is True
    assert len(boot["children"]) == 3
    children = [client.job("jobs-sqlite", c) for c in boot["children"]]
    assert all(c["parent"] == boot["id"] and c["kind"] == "stage" for c in children)
    assert [c["params"]["stage"] for c in children] == [1, 2, 3]
    # A stage job with stage2's inputs (built by stage1) is a cache hit: content-addressed.
    listing = plat("jobs.list", "--app", "jobs-sqlite")
    assert f"← {boot['id']}" in listing.stdout and "→ " in listing.stdout, listing.output
    again = submit(
        plat,
        "jobs-sqlite",
        "--kind",
        "stage",
        "--stage",
        "2",
        "--builder",
        children[0]["result"]["input_hash"],
        "--no-test",
    )
    done = finished(client, "jobs-sqlite", again["id"])
    assert done["state"] == "succeeded", done
    assert done["result"]["cache"] == "hit"
    assert done["result"]["input_hash"] == children[1]["result"]["input_hash"]
    assert done["result"]["tree_digest"] == children[1]["result"]["tree_digest"]


def test_duplicate_submissions_run_once(plat, tmp_path):
    # long enough that the first is still queued or running when the second arrives,
    # however slowly the second `invoke` starts on a busy machine
    source = app_dir(tmp_path, "sleep 10")
    args = ("--kind", "app-compile", "--source", str(source), "--target", "dup-target")
    first = submit(plat, "jobs-redis", *args)
    second = submit(plat, "jobs-redis", *args)
    assert second["id"] == first["id"] and second["duplicate"] is True
    client = client_of(plat)
    wait_for(lambda: client.job("jobs-redis", first["id"])["state"] == "succeeded", 120, "the job")
    assert [r["version"] for r in client.releases("dup-target")] == [1]


def compiling(
    plat: Any, app: str, tmp_path: Path, target: str, seconds: int = 4
) -> tuple[PlatformClient, dict[str, Any], dict[str, Any]]:
    """An app-compile job whose make takes ``seconds``, once a worker is running it."""
    client = client_of(plat)
    source = app_dir(tmp_path, f"sleep {seconds}")
    job = submit(plat, app, "--kind", "app-compile", "--source", str(source), "--target", target)
    return client, job, running_on(client, app, job["id"], "make")


def test_worker_killed_mid_job_the_job_completes_once(plat, tmp_path):
    client, job, running = compiling(plat, "jobs-redis", tmp_path, "kill-target")
    os.kill(worker_pid(running["worker"]["dyno"]), signal.SIGKILL)
    done = finished(client, "jobs-redis", job["id"])
    assert done["state"] == "succeeded", done
    assert done["attempt"] == 2
    assert any("exited" in line and "queued again as attempt 2" in line for line in done["log"]), (
        done["log"]
    )
    assert [r["version"] for r in client.releases("kill-target")] == [1]  # exactly once
    run = plat("run", "--app", "kill-target", "--", "./hello")
    assert "hello from a platform-compiled app" in run.stdout, run.output


def test_sigterm_hands_the_job_back(plat, tmp_path):
    # long enough to outlast two `invoke` runs (ps, ps.stop) on a loaded machine
    client, job, running = compiling(plat, "jobs-sqlite", tmp_path, "term-target", seconds=20)
    ps = plat("ps", "--app", "jobs-sqlite", "--json")
    linked = {d["name"]: d["job"]["id"] for d in ps.json if d.get("job")}
    assert linked == {running["worker"]["name"]: job["id"]}, ps.output
    assert plat("ps.stop", "--app", "jobs-sqlite", running["worker"]["name"]).code == 0
    done = finished(client, "jobs-sqlite", job["id"])
    assert done["state"] == "succeeded", done
    assert done["attempt"] == 2
    assert any("given back by its worker" in line for line in done["log"]), done["log"]
    assert [r["version"] for r in client.releases("term-target")] == [1]


def test_cancel_kills_the_process_group(plat, tmp_path):
    client = client_of(plat)
    source = app_dir(tmp_path, "sleep 3142 & sleep 3141")
    job = submit(
        plat,
        "jobs-redis",
        "--kind",
        "app-compile",
        "--source",
        str(source),
        "--target",
        "cancel-target",
    )
    running_on(client, "jobs-redis", job["id"], "make")
    wait_for(lambda: sandbox_pids("sleep\x003142"), 30, "the background sleep")
    cancelled = plat("jobs.cancel", "--app", "jobs-redis", str(job["id"]))
    assert cancelled.code == 0, cancelled.output
    done = wait_for(
        lambda: (lambda j: j if j["state"] != "running" else None)(
            client.job("jobs-redis", job["id"])
        ),
        30,
        "the cancel",
    )
    assert done["state"] == "cancelled"
    wait_for(
        lambda: not sandbox_pids("sleep\x003141") and not sandbox_pids("sleep\x003142"),
        10,
        "the job's processes to be gone",
    )
    failed = plat(
        "jobs.submit",
        "--app",
        "jobs-redis",
        "--kind",
        "app-compile",
        "--source",
        str(source),
        "--target",
        "cancel-target",
        "--timeout",
        "1",
        "--wait",
    )
    assert failed.code == 13, failed.output  # --wait exits non-zero unless it succeeded


def test_timeout_kills_the_process_group(plat, tmp_path):
    client = client_of(plat)
    source = app_dir(tmp_path, "sleep 3144 & sleep 3143")
    run = plat(
        "jobs.submit",
        "--app",
        "jobs-sqlite",
        "--kind",
        "app-compile",
        "--source",
        str(source),
        "--target",
        "timeout-target",
        "--timeout",
        "3",
        "--wait",
        "--json",
    )
    assert run.code == 13, run.output
    assert run.json["state"] == "failed" and "timed out after 3s" in run.json["error"]
    wait_for(
        lambda: not sandbox_pids("sleep\x003143") and not sandbox_pids("sleep\x003144"),
        10,
        "the job's processes to be gone",
    )
    assert client.job("jobs-sqlite", run.json["id"])["attempt"] == 1


def test_distcc_stage_build_on_three_daemons_every_host_compiles(plat):
    """With 3 hosts of 2 slots, the job runs make -j6 (not the worker's own cores), so
    distcc fills every host's slots: each of the 3 distccd dynos compiles."""
    client = client_of(plat)
    assert plat("scale", "--app", "jobs-sqlite", "distccd=3:standard-2x").code == 0
    wait_for(
        lambda: (
            sum(d["type"] == "distccd" and d["state"] == "up" for d in client.dynos("jobs-sqlite"))
            == 3
        ),
        60,
        "distccd dynos",
    )
    ports = {
        d["port"]
        for d in client.dynos("jobs-sqlite")
        if d["type"] == "distccd" and d["state"] == "up"
    }
    assert len(ports) == 3, "three hosts, each on its own port of the app's block"
    run = plat(
        "jobs.submit",
        "--app",
        "jobs-sqlite",
        "--kind",
        "stage",
        "--stage",
        "1",
        "--no-test",
        "--distcc",
        "--wait",
        "--json",
    )
    assert run.code == 0, run.output
    assert run.json["result"]["cache"] == "miss"
    log = (Path(plat.env["INVOKE_SELFHOST_PLATFORM_DIR"]) / "logs" / "jobs-sqlite.log").read_text()
    for dyno in ("distccd.1", "distccd.2", "distccd.3"):
        compiled = [
            line for line in log.splitlines() if f"app[{dyno}]" in line and "COMPILE_OK" in line
        ]
        assert compiled, f"{dyno} served no compile"
    job_log = client.job("jobs-sqlite", run.json["id"], log=500)["log"]
    hosts = " ".join(f"127.0.0.1:{p}/2" for p in sorted(ports))
    assert any(f"distcc: gcc compiles go to {hosts} (JOBS=6)" in line for line in job_log)
    assert plat("scale", "--app", "jobs-sqlite", "distccd=0").code == 0


def test_a_worker_builds_the_stages_the_local_bootstrap_built(plat):
    """The one stage builder: stages 1 and 2 built again in worker dynos (--force: not
    from the store) have the local bootstrap's input hashes and tree digests."""
    local = json.loads((plat.ws / "stages" / "tcc" / "run.json").read_text())["stages"]
    for mine in local[:2]:
        builder = "stage0" if mine["stage"] == 1 else local[mine["stage"] - 2]["input_hash"]
        run = plat(
            "jobs.submit",
            "--app",
            "jobs-redis",
            "--kind",
            "stage",
            "--stage",
            str(mine["stage"]),
            "--builder",
            builder,
            "--force",
            "--no-test",
            "--wait",
            "--json",
        )
        assert run.code == 0, run.output
        result = run.json["result"]
        assert result["cache"] == "miss", result
        assert result["input_hash"] == mine["input_hash"]
        assert result["tree_digest"] == mine["tree_digest"]


def test_a_local_bootstrap_takes_the_stages_from_the_platform(plat, tmp_path, stacks):
    """The other way: a fresh workspace's bootstrap takes every stage from the
    platform's stage store (verified), builds none, and reaches the same fixpoint."""
    ws = tmp_path / "fresh"
    (ws / "sources").mkdir(parents=True)
    shutil.copytree(plat.ws / "sources" / "trees", ws / "sources" / "trees", symlinks=True)
    local = json.loads((plat.ws / "stages" / "tcc" / "run.json").read_text())["stages"]
    run = invoke(["bootstrap", "--from-platform", "--json"], ws, stacks, **plat.env)
    assert run.code == 0, run.output
    stages = run.json["stages"]
    assert [s["cached"] for s in stages] == [True, True, True]
    assert [s["tree_digest"] for s in stages] == [s["tree_digest"] for s in local]
    assert run.json["fixpoint"] is True
    manifest = json.loads((ws / "stages" / "tcc" / "stage2" / "manifest.json").read_text())
    assert manifest["inputs"]["runner"] == "platform" and "built by" in manifest["inputs"]["origin"]
    assert "from the platform" in run.stderr
    # and a bootstrap that asks for it without a platform says so
    wrong = invoke(["bootstrap", "--api", "http://127.0.0.1:9"], ws, stacks)
    assert wrong.code == 2 and "--api is for --from-platform" in wrong.stderr


def test_bad_job_input(plat):
    wrong = plat("jobs.submit", "--app", "jobs-sqlite", "--kind", "rebuild-everything")
    assert wrong.code == 2 and "expected one of" in wrong.stderr
    misplaced = plat(
        "jobs.submit", "--app", "jobs-sqlite", "--kind", "self-rebuild", "--stage", "2"
    )
    assert misplaced.code == 2 and "does not take --stage" in misplaced.stderr
    builder = plat(
        "jobs.submit",
        "--app",
        "jobs-sqlite",
        "--kind",
        "stage",
        "--stage",
        "2",
        "--builder",
        "nonsense",
    )
    assert builder.code == 11 and "params.builder" in builder.stderr
    missing = plat(
        "jobs.submit",
        "--app",
        "jobs-sqlite",
        "--kind",
        "app-compile",
        "--source",
        "/nonexistent/app",
        "--target",
        "x-target",
    )
    assert missing.code == 11 and "params.source" in missing.stderr
    assert "Traceback" not in wrong.output + builder.output + missing.output
    unknown = plat("jobs.show", "--app", "jobs-sqlite", "99999")
    assert unknown.code == 11 and "Couldn't find that job" in unknown.stderr


def test_redis_over_a_unix_socket(plat, tmp_path):
    """unix:// queue URLs: the socket's directory is mounted into the worker dynos."""
    sock_dir = tmp_path / "redis"
    sock_dir.mkdir()
    sock_dir.chmod(0o755)  # the workers run as the app's unprivileged id
    proc = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(sock_dir / "redis.sock"),
            "--unixsocketperm",
            "777",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(sock_dir),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: (sock_dir / "redis.sock").exists(), 10, "the redis socket")
        url = f"unix://{sock_dir}/redis.sock?db=3"
        # a queue the platform owns: restart it with the socket among its queues
        assert plat("platform.down").code == 0
        owned = f"{plat.env['INVOKE_SELFHOST_QUEUES']} {url}"
        assert plat("platform.up", INVOKE_SELFHOST_QUEUES=owned).code == 0
        assert plat("release", "--app", "jobs-unix").code == 0
        assert plat("config", "--app", "jobs-unix", f"SELFHOST_QUEUE_URL={url}").code == 0
        assert plat("scale", "--app", "jobs-unix", "worker=1").code == 0
        source = app_dir(tmp_path, "true")
        run = plat(
            "jobs.submit",
            "--app",
            "jobs-unix",
            "--kind",
            "app-compile",
            "--source",
            str(source),
            "--target",
            "unix-target",
            "--wait",
            "--json",
        )
        assert run.code == 0, run.output
        assert run.json["result"]["version"] == 1
        assert plat("scale", "--app", "jobs-unix", "worker=0").code == 0
    finally:
        proc.terminate()
        proc.wait(10)
