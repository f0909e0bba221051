"""Lints for slugs: what would break when the slug runs from ``/app`` on its stack.

=============  ===========================================================================
kind           fires when
=============  ===========================================================================
rpath          an ELF's RPATH/RUNPATH entry is neither ``$ORIGIN``-relative, under
               ``/app``, nor a directory of the target stack
interpreter    an ELF's program interpreter (``PT_INTERP``) is missing from the stack
build-path     a file contains the build workspace path (it will not exist at run time)
shebang        a script's ``#!`` interpreter exists neither in the slug nor in the stack
glibc          an ELF needs a ``GLIBC_2.x`` symbol version newer than the stack's glibc
               provides (the classic ``GLIBC_2.xx not found`` at run time)
=============  ===========================================================================

Each lint is a warning by default and an error with ``--strict``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from selfhost.platform.slugs.slug import SlugContents

APP = "/app"
GLIBC_RE = re.compile(r"^GLIBC_(\d+)\.(\d+)(?:\.(\d+))?$")
LIBC_CANDIDATES = (
    "lib/x86_64-linux-gnu/libc.so.6",
    "lib/aarch64-linux-gnu/libc.so.6",
    "usr/lib/x86_64-linux-gnu/libc.so.6",
    "usr/lib/aarch64-linux-gnu/libc.so.6",
    "lib64/libc.so.6",
    "lib/libc.so.6",
)


@dataclass(frozen=True)
class Lint:
    """One finding: its kind, the slug path it is about, and what is wrong."""

    kind: str
    path: str  # /app/...
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.message}"


def glibc_version(text: str) -> tuple[int, ...] | None:
    m = GLIBC_RE.match(text)
    return tuple(int(x) for x in m.groups() if x is not None) if m else None


@lru_cache(maxsize=8)
def stack_glibc(rootfs: Path) -> tuple[tuple[int, ...], frozenset[str]] | None:
    """The newest GLIBC_x.y version the stack's libc defines, and all of them."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerDefSection

    for candidate in LIBC_CANDIDATES:
        path = rootfs / candidate
        if not path.exists():
            continue
        with open(_in_root(rootfs, path), "rb") as f:
            elf = ELFFile(f)
            names: set[str] = set()
            for section in elf.iter_sections():
                if isinstance(section, GNUVerDefSection):
                    for _verdef, auxiliaries in section.iter_versions():
                        for aux in auxiliaries:
                            names.add(aux.name)
            versions = [v for v in (glibc_version(n) for n in names) if v]
            if versions:
                return max(versions), frozenset(names)
    return None


def _in_root(rootfs: Path, path: Path) -> Path:
    """Resolve a symlink inside a rootfs (absolute targets are relative to the rootfs)."""
    seen = 0
    while path.is_symlink() and seen < 20:
        target = Path(path.readlink())
        path = rootfs / str(target).lstrip("/") if target.is_absolute() else path.parent / target
        seen += 1
    return path


def _exists_in(rootfs: Path, absolute: str) -> bool:
    candidate = rootfs / absolute.lstrip("/")
    return candidate.exists() or _in_root(rootfs, candidate).exists()


def lint_slug(
    contents: SlugContents,
    rootfs: Path,
    build_paths: Iterable[str] = (),
    skip: tuple[str, ...] = (),
    path: Sequence[str] = (),
) -> list[Lint]:
    """Run every lint over a slug's contents against the target stack's rootfs.

    Paths starting with one of ``skip`` (a shipped source tree, which is built, not
    run) are left out. ``path``: directories the slug's ``.profile.d`` puts first on
    PATH (the vendored runtime's bin), where ``#!/usr/bin/env NAME`` also looks.
    """
    findings: list[Lint] = []
    needles = [p.encode() for p in build_paths if p]
    glibc = stack_glibc(rootfs)
    slug_paths = {f"{APP}/{p}" for p in contents.entries}
    for path, entry in sorted(contents.entries.items()):
        if entry.kind != "file" or path.startswith(skip):
            continue
        data = contents.read(entry)
        where = f"{APP}/{path}"
        for needle in needles:
            if needle in data:
                findings.append(
                    Lint(
                        "build-path",
                        where,
                        f"contains the build path {needle.decode()}, which does "
                        "not exist at run time",
                    )
                )
                break
        if data[:4] == b"\x7fELF":
            findings += _lint_elf(where, data, rootfs, glibc)
        elif data[:2] == b"#!":
            findings += _lint_shebang(where, data, rootfs, slug_paths, path)
    return findings


