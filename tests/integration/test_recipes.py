"""Recipe features end to end, with a toy compiler on real parts: a Debian source from a
pool without its .dsc (Debian's patch applied in the build), a second named source
unpacked beside it, and a compiler whose binary is not named like the recipe, used by a
compile worker's app-compile job."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import pytest

from selfhost.platform.client import PlatformClient
from tests.integration.conftest import Run, invoke

TCOMPILE = """\
#!/bin/sh
# PATCHED=no
exec gcc -I/app/vendor/toycc/include -L/app/vendor/toycc/lib "$@"
"""
PATCH = """\
--- a/tcompile.in
+++ b/tcompile.in
@@ -1,3 +1,3 @@
 #!/bin/sh
-# PATCHED=no
+# PATCHED=yes
 exec gcc -I/app/vendor/toycc/include -L/app/vendor/toycc/lib "$@"
"""


def tarball(files: dict[str, str], top: str, mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def toy(tmp_path_factory, stacks):
    """A mirror with toycc's .orig and debian.tar (no .dsc), a libs tarball, the recipe,
    and its bootstrap in a workspace of its own."""
    import functools
    import http.server
    import threading

    root = tmp_path_factory.mktemp("toy")
    www = root / "www"
    pool = www / "debian" / "pool" / "main" / "t" / "toycc"
    pool.mkdir(parents=True)
    orig = tarball({"tcompile.in": TCOMPILE}, "toycc-1.0")
    packaging = tarball(
        {"patches/series": "set-patched.patch\n", "patches/set-patched.patch": PATCH},
        "debian",
        "w:xz",
    )
    (pool / "toycc_1.0.orig.tar.gz").write_bytes(orig)
    (pool / "toycc_1.0-1.debian.tar.xz").write_bytes(packaging)
    libs = tarball(
        {"toy.h": "int toy_answer(void);\n", "toy.c": "int toy_answer(void) { return 42; }\n"},
        "toylibs-1.0",
    )
    (www / "toylibs.tar.gz").write_bytes(libs)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    recipe = root / "toycc.toml"
    recipe.write_text(f"""\
name = "toycc"
version = "1.0"
description = "a toy compiler (gcc with the toy library) whose binary is tcompile"
compiler = "$PREFIX/bin/tcompile"
builder = "$PREFIX/bin/tcompile"
stages = 3
fixpoint = "fail"

[[sources]]
kind = "debian"
package = "toycc"
version = "1.0-1"
sha256 = "{sha(orig)}"
debian_sha256 = "{sha(packaging)}"
patches = true

[[sources]]
name = "libs"
kind = "tarball"
url = "{base}/toylibs.tar.gz"
sha256 = "{sha(libs)}"

[stage0]
builder = "gcc"

[steps]
build = "$BUILDER -O2 -I/build/libs -c /build/libs/toy.c -o toy.o && ar rcD libtoy.a toy.o"
install = '''
install -D -m 0755 tcompile.in $DESTDIR$PREFIX/bin/tcompile
install -D -m 0644 /build/libs/toy.h $DESTDIR$PREFIX/include/toy.h
install -D -m 0644 libtoy.a $DESTDIR$PREFIX/lib/libtoy.a
'''
test = "grep -q PATCHED=yes $DESTDIR$PREFIX/bin/tcompile && test $STAGE -ge 1"
""")
    ws = root / "ws"
    env = {
        "INVOKE_SELFHOST_MIRROR": f"{base}/debian",
        "INVOKE_SELFHOST_PLATFORM_DIR": str(root / "platform"),
    }

    def cli(*args: str, timeout: float = 900, **extra: str) -> Run:
        return invoke(list(args), ws, stacks, timeout=timeout, **{**env, **extra})

    boot = cli("bootstrap", "--compiler", str(recipe), "--json")
    assert boot.code == 0, boot.output
    cli.recipe = recipe  # type: ignore[attr-defined]
    cli.boot = boot  # type: ignore[attr-defined]
    cli.ws = ws  # type: ignore[attr-defined]
    cli.root = root / "platform"  # type: ignore[attr-defined]
    yield cli
    cli("platform.down")
    server.shutdown()


def test_two_sources_a_debian_pool_without_dsc_and_its_patches(toy):
    result = toy.boot.json
    assert result["fixpoint"] is True
    assert all(s["tests_passed"] for s in result["stages"])
    assert "is not in the mirror's pool; trying the .orig by name" in toy.boot.stderr
    manifest = json.loads((toy.ws / "stages/toycc/stage1/manifest.json").read_text())
    assert set(manifest["inputs"]["sources"]) == {"src", "libs"}
    assert "app/vendor/toycc/lib/libtoy.a" in manifest["files"]
    log = (toy.ws / "stages/toycc/stage1/logs/stage.log").read_text()
    assert "applying debian/patches/set-patched.patch" in log
    # the test step saw $STAGE; a stage records it without it being in the key
    assert manifest["tests"]["passed"] is True


def test_app_compile_uses_the_declared_compiler_command(toy, tmp_path):
    released = toy("release", "--app", "toycc", "--compiler", str(toy.recipe))
    assert released.code == 0, released.output
    assert toy("scale", "--app", "toycc", "worker=1").code == 0
    app = tmp_path / "answer"
    app.mkdir()
    (app / "answer.c").write_text(
        '#include <stdio.h>\n#include <toy.h>\nint main(void) { printf("answer %d\\n", '
        "toy_answer()); return 0; }\n"
    )
    (app / "Makefile").write_text("answer: answer.c\n\t$(CC) -o answer answer.c -ltoy\n")
    (app / "Procfile").write_text("answer: ./answer\n")
    run = toy(
        "jobs.submit",
        "--app",
        "toycc",
        "--kind",
        "app-compile",
        "--source",
        str(app),
        "--target",
        "answer",
        "--wait",
        "--json",
    )
    assert run.code == 0, run.output
    info = json.loads((toy.root / "daemon.json").read_text())
    client = PlatformClient(info["url"], (toy.root / "token").read_text().strip())
    log = client.job("toycc", run.json["id"], log=200)["log"]
    assert any("make CC=/app/vendor/toycc/bin/tcompile" in line for line in log), log
    deadline = time.monotonic() + 60
    while True:
        once = toy("run", "--app", "answer", "--", "./answer")
        if once.code == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert once.code == 0 and "answer 42" in once.stdout, once.output
    assert toy("scale", "--app", "toycc", "worker=0").code == 0


def test_a_new_test_command_reruns_tests_not_builds(toy, tmp_path):
    """The test command is not part of a stage's identity: changing it keeps every
    stage (same keys, nothing recorded anew) and runs the new tests, recorded per stage."""
    text = toy.recipe.read_text().replace(
        "&& test $STAGE -ge 1", "&& test $STAGE -ge 1 && echo new-tests-ran"
    )
    variant = tmp_path / "toycc.toml"
    variant.write_text(text)
    before = toy.boot.json["stages"]
    run = toy("bootstrap", "--compiler", str(variant), "--json")
    assert run.code == 0, run.output
    stages = run.json["stages"]
    assert [s["input_hash"] for s in stages] == [s["input_hash"] for s in before]
    assert all(s["cached"] for s in stages)
    assert "the test command changed" in run.stderr
    for s in stages:
        entry = Path(s["manifest"]).parent
        runs = json.loads((entry / "tests.json").read_text())
        assert any("new-tests-ran" in r["command"] and r["passed"] for r in runs.values())
    again = toy("bootstrap", "--compiler", str(variant), "--json")
    assert again.code == 0 and "the test command changed" not in again.stderr
