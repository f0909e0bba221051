"""Why do two files differ? Per-file analysis for ``invoke diff-stages``.

Three kinds of files are understood:

- **ELF** (with pyelftools): which sections differ and by how many bytes, symbols
  added, removed or changed, the build-id notes, and whether the difference survives
  stripping debug information (GCC's compare-debug idea);
- **ar archives** (``.a``): member by member, each member analysed as a file;
- **anything else**: the first differing offset and a short text or hex diff.

Every differing file also gets the *strings-diff count*: the number of lines printed by
``diff <(strings a) <(strings b)``, as in the classic LLVM-on-Heroku demo, and a
**likely cause** with its evidence, one of:

``timestamp``  dates or times in the differing strings (``__DATE__``, ``__TIME__``)
``build-path`` absolute paths in the differing strings (build directories)
``generated-names`` strings that differ only in their digits (gensym counters such as
               ``G2287``, numbered temporaries): a generator's counter moved
``build-id``   only the ``.note.gnu.build-id`` differs
``debug-info`` only debug sections differ (or exist on one side only)
``ordering``   same sections sizes and symbols, laid out in a different order (or an
               archive's members in another order)
``code``       code sections differ beyond the above
``metadata``   only what an archive records about identical members: owners, modes
``compression`` the same payload compressed differently
``unknown``    none of the above fits: the first differing bytes are shown in context,
               with the ELF section they belong to

gzip, tar and zip files (and ``ar`` member headers) are opened by
:mod:`selfhost.stages.containers`: their members are analysed as files, and dates,
owners, modes and order in their headers are named (``timestamp`` for a gzip MTIME or a
member's date).
"""

from __future__ import annotations

import difflib
import io
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

ELF_MAGIC = b"\x7fELF"
AR_MAGIC = b"!<arch>\n"
AR_FIELDS = ((16, 28), (28, 34), (34, 40))  # an ar header's date, uid and gid (decimal)
DEBUG_PREFIXES = (".debug", ".zdebug", ".stab", ".gnu_debuglink", ".gnu_debugaltlink")
BUILD_ID = ".note.gnu.build-id"
#: Sections whose bytes encode symbol tables: compared as symbols, not as bytes.
SYMBOL_SECTIONS = (".symtab", ".strtab", ".shstrtab")
MAX_EVIDENCE = 5

MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
TIMESTAMP_RE = re.compile(
    rf"\b(?:{MONTHS}) [ 0-3]\d \d{{4}}\b"  # __DATE__
    r"|\b[0-2]\d:[0-5]\d:[0-5]\d\b"  # __TIME__
    r"|\b(?:19|20)\d\d-[01]\d-[0-3]\d(?:[T ][0-2]\d:[0-5]\d)?"  # ISO dates
)
PATH_RE = re.compile(r"(?:^|[\s=:'\"])(/(?:[\w.+-]+/)+[\w.+-]*)")
DIGITS_RE = re.compile(r"[0-9]+")
STRINGS_RE = re.compile(rb"[\x20-\x7e\t]{4,}")


class Cause(StrEnum):
    """The likely cause of a difference."""

    TIMESTAMP = "timestamp"
    BUILD_PATH = "build-path"
    GENERATED_NAMES = "generated-names"
    BUILD_ID = "build-id"
    DEBUG_INFO = "debug-info"
    ORDERING = "ordering"
    CODE = "code"
    METADATA = "metadata"
    COMPRESSION = "compression"
    UNKNOWN = "unknown"


#: When several members of an archive differ, the archive's cause is the most telling
#: one: a code difference in one member explains it best.
SEVERITY = [
    Cause.CODE,
    Cause.ORDERING,
    Cause.TIMESTAMP,
    Cause.BUILD_PATH,
    Cause.GENERATED_NAMES,
    Cause.METADATA,
    Cause.COMPRESSION,
    Cause.DEBUG_INFO,
    Cause.BUILD_ID,
    Cause.UNKNOWN,
]


@dataclass
class SectionDiff:
    """One section that differs (or exists on one side only)."""

    name: str
    differing_bytes: int
    left_size: int | None
    right_size: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "differing_bytes": self.differing_bytes,
            "left_size": self.left_size,
            "right_size": self.right_size,
        }


