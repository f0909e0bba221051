"""The recipe model: what a compiler needs to bootstrap itself, as frozen data.

A recipe is a TOML file (see ``selfhost/compilers/recipes/*.toml`` and
``docs/recipes.md``) loaded into a :class:`Recipe`. Loading validates every field and
reports mistakes with the file, the field and the line, so a recipe author never
sees a traceback.

Commands are shell snippets run by ``/bin/sh -e`` inside the sandbox with these
variables set:

- ``$BUILDER``: the building compiler (``stage0.builder`` for stage1, ``builder``
  for later stages, when the previous stage is mounted read-only at the prefix);
- ``$PREFIX``: the install prefix, the same for every stage;
- ``$DESTDIR``: where ``install`` must put the tree (``/out``);
- ``$SRC``: the unpacked source (``/build/src``, also the working directory);
- ``$JOBS``: the number of parallel jobs;
- ``$STAGE``: the stage number (recorded but kept out of the cache key).
"""

from __future__ import annotations

import re
import string
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from selfhost.config import SUITES
from selfhost.errors import RecipeError
from selfhost.hashing import digest_json

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{7,40}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV = frozenset(
    {
        "HOME",
        "LC_ALL",
        "TZ",
        "SOURCE_DATE_EPOCH",
        "BUILDER",
        "PREFIX",
        "DESTDIR",
        "SRC",
        "JOBS",
        "STAGE",
    }
)


class FixpointPolicy(StrEnum):
    """What the pipeline does when the last two stages differ."""

    FAIL = "fail"  # exit with FixpointError
    WARN = "warn"  # report it, exit 0
    ITERATE = "iterate"  # build more stages, up to max_stages, until two agree


#: The source group every source belongs to unless it names another: /build/src.
MAIN = "src"
GROUP_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True, kw_only=True)
class GitSource:
    """An upstream git repository pinned to a commit (full or abbreviated hash)."""

    url: str
    commit: str
    name: str = MAIN
    kind: str = "git"

    def describe(self) -> str:
        """One line for logs and error lists."""
        return f"git {self.url} @ {self.commit}"


@dataclass(frozen=True, kw_only=True)
class TarballSource:
    """A tarball at a URL, pinned by its sha256."""

    url: str
    sha256: str
    name: str = MAIN
    kind: str = "tarball"

    def describe(self) -> str:
        """One line for logs and error lists."""
        return f"tarball {self.url}"


@dataclass(frozen=True, kw_only=True)
class DebianSource:
    """The upstream (``.orig``) tarball of a Debian source package, pinned by sha256,
    and optionally Debian's own patches (``debian.tar.*``, pinned too).

    It is fetched from the Debian mirror found in the machine's apt configuration, by
    the pool's layout (the ``.dsc`` is used when the mirror has it, but is not needed);
    the system's apt configuration is never edited.
    """

    package: str
    version: str
    sha256: str
    debian_sha256: str | None = None  # the .debian.tar.* with debian/patches/series
    patches: bool = False  # apply Debian's patch series to the unpacked tree
    name: str = MAIN
    kind: str = "debian"

    def describe(self) -> str:
        """One line for logs and error lists."""
        return f"debian source {self.package} {self.version}"


Source = GitSource | TarballSource | DebianSource


@dataclass(frozen=True, kw_only=True)
class Exclusion:
    """An artifact glob left out of the fixpoint comparison, with the reason why."""

    path: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class Allowance:
    """A difference ``invoke verify`` may find under a variation, declared with why:
    artifacts matching ``path`` may differ when ``vary`` changes."""

    vary: str
    path: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class Steps:
    """The shell commands of one stage; ``test`` may be empty."""

    build: str
    install: str
    test: str = ""
    timeout: int = 7200  # seconds per step


