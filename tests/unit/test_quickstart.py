"""The README's quickstart and CI stay in step; the project declares what it imports."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def quickstart_commands() -> list[str]:
    """The commands of the README's Quickstart section, in order."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Quickstart") :]
    section = section[: section.index("\n## ", 5)]
    blocks = re.findall(r"```(?:sh|bash)?\n(.*?)\n```", section, re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def ci_lines() -> list[str]:
    return [line.strip() for line in (REPO / ".ci/run").read_text().splitlines()]


def test_the_quickstart_has_the_two_commands() -> None:
    assert quickstart_commands() == [
        "./setup && .venv/bin/invoke bootstrap",
        "./setup --dev && .venv/bin/python -m pytest",
    ]


def test_ci_runs_the_quickstart_verbatim_and_in_order() -> None:
    lines = ci_lines()
    main, tests = quickstart_commands()
    # both, in order, in the fresh Debian 12 machine, on a fresh clone
    fresh = lines.index("git clone -q /origin /root/selfhost")
    after = lines[fresh:]
    assert main in after and tests in after, "both commands run in the fresh machine"
    assert after.index(main) < after.index(tests), "main job first, then the tests"


def test_ci_gates_lint_format_and_types() -> None:
    lines = ci_lines()
    for gate in (".venv/bin/ruff check .", ".venv/bin/ruff format --check .", ".venv/bin/mypy"):
        assert gate in lines, gate
    assert "set -euo pipefail" in lines, "a failing command fails CI"


def test_drift_is_detected(tmp_path: Path) -> None:
    """The check above would fail if .ci/run stopped running a README command."""
    lines = [line for line in ci_lines() if line != quickstart_commands()[1]]
    assert quickstart_commands()[1] not in lines


# --------------------------------------------------------------------------- dependencies


def third_party_imports() -> dict[str, set[str]]:
    """Top-level modules imported by selfhost (and .ci), mapped to the files importing them."""
    stdlib = set(sys.stdlib_module_names)
    found: dict[str, set[str]] = {}
    for path in [*sorted((REPO / "selfhost").rglob("*.py")), *(REPO / ".ci").glob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top != "selfhost":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def declared() -> set[str]:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [*project["dependencies"]]
    return {re.split(r"[<>=!~\[; ]", n, maxsplit=1)[0].lower().replace("_", "-") for n in names}


def test_every_imported_package_is_declared() -> None:
    providers = importlib.metadata.packages_distributions()
    wanted = declared()
    missing = {}
    for module, files in third_party_imports().items():
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & wanted:
            missing[module] = sorted(files)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


# --------------------------------------------------------------------------- README map


def test_the_readme_map_lists_every_module() -> None:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## How it is built") :]
    block = re.search(r"```\n(.*?)\n```", section, re.S)
    assert block, "the README has a code block mapping the package"
    listed = set(re.findall(r"[\w*]+(?:\.py|/)", block.group(1)))
    missing = []
    for path in sorted((REPO / "selfhost").rglob("*.py")):
        if path.name == "__init__.py":
            continue
        if path.name not in listed and f"{path.stem}.py" not in listed:
            missing.append(str(path.relative_to(REPO)))
    assert not missing, f"modules missing from the README's map: {missing}"


@pytest.mark.integration
def test_setup_without_dev_works_as_written() -> None:
    """./setup (the first half of the main command) exits 0 and says it is ready."""
    proc = subprocess.run(["./setup"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "setup: ready" in proc.stdout
