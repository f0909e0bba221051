"""The classic story, end to end: Gauche bootstrapped from Debian's released gosh on
trixie (make check in every stage, fixpoint), released with a web app in Scheme, two
web dynos answering HTTP on $PORT. Slow: three Gauche builds."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import REPO, Run, early_build, invoke
from tests.integration.test_apps import routed, router_get, wait_for, web_dynos_answer


@pytest.mark.slow
def test_gauche_bootstrap_release_and_two_web_dynos(tmp_path_factory):
    # the bootstrap started when the session began (conftest.EARLY): it runs beside
    # the other tests; this is `invoke bootstrap --compiler gauche --json`
    build = early_build("gauche")
    boot = build.result(timeout=4 * 3600)
    ws, stacks = build.workspace, build.stacks
    root = tmp_path_factory.mktemp("gauche-platform") / "platform"
    env = {"INVOKE_SELFHOST_PLATFORM_DIR": str(root)}

    def cli(*args: str, timeout: float = 3600) -> Run:
        return invoke(list(args), ws, stacks, timeout=timeout, **env)

    assert boot.code == 0, boot.output[-5000:]
    result = boot.json
    assert result["stack"]["suite"] == "trixie", "the recipe's suite, with nothing exported"
    assert [s["stage"] for s in result["stages"]] == [1, 2, 3]
    assert all(s["tests_passed"] for s in result["stages"]), "make check in every stage"
    assert result["fixpoint"] is True and result["differences"] == []
    m1 = json.loads((ws / "stages/gauche/stage1/manifest.json").read_text())
    assert m1["inputs"]["builder"] == {"kind": "stage0", "builder": "/usr/bin/gosh"}
    assert "app/vendor/gauche/bin/gosh" in m1["files"]
    log = (ws / "stages/gauche/stage1/logs/stage.log").read_text()
    assert "applying debian/patches/" in log, "Debian's patch series is applied"
    try:
        released = cli(
            "release",
            "--app",
            "gauche-web",
            "--compiler",
            "gauche",
            "--app-dir",
            str(REPO / "examples/gauche-web"),
            "--json",
        )
        assert released.code == 0, released.output[-5000:]
        assert released.json["process_types"] == {"web": "gosh index.scm"}
        pages = web_dynos_answer(cli, root, "gauche-web", 2, "Hello from Gauche 0.9.15")
        assert all("GET / HTTP/1.1" in page for page in pages)
        # and through the router, at the app's own URL: both dynos take turns
        url = cli("open", "--app", "gauche-web").stdout.strip()
        port = int(url.rsplit(":", 1)[1].rstrip("/"))
        wait_for(
            lambda: sum(d["routable"] for d in routed(root, "gauche-web").values()) == 2,
            60,
            "two routable dynos",
        )
        answers = [router_get(port, "gauche-web") for _ in range(10)]
        assert {status for status, _ in answers} == {200}, answers
        assert all(any(name in body for _, body in answers) for name in ("web.1", "web.2"))
        # the run stack: trixie without stage0's gauche package, so the gosh is ours
        probe = cli(
            "run",
            "--app",
            "gauche-web",
            "--",
            "test ! -e /usr/bin/gosh && command -v gosh && gosh -V",
        )
        assert probe.code == 0, probe.output
        assert "/app/vendor/gauche/bin/gosh" in probe.stdout
    finally:
        cli("platform.down")