@dataclass(frozen=True)
class Stage0:
    """A compiler that can build stage1: the recipe's own (``[stage0]``) or one of its
    declared alternatives (``[stage0.alternatives.NAME]``), for diverse double-compiling:
    bootstraps from unrelated compilers that must reach the same stage2."""

    name: str
    builder: str
    packages: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "builder": self.builder, "packages": list(self.packages)}


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Everything selfhost needs to bootstrap one compiler."""

    name: str
    version: str
    prefix: str  # default: /app/vendor/NAME, where a slug ships the stage as built
    sources: tuple[Source, ...]
    steps: Steps
    stage0_builder: str
    builder: str
    stages: int = 3
    fixpoint: FixpointPolicy = FixpointPolicy.FAIL
    max_stages: int = 5
    source_date_epoch: int = 0
    suite: str | None = None  # the Debian suite of its stacks (default: selfhost.suite)
    stage0_packages: tuple[str, ...] = ()  # only in the build stack
    stack_packages: tuple[str, ...] = ()  # in the build and the run stack
    env: tuple[tuple[str, str], ...] = ()
    compiler: str = ""  # the compiler command of a built stage (default $PREFIX/bin/NAME)
    library_path: tuple[str, ...] = ()  # directories under the prefix for LD_LIBRARY_PATH
    artifacts: tuple[str, ...] = ("**",)
    exclude: tuple[Exclusion, ...] = ()
    #: differences the recipe declares under ``invoke verify``'s variations
    verify_allow: tuple[Allowance, ...] = ()
    description: str = ""
    slug_source: bool = True  # ship the source and bin/rebuild in the slug
    #: other stage0 compilers it declares (for diverse double-compiling); not part of
    #: any stage's inputs: the default stage0 builds the bootstrap's stage1
    stage0_alternatives: tuple[Stage0, ...] = ()
    path: Path | None = field(default=None, compare=False)

    @property
    def stage0s(self) -> tuple[Stage0, ...]:
        """Every stage0 it declares: its own first (named ``default``), then the others."""
        own = Stage0("default", self.stage0_builder, self.stage0_packages)
        return (own, *self.stage0_alternatives)

    @property
    def packages(self) -> tuple[str, ...]:
        """The extra packages of the build stack (stage0's and the build's)."""
        return tuple(sorted(set(self.stage0_packages) | set(self.stack_packages)))

    @property
    def run_packages(self) -> tuple[str, ...]:
        """The extra packages of the run stack (what dynos need, stage0 left out)."""
        return tuple(sorted(set(self.stack_packages)))

    @property
    def compiler_command(self) -> str:
        """The compiler of a built stage, with ``$PREFIX`` expanded."""
        return self.expand(self.compiler or f"$PREFIX/bin/{self.name}", {"PREFIX": self.prefix})

    @property
    def source_groups(self) -> dict[str, tuple[Source, ...]]:
        """Sources by group (unpacked side by side at /build/<group>), each group's
        sources in order of preference."""
        groups: dict[str, list[Source]] = {}
        for source in self.sources:
            groups.setdefault(source.name, []).append(source)
        return {name: tuple(alternatives) for name, alternatives in groups.items()}

    def build_inputs(self) -> dict[str, Any]:
        """The fields that can change a stage's bytes, hashed into the recipe digest.

        Sources (covered by the source digest), the test command (tests are recorded
        per stage, not part of what it is), the stage count, the fixpoint policy, the
        suite (the stack identity covers it) and the comparison settings are left out
        on purpose: changing them must not invalidate cached stages.
        """
        return {
            "name": self.name,
            "version": self.version,
            "prefix": self.prefix,
            "steps": {"build": self.steps.build, "install": self.steps.install},
            "stage0": {"builder": self.stage0_builder, "packages": list(self.stage0_packages)},
            "builder": self.builder,
            "source_date_epoch": self.source_date_epoch,
            "env": [list(kv) for kv in self.env],
        }

    @property
    def digest(self) -> str:
        """sha256 of :meth:`build_inputs` in canonical JSON."""
        return digest_json(self.build_inputs())

    def expand(self, value: str, variables: dict[str, str]) -> str:
        """Expand ``$VAR``/``${VAR}`` from ``variables``, leaving unknown ones alone."""
        return string.Template(value).safe_substitute(variables)


# --------------------------------------------------------------------------- loading


class _Reader:
    """Typed access to a parsed TOML table that reports file, field and line."""

    def __init__(self, path: Path, text: str, data: dict[str, Any]):
        self.path = path
        self.text = text
        self.data = data

    def fail(self, dotted: str, message: str, hint: str | None = None) -> RecipeError:
        return RecipeError(
            message, path=str(self.path), field=dotted, line=locate(self.text, dotted), hint=hint
        )

    def get(
        self,
        table: dict[str, Any],
        dotted: str,
        key: str,
        kind: type | tuple[type, ...],
        default: Any = ...,
        expected: str = "",
    ) -> Any:
        if key not in table:
            if default is ...:
                raise self.fail(
                    dotted,
                    f"required field '{key}' is missing",
                    hint=f"add {key} = <{expected or _kind_name(kind)}>",
                )
            return default
        value = table[key]
        # bool is an int subclass; never accept it where a number is expected
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
            raise self.fail(
                dotted,
                f"expected {expected or _kind_name(kind)}, got {type(value).__name__} {value!r}",
            )
        return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", list: "a list", dict: "a table", bool: "a boolean"}
    return " or ".join(names.get(k, k.__name__) for k in _kinds(kind))


_DOTTED = re.compile(r"^(?:(?P<table>.*?)(?:\[(?P<index>\d+)\])?\.)?(?P<key>[^.\[\]]+)$")


def locate(text: str, dotted: str) -> int | None:
    """Find the line of a dotted field (``sources[1].sha256``) in a recipe's TOML text.

    Good enough for recipe files, which hold one key per line. Returns the line of
    the enclosing table's header when the key itself is absent, else None.
    """
    if m := re.match(r"^(?P<table>.+?)\[(?P<index>\d+)\]$", dotted):
        table, key = m["table"], None
        index: int | None = int(m["index"])
    elif m := _DOTTED.match(dotted):
        table = m["table"] or ""
        index = int(m["index"]) if m["index"] else None
        key = m["key"]
    else:
        return None
    current, counts, header = "", {"": 0}, None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if m := re.match(r"^\[\[\s*(.+?)\s*\]\]", line):
            current = m[1]
            counts[current] = counts.get(current, -1) + 1
            if current == table and index in (None, counts[current]):
                header = number
            continue
        if m := re.match(r"^\[\s*(.+?)\s*\]", line):
            current = m[1]
            counts.setdefault(current, 0)
            if current == table:
                header = number
            continue
        here = current == table and index in (None, counts.get(current))
        if key and here and re.match(rf'^"?{re.escape(key)}"?\s*=', line):
            return number
    return header


TOP_KEYS = {
    "name",
    "version",
    "description",
    "prefix",
    "stages",
    "fixpoint",
    "max_stages",
    "source_date_epoch",
    "builder",
    "sources",
    "stage0",
    "stack",
    "env",
    "steps",
    "compare",
    "verify",
    "slug",
    "suite",
    "compiler",
    "runtime",
}


def load_recipe(path: Path) -> Recipe:
    """Load and validate a recipe file; raise :class:`RecipeError` on any mistake."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError(f"cannot read the recipe: {exc.strerror}", path=str(path)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        if line is None and (m := re.search(r"line (\d+)", str(exc))):
            line = int(m.group(1))
        raise RecipeError(
            f"not valid TOML: {exc}",
            path=str(path),
            line=line,
            hint="fix the syntax; see docs/recipes.md for the format",
        ) from None
    return parse_recipe(data, path=path, text=text)


