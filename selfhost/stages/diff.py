"""Comparing stages: the fixpoint verdict, and the explanation of every difference.

Two levels:

- :func:`compare_artifacts`, used by ``invoke bootstrap``: two artifact maps from the
  manifests, compared hash by hash after the recipe's exclusions, reading no file;
- :func:`compare_sides`, used by ``invoke diff-stages``: the same fast path, then
  every differing file is opened and explained by :mod:`selfhost.stages.analysis`.
  Only differing files are read. Excluded files that differ are listed with their
  reason, never hidden.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfhost.compilers.recipe import Exclusion, Recipe
from selfhost.errors import UsageError
from selfhost.hashing import SpecialFile, scan_tree
from selfhost.stages.analysis import Cause, FileAnalysis, analyse
from selfhost.stages.manifest import Manifest, glob_match
from selfhost.workspace import Workspace


@dataclass
class ArtifactComparison:
    """The result of comparing two artifact maps."""

    identical: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    only_left: list[str] = field(default_factory=list)
    only_right: list[str] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), differing

    @property
    def same(self) -> bool:
        """True when nothing differs outside the declared exclusions."""
        return not (self.different or self.only_left or self.only_right)


def exclusion_for(path: str, exclusions: tuple[Exclusion, ...]) -> Exclusion | None:
    """The first exclusion whose glob matches ``path``."""
    return next((e for e in exclusions if glob_match(e.path, path)), None)


def compare_artifacts(
    left: dict[str, str], right: dict[str, str], exclusions: tuple[Exclusion, ...] = ()
) -> ArtifactComparison:
    """Compare ``{path: sha256}`` maps; differing excluded paths are listed, not hidden."""
    result = ArtifactComparison()
    for path in sorted(set(left) | set(right)):
        a, b = left.get(path), right.get(path)
        if a == b:
            result.identical.append(path)
            continue
        excluded = exclusion_for(path, exclusions)
        if excluded:
            result.excluded.append((path, excluded.reason))
        elif b is None:
            result.only_left.append(path)
        elif a is None:
            result.only_right.append(path)
        else:
            result.different.append(path)
    return result


# --------------------------------------------------------------------------- trees


@dataclass
class Side:
    """One side of a comparison: files relative to ``root`` with their hash and size.

    From a stage manifest (the fast path) nothing is read: the hashes are in the
    manifest. From a plain directory every file is hashed once.
    """

    label: str
    root: Path
    files: dict[str, tuple[str, int]]  # path -> (sha256 or "symlink:<target>", size)
    manifest_backed: bool = False
    #: path -> permission bits, for files: the same bytes with another mode still differ
    #: (a tree's digest covers modes; umask and install -m are classic causes)
    modes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, label: str, entry: Path, manifest: Manifest, prefix: str) -> Side:
        """A stage's artifacts, relative to its prefix, straight from its manifest."""
        rel = prefix.strip("/")
        sizes = {e.path: e.size for e in manifest.files}
        modes = {e.path: e.mode for e in manifest.files if e.kind == "file"}
        files = {
            path: (digest, sizes.get(f"{rel}/{path}", 0))
            for path, digest in manifest.artifacts.items()
        }
        own = {p: modes[f"{rel}/{p}"] for p in files if f"{rel}/{p}" in modes}
        return cls(label, entry / "tree" / rel, files, manifest_backed=True, modes=own)

    @classmethod
    def from_directory(cls, label: str, root: Path) -> Side:
        """Any directory; a stage cache entry (manifest.json + tree/) uses its manifest."""
        manifest_path = root / "manifest.json"
        if manifest_path.is_file() and (root / "tree").is_dir():
            manifest = Manifest.load(manifest_path)
            return cls.from_manifest(label, root, manifest, manifest.prefix)
        files: dict[str, tuple[str, int]] = {}
        modes: dict[str, int] = {}
        if not root.is_dir():
            raise UsageError(
                f"{root} is not a directory",
                hint="give two directories to compare with --left and --right",
            )
        try:
            entries = scan_tree(root)
        except SpecialFile as exc:
            raise UsageError(
                f"{exc.path} is {exc.kind}: only files, directories and symlinks can be compared",
                hint="remove it, or compare another directory",
            ) from None
        for entry in entries:
            if entry.kind == "file":
                files[entry.path] = (entry.sha256 or "", entry.size)
                modes[entry.path] = entry.mode
            elif entry.kind == "symlink":
                files[entry.path] = (f"symlink:{entry.target}", 0)
        return cls(label, root, files, modes=modes)