@dataclass
class FileAnalysis:
    """What is known about one differing pair of files."""

    kind: str  # "elf" | "archive" | "data" | "text"
    cause: Cause
    evidence: list[str] = field(default_factory=list)
    sections: list[SectionDiff] = field(default_factory=list)
    strings_diff_lines: int | None = None
    symbols: dict[str, Any] | None = None
    build_id: dict[str, str | None] | None = None
    survives_strip: bool | None = None
    members: list[dict[str, Any]] | None = None
    first_difference: int | None = None
    excerpt: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "cause": self.cause.value,
            "evidence": self.evidence,
            "sections": [s.to_json() for s in self.sections],
            "strings_diff_lines": self.strings_diff_lines,
        }
        for key in (
            "symbols",
            "build_id",
            "survives_strip",
            "members",
            "first_difference",
            "excerpt",
        ):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


# ----------------------------------------------------------------------- entry point


def analyse(left: bytes, right: bytes, name: str = "") -> FileAnalysis:
    """Explain why ``left`` and ``right`` (the two versions of one file) differ."""
    if left[:4] == ELF_MAGIC and right[:4] == ELF_MAGIC:
        result = analyse_elf(left, right)
    elif left[:8] == AR_MAGIC and right[:8] == AR_MAGIC:
        result = analyse_archive(left, right)
    else:
        from selfhost.stages.containers import analyse_container

        result = analyse_container(left, right) or analyse_other(left, right)
    if result.strings_diff_lines is None:
        result.strings_diff_lines = strings_diff_count(left, right)
    return result


# ----------------------------------------------------------------------- strings


def strings_of(data: bytes) -> list[str]:
    """What ``strings`` prints: runs of at least 4 printable ASCII characters."""
    return [m.decode("ascii") for m in STRINGS_RE.findall(data)]


def strings_diff_count(left: bytes, right: bytes) -> int:
    """The number of lines of ``diff <(strings a) <(strings b)``."""
    a, b = strings_of(left), strings_of(right)
    if a == b:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        pa, pb = Path(tmp, "a"), Path(tmp, "b")
        pa.write_text("\n".join(a) + "\n")
        pb.write_text("\n".join(b) + "\n")
        try:
            out = subprocess.run(["diff", str(pa), str(pb)], capture_output=True, check=False)
            return out.stdout.count(b"\n")
        except FileNotFoundError:  # no diffutils: count difflib's changed lines instead
            return sum(
                1
                for line in difflib.unified_diff(a, b, n=0, lineterm="")
                if line[:1] in "+-" and not line.startswith(("+++", "---"))
            )


def differing_strings(left: bytes, right: bytes) -> tuple[list[str], list[str]]:
    """Strings found on one side only, in order of appearance.

    A string present on both sides a different number of times (string merging,
    duplicated literals) is not evidence of anything, so these are set differences.
    """
    a, b = strings_of(left), strings_of(right)
    sa, sb = set(a), set(b)
    return list(dict.fromkeys(s for s in a if s not in sb)), list(
        dict.fromkeys(s for s in b if s not in sa)
    )


def _timestamps(strings: list[str]) -> list[str]:
    return [s for s in strings if TIMESTAMP_RE.search(s)]


def _paths(strings: list[str]) -> list[str]:
    return [s for s in strings if PATH_RE.search(s)]


