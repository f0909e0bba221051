"""The glibc lint on a real cross-suite build: built on trixie, run on bookworm.

glibc 2.38 (trixie has 2.41) redirects strtol to __isoc23_strtol@GLIBC_2.38 under
_GNU_SOURCE; bookworm's glibc 2.36 does not have it, which is exactly the
"GLIBC_2.38 not found" a user would meet at run time.
"""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from tests.integration.conftest import invoke

PROGRAM = b"""\
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    printf("%ld\\n", strtol(argc > 1 ? argv[1] : "42", NULL, 10));
    return 0;
}
"""


@pytest.mark.slow
def test_glibc_lint_fires_for_a_trixie_build_run_on_bookworm(tmp_path, stacks, http_dir):
    www, base = http_dir
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("prog/prog.c")
        info.size = len(PROGRAM)
        tar.addfile(info, io.BytesIO(PROGRAM))
    (www / "prog.tar.gz").write_bytes(buf.getvalue())
    recipe = tmp_path / "prog.toml"
    recipe.write_text(f"""\
name = "prog"
version = "1"
builder = "gcc"
stages = 1

[[sources]]
kind = "tarball"
url = "{base}/prog.tar.gz"
sha256 = "{hashlib.sha256(buf.getvalue()).hexdigest()}"

[stage0]
builder = "gcc"

[steps]
build = "$BUILDER -O2 prog.c -o prog && ./prog 7"
install = "mkdir -p $DESTDIR$PREFIX/bin && cp prog $DESTDIR$PREFIX/bin/"
""")
    ws = tmp_path / "ws"
    on_trixie = {"INVOKE_SELFHOST_SUITE": "trixie"}
    cross = invoke(
        ["slug", "--compiler", str(recipe), "--stack", "bookworm", "--json"],
        ws,
        stacks,
        **on_trixie,
    )
    assert cross.code == 0, cross.output
    glibc = [x for x in cross.json["lints"] if x["kind"] == "glibc"]
    assert glibc, cross.json["lints"]
    assert glibc[0]["path"] == "/app/vendor/prog/bin/prog"
    assert "GLIBC_2.38" in glibc[0]["message"] and "GLIBC_2.36" in glibc[0]["message"]
    assert "__isoc23_strtol" in glibc[0]["message"]
    same = invoke(["slug", "--compiler", str(recipe), "--json"], ws, stacks, **on_trixie)
    assert same.code == 0
    assert not [x for x in same.json["lints"] if x["kind"] == "glibc"], "fine on trixie itself"
    strict = invoke(
        ["slug", "--compiler", str(recipe), "--stack", "bookworm", "--strict"],
        ws,
        stacks,
        **on_trixie,
    )
    assert strict.code == 12 and "GLIBC_2.38" in strict.stderr
