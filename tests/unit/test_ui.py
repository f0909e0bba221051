"""The UI: a live tree on terminals, plain lines elsewhere, echo in verbose mode."""

from __future__ import annotations

import io

import pytest

from selfhost.ui import UI


def run_steps(ui: UI) -> None:
    with ui.live():
        with ui.step("stage1"):
            with ui.step("build") as step:
                step.note = "3 files"
            ui.echo(["bwrap", "--ro-bind", "/a b", "/"])
        with pytest.raises(RuntimeError), ui.step("stage2"), ui.step("test"):
            raise RuntimeError("boom")


def test_plain_mode_prints_one_line_per_event():
    out = io.StringIO()
    ui = UI(stream=out, verbose=True)
    run_steps(ui)
    text = out.getvalue()
    assert "==> stage1 › build" in text
    assert "stage1 › build: ok" in text and "3 files" in text
    assert "stage2 › test: failed" in text
    assert "+ bwrap --ro-bind '/a b' /" in text, "echoed commands are copy-pasteable"
    assert "\x1b[" not in text


def test_terminal_mode_draws_a_live_tree():
    out = io.StringIO()
    ui = UI(stream=out, force_terminal=True)
    assert not ui.plain
    run_steps(ui)
    text = out.getvalue()
    assert "✓" in text and "✗" in text and "stage1" in text and "build" in text
    assert "+ bwrap" not in text, "no echo unless verbose"
    assert ui._roots[0].status == "ok" and ui._roots[1].status == "failed"


def test_json_mode_keeps_stdout_clean(capsys):
    ui = UI(json_mode=True)
    with ui.step("x"):
        ui.info("progress")
    ui.emit_json({"a": 1})
    captured = capsys.readouterr()
    assert captured.out == '{\n  "a": 1\n}\n'
    assert "progress" in captured.err


def test_plain_tables_are_aligned_and_never_truncated():
    out = io.StringIO()
    ui = UI(stream=out)
    long = "sh -c 'echo a long command line that is wider than any terminal; sleep 1'"
    ui.table("dynos of app", ["dyno", "command"], [("crasher.1", long), ("web.10", "x")])
    lines = out.getvalue().splitlines()
    assert lines[0] == "=== dynos of app"
    assert lines[1].split() == ["dyno", "command"]
    assert lines[2] == f"crasher.1  {long}", "whole cells, nothing wrapped or cut"
    assert lines[3] == "web.10     x"