def classify_strings(only_left: list[str], only_right: list[str]) -> tuple[Cause, list[str]] | None:
    """A cause suggested by the differing strings alone, with evidence: the same kind of
    string on both sides with different values, making up at least half of what differs
    (two compilers' binaries differ in thousands of strings, a few of which are paths:
    that is code, not a build path)."""
    total = len(only_left) + len(only_right)
    for finder, cause in ((_timestamps, Cause.TIMESTAMP), (_paths, Cause.BUILD_PATH)):
        a, b = finder(only_left), finder(only_right)
        if a and b and 2 * (len(a) + len(b)) >= total:
            evidence = [f"left:  {s}" for s in a[:MAX_EVIDENCE]] + [
                f"right: {s}" for s in b[:MAX_EVIDENCE]
            ]
            return cause, evidence
    # the same strings but for their digits: generated names whose counter moved
    left_by_shape: dict[str, list[str]] = {}
    for s in only_left:
        left_by_shape.setdefault(DIGITS_RE.sub("#", s), []).append(s)
    pairs = []
    for s in only_right:
        shape = DIGITS_RE.sub("#", s)
        if shape != s and left_by_shape.get(shape):
            pairs.append((left_by_shape[shape].pop(0), s))
    if pairs and 4 * len(pairs) >= total:
        evidence = [f"{a} / {b}" for a, b in pairs[:MAX_EVIDENCE]]
        evidence.append(f"{len(pairs)} string(s) differ only in their digits")
        return Cause.GENERATED_NAMES, evidence
    return None


# ----------------------------------------------------------------------- ELF


@dataclass
class _Section:
    name: str
    data: bytes
    size: int
    flags: int
    nobits: bool
    offset: int = 0  # in the file


@dataclass
class _Elf:
    sections: dict[str, _Section]
    symbols: dict[str, tuple[int, int, str, str, str]]  # name -> (value, size, type, bind, section)
    build_id: str | None


def _load_elf(data: bytes) -> _Elf:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import NoteSection, SymbolTableSection

    elf = ELFFile(io.BytesIO(data))
    sections: dict[str, _Section] = {}
    symbols: dict[str, tuple[int, int, str, str, str]] = {}
    build_id = None
    names = [s.name for s in elf.iter_sections()]
    dynsym: dict[str, tuple[int, int, str, str, str]] = {}
    for section in elf.iter_sections():
        nobits = section["sh_type"] == "SHT_NOBITS"
        name = section.name
        if name in sections:  # duplicate names (rare in linked files): keep them apart
            name = f"{name}#{sum(1 for n in sections if n.split('#')[0] == name)}"
        sections[name] = _Section(
            name,
            b"" if nobits else section.data(),
            section["sh_size"],
            section["sh_flags"],
            nobits,
            section["sh_offset"],
        )
        if isinstance(section, SymbolTableSection):
            table = symbols if section.name == ".symtab" else dynsym
            for sym in section.iter_symbols():
                if not sym.name:
                    continue
                shndx = sym["st_shndx"]
                known = isinstance(shndx, int) and shndx < len(names)
                where = names[shndx] if known else str(shndx)
                table[sym.name] = (
                    sym["st_value"],
                    sym["st_size"],
                    sym["st_info"]["type"],
                    sym["st_info"]["bind"],
                    where,
                )
        if isinstance(section, NoteSection):
            for note in section.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID":
                    build_id = note["n_desc"]
    return _Elf(sections, symbols or dynsym, build_id)


def differing_bytes(a: bytes, b: bytes) -> int:
    """Bytes that differ at the same offsets, plus the difference in length."""
    common = min(len(a), len(b))
    count = abs(len(a) - len(b))
    if a[:common] == b[:common]:
        return count
    # Compare 64-byte blocks first so identical stretches cost one comparison each.
    block = 64
    for start in range(0, common, block):
        x, y = a[start : start + block], b[start : start + block]
        if x != y:
            count += sum(1 for i, j in zip(x, y, strict=False) if i != j)
    return count


def _is_debug(name: str) -> bool:
    return name.startswith(DEBUG_PREFIXES) or name.startswith(".rela.debug")


