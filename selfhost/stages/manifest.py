"""Stage manifests: the machine-readable record of one built stage.

A manifest is ``manifest.json`` at the top of a cache entry
(``<workspace>/cache/stages/<input_hash>/``). Format 1 (the full description with an
example is in ``docs/state.md``)::

    {
      "format": 1,
      "compiler": "tcc", "version": "...", "prefix": "/opt/tcc", "stage": 2,
      "input_hash": "<sha256 of the canonical JSON of 'inputs'>",
      "inputs": {
        "recipe": {"name", "version", "digest"},
        "source": {"digest": "sha256:<hex>" | "git:<commit>", "origin"},
        "stack": {"name", "digest", "suite", "variant", "arch", "packages_digest"},
        "engine": "bwrap" | "docker",
        "builder": {"kind": "stage0", "builder": "gcc"}
                 | {"kind": "stage", "stage": 1, "tree_digest", "input_hash"},
        "environment": {"PATH": ..., "HOME": ..., ...}
      },
      "tree_digest": "<sha256 over every output entry>",
      "files": {"opt/tcc/bin/tcc": {"type": "file", "mode": "0755", "size", "sha256"}, ...},
      "artifacts": {"bin/tcc": "<sha256>", ...},    # relative to the prefix
      "tests": {"command", "exit_code", "passed", "seconds", "summary": [...]} | null,
      "timings": {"prepare", "build", "install", "test", "capture", "total"},   # seconds
      "logs": {"stage": "logs/stage.log"},           # relative to the entry
      "created": "<UTC ISO 8601>", "selfhost_version": "..."
    }

``stage`` is the position the entry was first built at; it is not an input, so when a
fixpoint is reached, stage N+1 has the same input hash as stage N and reuses it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from selfhost.hashing import FileEntry

FORMAT = 1


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a path glob: ``**`` crosses directories, ``*`` and ``?`` do not."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def glob_match(pattern: str, path: str) -> bool:
    """Match a relative POSIX path against a recipe glob."""
    return _glob_regex(pattern).match(path) is not None


def select_artifacts(files: list[FileEntry], prefix: str, globs: tuple[str, ...]) -> dict[str, str]:
    """Map artifact paths (relative to the prefix) to their sha256 (or ``symlink:<target>``)."""
    root = prefix.strip("/") + "/"
    out: dict[str, str] = {}
    for entry in files:
        if entry.kind == "dir" or not entry.path.startswith(root):
            continue
        rel = entry.path[len(root) :]
        if any(glob_match(g, rel) for g in globs):
            out[rel] = (entry.sha256 or "") if entry.kind == "file" else f"symlink:{entry.target}"
    return out


@dataclass
class TestResult:
    """The outcome of a stage's test command."""

    command: str
    exit_code: int
    seconds: float
    summary: list[str] = field(default_factory=list)
    __test__ = False  # not a pytest test class

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "exit_code": self.exit_code,
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
            "summary": self.summary,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> TestResult | None:
        if not data:
            return None
        return cls(data["command"], data["exit_code"], data["seconds"], data.get("summary", []))


@dataclass
class Manifest:
    """One built stage (see the module docstring for the JSON form)."""

    compiler: str
    version: str
    prefix: str
    stage: int
    input_hash: str
    inputs: dict[str, Any]
    tree_digest: str
    files: list[FileEntry]
    artifacts: dict[str, str]
    tests: TestResult | None
    timings: dict[str, float]
    logs: dict[str, str]
    created: str
    selfhost_version: str

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "compiler": self.compiler,
            "version": self.version,
            "prefix": self.prefix,
            "stage": self.stage,
            "input_hash": self.input_hash,
            "inputs": self.inputs,
            "tree_digest": self.tree_digest,
            "files": {e.path: e.to_json() for e in self.files},
            "artifacts": self.artifacts,
            "tests": self.tests.to_json() if self.tests else None,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "logs": self.logs,
            "created": self.created,
            "selfhost_version": self.selfhost_version,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT:
            raise ValueError(f"unsupported manifest format {data.get('format')!r}")
        return cls(
            compiler=data["compiler"],
            version=data["version"],
            prefix=data["prefix"],
            stage=data["stage"],
            input_hash=data["input_hash"],
            inputs=data["inputs"],
            tree_digest=data["tree_digest"],
            files=[FileEntry.from_json(p, e) for p, e in data["files"].items()],
            artifacts=data["artifacts"],
            tests=TestResult.from_json(data.get("tests")),
            timings=data["timings"],
            logs=data["logs"],
            created=data["created"],
            selfhost_version=data["selfhost_version"],
        )

    def write(self, path: Path) -> None:
        """Write atomically: a temporary file renamed over the target."""
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> Manifest:
        return cls.from_json(json.loads(path.read_text()))


def write_json_atomic(path: Path, document: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; state files are meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