def parse_recipe(data: dict[str, Any], *, path: Path, text: str = "") -> Recipe:
    """Validate parsed TOML data into a :class:`Recipe`."""
    r = _Reader(path, text, data)
    for key in data:
        if key not in TOP_KEYS:
            raise r.fail(
                key, f"unknown field '{key}'", hint=f"known fields: {', '.join(sorted(TOP_KEYS))}"
            )

    name = r.get(data, "name", "name", str)
    if not NAME_RE.match(name):
        raise r.fail(
            "name",
            f"'{name}' is not a valid name",
            hint="use lower-case letters, digits and . _ + - (at most 64)",
        )
    version = r.get(data, "version", "version", str)
    if not version.strip():
        raise r.fail("version", "must not be empty")
    prefix = r.get(
        data,
        "prefix",
        "prefix",
        str,
        f"/app/vendor/{name}",
        expected="an absolute path such as /app/vendor/NAME",
    )
    if (
        not prefix.startswith("/")
        or prefix.rstrip("/") in ("", "/usr", "/bin", "/etc", "/lib")
        or ".." in prefix.split("/")
        or prefix.startswith(("/build", "/out", "/proc", "/dev", "/tmp"))
    ):
        raise r.fail(
            "prefix",
            f"'{prefix}' cannot be an install prefix",
            hint="use a dedicated absolute directory such as /app/vendor/NAME (the default)",
        )
    prefix = prefix.rstrip("/")
    suite = r.get(data, "suite", "suite", str, None)
    if suite is not None and suite not in SUITES:
        raise r.fail(
            "suite",
            f"'{suite}' is not a suite selfhost builds stacks of",
            hint=f"use one of: {', '.join(SUITES)}",
        )

    stages = r.get(data, "stages", "stages", int, 3)
    if not 1 <= stages <= 10:
        raise r.fail("stages", f"expected 1 to 10 stages, got {stages}")
    policy_raw = r.get(data, "fixpoint", "fixpoint", str, "fail")
    try:
        policy = FixpointPolicy(policy_raw)
    except ValueError:
        raise r.fail(
            "fixpoint",
            f"'{policy_raw}' is not a fixpoint policy",
            hint="use one of: " + ", ".join(p.value for p in FixpointPolicy),
        ) from None
    max_stages = r.get(data, "max_stages", "max_stages", int, max(5, stages))
    if max_stages < stages:
        raise r.fail("max_stages", f"max_stages ({max_stages}) is below stages ({stages})")
    sde = r.get(data, "source_date_epoch", "source_date_epoch", int, 0)
    if sde < 0:
        raise r.fail("source_date_epoch", "must be a Unix time, 0 or more")

    sources = _parse_sources(r, data)

    stage0 = r.get(data, "stage0", "stage0", dict, expected="a table [stage0]")
    stage0_builder = r.get(
        stage0, "stage0.builder", "builder", str, expected="the stage0 compiler, e.g. gcc"
    )
    stage0_packages = _string_list(r, stage0, "stage0.packages", "packages")
    for key in stage0:
        if key not in ("builder", "packages", "alternatives"):
            raise r.fail(
                f"stage0.{key}",
                f"unknown field '{key}'",
                hint="[stage0] has: builder, packages, and [stage0.alternatives.NAME] tables",
            )
    alternatives = _parse_stage0_alternatives(r, stage0)
    builder = r.get(
        data,
        "builder",
        "builder",
        str,
        expected="the compiler of a built stage, e.g. $PREFIX/bin/NAME",
    )

    stack = r.get(data, "stack", "stack", dict, {})
    for key in stack:
        if key != "packages":
            raise r.fail(f"stack.{key}", f"unknown field '{key}'", hint="[stack] has: packages")
    stack_packages = _string_list(r, stack, "stack.packages", "packages")
    named_packages = [("stage0.packages", stage0_packages), ("stack.packages", stack_packages)]
    named_packages += [
        (f"stage0.alternatives.{alt.name}.packages", list(alt.packages)) for alt in alternatives
    ]
    for dotted, pkgs in named_packages:
        for pkg in pkgs:
            if not re.match(r"^[a-z0-9][a-z0-9.+-]+$", pkg):
                raise r.fail(dotted, f"'{pkg}' is not a Debian package name")

    env_table = r.get(data, "env", "env", dict, {})
    env: list[tuple[str, str]] = []
    for key, value in env_table.items():
        if not ENV_NAME_RE.match(key) or key in RESERVED_ENV:
            raise r.fail(
                f"env.{key}",
                f"'{key}' cannot be set by a recipe",
                hint="reserved: " + ", ".join(sorted(RESERVED_ENV)),
            )
        if not isinstance(value, str):
            raise r.fail(f"env.{key}", f"expected a string, got {type(value).__name__}")
        env.append((key, value))

    steps_table = r.get(data, "steps", "steps", dict, expected="a table [steps]")
    steps = Steps(
        build=r.get(steps_table, "steps.build", "build", str),
        install=r.get(steps_table, "steps.install", "install", str),
        test=r.get(steps_table, "steps.test", "test", str, ""),
        timeout=r.get(steps_table, "steps.timeout", "timeout", int, 7200),
    )
    for key in steps_table:
        if key not in ("build", "install", "test", "timeout"):
            raise r.fail(
                f"steps.{key}",
                f"unknown step '{key}'",
                hint="steps are build, install, test (and timeout)",
            )
    if "$DESTDIR" not in steps.install and "${DESTDIR}" not in steps.install:
        raise r.fail(
            "steps.install",
            "the install command never uses $DESTDIR",
            hint="install into $DESTDIR$PREFIX so the stage can be captured",
        )

    compare = r.get(data, "compare", "compare", dict, {})
    artifacts = tuple(_string_list(r, compare, "compare.artifacts", "artifacts") or ["**"])
    exclusions: list[Exclusion] = []
    for i, item in enumerate(r.get(compare, "compare.exclude", "exclude", list, [])):
        dotted = f"compare.exclude[{i}]"
        if not isinstance(item, dict):
            raise r.fail(dotted, "expected a table with path and reason")
        reason = r.get(
            item, f"{dotted}.reason", "reason", str, expected="a written reason for the exclusion"
        )
        if not reason.strip():
            raise r.fail(f"{dotted}.reason", "an exclusion needs a written reason")
        exclusions.append(
            Exclusion(path=r.get(item, f"{dotted}.path", "path", str), reason=reason.strip())
        )

    verify_allow = _parse_verify(r, data)

    compiler = r.get(
        data,
        "compiler",
        "compiler",
        str,
        "",
        expected="the compiler command of a built stage, e.g. $PREFIX/bin/gosh",
    )
    runtime = r.get(data, "runtime", "runtime", dict, {})
    for key in runtime:
        if key != "library_path":
            raise r.fail(
                f"runtime.{key}", f"unknown field '{key}'", hint="[runtime] has: library_path"
            )
    library_path = _string_list(r, runtime, "runtime.library_path", "library_path")
    for entry in library_path:
        if entry.startswith("/") or ".." in entry.split("/"):
            raise r.fail(
                "runtime.library_path",
                f"'{entry}' must be a directory under the prefix, relative to it (e.g. lib)",
            )

    slug_table = r.get(data, "slug", "slug", dict, {})
    for key in slug_table:
        if key != "source":
            raise r.fail(f"slug.{key}", f"unknown field '{key}'", hint="[slug] has: source")
    slug_source = r.get(slug_table, "slug.source", "source", bool, True)

    return Recipe(
        name=name,
        version=version,
        prefix=prefix,
        sources=tuple(sources),
        steps=steps,
        stage0_builder=stage0_builder,
        builder=builder,
        stages=stages,
        fixpoint=policy,
        max_stages=max_stages,
        source_date_epoch=sde,
        suite=suite,
        compiler=compiler,
        library_path=tuple(library_path),
        stage0_packages=tuple(stage0_packages),
        stack_packages=tuple(stack_packages),
        env=tuple(env),
        artifacts=artifacts,
        exclude=tuple(exclusions),
        verify_allow=tuple(verify_allow),
        description=str(data.get("description", "")),
        slug_source=slug_source,
        stage0_alternatives=tuple(alternatives),
        path=path,
    )


