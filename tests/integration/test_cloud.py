"""Cloud processes on real parts: examples/montecarlo compiled by a compile worker (an
app-compile job, the slug's tcc), its parent dyno forking child dynos with bin/fork and
reading their results through pipes; the process tree, the process group, the quota."""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from selfhost.platform.client import PlatformClient
from tests.integration.conftest import REPO, Run, invoke
from tests.integration.test_workers import client_of, wait_for

pytestmark = pytest.mark.slow
GRACE = 3


@pytest.fixture(scope="module")
def cloud(
    tcc_slug, stacks, tmp_path_factory
) -> Iterator[tuple[Callable[..., Run], PlatformClient]]:
    """The tcc slug as 'mc-builders' with one compile worker; montecarlo compiled by it
    and released as 'montecarlo'."""
    ws, _ = tcc_slug
    env = {
        "INVOKE_SELFHOST_PLATFORM_DIR": str(tmp_path_factory.mktemp("cloud") / "platform"),
        "INVOKE_SELFHOST_DYNO_GRACE_SECONDS": str(GRACE),
        "INVOKE_SELFHOST_ROUTER_PORT": "0",
        "INVOKE_SELFHOST_DYNO_MAX_CHILDREN": "12",
    }

    def cli(*args: str, timeout: float = 900) -> Run:
        return invoke(list(args), ws, stacks, timeout=timeout, **env)

    cli.env = env  # type: ignore[attr-defined]
    try:
        assert cli("release", "--app", "mc-builders").code == 0
        assert cli("scale", "--app", "mc-builders", "worker=1").code == 0
        source = str(REPO / "examples" / "montecarlo")
        job = cli(
            "jobs.submit",
            "--app",
            "mc-builders",
            "--kind",
            "app-compile",
            "--source",
            source,
            "--target",
            "montecarlo",
            "--wait",
        )
        assert job.code == 0, job.output
        yield cli, client_of(cli)
    finally:
        cli("platform.down")


class Parent:
    """A parent dyno started through the API, its output read as it comes."""

    def __init__(self, client: PlatformClient, command: str):
        self.client = client
        self.info = client.create_dyno("montecarlo", {"command": command, "attach": True})
        self.output = b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for chunk in self.client.stream(self.info["attach_http_url"]):
            self.output += chunk

    def children(self) -> list[dict[str, Any]]:
        me = self.client.dyno("montecarlo", self.info["id"])
        return [
            d
            for d in self.client.dynos("montecarlo")
            if d["ppid"] == me["pid"] and d["state"] in ("starting", "up")
        ]

    def finished(self, timeout: float = 300) -> str:
        self.thread.join(timeout)
        return self.output.decode(errors="replace")


def report(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"^(\w+)\s+([\d.]+)", text, re.M)}


def test_ten_children_in_the_tree_and_the_estimate(cloud):
    cli, client = cloud
    trials = 600_000_000
    parent = Parent(client, f"montecarlo --trials {trials} --workers 10 --stdout /tmp/result.txt")
    seen: dict[str, dict[str, Any]] = {}  # every child seen while the parent runs

    def ten() -> bool:
        me = client.dyno("montecarlo", parent.info["id"])
        for d in client.dynos("montecarlo"):
            if d["parent_dyno"] == me["id"]:
                seen[d["id"]] = d
        assert me["state"] in ("starting", "up"), f"the parent ended first: {parent.output!r}"
        return len(seen) == 10

    # on a loaded machine the first children may end before the last start
    wait_for(ten, 120, "10 kids")
    tree = cli("ps", "--app", "montecarlo", "--tree")
    me = client.dyno("montecarlo", parent.info["id"])
    kids = list(seen.values())
    assert me["pid"] > 0 and {k["ppid"] for k in kids} == {me["pid"]}
    assert len({k["pid"] for k in kids}) == 10
    assert tree.code == 0, tree.output
    assert "PPID" in tree.stdout and "  montecarlo --child" in tree.stdout, tree.stdout
    text = parent.finished()
    got = report(text)
    assert got.get("trials") == trials and got.get("workers") == 10, text
    sigma = 4 * math.sqrt((math.pi / 4) * (1 - math.pi / 4) / trials)
    assert got["error"] < 6 * sigma, text
    assert abs(got["result"] - 4 * got["points"] / trials) < 1e-9
    assert client.dyno("montecarlo", parent.info["id"])["exit_code"] == 0


