"""Recipe loading: the shipped recipes, and every kind of bad input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from selfhost.compilers import available, find_recipe
from selfhost.compilers.recipe import FixpointPolicy, GitSource, load_recipe, locate
from selfhost.errors import RecipeError, UsageError

REPO = Path(__file__).resolve().parents[2]

GOOD = textwrap.dedent("""\
    name = "toy"
    version = "1.0"
    prefix = "/opt/toy"
    builder = "$PREFIX/bin/toycc"
    stages = 3

    [[sources]]
    kind = "tarball"
    url = "https://example.invalid/toy-1.0.tar.gz"
    sha256 = "0000000000000000000000000000000000000000000000000000000000000000"

    [stage0]
    builder = "gcc"

    [steps]
    build = "make CC=$BUILDER"
    install = "make install DESTDIR=$DESTDIR"
    test = "make check"

    [compare]
    artifacts = ["bin/**"]

    [[compare.exclude]]
    path = "bin/stamp"
    reason = "embeds the build time"
    """)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "toy.toml"
    path.write_text(text)
    return path


def test_shipped_recipes_load():
    names = available()
    assert {"tcc", "go"} <= set(names)
    tcc = find_recipe("tcc")
    assert tcc.stages == 3 and tcc.prefix == "/app/vendor/tcc"
    assert isinstance(tcc.sources[0], GitSource), "upstream git comes first for tcc"
    assert tcc.sources[-1].kind == "debian"
    go = find_recipe("go")
    assert go.stages == 2 and "golang-1.19-go" in go.packages
    assert go.stage0_builder == "/usr/lib/go-1.19"


def test_good_recipe_fields(tmp_path):
    r = load_recipe(write(tmp_path, GOOD))
    assert r.name == "toy" and r.fixpoint is FixpointPolicy.FAIL
    assert r.exclude[0].reason == "embeds the build time"
    assert r.expand(r.builder, {"PREFIX": r.prefix}) == "/opt/toy/bin/toycc"


@pytest.mark.parametrize(
    ("old", "new", "field", "line", "words"),
    [
        (
            'sha256 = "0000000000000000000000000000000000000000000000000000000000000000"',
            'sha256 = "abc"',
            "sources[0].sha256",
            10,
            "not a sha256",
        ),
        ('prefix = "/opt/toy"\n', 'prefix = "/usr"\n', "prefix", 3, "cannot be an install prefix"),
        ("stages = 3", "stages = 0", "stages", 5, "expected 1 to 10 stages"),
        ("stages = 3", 'stages = "three"', "stages", 5, "expected an integer"),
        ('kind = "tarball"', 'kind = "ftp"', "sources[0].kind", 8, "unknown source kind"),
        (
            'reason = "embeds the build time"',
            'reason = " "',
            "compare.exclude[0].reason",
            25,
            "needs a written reason",
        ),
        (
            'install = "make install DESTDIR=$DESTDIR"',
            'install = "make install"',
            "steps.install",
            17,
            "never uses $DESTDIR",
        ),
        ('name = "toy"', 'name = "Toy Compiler"', "name", 1, "not a valid name"),
        ("[stage0]", "[stage0]\npackages = [3]", "stage0.packages", 13, "list of strings"),
    ],
)
def test_invalid_recipe_names_file_field_and_line(tmp_path, old, new, field, line, words):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    err = info.value
    assert err.field == field
    assert err.path == str(path)
    assert words in err.message
    if line is not None:
        assert err.line == line, err.message
    assert str(path) in err.render()


def test_unknown_field_is_rejected_with_hint(tmp_path):
    path = write(tmp_path, "colour = 'blue'\n" + GOOD)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.field == "colour" and info.value.line == 1
    assert "known fields" in (info.value.hint or "")


def test_toml_syntax_error_has_line(tmp_path):
    path = write(tmp_path, GOOD.replace('version = "1.0"', "version = 1.0.0"))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.line == 2
    assert "not valid TOML" in info.value.message


def test_reserved_environment_is_refused(tmp_path):
    path = write(tmp_path, GOOD + '\n[env]\nHOME = "/evil"\n')
    with pytest.raises(RecipeError, match="cannot be set by a recipe"):
        load_recipe(path)


def test_digest_covers_build_inputs_only(tmp_path):
    base = load_recipe(write(tmp_path, GOOD))
    more_stages = load_recipe(write(tmp_path, GOOD.replace("stages = 3", "stages = 4")))
    other_build = load_recipe(write(tmp_path, GOOD.replace("make CC=$BUILDER", "make -k")))
    assert base.digest == more_stages.digest, "the stage count must not invalidate the cache"
    assert base.digest != other_build.digest


def test_unknown_compiler_lists_known_ones():
    with pytest.raises(UsageError) as info:
        find_recipe("cobol")
    assert "tcc" in (info.value.hint or "")


def test_locate_finds_nested_fields():
    text = GOOD
    assert locate(text, "name") == 1
    assert locate(text, "steps.test") == 18
    assert locate(text, "compare.exclude[0].path") == 24
    assert locate(text, "missing.key") is None


def test_shipped_gauche_recipe():
    gauche = find_recipe("gauche")
    assert gauche.suite == "trixie" and gauche.compiler_command == "/app/vendor/gauche/bin/gosh"
    assert gauche.packages == ("gauche", "libmbedtls-dev", "zlib1g-dev")
    assert gauche.run_packages == ("libmbedtls-dev", "zlib1g-dev")
    debian = gauche.sources[0]
    assert debian.kind == "debian" and debian.patches and debian.debian_sha256


EXTRA = textwrap.dedent("""\
    [[sources]]
    name = "libs"
    kind = "tarball"
    url = "https://example.invalid/toy-libs-1.0.tar.gz"
    sha256 = "1111111111111111111111111111111111111111111111111111111111111111"

    [runtime]
    library_path = ["lib", "lib/toy"]

    [env]
    PATH = "$PREFIX/bin:$PATH"
    """)


def test_new_fields_suite_compiler_runtime_and_named_sources(tmp_path):
    text = GOOD.replace('prefix = "/opt/toy"\n', 'suite = "trixie"\ncompiler = "$PREFIX/bin/toy"\n')
    recipe = load_recipe(write(tmp_path, text + EXTRA))
    assert recipe.prefix == "/app/vendor/toy" and recipe.suite == "trixie"
    assert recipe.compiler_command == "/app/vendor/toy/bin/toy"
    assert list(recipe.source_groups) == ["src", "libs"]
    assert recipe.library_path == ("lib", "lib/toy")
    assert ("PATH", "$PREFIX/bin:$PATH") in recipe.env


def test_the_test_command_is_not_part_of_the_recipe_digest(tmp_path):
    one = load_recipe(write(tmp_path, GOOD))
    two = load_recipe(write(tmp_path, GOOD.replace('test = "make check"', 'test = "make test"')))
    assert one.digest == two.digest, "changing the tests must not rebuild stages"
    three = load_recipe(write(tmp_path, GOOD.replace("make CC=$BUILDER", "make -O CC=$BUILDER")))
    assert three.digest != one.digest


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("stages = 3", 'stages = 3\nsuite = "sid"', "'suite'"),
        ("[stage0]", '[runtime]\nlibrary_path = ["/abs"]\n\n[stage0]', "'runtime.library_path'"),
        ('kind = "tarball"', 'kind = "tarball"\nname = "Bad Name"', "'sources.0..name'"),
        ('kind = "tarball"', 'kind = "tarball"\nname = "other"', "'sources'"),
    ],
)
def test_new_fields_are_validated(tmp_path, old, new, field):
    with pytest.raises(RecipeError, match=field):
        load_recipe(write(tmp_path, GOOD.replace(old, new, 1)))


def test_debian_patches_need_the_packaging_pinned(tmp_path):
    text = GOOD.replace(
        'kind = "tarball"\nurl = "https://example.invalid/toy-1.0.tar.gz"',
        'kind = "debian"\npackage = "toy"\nversion = "1.0-1"\npatches = true',
    )
    with pytest.raises(RecipeError, match="debian_sha256"):
        load_recipe(write(tmp_path, text))


def test_alternative_stage0s_are_declared_but_change_no_stage(tmp_path):
    """[stage0.alternatives.NAME] tables (for diverse double-compiling) list other
    compilers; the recipe's digest, which every stage's input hash covers, ignores them."""
    tcc = load_recipe(REPO / "selfhost/compilers/recipes/tcc.toml")
    assert [(s.name, s.builder, s.packages) for s in tcc.stage0s] == [
        ("default", "gcc", ()),
        ("clang", "clang", ("clang",)),
        ("tcc", "tcc", ("tcc",)),
    ]
    plain = write(tmp_path, GOOD)
    declared = tmp_path / "declared.toml"
    declared.write_text(
        GOOD.replace("[stage0]", '[stage0.alternatives.clang]\nbuilder = "clang"\n\n[stage0]', 1)
    )
    assert load_recipe(declared).digest == load_recipe(plain).digest
    assert [s.name for s in load_recipe(declared).stage0s] == ["default", "clang"]


@pytest.mark.parametrize(
    ("table", "field", "words"),
    [
        (
            '[stage0.alternatives.clang]\npackages = ["clang"]',
            "stage0.alternatives.clang.builder",
            "missing",
        ),
        (
            '[stage0.alternatives.Clang]\nbuilder = "clang"',
            "stage0.alternatives.Clang",
            "not a usable",
        ),
        (
            '[stage0.alternatives.default]\nbuilder = "cc"',
            "stage0.alternatives.default",
            "not a usable",
        ),
        (
            '[stage0.alternatives.x]\nbuilder = "cc"\ncolour = 1',
            "stage0.alternatives.x.colour",
            "unknown",
        ),
        (
            '[stage0.alternatives.x]\nbuilder = "cc"\npackages = ["Bad_Name"]',
            "stage0.alternatives.x.packages",
            "Debian package",
        ),
    ],
)
def test_bad_alternative_stage0s_name_the_field(tmp_path, table, field, words):
    path = write(tmp_path, GOOD.replace("[stage0]", table + "\n\n[stage0]", 1))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.field == field, info.value.message
    assert words in info.value.message


def test_verify_allowances_are_declared_with_a_reason_and_change_no_stage(tmp_path):
    tcc = load_recipe(REPO / "selfhost/compilers/recipes/tcc.toml")
    assert [(a.vary, a.path) for a in tcc.verify_allow] == [("build-path", "lib/tcc/bcheck.o")]
    allowed = tmp_path / "allowed.toml"
    allowed.write_text(
        GOOD + '\n[[verify.allow]]\nvary = "time"\npath = "bin/*"\nreason = "a stamp"\n'
    )
    assert load_recipe(allowed).digest == load_recipe(write(tmp_path, GOOD)).digest
    assert load_recipe(allowed).verify_allow[0].reason == "a stamp"


@pytest.mark.parametrize(
    ("table", "field", "words"),
    [
        ('vary = "moon"\npath = "x"\nreason = "r"', "verify.allow[0].vary", "not a variation"),
        ('vary = "time"\npath = "x"\nreason = " "', "verify.allow[0].reason", "written reason"),
        ('vary = "time"\nreason = "r"', "verify.allow[0].path", "missing"),
        ('vary = "time"\npath = "x"\nreason = "r"\nwhy = 1', "verify.allow[0].why", "unknown"),
    ],
)
def test_bad_verify_allowances_name_the_field(tmp_path, table, field, words):
    path = write(tmp_path, GOOD + "\n[[verify.allow]]\n" + table + "\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.field == field, info.value.message
    assert words in info.value.message
