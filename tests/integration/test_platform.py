"""Slugs and the platform on real parts: the daemon, HTTP on loopback, bwrap, kill -9."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import tarfile
import threading
import time
from pathlib import Path

import pytest
import requests

from selfhost.platform.client import ApiRequestError, PlatformClient
from selfhost.platform.slugs.slug import unpack
from tests.integration.conftest import invoke
from tests.unit.test_platform_api import make_slug


@pytest.fixture
def platform(tmp_path, stacks):
    """A workspace whose platform daemon is stopped when the test ends."""
    ws = tmp_path / "pws"
    yield ws
    invoke(["platform.down"], ws, stacks)


def daemon_pid(ws: Path) -> int:
    return json.loads((ws / "platform" / "daemon.json").read_text())["pid"]


def local_client(ws: Path) -> PlatformClient:
    info = json.loads((ws / "platform" / "daemon.json").read_text())
    return PlatformClient(info["url"], (ws / "platform" / "token").read_text().strip())


def test_slug_contents_and_json(tcc_slug):
    _, result = tcc_slug
    assert result["checksum"].startswith("SHA256:") and result["size"] > 100_000
    assert result["process_types"] == {"worker": "bin/worker", "distccd": "bin/distccd"}
    assert result["fixpoint"] is True and result["stage"] == 3
    with tarfile.open(result["path"]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("./app/selfhost.json").read())
    assert all(n == "./app" or n.startswith("./app/") for n in names)
    assert "./app/vendor/tcc/bin/tcc" in names and "./app/Procfile" in names
    # what the compile worker runs on the stack's Python, and the recipe it rebuilds with
    for vendored in (
        "selfhost/platform/jobs/worker.py",
        "huey/consumer.py",
        "redis/client.py",
        "requests/api.py",
    ):
        assert f"./app/vendor/python/{vendored}" in names, vendored
    assert not any(n.endswith((".so", ".pyc")) for n in names if "/vendor/python/" in n)
    assert "./app/vendor/recipes/tcc.toml" in names
    assert "./app/README.md" not in names, ".slugignore is honoured"
    assert meta["prefix"] == "/app/vendor/tcc" and meta["fixpoint"] is True
    assert any(
        lint["kind"] == "build-path" and "bcheck.o" in lint["path"] for lint in result["lints"]
    ), "tcc's bcheck.o really embeds /build/src"


def test_slug_is_reproducible_from_another_workspace(tcc_slug, workspace, stacks):
    _, first = tcc_slug
    again = invoke(["slug", "--json"], workspace, stacks)  # another path, built from scratch
    assert again.code == 0, again.output
    assert again.json["checksum"] == first["checksum"]
    assert Path(again.json["path"]).read_bytes() == Path(first["path"]).read_bytes()


def test_strict_mode_refuses_the_slug(tcc_slug, stacks, tmp_path):
    ws, _ = tcc_slug
    out = tmp_path / "strict.tgz"
    run = invoke(["slug", "--strict", "--out", str(out)], ws, stacks)
    assert run.code == 12, run.output
    assert "lint(s) failed in --strict mode" in run.stderr and "bcheck.o" in run.stderr
    assert not out.exists()


def test_the_slug_compiler_works_from_app_in_a_sandbox(tcc_slug, stacks, tmp_path):
    from selfhost.stages.bwrap import BwrapEngine
    from selfhost.stages.engine import Mount, Sandbox
    from selfhost.stages.stack import StackStore

    _, result = tcc_slug
    unpacked = tmp_path / "dyno"
    unpack(Path(result["path"]), unpacked)
    digest = json.loads((unpacked / "app/selfhost.json").read_text())["built_on"]["digest"]
    stack = StackStore(stacks, lambda: "").load_digest(digest)
    assert stack is not None
    (unpacked / "app" / "h.c").write_text(
        '#include <stdio.h>\nint main(void) { printf("hello from %s\\n", "/app"); return 0; }\n'
    )
    script = (
        "/app/vendor/tcc/bin/tcc /app/h.c -o /tmp/h && /tmp/h && "
        ". /app/.profile.d/000-selfhost.sh && bin/compile -run /app/h.c"
    )
    sandbox = Sandbox(
        stack=stack,
        argv=("/bin/sh", "-ec", script),
        env=(("PATH", "/usr/bin:/bin"), ("HOME", "/app")),
        mounts=(Mount(unpacked / "app", "/app", writable=True),),
        workdir="/app",
    )
    out = tmp_path / "out.log"
    from selfhost.config import Settings
    from selfhost.stages import security

    locked = security.load(tmp_path / "security", Settings().sandbox_ids)
    with open(out, "wb") as log:
        res = BwrapEngine(locked).run(sandbox, log)
    text = out.read_text()
    assert res.exit_code == 0, text
    assert text.count("hello from /app") == 2, text


def test_release_create_release_again_and_roll_back(tcc_slug, stacks, platform):
    ws, slug = tcc_slug
    env = {"INVOKE_SELFHOST_PLATFORM_DIR": str(platform / "platform")}
    created = invoke(["apps.create", "tcc-e2e", "--json"], ws, stacks, **env)
    assert created.code == 0, created.output
    assert created.json["name"] == "tcc-e2e"
    first = invoke(["release", "--app", "tcc-e2e", "--json"], ws, stacks, **env)
    assert first.code == 0, first.output
    assert first.json["version"] == 1 and first.json["checksum"] == slug["checksum"]
    assert first.json["app_created"] is False
    second = invoke(["release", "--app", "tcc-e2e", "--json"], ws, stacks, **env)
    assert second.json["version"] == 2
    back = invoke(["rollback", "--app", "tcc-e2e", "v1"], ws, stacks, **env)
    assert back.code == 0 and "v3 of tcc-e2e: Rollback to v1" in back.stdout
    listed = invoke(["releases", "--app", "tcc-e2e", "--json"], ws, stacks, **env).json
    assert [r["version"] for r in listed] == [1, 2, 3]
    assert listed[2]["current"] and listed[2]["slug"]["id"] == first.json["slug"]
    # a first release to an unknown app creates it on our platform, and says so
    fresh = invoke(["release", "--app", "brand-new"], ws, stacks, **env)
    assert fresh.code == 0 and "created app brand-new (first release)" in fresh.stdout
    blob = platform / "platform" / "blobs" / "sha256" / slug["checksum"].split(":")[1]
    assert blob.is_file(), "blobs are stored content-addressed"
    status = invoke(["platform.status", "--json"], ws, stacks, **env).json
    assert status["running"] and status["apps"] == 2
    invoke(["platform.down"], ws, stacks, **env)


def test_slugs_and_stages_download_checked_against_their_digests(
    tcc_slug, stacks, platform, tmp_path
):
    ws, slug = tcc_slug
    env = {"INVOKE_SELFHOST_PLATFORM_DIR": str(platform / "platform")}
    released = invoke(["release", "--app", "dl-app", "--json"], ws, stacks, **env)
    assert released.code == 0, released.output
    # the slug: the current release's by default, byte for byte the one released
    got = invoke(
        ["slugs.download", "--app", "dl-app", "-o", str(tmp_path / "s.tgz")], ws, stacks, **env
    )
    assert got.code == 0, got.output
    assert (tmp_path / "s.tgz").read_bytes() == Path(slug["path"]).read_bytes()
    info = local_client(platform).slug("dl-app", released.json["slug"])
    assert info["blob"]["method"] == "get", "slug info has Heroku's blob URL to download"
    forged = info["blob"]["url"].rsplit("=", 1)[0] + "=" + "0" * 64
    assert requests.get(forged, timeout=30).status_code == 403, "the URL's secret is checked"
    # every stage of the bootstrap, as recorded
    final = slug["input_hash"]
    tree = tmp_path / "stage3"
    got = invoke(
        ["stages.download", "--app", "dl-app", "--key", final, "-o", str(tree), "--json"],
        ws,
        stacks,
        **env,
    )
    assert got.code == 0, got.output
    assert got.json["tree_digest"] == slug["tree_digest"]
    assert any(p.name == "tcc" for p in tree.rglob("*")), "the tree holds the compiler"
    # a damaged copy on the platform is refused, and nothing is left behind
    blob = platform / "platform" / "blobs" / "sha256" / slug["checksum"].split(":")[1]
    blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
    bad = invoke(
        ["slugs.download", "--app", "dl-app", "-o", str(tmp_path / "bad.tgz")], ws, stacks, **env
    )
    assert bad.code == 11 and "it was discarded" in bad.stderr, bad.output
    assert not (tmp_path / "bad.tgz").exists() and not list(tmp_path.glob(".bad.tgz*"))
    invoke(["platform.down"], ws, stacks, **env)


def test_release_to_a_remote_api_needs_the_app_and_its_token(tcc_slug, stacks, platform, tmp_path):
    ws, _ = tcc_slug
    remote_dir = tmp_path / "remote"
    up = invoke(["platform.up"], platform, stacks, INVOKE_SELFHOST_PLATFORM_DIR=str(remote_dir))
    assert up.code == 0, up.output
    url = json.loads((remote_dir / "daemon.json").read_text())["url"]
    token = (remote_dir / "token").read_text().strip()
    env = {"HEROKU_API_KEY": token}
    missing = invoke(["release", "--app", "remote-app", "--api", url], ws, stacks, **env)
    assert missing.code == 11 and "404 not_found" in missing.stderr, missing.output
    bad = invoke(["apps.create", "remote-app", "--api", url], ws, stacks, HEROKU_API_KEY="x")
    assert bad.code == 11 and "401" in bad.stderr
    assert invoke(["apps.create", "remote-app", "--api", url], ws, stacks, **env).code == 0
    ok = invoke(["release", "--app", "remote-app", "--api", url, "--json"], ws, stacks, **env)
    assert ok.code == 0 and ok.json["version"] == 1, ok.output
    invoke(["platform.down"], platform, stacks, INVOKE_SELFHOST_PLATFORM_DIR=str(remote_dir))


def integrity(db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    for (app_id,) in db.execute("SELECT id FROM apps"):
        versions = [
            v
            for (v,) in db.execute(
                "SELECT version FROM releases WHERE app_id = ? ORDER BY version", (app_id,)
            )
        ]
        assert versions == list(range(1, len(versions) + 1)), "versions stay contiguous"
    orphans = db.execute(
        "SELECT COUNT(*) FROM releases r JOIN slugs s ON s.id = r.slug_id "
        "WHERE s.blob_sha256 IS NULL"
    ).fetchone()[0]
    assert orphans == 0, "no release points at a slug without a verified blob"


def test_kill_9_during_an_upload_leaves_the_state_consistent(platform, stacks, tmp_path):
    assert invoke(["platform.up"], platform, stacks).code == 0
    client = local_client(platform)
    client.create_app("upl")
    path, checksum, size = make_slug(tmp_path, os.urandom(4000).hex())
    slug = client.create_slug("upl", {"process_types": {"w": "x"}, "checksum": checksum})
    url = slug["blob"]["url"].removeprefix("http://")
    hostport, _, rest = url.partition("/")
    host, port = hostport.split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        f"PUT /{rest} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: {size}\r\n\r\n".encode()
        + path.read_bytes()[: size // 2]
    )
    tmp_dir = platform / "platform" / "blobs" / "tmp"
    deadline = time.monotonic() + 10
    while not list(tmp_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(tmp_dir.iterdir()), "the upload is in progress"
    os.kill(daemon_pid(platform), signal.SIGKILL)
    sock.close()
    assert invoke(["platform.up"], platform, stacks).code == 0
    assert not list(tmp_dir.iterdir()), "the partial upload was cleaned at start"
    client = local_client(platform)
    assert client.slug("upl", slug["id"])["size"] is None
    with pytest.raises(ApiRequestError, match="no verified blob"):
        client.release("upl", slug["id"])
    integrity(platform / "platform" / "platform.db")
    client.upload(slug["blob"], path)
    assert client.release("upl", slug["id"])["version"] == 1


def test_kill_9_during_releases_leaves_the_state_consistent(platform, stacks, tmp_path):
    assert invoke(["platform.up"], platform, stacks).code == 0
    client = local_client(platform)
    client.create_app("burst")
    path, checksum, size = make_slug(tmp_path)
    result = client.release_slug(
        "burst", path, checksum=checksum, size=size, process_types={"worker": "w"}
    )
    done = []

    def hammer() -> None:
        n = 0
        while True:
            try:
                client.release("burst", result.slug_id)
                client.update_config("burst", {"N": str(n)})
                n += 1
                done.append(n)
            except Exception:
                return

    thread = threading.Thread(target=hammer)
    thread.start()
    while len(done) < 5:
        time.sleep(0.01)
    os.kill(daemon_pid(platform), signal.SIGKILL)
    thread.join(timeout=30)
    integrity(platform / "platform" / "platform.db")
    assert invoke(["platform.up"], platform, stacks).code == 0
    client = local_client(platform)
    releases = client.releases("burst")
    assert len(releases) >= 11 and releases[-1]["current"]
    assert sum(r["current"] for r in releases) == 1
    assert client.release("burst", result.slug_id)["version"] == len(releases) + 1


def test_daemon_lifecycle(platform, stacks):
    assert "not running" in invoke(["platform.status"], platform, stacks).stdout
    up = invoke(["platform.up"], platform, stacks)
    assert up.code == 0 and "started platform daemon" in up.stdout
    again = invoke(["platform.up"], platform, stacks)
    assert "already running" in again.stdout
    pid = daemon_pid(platform)
    assert (platform / "platform" / "daemon.pid").read_text().strip() == str(pid)
    assert oct(os.stat(platform / "platform" / "token").st_mode & 0o777) == "0o600"
    down = invoke(["platform.down"], platform, stacks)
    assert down.code == 0 and f"stopped platform daemon pid {pid}" in down.stdout
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (platform / "platform" / "daemon.json").exists()
    assert not (platform / "platform" / "daemon.pid").exists()
    # a daemon killed with SIGKILL leaves a stale daemon.json: it is seen through
    assert invoke(["platform.up"], platform, stacks).code == 0
    os.kill(daemon_pid(platform), signal.SIGKILL)
    time.sleep(0.2)
    assert "not running" in invoke(["platform.status"], platform, stacks).stdout
    restarted = invoke(["platform.up"], platform, stacks)
    assert restarted.code == 0 and "started platform daemon" in restarted.stdout