def test_stopping_the_parent_stops_its_children(cloud):
    _, client = cloud
    parent = Parent(client, "montecarlo --trials 100000000000 --workers 4")
    kids = wait_for(lambda: len(parent.children()) == 4 and parent.children(), 120, "4 kids")
    stopped = time.monotonic()
    client.stop_dyno("montecarlo", parent.info["id"])

    def gone() -> bool:
        states = {client.dyno("montecarlo", k["id"])["state"] for k in kids}
        return not states & {"starting", "up"}

    wait_for(gone, GRACE + 15, "the children to end")
    took = time.monotonic() - stopped
    ended = [client.dyno("montecarlo", k["id"]) for k in kids]
    # they die of SIGTERM (143), even those still starting when their parent was stopped
    assert [k["exit_code"] for k in ended] == [143] * 4 and took < GRACE, (took, ended)
    for k in ended:
        assert "its parent" in (k["reason"] or "")


def test_a_dyno_stopped_as_it_starts_gets_sigterm_and_the_grace(cloud):
    """Stopped before its command exists: the SIGTERM waits for the command (it was
    SIGKILL at once, and a child still starting when its parent stopped died with 137)."""
    _, client = cloud
    command = "trap 'echo terminated; exit 7' TERM; while :; do sleep 0.1; done"
    for _ in range(3):
        dyno = client.create_dyno("montecarlo", {"command": command})
        client.stop_dyno("montecarlo", dyno["id"])
        wait_for(
            lambda d=dyno: client.dyno("montecarlo", d["id"])["state"] not in ("starting", "up"),
            GRACE + 15,
            "the dyno to end",
        )
        # 7: the trap ran; 143: SIGTERM came before the trap was set; never 137
        assert client.dyno("montecarlo", dyno["id"])["exit_code"] in (7, 143)


def test_a_parent_that_exits_takes_its_children_with_it(cloud):
    _, client = cloud
    parent = client.create_dyno(
        "montecarlo", {"command": "fork start -- sleep 100 && sleep 1 && exit 3"}
    )
    kid = wait_for(
        lambda: [d for d in client.dynos("montecarlo") if d["parent_dyno"] == parent["id"]],
        60,
        "the child",
    )[0]
    wait_for(
        lambda: client.dyno("montecarlo", kid["id"])["state"] not in ("starting", "up"),
        GRACE + 15,
        "the child to end",
    )
    assert client.dyno("montecarlo", parent["id"])["exit_code"] == 3
    reason = client.dyno("montecarlo", kid["id"])["reason"]
    assert f"its parent run.{parent['name'].split('.')[1]}" in reason and "ended" in reason


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(cloud):
    _, client = cloud
    stubborn = "fork run -- sh -c \"trap '' TERM; while :; do sleep 1; done\""
    parent = Parent(client, stubborn)
    kid = wait_for(lambda: parent.children(), 120, "the child")[0]
    wait_for(lambda: client.dyno("montecarlo", kid["id"])["state"] == "up", 60, "the child up")
    stopped = time.monotonic()
    client.stop_dyno("montecarlo", parent.info["id"])
    wait_for(
        lambda: client.dyno("montecarlo", kid["id"])["state"] not in ("starting", "up"),
        GRACE + 15,
        "the child to end",
    )
    took = time.monotonic() - stopped
    assert GRACE - 0.5 < took < GRACE + 5, took  # SIGKILL after the grace
    assert client.dyno("montecarlo", kid["id"])["exit_code"] == 137


def test_the_quota_of_live_children_says_so(cloud):
    cli, _ = cloud
    assert cli("config", "--app", "montecarlo", "SELFHOST_MAX_CHILDREN=2").code == 0
    try:
        # children that live a few seconds: the third fork comes while two are alive
        run = cli("run", "--app", "montecarlo", "--", "montecarlo --trials 600000000 --workers 3")
        assert run.code != 0
        assert "429" in run.output and "the most it may have (2" in run.output, run.output
        assert "Traceback" not in run.output
    finally:
        cli("config", "--app", "montecarlo", "SELFHOST_MAX_CHILDREN=")


