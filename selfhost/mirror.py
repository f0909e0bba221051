"""Find the Debian mirror from the machine's own apt configuration.

selfhost never names a mirror in code: debootstrap and the Debian source fetcher both
use the archive URI of the first ``deb`` entry in the machine's apt sources whose
suites are Debian release suites (not ``-security``). Both formats are read:
deb822 ``*.sources`` files and one-line ``*.list`` files. The ``selfhost.mirror``
setting in ``invoke.yaml`` (or ``INVOKE_SELFHOST_MIRROR``) overrides the discovery.

The system's apt configuration is only read, never edited.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from selfhost.errors import UsageError

APT_DIR = Path("/etc/apt")


@dataclass(frozen=True)
class AptSource:
    """One apt source entry (either format), reduced to what we need."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...] = field(default=())
    origin: str = ""  # "file:line" for error messages

    @property
    def is_debian_archive(self) -> bool:
        """True for a binary entry of the main Debian archive (not security, not a PPA)."""
        return (
            "deb" in self.types
            and "main" in self.components
            and any(not s.endswith(("-security", "/updates")) and "/" not in s for s in self.suites)
        )


def _parse_deb822(text: str, origin: str) -> list[AptSource]:
    """Parse a deb822 ``.sources`` file: stanzas separated by blank lines."""
    sources: list[AptSource] = []
    for block_start, block in _stanzas(text):
        fields: dict[str, str] = {}
        last = None
        for line in block:
            if line.startswith("#"):
                continue
            if line[:1].isspace() and last:
                fields[last] += " " + line.strip()
                continue
            key, sep, value = line.partition(":")
            if sep:
                last = key.strip().lower()
                fields[last] = value.strip()
        if fields.get("enabled", "yes").lower() == "no" or "uris" not in fields:
            continue
        sources.append(
            AptSource(
                types=tuple(fields.get("types", "").split()),
                uris=tuple(fields["uris"].split()),
                suites=tuple(fields.get("suites", "").split()),
                components=tuple(fields.get("components", "").split()),
                origin=f"{origin}:{block_start}",
            )
        )
    return sources


def _stanzas(text: str) -> list[tuple[int, list[str]]]:
    out: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 1
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            if not current:
                start = number
            current.append(line)
        elif current:
            out.append((start, current))
            current = []
    if current:
        out.append((start, current))
    return out


_ONE_LINE = re.compile(r"^(deb|deb-src)\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$")


def _parse_one_line(text: str, origin: str) -> list[AptSource]:
    """Parse a one-line ``.list`` file (``deb [opts] URI suite comp...``)."""
    sources: list[AptSource] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        m = _ONE_LINE.match(line)
        if m:
            sources.append(
                AptSource(
                    types=(m.group(1),),
                    uris=(m.group(3),),
                    suites=(m.group(4),),
                    components=tuple(m.group(5).split()),
                    origin=f"{origin}:{number}",
                )
            )
    return sources


def read_apt_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """Read every enabled apt source entry on this machine, in apt's own order."""
    sources: list[AptSource] = []
    main_list = apt_dir / "sources.list"
    if main_list.is_file():
        sources += _parse_one_line(main_list.read_text(errors="replace"), str(main_list))
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                sources += _parse_one_line(path.read_text(errors="replace"), str(path))
            elif path.suffix == ".sources":
                sources += _parse_deb822(path.read_text(errors="replace"), str(path))
    return sources


def debian_mirror(override: str | None = None, apt_dir: Path = APT_DIR) -> str:
    """Return the Debian archive URL to use, without a trailing slash.

    ``override`` (from ``selfhost.mirror``) wins when set. Otherwise the first Debian
    archive entry of the machine's apt sources is used.
    """
    if override:
        if not re.match(r"^(https?|file)://", override):
            raise UsageError(
                f"selfhost.mirror is {override!r}, which is not an http(s):// or file:// URL",
                hint="set selfhost.mirror in invoke.yaml to your Debian archive's URL, "
                "or remove it to use the machine's apt sources",
            )
        return override.rstrip("/")
    for source in read_apt_sources(apt_dir):
        if source.is_debian_archive and source.uris:
            return source.uris[0].rstrip("/")
    raise UsageError(
        f"no Debian archive entry found in {apt_dir}/sources.list or {apt_dir}/sources.list.d/",
        hint="add a 'deb' entry for your Debian mirror to apt's sources, or set "
        "selfhost.mirror in invoke.yaml",
    )
