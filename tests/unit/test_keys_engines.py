"""Cache keys and engine command lines, without running anything."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from selfhost.compilers import find_recipe
from selfhost.errors import CacheError, UsageError
from selfhost.stages.builder import BuilderRef, StageSpec
from selfhost.stages.bwrap import BwrapEngine
from selfhost.stages.cache import StageCache
from selfhost.stages.docker_engine import DockerEngine
from selfhost.stages.engine import Limits, Mount, Sandbox, make_engine
from selfhost.stages.security import SandboxIds, Security
from selfhost.stages.stack import Stack, StackSpec


def fake_stack(tmp_path: Path, packages_digest: str = "p" * 64) -> Stack:
    spec = StackSpec.make("bookworm", "minbase", ["build-essential"], arch="amd64")
    return Stack(spec, tmp_path / "stack", {"gcc": "4:12.2.0-3"}, packages_digest, 1.0)


def spec(tmp_path, *, builder=None, stack=None, source="s" * 64, recipe="tcc", n=1):
    return StageSpec(
        recipe=find_recipe(recipe),
        stage=n,
        sources={"src": source},
        stack=(stack or fake_stack(tmp_path)).identity,
        builder=builder or BuilderRef(stage0=find_recipe(recipe).stage0_builder),
    )


def test_key_ignores_parallelism_and_the_stage_number_but_not_source_or_stack(tmp_path):
    base = spec(tmp_path)
    env = base.environment("1")
    assert env["JOBS"] == "1" and env["STAGE"] == "1"
    assert "JOBS" not in base.record("sandbox")["environment"]
    assert spec(tmp_path, n=5).key() == base.key(), "the stage number is recorded only"
    assert spec(tmp_path, source="t" * 64).key() != base.key()
    assert spec(tmp_path, stack=fake_stack(tmp_path, "q" * 64)).key() != base.key()
    assert "engine" not in json.dumps(base.record("sandbox")), "the runner is not an input"


def test_key_follows_the_builders_output_not_its_position(tmp_path):
    k2 = spec(tmp_path, builder=BuilderRef(tree_digest="a" * 64, stage=1, input_hash="1" * 64))
    assert k2.environment("1")["BUILDER"] == "/app/vendor/tcc/bin/tcc"
    assert k2.record("sandbox")["builder"]["tree_digest"] == "a" * 64
    # stage3 built by an identical stage2: same key, so the fixpoint reuses the entry
    k3 = spec(tmp_path, builder=BuilderRef(tree_digest="a" * 64, stage=2, input_hash="2" * 64))
    assert k3.key() == k2.key()
    assert spec(tmp_path, builder=BuilderRef(tree_digest="b" * 64)).key() != k2.key()
    stage1 = spec(tmp_path)
    assert stage1.environment("1")["BUILDER"] == "gcc"
    assert stage1.record("sandbox")["builder"] == {"kind": "stage0", "builder": "gcc"}


def test_clean_environment_is_exactly_the_documented_one(tmp_path):
    env = spec(tmp_path).environment("2")
    assert set(env) == {
        "PATH",
        "HOME",
        "LC_ALL",
        "TZ",
        "SOURCE_DATE_EPOCH",
        "PREFIX",
        "DESTDIR",
        "SRC",
        "BUILDER",
        "JOBS",
        "STAGE",
    }
    assert env["LC_ALL"] == "C.UTF-8" and env["TZ"] == "UTC"
    assert env["SOURCE_DATE_EPOCH"] == "1597363200"
    assert (env["DESTDIR"], env["SRC"], env["HOME"]) == ("/build/out", "/build/src", "/build/home")


def test_go_recipe_env_expands_builder_and_prefix(tmp_path):
    env = spec(tmp_path, recipe="go").environment("1")
    assert env["GOROOT_BOOTSTRAP"] == "/usr/lib/go-1.19" and env["GOROOT_FINAL"] == "/app/vendor/go"


def test_partial_entry_is_not_complete(tmp_path):
    cache = StageCache(tmp_path / "cache", tmp_path / "tmp")
    work = cache.begin("k" * 64)
    (work / "tree").mkdir()
    assert cache.lookup("k" * 64) is None, "a work dir is never a cache entry"
    (cache.root / ("k" * 64)).mkdir(parents=True)
    assert cache.lookup("k" * 64) is None, "an entry without a manifest is not complete"


def sandbox(tmp_path, **kw) -> Sandbox:
    return Sandbox(
        stack=fake_stack(tmp_path),
        argv=("/bin/sh", "-ec", "make"),
        env=(("PATH", "/usr/bin"), ("TZ", "UTC")),
        mounts=(Mount(tmp_path / "b", "/build", True), Mount(tmp_path / "p", "/opt/x")),
        workdir="/build/src",
        **kw,
    )


SECURE = Security(ids=SandboxIds(1_700_000_000, 65536), seccomp=Path("/x/filter.bpf"))
WEAK = Security(ids=SandboxIds(1_700_000_000, 65536), seccomp=None, hardened=False)


def test_bwrap_command_line(tmp_path):
    engine = BwrapEngine(WEAK)
    engine._bwrap = "/usr/bin/bwrap"
    argv = engine.command_line(sandbox(tmp_path))
    joined = " ".join(argv)
    assert f"--ro-bind {tmp_path}/stack/rootfs /" in joined
    assert f"--bind {tmp_path}/b /build" in joined
    assert f"--ro-bind {tmp_path}/p /opt/x" in joined
    assert "--unshare-all" in argv and "--share-net" not in argv
    assert "--die-with-parent" in argv and "--clearenv" in argv
    inner = argv[len(argv) - len(sandbox(tmp_path).argv) :]
    assert argv[len(argv) - len(inner) - 1] == "--" and inner == list(sandbox(tmp_path).argv)
    # the environment is set by bwrap itself (the same variables as Docker's env -i)
    assert "--setenv PATH /usr/bin --setenv TZ UTC" in joined
    assert argv[:3] == ["bash", "-c", 'umask 022 && exec "$@"'], "the umask it inherits"
    net = engine.command_line(sandbox(tmp_path, network=True))
    assert "--share-net" in net, "the weakened sandbox shares the host network"


def test_hardened_bwrap_drops_to_the_host_id(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    engine = BwrapEngine(SECURE)
    engine._bwrap = "/usr/bin/bwrap"
    argv = engine.command_line(sandbox(tmp_path, host_id=1_700_000_007, network=True))
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert "exec 9</x/filter.bpf" in argv[7], "the filter is opened for bwrap"
    assert f"mount --rbind {tmp_path}/b /run/selfhost-sandboxes/repro/1" in argv[7]
    assert "chown 1700000007:1700000007 /run/selfhost-sandboxes/repro" in argv[7]
    setpriv = argv.index("/usr/bin/setpriv")
    assert argv[setpriv + 1 : setpriv + 3] == ["--reuid=1700000007", "--regid=1700000007"]
    assert "--no-new-privs" in argv and "--bounding-set=-all" in argv
    for option in ("--unshare-user", "--disable-userns", "--seccomp"):
        assert option in argv, option
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--seccomp") + 1] == "9"
    assert "--share-net" not in argv, "no network namespace given: a private, empty one"
    with_ns = engine.launch_argv(sandbox(tmp_path, host_id=1_700_000_007, netns=5), None)
    assert with_ns[:5] == [
        "/usr/bin/nsenter",
        "--net=/proc/self/fd/5",
        "--setuid=1700000007",
        "--setgid=1700000007",
        "--",
    ], "nsenter enters the dyno's network and drops to the host id in one program"
    assert "/usr/bin/setpriv" not in with_ns
    assert "--share-net" in with_ns


def test_docker_arguments_match_the_sandbox(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    engine = DockerEngine(SECURE)
    sb = sandbox(tmp_path, limits=Limits(memory_bytes=256 << 20, cpus=0.5))
    kwargs = engine._create_args(sb)
    assert kwargs["read_only"] is True and kwargs["network_mode"] == "none"
    assert kwargs["command"] == sb.inner_argv(), "both engines run the same inner command"
    assert kwargs["image"] == f"selfhost/stack:{sb.stack.spec.digest}"
    mounts = {m["Target"]: m for m in kwargs["mounts"]}
    assert mounts["/build"]["ReadOnly"] is False and mounts["/opt/x"]["ReadOnly"] is True
    assert kwargs["mem_limit"] == 256 << 20 and kwargs["nano_cpus"] == 500_000_000
    assert kwargs["cap_drop"] == ["ALL"] and kwargs["security_opt"] == ["no-new-privileges"]
    assert kwargs["user"] == "1700000000:1700000000", "never root: no user namespace in Docker"
    cli = engine.command_line(sb)
    assert "--read-only" in cli and cli[cli.index("--network") + 1] == "none"
    assert cli[cli.index("--user") + 1] == "1700000000:1700000000"


def test_unknown_engine_is_a_usage_error():
    with pytest.raises(UsageError, match="bwrap or docker"):
        make_engine("podman", WEAK)


def test_stack_digest_is_order_insensitive():
    a = StackSpec.make("bookworm", "minbase", ["b", "a", "a"], arch="amd64")
    b = StackSpec.make("bookworm", "minbase", ["a", "b"], arch="amd64")
    assert a == b and a.digest == b.digest
    assert replace(a, suite="trixie").digest != a.digest


def committed_stage(tmp_path: Path) -> tuple[StageCache, str, Path]:
    from selfhost.hashing import scan_tree, tree_digest
    from selfhost.stages.manifest import Manifest

    cache = StageCache(tmp_path / "cache", tmp_path / "tmp")
    key = "v" * 64
    work = cache.begin(key)
    (work / "tree/bin").mkdir(parents=True)
    (work / "tree/bin/cc").write_text("the compiler\n")
    files = scan_tree(work / "tree")
    manifest = Manifest(
        compiler="toy",
        version="1",
        prefix="/app/vendor/toy",
        stage=1,
        input_hash=key,
        inputs={},
        tree_digest=tree_digest(files),
        files=files,
        artifacts={},
        tests=None,
        timings={},
        logs={},
        created="2026-12-01T00:00:00Z",
        selfhost_version="0",
    )
    entry = cache.commit(key, work, manifest)
    return cache, key, entry


def test_a_verified_tree_is_not_hashed_again_until_it_changes(tmp_path, monkeypatch):
    import selfhost.stages.cache as cache_module

    cache, key, entry = committed_stage(tmp_path)
    # make the stamp older than the racy window, as it is a moment after any build
    stamp = json.loads((entry / "verified.json").read_text())
    stamp["written_ns"] += 10**9
    (entry / "verified.json").write_text(json.dumps(stamp))
    hashed = []
    real_scan = cache_module.scan_tree
    monkeypatch.setattr(cache_module, "scan_tree", lambda p: hashed.append(p) or real_scan(p))
    assert cache.lookup(key) is not None and hashed == [], "the stamp held: nothing hashed"
    # same size, same mtime, other bytes: only the ctime tells, and it does
    cc = entry / "tree/bin/cc"
    st = cc.stat()
    cc.write_text("a trojan!!!!\n")
    os.utime(cc, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(CacheError, match="modified after it was recorded"):
        cache.lookup(key)
    assert hashed, "a changed ctime sends the tree to be hashed"


def test_a_racy_stamp_is_not_trusted(tmp_path, monkeypatch):
    import selfhost.stages.cache as cache_module

    cache, key, entry = committed_stage(tmp_path)
    stamp = json.loads((entry / "verified.json").read_text())
    stamp["written_ns"] = (entry / "tree/bin/cc").stat().st_ctime_ns  # same clock tick
    (entry / "verified.json").write_text(json.dumps(stamp))
    hashed = []
    real_scan = cache_module.scan_tree
    monkeypatch.setattr(cache_module, "scan_tree", lambda p: hashed.append(p) or real_scan(p))
    assert cache.lookup(key) is not None and hashed, "too close to the stamp: hashed again"