def test_a_childs_token_cannot_touch_another_app(cloud):
    cli, _ = cloud
    probe = (
        "import os, selfhost_fork as f; os.environ['SELFHOST_APP'] = 'mc-builders'; "
        "f.fork(['true'])"
    )
    run = cli("run", "--app", "montecarlo", "--", f'fork run -- python3 -c "{probe}"')
    assert run.code != 0
    assert "403" in run.output and "own app" in run.output, run.output


def test_fork_is_in_every_slug(cloud):
    cli, _ = cloud
    run = cli("run", "--app", "mc-builders", "--", "fork run -- echo from a child")
    assert run.code == 0 and "from a child" in run.output, run.output
    assert Path(REPO / "selfhost/platform/fork.py").is_file()


def test_children_fork_too_and_live_no_longer_than_their_parent(cloud):
    cli, client = cloud
    run = cli("run", "--app", "montecarlo", "--", "fork run -- fork run -- echo three deep")
    assert run.code == 0 and "three deep" in run.output, run.output
    dynos = client.dynos("montecarlo")
    deep = next(d for d in dynos if d["command"] == "echo three deep")
    middle = next(d for d in dynos if d["id"] == deep["parent_dyno"])
    top = next(d for d in dynos if d["id"] == middle["parent_dyno"])
    assert (deep["ppid"], middle["ppid"], top["ppid"]) == (middle["pid"], top["pid"], 0)
    # a child asks for 600 s; its parent has at most 30 left
    parent = client.create_dyno(
        "montecarlo",
        {"command": "fork start --ttl 600 -- sleep 100; sleep 100", "time_to_live": 30},
    )
    kid = wait_for(
        lambda: [d for d in client.dynos("montecarlo") if d["parent_dyno"] == parent["id"]],
        60,
        "the child",
    )[0]
    assert 0 < kid["time_to_live"] <= 30
    client.stop_dyno("montecarlo", parent["id"])


def test_a_bootstraps_stage_jobs_are_in_the_same_tree_as_the_dynos(cloud):
    """With no compile worker, a bootstrap's first stage job waits in the queue, so `ps`
    must show it: under the bootstrap, beside a dyno and its forked child."""
    cli, client = cloud
    assert cli("scale", "--app", "mc-builders", "worker=0").code == 0
    try:
        wait_for(
            lambda: (
                not [
                    d
                    for d in client.dynos("mc-builders")
                    if d["type"] == "worker" and d["state"] in ("starting", "up")
                ]
            ),
            60,
            "the worker to stop",
        )
        parent = client.create_dyno(
            "mc-builders", {"command": "fork start -- sleep 100; sleep 100"}
        )
        wait_for(
            lambda: [d for d in client.dynos("mc-builders") if d["parent_dyno"] == parent["id"]],
            60,
            "the child",
        )
        boot = cli(
            "jobs.submit", "--app", "mc-builders", "--kind", "bootstrap", "--no-test", "--json"
        )
        assert boot.code == 0, boot.output
        boot_id = boot.json["id"]
        (stage_id,) = client.job("mc-builders", boot_id)["children"]
        tree = cli("ps", "--app", "mc-builders", "--tree", "--json")
        assert tree.code == 0, tree.output
        rows = [(n["pid"], n["ppid"], n["state"], n["depth"], n["command"]) for n in tree.json]
        stage = next(r for r in rows if r[0] == f"job {stage_id}")
        assert stage[1:] == (f"job {boot_id}", "queued", 1, "stage 1"), rows
        assert rows[rows.index(stage) - 1][:4] == (f"job {boot_id}", "-", "running", 0), rows
        top = next(r for r in rows if r[4] == "fork start -- sleep 100; sleep 100")
        kid = rows[rows.index(top) + 1]
        assert (kid[1], kid[3], kid[4]) == (top[0], 1, "sleep 100"), rows
        plain = cli("ps", "--app", "mc-builders", "--tree")
        assert re.search(
            rf"job {stage_id}[\s│]+job {boot_id}[\s│]+queued[\s│]+-[\s│]+  stage 1", plain.stdout
        ), plain.stdout
        cancelled = cli("jobs.cancel", "--app", "mc-builders", str(boot_id))
        assert cancelled.code == 0, cancelled.output
        assert client.job("mc-builders", boot_id)["state"] == "cancelled"
        assert client.job("mc-builders", stage_id)["state"] == "cancelled"
        client.stop_dyno("mc-builders", parent["id"])
    finally:
        cli("scale", "--app", "mc-builders", "worker=1")