def analyse_elf(left: bytes, right: bytes) -> FileAnalysis:
    """Sections, symbols, build-ids, strip-survival and the likely cause of an ELF pair."""
    try:
        a, b = _load_elf(left), _load_elf(right)
    except Exception as exc:  # a truncated or exotic ELF: fall back to plain bytes
        result = analyse_other(left, right)
        result.evidence.insert(0, f"not parseable as ELF: {exc}")
        return result

    sections: list[SectionDiff] = []
    for name in list(a.sections) + [n for n in b.sections if n not in a.sections]:
        sa, sb = a.sections.get(name), b.sections.get(name)
        if sa and sb:
            if sa.nobits or sb.nobits:
                n = abs(sa.size - sb.size)
            else:
                n = differing_bytes(sa.data, sb.data)
            if n:
                sections.append(SectionDiff(name, n, sa.size, sb.size))
        else:
            present = sa or sb
            assert present is not None
            sections.append(
                SectionDiff(name, present.size, sa.size if sa else None, sb.size if sb else None)
            )

    # Symbols: added, removed, changed (size, type, binding, section), moved (address only).
    added = sorted(set(b.symbols) - set(a.symbols))
    removed = sorted(set(a.symbols) - set(b.symbols))
    changed, moved = [], []
    for sym in sorted(set(a.symbols) & set(b.symbols)):
        va, vb = a.symbols[sym], b.symbols[sym]
        if va[1:] != vb[1:]:
            changed.append(sym)
        elif va[0] != vb[0]:
            moved.append(sym)
    symbols = {
        "added": added[:50],
        "removed": removed[:50],
        "changed": changed[:50],
        "moved": len(moved),
        "added_count": len(added),
        "removed_count": len(removed),
        "changed_count": len(changed),
    }

    names = {s.name for s in sections}
    significant = {
        n for n in names if not _is_debug(n) and n != BUILD_ID and n not in SYMBOL_SECTIONS
    }
    symbols_differ = bool(added or removed or changed)
    survives_strip = bool(significant) or symbols_differ
    result = FileAnalysis(
        kind="elf",
        cause=Cause.UNKNOWN,
        sections=sections,
        symbols=symbols,
        build_id={"left": a.build_id, "right": b.build_id},
        survives_strip=survives_strip,
    )
    result.sections.sort(key=lambda s: -s.differing_bytes)

    if (
        names <= {BUILD_ID} | set(SYMBOL_SECTIONS)
        and not symbols_differ
        and a.build_id != b.build_id
    ):
        result.cause = Cause.BUILD_ID
        result.evidence = [f"build-id {a.build_id} vs {b.build_id}; nothing else differs"]
        return result

    debug_left = {n for n in a.sections if _is_debug(n)}
    debug_right = {n for n in b.sections if _is_debug(n)}
    if not survives_strip:
        if debug_left != debug_right and (not debug_left or not debug_right):
            result.cause = Cause.DEBUG_INFO
            side = "left" if debug_left else "right"
            result.evidence = [
                f"only the {side} has debug sections "
                f"({', '.join(sorted(debug_left or debug_right)[:4])})",
                "identical once debug info is stripped",
            ]
            return result
        only_l, only_r = _section_strings(a, b, debug=True)
        hit = classify_strings(only_l, only_r)
        if hit:
            result.cause, result.evidence = hit
            result.evidence.append("only debug sections differ")
            return result
        result.cause = Cause.DEBUG_INFO
        result.evidence = [
            "only debug sections differ: "
            + ", ".join(s.name for s in sections if _is_debug(s.name))[:200]
        ]
        return result

    only_l, only_r = _section_strings(a, b, debug=False)
    hit = classify_strings(only_l, only_r)
    if hit:
        result.cause, result.evidence = hit
        return result
    same_layout = all(s.left_size == s.right_size for s in sections)
    if same_layout and not symbols_differ and moved:
        result.cause = Cause.ORDERING
        result.evidence = [
            f"same section sizes and symbols; {len(moved)} symbol(s) at other "
            f"addresses, e.g. {', '.join(moved[:3])}"
        ]
        return result
    code = [s for s in sections if _is_code(a, b, s.name)]
    if code:
        result.cause = Cause.CODE
        result.evidence = [
            f"{s.name}: {s.differing_bytes} bytes differ "
            f"({_size(s.left_size)} vs {_size(s.right_size)})"
            for s in code[:3]
        ]
        if changed:
            result.evidence.append(
                f"{len(changed)} symbol(s) changed size or kind, e.g. " + ", ".join(changed[:3])
            )
        return result
    result.evidence = ["differing sections: " + ", ".join(sorted(significant))[:200]]
    _show_first_difference(result, left, right, a, b, significant)
    return result


def _first_difference(x: bytes, y: bytes) -> int | None:
    if x == y:
        return None
    return next(
        (i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y))
    )


