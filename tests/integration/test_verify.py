"""``invoke verify`` on real parts: tcc's final stage rebuilt under every variation (bwrap,
libfaketime, a compiled et_EE locale, disorderfs, Docker), and a recipe that leaks one
fact of its environment per variation into an artifact: each variation must change its
own file, and only it."""

from __future__ import annotations

import json

import pytest

from selfhost.compilers.recipe import VARIATION_NAMES
from tests.integration.conftest import invoke, tcc_variant

pytestmark = pytest.mark.slow

EVERY = list(VARIATION_NAMES)  # build-path, time, locale, ... engine

# one file per fact, under lib/ (the recipe's artifacts are bin/**, lib/**, include/**)
LEAKS = (
    "make install DESTDIR=$DESTDIR && d=$DESTDIR$PREFIX/lib/leaks && mkdir -p $d"
    " && pwd > $d/build-path && date -u +%F > $d/time && (echo t; echo z) | sort > $d/locale"
    " && date +%z > $d/timezone && umask > $d/umask && echo $JOBS > $d/jobs"
    " && id -u > $d/user && uname -n > $d/hostname && ls -f $SRC > $d/file-ordering"
    " && cat /proc/1/comm > $d/engine && chmod 644 $d/* && : > $d/mode"
)


def rows(result: dict) -> dict[str, dict]:
    return {r["variation"]: r for r in result["variations"]}


def test_tcc_under_every_variation(tcc_run, stacks):
    ws, _ = tcc_run
    run = invoke(["verify", "--compiler", "tcc", "--json"], ws, stacks, timeout=1800)
    assert run.code == 0, run.output
    result = run.json
    assert result["control"]["status"] == "identical"
    by = rows(result)
    assert list(by) == EVERY
    assert not [n for n, r in by.items() if r["status"] == "skipped"], run.stderr
    # only the build path changes anything: the bounds checker's stabs, declared in
    # tcc.toml with the reason
    changed = {n: set(r["files"]) for n, r in by.items() if r["files"]}
    assert changed == {"build-path": {"lib/tcc/bcheck.o"}}, changed
    bcheck = by["build-path"]["files"]["lib/tcc/bcheck.o"]
    assert bcheck["cause"] == "build-path" and "-g" in bcheck["declared"]
    assert by["build-path"]["status"] == "declared"
    n = result["artifacts"]
    assert result["reproducible_percent"] == round(100 * (n - 1) / n, 2)
    assert result["undeclared"] == []
    page = (ws / "stages" / "tcc" / "verify.html").read_text()
    assert "artifact × variation" in page and "lib/tcc/bcheck.o" in page
    assert "<script" not in page and "http" not in page  # self-contained
    assert json.loads((ws / "stages" / "tcc" / "verify.json").read_text())["stage"] == 3
    # the differing rebuild is kept as a stage entry diff-stages reads
    kept = by["build-path"]["kept"]
    diff = invoke(
        ["diff-stages", "--left", kept, "--right", str(ws / "stages" / "tcc" / "stage3")],
        ws,
        stacks,
    )
    assert diff.code == 1 and "build-path" in diff.stdout, diff.output


def test_a_leaky_recipe_is_caught_variation_by_variation(workspace, stacks, tmp_path):
    recipe = tcc_variant(
        tmp_path,
        **{
            'install = "make install DESTDIR=$DESTDIR"': f'install = "{LEAKS}"',
            'test = "make test"': 'test = ""',
        },
    )
    run = invoke(["verify", "--compiler", str(recipe), "--json"], workspace, stacks, timeout=1800)
    assert run.code == 1, run.output
    assert "not reproducible under" in run.stderr and "Traceback" not in run.output
    result = run.json
    assert result["control"]["status"] == "identical", result["control"]
    by = rows(result)
    assert {n: r["message"] for n, r in by.items() if r["status"] != "different"} == {}
    changed = {n: {p.removeprefix("lib/leaks/") for p in r["files"]} for n, r in by.items()}
    assert changed == {
        "build-path": {"build-path", "lib/tcc/bcheck.o"},
        "time": {"time"},
        "locale": {"locale"},
        "timezone": {"timezone"},
        "umask": {"umask", "mode"},
        "jobs": {"jobs"},
        "user": {"user"},
        "hostname": {"hostname"},
        "file-ordering": {"file-ordering"},
        "engine": {"engine", "user"},
    }, changed
    files = {n: r["files"] for n, r in by.items()}
    assert files["build-path"]["lib/leaks/build-path"]["cause"] == "build-path"
    assert "declared" not in files["build-path"]["lib/leaks/build-path"]
    assert files["build-path"]["lib/tcc/bcheck.o"]["declared"]
    assert files["time"]["lib/leaks/time"]["cause"] == "timestamp"
    assert files["umask"]["lib/leaks/mode"]["cause"] == "metadata"  # the same bytes
    assert files["file-ordering"]["lib/leaks/file-ordering"]["cause"] == "ordering"
    assert set(result["undeclared"]) == set(EVERY)
    assert result["reproducible_percent"] < 100


def test_verify_refuses_an_unknown_variation(tcc_run, stacks):
    ws, _ = tcc_run
    run = invoke(["verify", "--compiler", "tcc", "--vary", "build-path,moon-phase"], ws, stacks)
    assert run.code == 2, run.output
    assert "no variation named moon-phase" in run.stderr and "Traceback" not in run.output