#: ``invoke verify``'s variations, by name (selfhost.stages.verify defines them)
VARIATION_NAMES = (
    "build-path",
    "time",
    "locale",
    "timezone",
    "umask",
    "jobs",
    "user",
    "hostname",
    "file-ordering",
    "engine",
)


def _parse_verify(r: _Reader, data: dict[str, Any]) -> list[Allowance]:
    """``[[verify.allow]]``: ``vary`` (a variation), ``path`` (an artifact glob),
    ``reason``."""
    table = r.get(data, "verify", "verify", dict, {})
    for key in table:
        if key != "allow":
            raise r.fail(f"verify.{key}", f"unknown field '{key}'", hint="[verify] has: allow")
    out: list[Allowance] = []
    for i, item in enumerate(r.get(table, "verify.allow", "allow", list, [])):
        dotted = f"verify.allow[{i}]"
        if not isinstance(item, dict):
            raise r.fail(dotted, "expected a table with vary, path and reason")
        for key in item:
            if key not in ("vary", "path", "reason"):
                raise r.fail(
                    f"{dotted}.{key}", f"unknown field '{key}'", hint="it has: vary, path, reason"
                )
        vary = r.get(item, f"{dotted}.vary", "vary", str, expected="a variation name")
        if vary not in VARIATION_NAMES:
            raise r.fail(
                f"{dotted}.vary",
                f"'{vary}' is not a variation",
                hint=f"one of: {', '.join(VARIATION_NAMES)}",
            )
        reason = r.get(item, f"{dotted}.reason", "reason", str, expected="why it may differ")
        if not reason.strip():
            raise r.fail(f"{dotted}.reason", "a declared difference needs a written reason")
        path = r.get(item, f"{dotted}.path", "path", str, expected="an artifact glob")
        out.append(Allowance(vary=vary, path=path, reason=reason.strip()))
    return out


