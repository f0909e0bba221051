"""``invoke challenge``: did two builders get the same stage from the same inputs?

Guix's ``guix challenge`` asks substitute servers for what they built from the same
derivation; here the key is a stage's **input hash** (recipe, sources, stack, builder
tree and environment: everything that may change its bytes), so two workspaces (two
machines, two CI runners, a platform's compile workers whose stages were pulled with
``invoke bootstrap --from-platform``) that built the same input hash must hold the
same tree digest. For each input hash both sides hold, the verdict is ``identical`` or
``different``, and a difference is explained as ``diff-stages`` explains one: file by
file, with the likely cause.

A side may also be a **platform**: an app's stage store behind a Platform API URL
(the stages its compile workers built, or a release of a local bootstrap stored). The
API answers for one input hash at a time, so the other side must be a workspace: each
of its input hashes is asked for; a stage the platform recorded with another tree
digest is downloaded (checked against that record) and explained.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfhost.errors import PlatformError, SelfhostError, UsageError
from selfhost.stages.diff import DiffReport, Side, compare_sides
from selfhost.stages.manifest import Manifest

if TYPE_CHECKING:
    from selfhost.platform.client import PlatformClient


@dataclass
class Challenged:
    input_hash: str
    compiler: str
    stage: int
    left_digest: str
    right_digest: str
    report: DiffReport | None = None

    @property
    def identical(self) -> bool:
        return self.left_digest == self.right_digest

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "input_hash": self.input_hash,
            "compiler": self.compiler,
            "stage": self.stage,
            "verdict": "identical" if self.identical else "different",
            "left_tree_digest": self.left_digest,
            "right_tree_digest": self.right_digest,
        }
        if self.report is not None:
            out["files"] = [f.to_json() for f in self.report.differing]
        return out


@dataclass
class ChallengeResult:
    left: Path | str
    right: Path | str
    common: list[Challenged] = field(default_factory=list)
    only_left: int = 0
    only_right: int = 0

    @property
    def different(self) -> list[Challenged]:
        return [c for c in self.common if not c.identical]

    def to_json(self) -> dict[str, Any]:
        return {
            "left": str(self.left),
            "right": str(self.right),
            "compared": len(self.common),
            "identical": len(self.common) - len(self.different),
            "different": len(self.different),
            "only_left": self.only_left,
            "only_right": self.only_right,
            "stages": [c.to_json() for c in self.common],
        }


def stage_entries(workspace: Path) -> dict[str, tuple[Path, Manifest]]:
    """The complete stages of a workspace's cache, by input hash."""
    root = workspace / "cache" / "stages"
    if not root.is_dir():
        raise UsageError(
            f"{workspace} has no stage cache (no {root})",
            hint="give a selfhost workspace that has run `invoke bootstrap`",
        )
    out: dict[str, tuple[Path, Manifest]] = {}
    for entry in sorted(root.iterdir()):
        try:
            out[entry.name] = (entry, Manifest.load(entry / "manifest.json"))
        except (OSError, ValueError, KeyError):
            continue  # a stage in progress or a damaged entry: not a claim of either side
    return out


def challenge(left: Path, right: Path, *, explain: bool = True) -> ChallengeResult:
    """Compare every stage both workspaces built from the same input hash."""
    a, b = stage_entries(left), stage_entries(right)
    result = ChallengeResult(left, right)
    result.only_left = len(set(a) - set(b))
    result.only_right = len(set(b) - set(a))
    for key in sorted(set(a) & set(b)):
        (entry_a, ma), (entry_b, mb) = a[key], b[key]
        item = Challenged(key, ma.compiler, ma.stage, ma.tree_digest, mb.tree_digest)
        if not item.identical and explain:
            # the trees as they are on disk, hashed here: the other side's manifest is
            # what is being challenged, not evidence
            item.report = compare_sides(
                Side.from_directory("left", entry_a / "tree" / ma.prefix.strip("/")),
                Side.from_directory("right", entry_b / "tree" / mb.prefix.strip("/")),
            )
        result.common.append(item)
    return result


def challenge_platform(
    workspace: Path, client: PlatformClient, app: str, *, explain: bool = True
) -> ChallengeResult:
    """Compare every stage of ``workspace`` with the one ``app``'s stage store on the
    platform holds for the same input hash (``only_left``: those it does not hold;
    ``only_right`` cannot be known: the API lists no stages)."""
    a = stage_entries(workspace)
    client.request("GET", f"/apps/{app}")  # 404 with a hint: not a missing stage each
    result = ChallengeResult(workspace, f"{client.base_url} (app {app})")
    for key, (entry, manifest) in a.items():
        try:
            info = client.request("GET", f"/stages/{key}?app={app}")
        except PlatformError as exc:
            if getattr(exc, "status", None) == 404:
                result.only_left += 1
                continue
            raise
        item = Challenged(
            key, manifest.compiler, manifest.stage, manifest.tree_digest, info["tree_digest"]
        )
        if not item.identical and explain:
            with tempfile.TemporaryDirectory(prefix="selfhost-challenge-") as tmp:
                tree = Path(tmp) / "tree"
                try:
                    client.download_stage(app, key, tree)
                except SelfhostError as exc:
                    raise SelfhostError(
                        f"the platform's stage {key[:12]} could not be examined: {exc.message}"
                    ) from None
                item.report = compare_sides(
                    Side.from_directory("left", entry / "tree" / manifest.prefix.strip("/")),
                    Side.from_directory("right", tree / manifest.prefix.strip("/")),
                )
        result.common.append(item)
    return result


def is_url(side: str) -> bool:
    return side.startswith(("http://", "https://"))