def _lint_shebang(
    where: str, data: bytes, rootfs: Path, slug_paths: set[str], path: Sequence[str] = ()
) -> list[Lint]:
    line = data.split(b"\n", 1)[0][2:].decode("utf-8", "replace").strip()
    if not line:
        return [Lint("shebang", where, "empty #! line")]
    words = line.split()
    interpreter = words[0]

    def present(p: str) -> bool:
        return p in slug_paths if p.startswith(APP + "/") else _exists_in(rootfs, p)

    if not present(interpreter):
        return [
            Lint(
                "shebang",
                where,
                f"interpreter {interpreter} exists neither in the slug nor in the stack",
            )
        ]
    if interpreter.endswith("/env") and len(words) > 1 and not words[1].startswith("-"):
        command = words[1]
        dirs = [*path, "/app/bin", "/usr/local/bin", "/usr/bin", "/bin"]
        if not any(present(f"{d}/{command}") for d in dirs):
            return [
                Lint(
                    "shebang",
                    where,
                    f"'{command}' (run through env) is not on the stack's PATH nor in /app/bin",
                )
            ]
    return []


def _lint_elf(
    where: str, data: bytes, rootfs: Path, glibc: tuple[tuple[int, ...], frozenset[str]] | None
) -> list[Lint]:
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerNeedSection, GNUVerSymSection
    from elftools.elf.sections import SymbolTableSection
    from elftools.elf.segments import InterpSegment

    findings: list[Lint] = []
    try:
        elf = ELFFile(io.BytesIO(data))
        for segment in elf.iter_segments():
            if isinstance(segment, InterpSegment):
                interp = segment.get_interp_name()
                if not (interp.startswith(APP + "/") or _exists_in(rootfs, interp)):
                    findings.append(
                        Lint(
                            "interpreter",
                            where,
                            f"program interpreter {interp} is not in the stack",
                        )
                    )
        needed_versions: dict[int, str] = {}
        versym = None
        dynsym = elf.get_section_by_name(".dynsym")
        for section in elf.iter_sections():
            if isinstance(section, DynamicSection):
                for tag in section.iter_tags():
                    if tag.entry.d_tag in ("DT_RPATH", "DT_RUNPATH"):
                        # pyelftools sets .rpath/.runpath on these tags dynamically
                        name = "rpath" if tag.entry.d_tag == "DT_RPATH" else "runpath"
                        value = getattr(tag, name)
                        for item in value.split(":"):
                            if item and not _rpath_ok(item, rootfs):
                                findings.append(
                                    Lint(
                                        "rpath",
                                        where,
                                        f"{tag.entry.d_tag[3:]} entry {item} is "
                                        "outside /app and the stack",
                                    )
                                )
            elif isinstance(section, GNUVerNeedSection):
                for _verneed, auxiliaries in section.iter_versions():
                    for aux in auxiliaries:
                        needed_versions[aux["vna_other"]] = aux.name
            elif isinstance(section, GNUVerSymSection):
                versym = section
    except (ELFError, ValueError, KeyError) as exc:
        return [Lint("elf", where, f"cannot be parsed as ELF: {exc}")]

    if glibc is None:
        return findings
    newest, provided = glibc
    too_new = {
        name
        for name in needed_versions.values()
        if (v := glibc_version(name)) and (v > newest or name not in provided)
    }
    if too_new:
        symbols: list[str] = []
        if versym is not None and isinstance(dynsym, SymbolTableSection):
            for index, symbol in enumerate(dynsym.iter_symbols()):
                version = versym.get_symbol(index)["ndx"]
                if isinstance(version, int) and needed_versions.get(version) in too_new:
                    symbols.append(f"{symbol.name}@{needed_versions[version]}")
        worst = max(too_new, key=lambda n: glibc_version(n) or ())
        have = ".".join(str(x) for x in newest)
        findings.append(
            Lint(
                "glibc",
                where,
                f"needs {worst} but the stack's glibc provides up to GLIBC_{have}"
                + (f" (symbols: {', '.join(sorted(symbols)[:5])})" if symbols else "")
                + "; build it on the target stack",
            )
        )
    return findings


def _rpath_ok(item: str, rootfs: Path) -> bool:
    if item.startswith(("$ORIGIN", "${ORIGIN}")) or item == APP or item.startswith(APP + "/"):
        return True
    return item.startswith("/") and _exists_in(rootfs, item)
