"""`invoke challenge` on real tcc stages: two workspaces that built the same input
hashes, identical; then one whose stage2 holds another build of tcc (stage1's bytes,
as a builder with another compiler would produce), named and explained."""

from __future__ import annotations

import json
import shutil

import pytest

from selfhost.hashing import scan_tree, tree_digest
from tests.integration.conftest import invoke

pytestmark = pytest.mark.slow


def test_challenge_two_workspaces(tcc_run, stacks, tmp_path):
    ws, _ = tcc_run
    other = tmp_path / "other"
    shutil.copytree(ws / "cache" / "stages", other / "cache" / "stages", symlinks=True)
    same = invoke(["challenge", "--left", str(ws), "--right", str(other), "--json"], ws, stacks)
    assert same.code == 0, same.output
    assert same.json["compared"] >= 3 and same.json["different"] == 0

    # the other builder's stage2 is not what this one built from the same inputs
    by_stage = {}
    for entry in (other / "cache" / "stages").iterdir():
        manifest = json.loads((entry / "manifest.json").read_text())
        if manifest["compiler"] == "tcc" and manifest["prefix"] == "/app/vendor/tcc":
            by_stage[manifest["stage"]] = entry
    stage1, stage2 = by_stage[1], by_stage[2]
    tcc = "tree/app/vendor/tcc/bin/tcc"
    (stage2 / tcc).chmod(0o755)
    shutil.copyfile(stage1 / tcc, stage2 / tcc)
    manifest = json.loads((stage2 / "manifest.json").read_text())
    manifest["tree_digest"] = tree_digest(scan_tree(stage2 / "tree"))
    (stage2 / "manifest.json").write_text(json.dumps(manifest))

    run = invoke(["challenge", "--left", str(ws), "--right", str(other), "--json"], ws, stacks)
    assert run.code == 1, run.output
    [different] = [s for s in run.json["stages"] if s["verdict"] == "different"]
    assert different["input_hash"] == stage2.name and different["stage"] == 2
    [file] = different["files"]
    assert file["path"] == "bin/tcc" and file["cause"] == "code", file

    human = invoke(["challenge", "--left", str(ws), "--right", str(other)], ws, stacks)
    assert human.code == 1 and "DIFFERENT" in human.stdout and "bin/tcc: code" in human.stdout
    assert "1 stage(s) differ" in human.stderr


def test_challenge_needs_workspaces_with_stages(tcc_run, stacks, tmp_path):
    ws, _ = tcc_run
    run = invoke(["challenge", "--left", str(ws), "--right", str(tmp_path)], ws, stacks)
    assert run.code == 2 and "has no stage cache" in run.stderr, run.output
    assert "Traceback" not in run.output


def test_challenge_a_platforms_stage_store(tcc_run, stacks, tmp_path):
    """A release of the local bootstrap stores its stages in the app's stage store; the
    workspace's stages match them; another builder's stage2 does not, and is explained
    from the tree downloaded from the platform."""
    ws, _ = tcc_run
    env = {"INVOKE_SELFHOST_PLATFORM_DIR": str(tmp_path / "platform")}
    try:
        assert invoke(["release", "--app", "store"], ws, stacks, **env).code == 0
        url = json.loads((tmp_path / "platform" / "daemon.json").read_text())["url"]
        same = invoke(
            ["challenge", "--left", str(ws), "--right", url, "--app", "store", "--json"],
            ws,
            stacks,
            **env,
        )
        assert same.code == 0, same.output
        assert same.json["compared"] >= 3 and same.json["different"] == 0, same.json

        other = tmp_path / "other"
        shutil.copytree(ws / "cache" / "stages", other / "cache" / "stages", symlinks=True)
        stage2 = next(
            e
            for e in (other / "cache" / "stages").iterdir()
            if json.loads((e / "manifest.json").read_text())["stage"] == 2
            and json.loads((e / "manifest.json").read_text())["compiler"] == "tcc"
            and e.name in {s["input_hash"] for s in same.json["stages"]}
        )
        tcc = stage2 / "tree/app/vendor/tcc/bin/tcc"
        tcc.chmod(0o755)
        tcc.write_bytes(tcc.read_bytes()[:-16] + b"\0" * 16)
        manifest = json.loads((stage2 / "manifest.json").read_text())
        manifest["tree_digest"] = tree_digest(scan_tree(stage2 / "tree"))
        (stage2 / "manifest.json").write_text(json.dumps(manifest))
        run = invoke(
            ["challenge", "--left", str(other), "--right", url, "--app", "store", "--json"],
            ws,
            stacks,
            **env,
        )
        assert run.code == 1, run.output
        [different] = [s for s in run.json["stages"] if s["verdict"] == "different"]
        assert different["input_hash"] == stage2.name
        assert [f["path"] for f in different["files"]] == ["bin/tcc"], different

        bare = invoke(["challenge", "--left", str(ws), "--right", url], ws, stacks, **env)
        assert bare.code == 2 and "add --app APP" in bare.stderr, bare.output
        flipped = invoke(
            ["challenge", "--left", url, "--right", str(ws), "--app", "store"], ws, stacks, **env
        )
        assert flipped.code == 2 and "--left must be a workspace" in flipped.stderr
        assert "Traceback" not in bare.output + flipped.output
    finally:
        invoke(["platform.down"], ws, stacks, **env)
