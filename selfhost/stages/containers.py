"""Why do two containers differ? gzip, tar and zip files for ``invoke diff-stages``
(``ar`` archives are in :mod:`selfhost.stages.analysis`, with their member headers here).

Each format is opened and compared part by part, and what differs is named: a member's
content (analysed in turn as a file, so a tar in a gzip in a tar is followed down), or
only what the container says about it, the causes the reproducible-builds project
lists first:

- **timestamps** in headers: a gzip's MTIME (``gzip`` without ``-n``), a tar member's
  mtime (``tar`` without ``--mtime``/``--clamp-mtime``), a zip entry's DOS date and
  time, an ``ar`` member's date (``ar`` without ``D``);
- **build paths**: the original file name in a gzip header;
- **metadata**: owners, groups and modes recorded for members (``--owner``,
  ``--numeric-owner``, umask);
- **ordering**: the same members in another order (file system order, ``sort`` under
  another locale);
- **compression**: the same payload compressed differently (level, OS byte, flags).
"""

from __future__ import annotations

import contextvars
import gzip
import io
import struct
import tarfile
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from selfhost.stages.analysis import (
    MAX_EVIDENCE,
    SEVERITY,
    Cause,
    FileAnalysis,
    analyse,
    ar_entries,
    differing_bytes,
    numbered,
)

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
#: Build outputs are what hostile build steps wrote: a compression bomb must not take
#: the host's memory. A decompressed payload or zip member larger than this is not
#: opened (the pair is compared as data), nor is a container nested deeper than
#: MAX_DEPTH (a gzip in a tar in a gzip ...).
MAX_PAYLOAD = 256 * 1024 * 1024
MAX_DEPTH = 4
_depth = contextvars.ContextVar("container_depth", default=0)


def is_tar(data: bytes) -> bool:
    return len(data) >= 512 and data[257:262] == b"ustar"


def kind_of(data: bytes) -> str | None:
    """``gzip``, ``zip`` or ``tar`` if ``data`` is one, else None."""
    if data[:2] == GZIP_MAGIC:
        return "gzip"
    if data[:4] == ZIP_MAGIC:
        return "zip"
    if is_tar(data):
        return "tar"
    return None


# ----------------------------------------------------------------------- members


@dataclass
class Member:
    """One member of a container: its name, content and what the container records."""

    name: str
    data: bytes
    mtime: float | str | None = None
    owner: tuple[Any, ...] = ()  # (uid, gid, uname, gname), what the format records
    mode: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def compare_members(kind: str, left: list[Member], right: list[Member]) -> FileAnalysis:
    """Member by member: contents (analysed as files), then what the headers record."""
    keyed_a, keyed_b = _keyed(left), _keyed(right)
    members: list[dict[str, Any]] = []
    causes: Counter[Cause] = Counter()
    evidence: list[str] = []
    stamps, metas = [], []
    for key in list(keyed_a) + [k for k in keyed_b if k not in keyed_a]:
        a, b = keyed_a.get(key), keyed_b.get(key)
        if a is None or b is None:
            members.append({"name": key, "status": "only-left" if b is None else "only-right"})
            causes[Cause.UNKNOWN] += 1
            continue
        if a.data != b.data:
            sub = analyse(a.data, b.data, key)
            members.append({"name": key, "status": "different", **sub.to_json()})
            causes[sub.cause] += 1
            continue
        if a.mtime != b.mtime:
            stamps.append(f"{key}: mtime {_stamp(a.mtime)} / {_stamp(b.mtime)}")
        if a.owner != b.owner or a.mode != b.mode or a.extra != b.extra:
            metas.append(f"{key}: {_meta(a)} / {_meta(b)}")
    order_a = [m.name for m in left if m.name in keyed_b]
    order_b = [m.name for m in right if m.name in keyed_a]
    reordered = order_a != order_b
    if causes:
        cause = min(causes, key=SEVERITY.index)
        evidence.append(f"{len(members)} of {max(len(left), len(right))} members differ")
    elif reordered:
        cause = Cause.ORDERING
        evidence.append("the same members in another order: " + _first_swap(order_a, order_b))
    elif stamps:
        cause = Cause.TIMESTAMP
    elif metas:
        cause = Cause.METADATA
    else:
        cause = Cause.UNKNOWN
    evidence += [f"{m['name']}: {m.get('cause', m['status'])}" for m in members[:MAX_EVIDENCE]]
    if stamps:
        evidence.append(f"{len(stamps)} member dates differ, e.g. {stamps[0]}")
    if metas:
        evidence.append(f"{len(metas)} members' owners or modes differ, e.g. {metas[0]}")
    return FileAnalysis(kind=kind, cause=cause, evidence=evidence, members=members)


def _keyed(members: list[Member]) -> dict[str, Member]:
    return dict(zip(numbered([m.name for m in members]), members, strict=True))