def _show_first_difference(
    result: FileAnalysis, left: bytes, right: bytes, a: _Elf, b: _Elf, significant: set[str]
) -> None:
    """For a difference nothing explains: where its first byte is, in which section
    (the first significant one that differs; a build-id that follows from it is not
    the difference), with the bytes around it."""
    offset, where = None, ""
    for section in sorted(a.sections.values(), key=lambda sec: sec.offset):
        other = b.sections.get(section.name)
        if section.name not in significant or other is None or section.nobits:
            continue
        inside = _first_difference(section.data, other.data)
        if inside is not None:
            offset, where = section.offset + inside, f"{section.name} +0x{inside:x}"
            break
    if offset is None:
        offset = _first_difference(left, right) or 0
        where = "the ELF header or program headers" if offset < 64 else "no section"
        for section in a.sections.values():
            if not section.nobits and section.offset <= offset < section.offset + section.size:
                where = f"{section.name} +0x{offset - section.offset:x}"
                break
    start = max(0, offset - 16)
    result.first_difference = offset
    result.excerpt = [
        f"left  {start:08x}: {left[start : start + 48].hex(' ')}",
        f"right {start:08x}: {right[start : start + 48].hex(' ')}",
    ]
    result.evidence.append(f"first difference at byte {offset} (0x{offset:x}), in {where}")


def _size(size: int | None) -> str:
    return "absent" if size is None else f"{size} bytes"


def _is_code(a: _Elf, b: _Elf, name: str) -> bool:
    shf_execinstr = 0x4
    section = a.sections.get(name) or b.sections.get(name)
    return bool(section and section.flags & shf_execinstr)


def _section_strings(a: _Elf, b: _Elf, *, debug: bool) -> tuple[list[str], list[str]]:
    """Differing strings of the debug (or the non-debug) sections of two ELF files."""

    def blob(elf: _Elf) -> bytes:
        return b"\0".join(
            s.data
            for n, s in elf.sections.items()
            if _is_debug(n) == debug and n not in (BUILD_ID, *SYMBOL_SECTIONS)
        )

    return differing_strings(blob(a), blob(b))


# ----------------------------------------------------------------------- archives


def ar_entries(data: bytes) -> list[tuple[str, bytes, tuple[int, int, int, int]]]:
    """The members of a System V / GNU ``ar`` archive, in order (symbol tables skipped),
    each with its header's date, uid, gid and mode."""
    if not data.startswith(AR_MAGIC):
        raise ValueError("not an ar archive")
    members: list[tuple[str, bytes, tuple[int, int, int, int]]] = []
    long_names = b""
    pos = len(AR_MAGIC)
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").rstrip()
        size = int(header[48:58].decode("ascii").strip() or 0)
        body = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)  # members are 2-byte aligned
        if name in ("/", "/SYM64/", "__.SYMDEF", "__.SYMDEF SORTED"):
            continue  # the symbol index, rebuilt by ranlib; not a member
        if name == "//":
            long_names = body
            continue
        if name.startswith("/") and name[1:].isdigit():
            offset = int(name[1:])
            end = long_names.find(b"/\n", offset)
            name = long_names[offset : end if end >= 0 else None].decode("utf-8", "replace")
        elif name.startswith("#1/"):  # BSD long names: the name precedes the body
            length = int(name[3:])
            name, body = body[:length].rstrip(b"\0").decode("utf-8", "replace"), body[length:]
        else:
            name = name.rstrip("/")
        date, uid, gid = (_number(header[a:b]) for a, b in AR_FIELDS)
        mode = _number(header[40:48], 8)
        members.append((name, body, (date, uid, gid, mode)))
    return members


def _number(field: bytes, base: int = 10) -> int:
    """A header field as a number; blank or garbled is 0 (it only informs a cause)."""
    try:
        return int(field.decode("ascii").strip() or "0", base)
    except ValueError:
        return 0


def ar_members(data: bytes) -> list[tuple[str, bytes]]:
    """The members of an ``ar`` archive, in order: names and contents."""
    return [(name, body) for name, body, _ in ar_entries(data)]


