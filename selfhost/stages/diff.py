"""Comparing stages.

This module holds the fast path used by ``invoke bootstrap`` to decide the fixpoint:
two stages' artifact maps (from their manifests) are compared hash by hash, after the
recipe's declared exclusions, without reading a single file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from selfhost.compilers.recipe import Exclusion
from selfhost.stages.manifest import glob_match


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


def compare_artifacts(left: dict[str, str], right: dict[str, str],
                      exclusions: tuple[Exclusion, ...] = ()) -> ArtifactComparison:
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