@dataclass
class FileResult:
    """The comparison of one path."""

    path: str
    status: str  # identical | different | only-left | only-right | excluded
    left_size: int | None = None
    right_size: int | None = None
    reason: str | None = None  # for excluded files: the recipe's reason
    analysis: FileAnalysis | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "status": self.status,
            "left_size": self.left_size,
            "right_size": self.right_size,
            "cause": None,
            "sections": [],
            "strings_diff_lines": None,
        }
        if self.reason:
            out["reason"] = self.reason
        if self.analysis:
            out.update(self.analysis.to_json())
        return out


@dataclass
class DiffReport:
    """The result of ``invoke diff-stages`` (see docs/diff.md for the JSON form)."""

    left: Side
    right: Side
    files: list[FileResult]
    seconds: float = 0.0

    @property
    def differing(self) -> list[FileResult]:
        return [f for f in self.files if f.status in ("different", "only-left", "only-right")]

    @property
    def excluded(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "excluded"]

    @property
    def identical(self) -> bool:
        return not self.differing

    @property
    def identical_bytes(self) -> int:
        return sum(f.left_size or 0 for f in self.files if f.status == "identical")

    def verdict_line(self, fixpoint: bool = True) -> str:
        """The first line of the report."""
        n_same = sum(1 for f in self.files if f.status == "identical")
        if self.identical:
            what = "fixpoint reached" if fixpoint else "identical"
            line = (
                f"{what}: {self.left.label} and {self.right.label} are byte-identical "
                f"({n_same} files, {self.identical_bytes} bytes)"
            )
            if self.excluded:
                line += f", {len(self.excluded)} excluded file(s) differ"
            return line
        what = "fixpoint not reached" if fixpoint else "different"
        causes = Counter(f.analysis.cause.value for f in self.differing if f.analysis)
        summary = ", ".join(f"{c}: {n}" for c, n in causes.most_common())
        return (
            f"{what}: {self.left.label} and {self.right.label} differ in "
            f"{len(self.differing)} of {len(self.files)} files"
            + (f" ({summary})" if summary else "")
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": "identical" if self.identical else "different",
            "left": str(self.left.root),
            "right": str(self.right.root),
            "left_label": self.left.label,
            "right_label": self.right.label,
            "from_manifests": self.left.manifest_backed and self.right.manifest_backed,
            "summary": {
                "files": len(self.files),
                "identical": sum(1 for f in self.files if f.status == "identical"),
                "identical_bytes": self.identical_bytes,
                "different": len(self.differing),
                "excluded": len(self.excluded),
                "causes": dict(
                    Counter(f.analysis.cause.value for f in self.differing if f.analysis)
                ),
            },
            "seconds": round(self.seconds, 3),
            "files": [f.to_json() for f in self.files],
        }


def compare_sides(
    left: Side, right: Side, exclusions: tuple[Exclusion, ...] = (), *, explain: bool = True
) -> DiffReport:
    """Compare two sides by hash; open and analyse only the files that differ."""
    started = time.perf_counter()
    results: list[FileResult] = []
    for path in sorted(set(left.files) | set(right.files)):
        a, b = left.files.get(path), right.files.get(path)
        res = FileResult(path, "identical", a[1] if a else None, b[1] if b else None)
        mode_a, mode_b = left.modes.get(path), right.modes.get(path)
        if a is not None and b is not None and a[0] == b[0]:
            if mode_a is not None and mode_b is not None and mode_a != mode_b:
                res.status = "different"
                res.analysis = FileAnalysis(
                    kind="mode",
                    cause=Cause.METADATA,
                    evidence=[
                        f"the same bytes with mode {mode_a:04o} / {mode_b:04o} "
                        "(a umask, or install -m)"
                    ],
                )
            results.append(res)
            continue
        excluded = exclusion_for(path, exclusions)
        if excluded:
            res.status, res.reason = "excluded", excluded.reason
        elif b is None:
            res.status = "only-left"
        elif a is None:
            res.status = "only-right"
        else:
            res.status = "different"
            if explain:
                res.analysis = analyse(
                    _read(left.root / path, a[0]), _read(right.root / path, b[0]), path
                )
        results.append(res)
    return DiffReport(left, right, results, time.perf_counter() - started)