def analyse_archive(left: bytes, right: bytes) -> FileAnalysis:
    """Compare two archives member by member; the archive's cause is the members' worst."""
    try:
        ma, mb = ar_members(left), ar_members(right)
    except (ValueError, UnicodeDecodeError) as exc:
        result = analyse_other(left, right)
        result.evidence.insert(0, f"not parseable as an archive: {exc}")
        return result
    keyed_a = _key_members(ma)
    keyed_b = _key_members(mb)
    members: list[dict[str, Any]] = []
    causes: Counter[Cause] = Counter()
    sections: Counter[str] = Counter()
    for key in list(keyed_a) + [k for k in keyed_b if k not in keyed_a]:
        da, db = keyed_a.get(key), keyed_b.get(key)
        if da == db:
            continue
        if da is None or db is None:
            members.append({"name": key, "status": "only-left" if db is None else "only-right"})
            causes[Cause.UNKNOWN] += 1
            continue
        sub = analyse(da, db, key)
        members.append({"name": key, "status": "different", **sub.to_json()})
        causes[sub.cause] += 1
        for s in sub.sections:
            sections[s.name] += s.differing_bytes
    header_only = not members
    if causes:
        cause = min(causes, key=SEVERITY.index)
    elif [n for n, _ in ma] != [n for n, _ in mb]:
        cause = Cause.ORDERING
    else:
        cause = Cause.UNKNOWN
    evidence = [f"{len(members)} of {max(len(ma), len(mb))} members differ"]
    if header_only:
        evidence = ["every member is identical; only member order or headers differ"]
        if cause is Cause.UNKNOWN:  # the headers, then: dates (ar without D), owners
            from selfhost.stages.containers import ar_header_members, compare_members

            headers = compare_members("archive", ar_header_members(left), ar_header_members(right))
            cause = headers.cause
            evidence += headers.evidence
    evidence += [f"{m['name']}: {m.get('cause', m['status'])}" for m in members[:MAX_EVIDENCE]]
    return FileAnalysis(
        kind="archive",
        cause=cause,
        evidence=evidence,
        sections=[SectionDiff(n, c, None, None) for n, c in sections.most_common()],
        members=members,
    )


def numbered(names: list[str]) -> list[str]:
    """Names as keys, duplicates numbered (``a.o``, ``a.o#2``): an archive may hold two
    members of one name."""
    seen: Counter[str] = Counter()
    out = []
    for name in names:
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def _key_members(members: list[tuple[str, bytes]]) -> dict[str, bytes]:
    """Key members by name, numbering duplicates."""
    return dict(zip(numbered([n for n, _ in members]), (b for _, b in members), strict=True))


# ----------------------------------------------------------------------- other files


def analyse_other(left: bytes, right: bytes) -> FileAnalysis:
    """The first differing offset and a short text or hex excerpt."""
    offset = next(
        (i for i, (x, y) in enumerate(zip(left, right, strict=False)) if x != y),
        min(len(left), len(right)),
    )
    text = _as_text(left) is not None and _as_text(right) is not None
    if text:
        a, b = _as_text(left) or "", _as_text(right) or ""
        excerpt = [
            line
            for line in difflib.unified_diff(
                a.splitlines(), b.splitlines(), "left", "right", n=1, lineterm=""
            )
        ][:20]
    else:
        start = max(0, offset - 8)
        excerpt = [
            f"left  {start:08x}: {left[start : start + 24].hex(' ')}",
            f"right {start:08x}: {right[start : start + 24].hex(' ')}",
        ]
    only_l, only_r = differing_strings(left, right)
    hit = classify_strings(only_l, only_r)
    if text and not hit and sorted(left.splitlines()) == sorted(right.splitlines()):
        lines = len(left.splitlines())
        hit = (Cause.ORDERING, [f"the same {lines} lines in another order (readdir, a hash)"])
    cause, evidence = hit if hit else (Cause.UNKNOWN, [f"first difference at byte {offset}"])
    return FileAnalysis(
        kind="text" if text else "data",
        cause=cause,
        evidence=evidence,
        first_difference=offset,
        excerpt=excerpt,
    )


def _as_text(data: bytes) -> str | None:
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
