"""`invoke diff-stages` on real tcc stages and real trees."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.integration.conftest import invoke, tcc_variant


def test_stage2_and_stage3_are_identical(tcc_run, stacks):
    run = invoke(["diff-stages"], tcc_run[0], stacks)
    assert run.code == 0, run.output
    first = run.stdout.splitlines()[0]
    assert first.startswith("fixpoint reached: stage2 and stage3 are byte-identical (15 files, ")
    json_run = invoke(["diff-stages", "--json"], tcc_run[0], stacks)
    result = json_run.json
    assert result["verdict"] == "identical" and result["from_manifests"] is True
    assert {f["status"] for f in result["files"]} == {"identical"}


def test_stage1_against_stage2_is_explained_as_code(tcc_run, stacks):
    run = invoke(["diff-stages", "--from", "1", "--to", "2", "--json"], tcc_run[0], stacks)
    assert run.code == 1, run.output
    result = run.json
    assert result["verdict"] == "different"
    files = {f["path"]: f for f in result["files"]}
    tcc = files["bin/tcc"]
    assert tcc["status"] == "different" and tcc["cause"] == "code" and tcc["kind"] == "elf"
    assert tcc["strings_diff_lines"] > 1000, "gcc and tcc lay out strings very differently"
    assert tcc["sections"][0]["name"] == ".text" and tcc["sections"][0]["differing_bytes"] > 0
    assert tcc["survives_strip"] is True
    lib = files["lib/libtcc.a"]
    assert lib["kind"] == "archive" and lib["cause"] == "code"
    assert {m["name"] for m in lib["members"]} >= {"libtcc.o", "tccgen.o"}
    assert files["lib/tcc/libtcc1.a"]["status"] == "identical"
    human = invoke(["diff-stages", "--from", "1", "--to", "2"], tcc_run[0], stacks)
    assert human.code == 1
    assert human.stdout.splitlines()[0].startswith(
        "fixpoint not reached: stage1 and stage2 differ in 2 of 15 files (code: 2)"
    )


def test_html_report_is_self_contained(tcc_run, stacks, tmp_path):
    page = tmp_path / "report.html"
    run = invoke(
        ["diff-stages", "--from", "1", "--to", "2", "--html", str(page)], tcc_run[0], stacks
    )
    assert run.code == 1
    text = page.read_text()
    assert "fixpoint not reached" in text and "bin/tcc" in text
    assert "class='bar'" in text and ".text" in text
    assert "http" not in text and "<script" not in text, "nothing is fetched"


def test_diffoscope_is_used_or_its_absence_is_explained(tcc_run, stacks):
    run = invoke(["diff-stages", "--from", "1", "--to", "2", "--diffoscope"], tcc_run[0], stacks)
    assert run.code == 1
    if shutil.which("diffoscope"):
        assert "diffoscope report for bin/tcc" in run.stdout
    else:
        assert "diffoscope is not installed" in run.stdout


def test_excluded_differences_are_listed_with_their_reason(tcc_run, stacks, tmp_path):
    recipe = tcc_variant(
        tmp_path,
        **{
            'artifacts = ["bin/**", "lib/**", "include/**"]': 'artifacts = ["bin/**", "lib/**", "include/**"]\n\n[[compare.exclude]]\n'
            'path = "bin/tcc"\nreason = "built by gcc at stage1"\n\n[[compare.exclude]]\n'
            'path = "lib/libtcc.a"\nreason = "built by gcc at stage1 too"'
        },
    )
    run = invoke(
        ["diff-stages", "--compiler", str(recipe), "--from", "1", "--to", "2"], tcc_run[0], stacks
    )
    assert run.code == 0, run.output
    assert "2 excluded file(s) differ" in run.stdout
    assert "excluded, and different: bin/tcc (built by gcc at stage1)" in run.stdout


def test_any_two_trees(tcc_run, stacks, tmp_path):
    stage3 = (tcc_run[0] / "stages/tcc/stage3").resolve()
    left = tmp_path / "left"
    shutil.copytree(stage3 / "tree/app/vendor/tcc", left, symlinks=True)
    right = tmp_path / "right"
    shutil.copytree(left, right, symlinks=True)
    header = right / "lib/tcc/include/stddef.h"
    header.write_text(header.read_text().replace("size_t", "SIZE_T", 1))
    run = invoke(
        ["diff-stages", "--left", str(left), "--right", str(right), "--json"], tcc_run[0], stacks
    )
    assert run.code == 1, run.output
    (changed,) = [f for f in run.json["files"] if f["status"] != "identical"]
    assert changed["path"] == "lib/tcc/include/stddef.h" and changed["kind"] == "text"
    assert changed["first_difference"] > 0 and any("SIZE_T" in x for x in changed["excerpt"])
    # A stage entry given as a directory uses its manifest (fast path).
    same = invoke(
        [
            "diff-stages",
            "--left",
            str(stage3),
            "--right",
            str((tcc_run[0] / "stages/tcc/stage2").resolve()),
            "--json",
        ],
        tcc_run[0],
        stacks,
    )
    assert same.code == 0 and same.json["from_manifests"] is True


def test_usage_errors_exit_2(tcc_run, stacks, tmp_path):
    for args, words in (
        (["--from", "9", "--to", "2"], "stage9 is not part of the last bootstrap"),
        (["--from", "1"], "--from and --to go together"),
        (["--left", str(tmp_path)], "--left and --right go together"),
        (["--left", str(tmp_path), "--right", str(tmp_path / "nope")], "is not a directory"),
        (["--from", "x", "--to", "2"], "expected a stage number"),
    ):
        run = invoke(["diff-stages", *args], tcc_run[0], stacks)
        assert run.code == 2 and words in run.stderr, (args, run.output)
    empty = invoke(["diff-stages"], tmp_path / "empty-ws", stacks)
    assert empty.code == 2 and "invoke bootstrap --compiler tcc" in empty.stderr
    assert not Path(tmp_path / "empty-ws" / "cache").exists()