def _parse_stage0_alternatives(r: _Reader, stage0: dict[str, Any]) -> list[Stage0]:
    """``[stage0.alternatives.NAME]`` tables: ``builder`` (required), ``packages``."""
    table = r.get(
        stage0,
        "stage0.alternatives",
        "alternatives",
        dict,
        {},
        expected="[stage0.alternatives.NAME] tables",
    )
    out: list[Stage0] = []
    for name, alt in table.items():
        dotted = f"stage0.alternatives.{name}"
        if not re.match(r"^[a-z0-9][a-z0-9-]*$", name) or name == "default":
            raise r.fail(
                dotted,
                f"'{name}' is not a usable stage0 name",
                hint="lower-case letters, digits and dashes ('default' is the recipe's own)",
            )
        if not isinstance(alt, dict):
            raise r.fail(dotted, f"expected a table [{dotted}] with a builder")
        for key in alt:
            if key not in ("builder", "packages"):
                raise r.fail(
                    f"{dotted}.{key}", f"unknown field '{key}'", hint="it has: builder, packages"
                )
        builder = r.get(alt, f"{dotted}.builder", "builder", str, expected="a compiler, e.g. clang")
        packages = tuple(_string_list(r, alt, f"{dotted}.packages", "packages"))
        out.append(Stage0(name, builder, packages))
    return out


