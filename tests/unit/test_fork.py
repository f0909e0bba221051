"""The pieces of cloud processes that need no dyno: PIDs in the store, the tree order of
``invoke ps --tree``, and the fork command's own errors (the integration tests,
tests/integration/test_cloud.py, fork real dynos)."""

from __future__ import annotations

import pytest

from selfhost.cli.platform import job_node, process_tree
from selfhost.platform import fork
from selfhost.platform.paths import PlatformPaths
from selfhost.platform.store.db import Store


def test_pids_are_per_app_never_reused_and_survive_a_restart(tmp_path):
    paths = PlatformPaths(tmp_path / "platform")
    store = Store(paths)
    one = store.create_app("one", "bookworm")["id"]
    two = store.create_app("two", "bookworm")["id"]
    assert [store.next_pid(one) for _ in range(3)] == [1, 2, 3]
    assert store.next_pid(two) == 1
    assert Store(paths).next_pid(one) == 4  # a restarted daemon goes on


def test_the_tree_puts_each_child_under_its_parent():
    def dyno(pid: int, parent: str | None = None) -> dict:
        return {"id": f"d{pid}", "pid": pid, "parent_dyno": parent}

    dynos = [dyno(5, "d2"), dyno(1), dyno(3, "d1"), dyno(2, "d1"), dyno(7, "gone"), dyno(4)]
    order = [(d["pid"], depth) for d, depth in process_tree(dynos)]
    # d7's parent is not listed (it ended): it is a root
    assert order == [(1, 0), (2, 1), (5, 2), (3, 1), (4, 0), (7, 0)]


def test_fork_outside_a_dyno_and_bad_usage_say_so(monkeypatch, capsys):
    monkeypatch.delenv("SELFHOST_API_URL", raising=False)
    assert fork.main(["run", "--", "true"]) == 125
    assert "is not set: fork works inside a dyno" in capsys.readouterr().err
    assert fork.main(["run", "--ttl", "soon", "--", "true"]) == 125
    assert "--ttl takes seconds" in capsys.readouterr().err
    assert fork.main(["run", "true"]) == 125
    assert "put it after --" in capsys.readouterr().err
    assert fork.main([]) == 2


def test_a_refusal_reaches_the_caller_with_its_message(monkeypatch):
    """The API's error message (here: no such platform) is what fork raises."""
    monkeypatch.setenv("SELFHOST_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SELFHOST_API_TOKEN", "dyno-x")
    monkeypatch.setenv("SELFHOST_APP", "a")
    with pytest.raises(fork.ForkError, match="did not answer"):
        fork.fork(["true"])


def test_a_bootstraps_stage_jobs_sit_under_it_in_the_tree():
    dynos = [{"id": "w", "pid": 1, "parent_dyno": None, "name": "worker.1"}]
    jobs = [
        {"id": 10, "kind": "bootstrap", "params": {}, "state": "running", "parent": None},
        {
            "id": 11,
            "kind": "stage",
            "params": {"stage": 1},
            "state": "running",
            "parent": 10,
            "worker": {"dyno": "w"},
            "progress": "make",
        },
    ]
    nodes = dynos + [job_node(j, {"w": "worker.1"}) for j in jobs]
    order = [(d["pid"], depth) for d, depth in process_tree(nodes)]
    assert order == [(1, 0), ("job 10", 0), ("job 11", 1)]
    stage = job_node(jobs[1], {"w": "worker.1"})
    assert (stage["ppid"], stage["name"], stage["command"]) == (
        "job 10",
        "worker.1",
        "stage 1: make",
    )