def _read(path: Path, digest: str) -> bytes:
    if digest.startswith("symlink:"):
        return digest.encode()
    return path.read_bytes()


# --------------------------------------------------------------------------- jobs


@dataclass
class DiffJob:
    """What ``invoke diff-stages`` compares, resolved from the command line."""

    left: Side
    right: Side
    exclusions: tuple[Exclusion, ...]
    title: str
    fixpoint: bool  # stages (a fixpoint verdict) or two arbitrary trees

    def run(self) -> DiffReport:
        return compare_sides(self.left, self.right, self.exclusions)


def stage_job(workspace: Workspace, recipe: Recipe, a: int | None, b: int | None) -> DiffJob:
    """Compare two stages of the last bootstrap of ``recipe`` (default: the last two)."""
    directory = workspace.stages_of(recipe.name)
    run_file = directory / "run.json"
    if not run_file.is_file():
        raise UsageError(
            f"no bootstrap of {recipe.name} in workspace {workspace.root}",
            hint=f"run `invoke bootstrap --compiler {recipe.name}` first, or "
            "compare two directories with --left/--right",
        )
    built = [s["stage"] for s in json.loads(run_file.read_text())["stages"]]
    if a is None and b is None:
        if len(built) < 2:
            raise UsageError(
                f"the last bootstrap of {recipe.name} built only stage{built[0]}",
                hint="bootstrap at least two stages (--stages 2)",
            )
        a, b = built[-2], built[-1]
    elif a is None or b is None:
        raise UsageError("--from and --to go together", hint="e.g. --from 1 --to 2")
    for n in (a, b):
        if n not in built:
            raise UsageError(
                f"stage{n} is not part of the last bootstrap of {recipe.name}",
                hint=f"built stages: {', '.join(str(x) for x in built)}",
            )
    sides = []
    for n in (a, b):
        entry = (directory / f"stage{n}").resolve()
        try:
            manifest = Manifest.load(entry / "manifest.json")
        except (OSError, ValueError, KeyError):
            raise UsageError(
                f"stage{n} of {recipe.name} is no longer in the cache",
                hint=f"run `invoke bootstrap --compiler {recipe.name}` again",
            ) from None
        sides.append(Side.from_manifest(f"stage{n}", entry, manifest, manifest.prefix))
    return DiffJob(
        sides[0], sides[1], recipe.exclude, f"stage{a} vs stage{b} of {recipe.name}", fixpoint=True
    )


def directory_job(left: Path, right: Path, exclusions: tuple[Exclusion, ...] = ()) -> DiffJob:
    """Compare two arbitrary trees (for example builds from two machines)."""
    for flag, path in (("--left", left), ("--right", right)):
        if not path.is_dir():
            raise UsageError(f"{flag} {path} is not a directory")
    return DiffJob(
        Side.from_directory(str(left), left),
        Side.from_directory(str(right), right),
        exclusions,
        f"{left} vs {right}",
        fixpoint=False,
    )


def run_diffoscope(report: DiffReport, out_dir: Path) -> list[str]:
    """Hand every differing pair to diffoscope; return lines to show the user."""
    tool = shutil.which("diffoscope")
    if not tool:
        return [
            "diffoscope is not installed, so only selfhost's own analysis is shown; "
            "install it with `pip install diffoscope` or `apt-get install diffoscope`"
        ]
    lines = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in report.differing:
        if f.status != "different":
            continue
        target = out_dir / (f.path.replace("/", "__") + ".diffoscope.txt")
        proc = subprocess.run(
            [
                tool,
                "--no-progress",
                "--text",
                str(target),
                str(report.left.root / f.path),
                str(report.right.root / f.path),
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if proc.returncode not in (0, 1):  # 1 means "different", which we know
            lines.append(f"diffoscope failed on {f.path}: {proc.stderr.strip()[-200:]}")
        else:
            lines.append(f"diffoscope report for {f.path}: {target}")
    return lines