def _string_list(r: _Reader, table: dict[str, Any], dotted: str, key: str) -> list[str]:
    value = r.get(table, dotted, key, list, [])
    for item in value:
        if not isinstance(item, str):
            raise r.fail(dotted, f"expected a list of strings, found {item!r}")
    return list(value)


def _parse_sources(r: _Reader, data: dict[str, Any]) -> list[Source]:
    raw = r.get(data, "sources", "sources", list, expected="one or more [[sources]] tables")
    if not raw:
        raise r.fail("sources", "at least one source is needed")
    out: list[Source] = []
    for i, item in enumerate(raw):
        dotted = f"sources[{i}]"
        if not isinstance(item, dict):
            raise r.fail(dotted, "expected a [[sources]] table")
        kind = r.get(item, f"{dotted}.kind", "kind", str, expected="git, tarball or debian")
        allowed = {
            "git": {"kind", "url", "commit", "name"},
            "tarball": {"kind", "url", "sha256", "name"},
            "debian": {"kind", "package", "version", "sha256", "debian_sha256", "patches", "name"},
        }
        if kind not in allowed:
            raise r.fail(
                f"{dotted}.kind", f"unknown source kind '{kind}'", hint="use git, tarball or debian"
            )
        for key in item:
            if key not in allowed[kind]:
                raise r.fail(
                    f"{dotted}.{key}",
                    f"field '{key}' does not belong to a {kind} source",
                    hint=f"a {kind} source has: {', '.join(sorted(allowed[kind]))}",
                )
        group = r.get(
            item,
            f"{dotted}.name",
            "name",
            str,
            MAIN,
            expected="the source's group: unpacked at /build/<name>",
        )
        if not GROUP_RE.match(group) or group in ("home", "out"):
            raise r.fail(
                f"{dotted}.name",
                f"'{group}' cannot name a source",
                hint="lower-case letters, digits, . _ -; not home or out",
            )
        source: Source
        if kind == "git":
            commit = r.get(item, f"{dotted}.commit", "commit", str, expected="a commit hash")
            if not COMMIT_RE.match(commit):
                raise r.fail(
                    f"{dotted}.commit",
                    f"'{commit}' is not a commit hash",
                    hint="pin 7 to 40 lower-case hex digits (branches and tags move)",
                )
            source = GitSource(
                url=r.get(item, f"{dotted}.url", "url", str), commit=commit, name=group
            )
        else:
            sha = _sha256(r, item, dotted, "sha256")
            if kind == "tarball":
                source = TarballSource(
                    url=r.get(item, f"{dotted}.url", "url", str), sha256=sha, name=group
                )
            else:
                debian_sha = (
                    _sha256(r, item, dotted, "debian_sha256") if "debian_sha256" in item else None
                )
                patches = r.get(item, f"{dotted}.patches", "patches", bool, False)
                if patches and debian_sha is None:
                    raise r.fail(
                        f"{dotted}.patches",
                        "applying Debian's patches needs "
                        "debian_sha256 (the sha256 of the .debian.tar.* file)",
                    )
                source = DebianSource(
                    package=r.get(item, f"{dotted}.package", "package", str),
                    version=r.get(item, f"{dotted}.version", "version", str),
                    sha256=sha,
                    debian_sha256=debian_sha,
                    patches=patches,
                    name=group,
                )
        out.append(source)
    if MAIN not in {s.name for s in out}:
        raise r.fail(
            "sources",
            f"no source has the main group '{MAIN}' (/build/src, where the steps run)",
            hint="leave 'name' out of the main source's tables",
        )
    return out


def _sha256(r: _Reader, item: dict[str, Any], dotted: str, key: str) -> str:
    sha = r.get(item, f"{dotted}.{key}", key, str, expected="64 hex digits")
    if not SHA256_RE.match(sha):
        raise r.fail(
            f"{dotted}.{key}",
            f"'{sha}' is not a sha256",
            hint="64 lower-case hex digits, as printed by sha256sum",
        )
    return sha