def _first_swap(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"position {i}: {x} / {y}"
    return "lengths differ"


def _stamp(value: float | str | None) -> str:
    if value is None:
        return "none"
    return value if isinstance(value, str) else f"{value:g}"


def _meta(m: Member) -> str:
    mode = "" if m.mode is None else f" mode {m.mode:o}"
    owner = ":".join(str(x) for x in m.owner)
    return (owner + mode + "".join(f" {k}={v}" for k, v in m.extra.items())).strip()


# ----------------------------------------------------------------------- formats


def analyse_container(left: bytes, right: bytes) -> FileAnalysis | None:
    """The analysis of two gzip, tar or zip files (None if they are not the same kind,
    or one does not open: then they are plain data)."""
    kind = kind_of(left)
    if kind is None or kind != kind_of(right) or _depth.get() >= MAX_DEPTH:
        return None
    token = _depth.set(_depth.get() + 1)
    try:
        if kind == "gzip":
            return analyse_gzip(left, right)
        if kind == "tar":
            return compare_members("tar", tar_members(left), tar_members(right))
        return compare_members("zip", zip_members(left), zip_members(right))
    except (OSError, EOFError, ValueError, zlib.error, tarfile.TarError, zipfile.BadZipFile):
        return None
    finally:
        _depth.reset(token)


@dataclass
class GzipHeader:
    flags: int
    mtime: int
    xfl: int
    os: int
    name: bytes | None


def gzip_header(data: bytes) -> GzipHeader:
    """The fixed header of a gzip member and its original file name, if any (RFC 1952)."""
    if len(data) < 10 or data[:2] != GZIP_MAGIC:
        raise ValueError("not gzip")
    flags, mtime, xfl, os_byte = data[3], struct.unpack("<I", data[4:8])[0], data[8], data[9]
    pos = 10
    if flags & 0x04:  # FEXTRA
        pos += 2 + struct.unpack("<H", data[pos : pos + 2])[0]
    name = None
    if flags & 0x08:  # FNAME
        end = data.index(b"\0", pos)
        name = data[pos:end]
    return GzipHeader(flags, mtime, xfl, os_byte, name)


def _gunzip(data: bytes) -> bytes:
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
        out = f.read(MAX_PAYLOAD + 1)
    if len(out) > MAX_PAYLOAD:
        raise ValueError("payload too large to compare")
    return out


def analyse_gzip(left: bytes, right: bytes) -> FileAnalysis:
    ha, hb = gzip_header(left), gzip_header(right)
    pa, pb = _gunzip(left), _gunzip(right)
    header: list[str] = []
    if ha.mtime != hb.mtime:
        header.append(f"gzip header MTIME {ha.mtime} / {hb.mtime} (gzip -n leaves it out)")
    if ha.name != hb.name:
        header.append(f"gzip header file name {ha.name!r} / {hb.name!r}")
    if (ha.flags, ha.xfl, ha.os) != (hb.flags, hb.xfl, hb.os):
        header.append(
            f"gzip header flags/XFL/OS {ha.flags}/{ha.xfl}/{ha.os} / {hb.flags}/{hb.xfl}/{hb.os}"
        )
    if pa != pb:
        sub = analyse(pa, pb, "(payload)")
        return FileAnalysis(
            kind="gzip",
            cause=sub.cause,
            evidence=["the decompressed payloads differ", *sub.evidence, *header],
            members=[{"name": "(payload)", "status": "different", **sub.to_json()}],
        )
    if ha.mtime != hb.mtime:
        cause = Cause.TIMESTAMP
    elif ha.name != hb.name:
        name = ha.name or hb.name or b""
        cause = Cause.BUILD_PATH if name.startswith(b"/") else Cause.METADATA
    else:
        cause = Cause.COMPRESSION
        header.append(
            f"the same payload compressed differently ({differing_bytes(left, right)} "
            "bytes differ): another level, zlib version or a concatenated member"
        )
    return FileAnalysis(kind="gzip", cause=cause, evidence=["the payloads are identical", *header])


def tar_members(data: bytes) -> list[Member]:
    out: list[Member] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            content = b""
            if info.isfile():
                extracted = tar.extractfile(info)
                content = extracted.read() if extracted else b""
            elif info.issym() or info.islnk():
                content = f"-> {info.linkname}".encode()
            out.append(
                Member(
                    info.name,
                    content,
                    mtime=info.mtime,
                    owner=(info.uid, info.gid, info.uname, info.gname),
                    mode=info.mode,
                    extra={"pax": dict(sorted(info.pax_headers.items()))}
                    if info.pax_headers
                    else {},
                )
            )
    return out


def zip_members(data: bytes) -> list[Member]:
    out: list[Member] = []
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            if info.file_size > MAX_PAYLOAD:
                raise ValueError(f"{info.filename}: {info.file_size} bytes unpacked, too many")
            out.append(
                Member(
                    info.filename,
                    z.read(info),
                    mtime="{:04d}-{:02d}-{:02d} {:02d}:{:02d}:{:02d}".format(*info.date_time),
                    mode=info.external_attr >> 16 or None,
                    extra={"extra": info.extra.hex()} if info.extra else {},
                )
            )
    return out


def ar_header_members(data: bytes) -> list[Member]:
    """An ``ar`` archive's members with the date, owner and mode of their headers."""
    return [
        Member(name, body, mtime=date, owner=(uid, gid), mode=mode)
        for name, body, (date, uid, gid, mode) in ar_entries(data)
    ]
