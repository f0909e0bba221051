"""Diverse double-compiling on real parts: tcc bootstrapped from unrelated stage0s
(build-essential's gcc, Debian's clang and Debian's own tcc package), each stage1 on a
stack with its stage0, every stage2 on the same stack; the stage2s must be identical."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import invoke

pytestmark = pytest.mark.slow


def test_tcc_from_gcc_clang_and_debians_tcc_reaches_one_stage2(tcc_run, stacks):
    ws, _ = tcc_run
    run = invoke(["ddc", "--compiler", "tcc", "--json"], ws, stacks, timeout=3600)
    assert run.code == 0, run.output
    result = run.json
    assert result["identical"] is True
    assert set(result["stage2_tree_digests"]) == {"default", "clang", "tcc"}
    assert len(set(result["stage2_tree_digests"].values())) == 1
    # the stage1s differ: gcc and clang compile tcc differently
    firsts = result["stage1_tree_digests"]
    assert firsts["default"] != firsts["clang"]
    for r in result["runs"]:
        tools = r["tools"]
        assert len(tools["compiler"]["sha256"]) == 64, tools
        assert tools["libc"]["sha256"] and tools["linker"]["sha256"] and tools["headers"]
        assert r["stack"]["digest"]
    compilers = {r["stage0"]["name"]: r["tools"]["compiler"]["sha256"] for r in result["runs"]}
    assert len(set(compilers.values())) == 3  # three different compilers
    # the default stage0's stage1 and stage2 are the bootstrap's own (cached)
    default = next(r for r in result["runs"] if r["stage0"]["name"] == "default")
    assert default["stage1"]["cached"] and default["stage2"]["cached"]
    recorded = json.loads((ws / "stages" / "tcc" / "ddc.json").read_text())
    assert recorded["identical"] is True


def test_ddc_refuses_an_undeclared_or_single_stage0(tcc_run, stacks):
    ws, _ = tcc_run
    unknown = invoke(
        ["ddc", "--compiler", "tcc", "--stage0", "icc", "--stage0", "default"], ws, stacks
    )
    assert unknown.code == 2 and "declares no stage0 named icc" in unknown.stderr, unknown.output
    assert "it declares: default, clang, tcc" in unknown.stderr
    single = invoke(["ddc", "--compiler", "tcc", "--stage0", "default"], ws, stacks)
    assert single.code == 2 and "at least two" in single.stderr, single.output
    assert "Traceback" not in unknown.output + single.output
