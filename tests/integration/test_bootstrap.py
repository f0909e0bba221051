"""The staged bootstrap on real parts: bubblewrap, a debootstrapped stack, dockerd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from selfhost.config import Settings
from tests.integration.conftest import invoke, start_invoke, tcc_variant


def test_tcc_three_stages_reach_the_fixpoint(tcc_run):
    workspace, run = tcc_run
    result = run.json
    assert result["compiler"] == "tcc" and result["engine"] == "bwrap"
    stages = result["stages"]
    assert [s["stage"] for s in stages] == [1, 2, 3]
    assert all(not s["cached"] and s["tests_passed"] for s in stages)
    s1, s2, s3 = (s["artifacts"] for s in stages)
    assert "bin/tcc" in s3 and "lib/tcc/libtcc1.a" in s3
    assert s2 == s3, "stage2 and stage3 must be byte-identical"
    assert s1["bin/tcc"] != s2["bin/tcc"], "stage1 (built by gcc) differs from stage2"
    assert result["fixpoint"] is True and result["differences"] == []
    # every stage has a manifest, a log and a link from the stages directory
    for s in stages:
        link = workspace / "stages" / "tcc" / f"stage{s['stage']}"
        manifest = json.loads((link / "manifest.json").read_text())
        assert manifest["input_hash"] == s["input_hash"]
        assert manifest["inputs"]["stack"]["suite"] == "bookworm"
        assert manifest["inputs"]["engine"] == "bwrap"
        assert manifest["files"]["app/vendor/tcc/bin/tcc"]["mode"] == "0755"
        assert manifest["tests"]["passed"] is True and manifest["tests"]["command"] == "make test"
        assert (link / manifest["logs"]["stage"]).stat().st_size > 0
        assert set(manifest["timings"]) >= {"build", "install", "test", "total"}
    m2 = json.loads((workspace / "stages/tcc/stage2/manifest.json").read_text())
    m1 = json.loads((workspace / "stages/tcc/stage1/manifest.json").read_text())
    assert m2["inputs"]["builder"]["tree_digest"] == m1["tree_digest"]
    assert m1["inputs"]["builder"] == {"kind": "stage0", "builder": "gcc"}
    assert not list((workspace / "tmp").iterdir()), "no work directory is left behind"


def test_second_run_is_a_cache_hit(tcc_run, stacks):
    workspace, first = tcc_run
    before = {p: p.stat().st_mtime_ns for p in (workspace / "cache/stages").glob("*/manifest.json")}
    run = invoke(["bootstrap", "--json"], workspace, stacks)
    assert run.code == 0, run.output
    assert all(s["cached"] for s in run.json["stages"])
    assert [s["input_hash"] for s in run.json["stages"]] == [
        s["input_hash"] for s in first.json["stages"]
    ]
    after = {p: p.stat().st_mtime_ns for p in (workspace / "cache/stages").glob("*/manifest.json")}
    assert before == after, "a cached run rewrites nothing"
    assert "build" not in run.stderr.replace("bootstrap", ""), "no build step ran"


def test_human_output_and_plain_mode(tcc_run, stacks):
    run = invoke(["bootstrap"], tcc_run[0], stacks)
    assert run.code == 0
    assert "fixpoint reached: stage2 and stage3 are byte-identical" in run.stdout
    assert "==> stage1" in run.stdout, "plain step lines when stdout is not a terminal"
    assert "\x1b[" not in run.stdout, "no terminal escapes in plain mode"


@pytest.mark.docker
def test_docker_engine_gives_the_same_bytes(tcc_run, stacks):
    workspace, bwrap_run = tcc_run
    # the engine is not part of a stage's identity (both give the same bytes), so the
    # Docker run is forced to build every stage again and must land on the same keys
    run = invoke(["bootstrap", "--engine", "docker", "--force", "--json"], workspace, stacks)
    assert run.code == 0, run.output
    docker_stages = run.json["stages"]
    assert run.json["engine"] == "docker" and run.json["fixpoint"] is True
    assert not any(s["cached"] for s in docker_stages), "--force built every stage"
    for b, d in zip(bwrap_run.json["stages"], docker_stages, strict=True):
        assert b["input_hash"] == d["input_hash"]
        assert b["artifacts"] == d["artifacts"], f"stage{b['stage']} differs between engines"
        assert b["tree_digest"] == d["tree_digest"]


def test_corrupted_source_tarball_is_refused(tmp_path, stacks, http_dir):
    www, base = http_dir
    (www / "tcc.tar.bz2").write_bytes(b"BZh91AY&SY this is not the tcc snapshot")
    recipe = tcc_variant(
        tmp_path,
        **{
            '[[sources]]\nkind = "git"\nurl = "https://repo.or.cz/tinycc.git"\ncommit = "62c30a4a"\n': "",
            'kind = "debian"\npackage = "tcc"\nversion = "0.9.27+git20200814.62c30a4a-1"': f'kind = "tarball"\nurl = "{base}/tcc.tar.bz2"',
        },
    )
    workspace = tmp_path / "ws"
    run = invoke(["bootstrap", "--compiler", str(recipe)], workspace, stacks)
    assert run.code == 4, run.output
    assert "sha256 mismatch" in run.stderr
    pinned = "d63c113bcdd657f51c8ee197a0b0a24203603313e19a52b5f678d40ab7f5df35"
    assert f"expected: {pinned}" in run.stderr
    assert "Traceback" not in run.output
    assert not (workspace / "cache").exists(), "no stage was built from it"


def wait_for_log(
    workspace: Path, needle: str, proc: subprocess.Popen, timeout: float = 300
) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log in (workspace / "tmp").glob("*/logs/stage.log"):
            if needle in log.read_text(errors="replace"):
                return log
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} never appeared in a stage log")


def test_kill_9_mid_stage_leaves_no_completed_stage(workspace, stacks):
    proc = start_invoke(["bootstrap", "--json"], workspace, stacks)
    log = wait_for_log(workspace, "==> stage2 test", proc)
    killed_key = log.parent.parent.name
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (workspace / "cache/stages" / killed_key).exists()
    assert not (workspace / "stages" / "tcc").exists(), "the run was never published"
    time.sleep(0.5)  # --die-with-parent: the sandbox is gone too
    ps = subprocess.run(["pgrep", "-f", str(workspace / "tmp")], capture_output=True)
    assert ps.returncode == 1, "no sandbox of the killed run survives"

    run = invoke(["bootstrap", "--json"], workspace, stacks)
    assert run.code == 0, run.output
    s1, s2, s3 = run.json["stages"]
    assert s1["cached"] and not s2["cached"] and not s3["cached"]
    assert s2["input_hash"] == killed_key, "the interrupted stage was rebuilt"
    assert run.json["fixpoint"] is True


def test_ctrl_c_stops_with_130_and_records_nothing(workspace, stacks):
    proc = start_invoke(["bootstrap"], workspace, stacks)
    log = wait_for_log(workspace, "==> stage1 test", proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not (workspace / "cache/stages" / log.parent.parent.name).exists()


def test_failing_build_shows_the_tail_and_a_working_reproduction(tmp_path, workspace, stacks):
    recipe = tcc_variant(
        tmp_path,
        **{
            'build = "./configure --prefix=$PREFIX --cc=$BUILDER && make -j$JOBS"': 'build = "echo about to fail; echo builder=$BUILDER; exit 3"'
        },
    )
    run = invoke(["bootstrap", "--compiler", str(recipe), "--verbose"], workspace, stacks)
    assert run.code == 7, run.output
    echoed = [line for line in run.stdout.splitlines() if line.startswith("+ ")]
    assert any("/usr/bin/bwrap --ro-bind" in line for line in echoed), "--verbose echoes"
    assert "stage1 build step failed with exit code 3" in run.stderr
    assert "| about to fail" in run.stderr and "| builder=gcc" in run.stderr
    assert "Traceback" not in run.output
    lines = run.stderr.splitlines()
    repro = lines[lines.index("reproduce this step in its sandbox with:") + 1].strip()
    assert "/usr/bin/bwrap" in repro and "--reuid=" in repro, "the same unprivileged sandbox"
    again = subprocess.run(repro, shell=True, capture_output=True, text=True)
    assert again.returncode == 3 and "builder=gcc" in again.stdout
    assert not list((workspace / "cache").glob("stages/*")), "the failed stage is not complete"


def test_failing_tests_exit_8_and_are_not_cached(tmp_path, workspace, stacks):
    recipe = tcc_variant(tmp_path, **{'test = "make test"': 'test = "echo 1 of 2 failed; false"'})
    run = invoke(["bootstrap", "--compiler", str(recipe)], workspace, stacks)
    assert run.code == 8, run.output
    assert "stage1 test step failed" in run.stderr and "1 of 2 failed" in run.stderr
    assert not list((workspace / "cache").glob("stages/*/manifest.json"))


def test_sandbox_is_clean_offline_and_the_same_under_both_engines(tmp_path, workspace, stacks):
    probe = (
        "mkdir -p $DESTDIR$PREFIX; o=$DESTDIR$PREFIX; "
        "env | sort > $o/env; umask > $o/umask; hostname > $o/hostname; id -u > $o/uid; "
        "(touch /usr/probe 2>/dev/null && echo writable || echo read-only) > $o/stack; "
        "cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ' | sort > $o/net; "
        "pwd > $o/pwd"
    )
    recipe = tcc_variant(
        tmp_path,
        **{
            'build = "./configure --prefix=$PREFIX --cc=$BUILDER && make -j$JOBS"': f'build = "{probe}"',
            'install = "make install DESTDIR=$DESTDIR"': 'install = "test -d $DESTDIR"',
            'test = "make test"': 'test = ""',
            'artifacts = ["bin/**", "lib/**", "include/**"]': 'artifacts = ["**"]',
        },
    )
    out = {}
    for engine in ("bwrap", "docker"):
        run = invoke(
            # --force: the engine is not in the key, the Docker run would be cached
            [
                *("bootstrap", "--compiler", str(recipe), "--stages", "1"),
                *("--engine", engine, "--force", "--json"),
            ],
            workspace,
            stacks,
            INVOKE_SELFHOST_JOBS="2",
        )
        assert run.code == 0, run.output
        tree = Path(run.json["stages"][0]["manifest"]).parent / "tree/app/vendor/tcc"
        out[engine] = {p.name: p.read_text() for p in tree.iterdir()}
    bw = out["bwrap"]
    env = dict(line.split("=", 1) for line in bw["env"].splitlines())
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
        "PWD",
        "STAGE",
    }, "nothing leaks in from the host"
    assert env["TZ"] == "UTC" and env["LC_ALL"] == "C.UTF-8" and env["JOBS"] == "2"
    assert bw["umask"].strip() == "0022"
    assert bw["stack"].strip() == "read-only"
    assert bw["net"].strip() == "lo", "no network but loopback"
    assert bw["pwd"].strip() == "/build/src"
    assert bw["hostname"].strip() == "selfhost"
    # bwrap maps the sandbox's uid 0 to the unprivileged build id; Docker maps no user
    # namespace, so its container runs as that id itself (never as root)
    assert bw.pop("uid").strip() == "0"
    assert out["docker"].pop("uid").strip() == str(Settings().sandbox_ids.build)
    assert out["docker"] == bw, "both engines give the same sandbox"


def test_another_run_holding_the_workspace_gets_exit_9(workspace, stacks):
    holder = subprocess.Popen(
        [
            "python3",
            "-c",
            "import fcntl,os,sys,time;fd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT);"
            'fcntl.flock(fd,fcntl.LOCK_EX);os.write(fd,b\'{"pid": 1, "command": "x", '
            "\"since\": 0}');print('ok',flush=True);time.sleep(60)",
            str(workspace / "lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        run = invoke(["bootstrap"], workspace, stacks)
        assert run.code == 9, run.output
        assert f"workspace {workspace} is in use by pid 1" in run.stderr
    finally:
        holder.kill()


def test_bad_input_gets_clear_errors_and_exit_codes(tmp_path, workspace, stacks):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nversion = "1"\n')
    run = invoke(["bootstrap", "--compiler", str(bad)], workspace, stacks)
    assert run.code == 3 and "field 'sources'" in run.stderr and "Traceback" not in run.output
    run = invoke(["bootstrap", "--stages", "zero"], workspace, stacks)
    assert run.code == 2 and "--stages" in run.stderr
    run = invoke(
        ["bootstrap", "--engine", "docker"],
        workspace,
        stacks,
        INVOKE_SELFHOST_DOCKER_URL=f"unix://{tmp_path}/no.sock",
    )
    assert run.code == 6 and "dockerd" in run.stderr and "Traceback" not in run.output


@pytest.mark.slow
def test_go_reaches_its_fixpoint_at_stage2(stacks, tmp_path):
    run = invoke(["bootstrap", "--compiler", "go", "--json"], tmp_path / "ws", stacks, timeout=3600)
    assert run.code == 0, run.output[-3000:]
    result = run.json
    assert [s["stage"] for s in result["stages"]] == [1, 2]
    s1, s2 = (s["artifacts"] for s in result["stages"])
    assert "bin/go" in s1 and "pkg/tool/linux_amd64/compile" in s1
    assert s1 == s2 and result["fixpoint"] is True
    assert all(s["tests_passed"] for s in result["stages"])


@pytest.mark.docker
def test_kill_9_under_docker_leaves_no_container_behind(workspace, stacks):
    import docker

    client = docker.from_env()
    label = {"label": f"selfhost.sandbox={workspace.resolve()}"}
    proc = start_invoke(["bootstrap", "--engine", "docker"], workspace, stacks)
    log = wait_for_log(workspace, "==> stage1 test", proc)
    deadline = time.monotonic() + 60  # the step is logged just before its container starts
    while not client.containers.list(filters=label) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert client.containers.list(all=True, filters=label), "the container outlived its run"
    run = invoke(["bootstrap", "--engine", "docker", "--json"], workspace, stacks)
    assert run.code == 0, run.output
    assert not run.json["stages"][0]["cached"]
    assert run.json["stages"][0]["input_hash"] == log.parent.parent.name
    assert not client.containers.list(all=True, filters=label), "orphans are removed"
