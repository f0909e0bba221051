"""One error hierarchy for selfhost; each class carries its own exit code.

Library code raises these; the task layer (``selfhost.cli.base``) is the only place
that turns them into a message and an exit code. Every error says what was wrong,
where, what was expected and what to do, so that a user never sees a traceback for
bad input.

Exit codes (stable, documented in README.md):

====  =====================  ===================================================
code  class                  meaning
====  =====================  ===================================================
0                            success
1     (diff-stages only)     the compared trees differ
2     UsageError             bad command-line arguments or configuration
3     RecipeError            a recipe file is invalid
4     SourceError            a source could not be fetched or failed its sha256
5     StackError             the stack could not be built or is unusable
6     EngineError            the sandbox engine is unavailable or misbehaved
7     BuildError             a build or install step failed
8     TestsFailed            a stage's test suite failed
9     LockError              another run holds the workspace lock
10    FixpointError          the fixpoint was required and not reached
11    PlatformError          the platform API answered with an error, or is unreachable
12    SlugError              the slug cannot be built (Procfile, --strict lints, size)
13    JobError               a compile job failed or was cancelled (jobs.submit --wait)
14    CacheError             a cached or stored stage does not match its recorded digest
130   Interrupted            interrupted by the user (Ctrl-C)
====  =====================  ===================================================
"""

from __future__ import annotations


class SelfhostError(Exception):
    """Base class: a failure with a user-facing message, a hint and an exit code."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, details: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def render(self) -> str:
        """The full text shown to the user: message, details, then what to do."""
        parts = [f"error: {self.message}"]
        if self.details:
            parts.append(self.details.rstrip())
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)


class UsageError(SelfhostError):
    """Bad command-line arguments or configuration values."""

    exit_code = 2


class RecipeError(SelfhostError):
    """A recipe file is malformed; the message names the file, field and line."""

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        field: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ):
        where = path or "<recipe>"
        if line is not None:
            where += f":{line}"
        if field:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}", hint=hint)
        self.path = path
        self.field = field
        self.line = line


class SourceError(SelfhostError):
    """No source of a recipe could be fetched, or a download failed verification."""

    exit_code = 4


class ChecksumMismatch(SourceError):
    """A downloaded file's sha256 differs from the pinned one."""

    def __init__(self, what: str, expected: str, actual: str):
        super().__init__(
            f"sha256 mismatch for {what}",
            details=f"  expected: {expected}\n  actual:   {actual}",
            hint="the file was corrupted or replaced; it was not used. Check the pin in the "
            "recipe, or delete the cached download to fetch it again.",
        )
        self.expected = expected
        self.actual = actual


class StackError(SelfhostError):
    """The stack (a pinned Debian root filesystem) could not be built or used."""

    exit_code = 5


class EngineError(SelfhostError):
    """The sandbox engine is missing, unreachable or failed outside the build."""

    exit_code = 6


class BuildError(SelfhostError):
    """A build or install step exited non-zero inside its sandbox."""

    exit_code = 7


class TestsFailed(SelfhostError):
    """A stage's test suite failed; the stage is not recorded as complete."""

    exit_code = 8
    __test__ = False  # not a pytest test class


class LockError(SelfhostError):
    """Another run holds the workspace lock."""

    exit_code = 9


class FixpointError(SelfhostError):
    """The recipe's fixpoint policy is 'fail' and the last two stages differ."""

    exit_code = 10


class PlatformError(SelfhostError):
    """The platform API refused a request or could not be reached."""

    exit_code = 11


class SlugError(SelfhostError):
    """The slug cannot be built: a bad Procfile, a lint in --strict mode, too big."""

    exit_code = 12


class JobError(SelfhostError):
    """A compile job ended in failure or was cancelled."""

    exit_code = 13


class CacheError(SelfhostError):
    """A stage in the cache (or the platform's stage store) was modified after it was
    recorded: its tree no longer has the digest of its manifest. It is never used."""

    exit_code = 14


class Interrupted(SelfhostError):
    """The user interrupted the run (Ctrl-C); partial work was discarded."""

    exit_code = 130
