"""Every extra the docs, --help and the error messages recommend exists in pyproject.toml."""

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: pip install 'softcheck[torch]', pip install -e '.[test]', softcheck[plot,oracle]
EXTRA = re.compile(r"(?:softcheck|(?<![\w/])\.)\[([\w,-]+)\]")


def named_extras() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    files = [ROOT / "README.md", ROOT / "action.yml", *ROOT.glob("docs/*.md"),
             *ROOT.glob("softcheck/**/*.py"), *ROOT.glob("scripts/**/*.py"), ROOT / ".ci/run"]
    for path in files:
        for m in EXTRA.finditer(path.read_text(encoding="utf-8")):
            for name in m.group(1).split(","):
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_extra_the_docs_name_exists():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    named = named_extras()
    assert {"torch", "plot", "test"} <= set(named)          # the scan finds them at all
    missing = {n: sorted(where) for n, where in named.items() if n not in extras}
    assert not missing, f"extras named but not defined in pyproject.toml: {missing}"


def test_torch_extra_installs_torch_and_test_extra_has_every_optional_dependency():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    name = lambda req: re.match(r"[\w-]+", req).group(0)   # noqa: E731
    assert [name(r) for r in extras["torch"]] == ["torch"]
    test = {name(r) for r in extras["test"]}
    for extra in ("torch", "plot", "oracle"):
        assert {name(r) for r in extras[extra]} <= test, extra
