"""The layout README shows and the cores/shells table of docs/architecture.md match the tree.

Both are read by newcomers first; a module that was split, moved or renamed must show up
there, and nothing there may name a file that no longer exists.
"""

import os
import re

from tests.support.electric import ROOT

PACKAGE = os.path.join(ROOT, "electric")


def readme_layout() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    section = text.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def architecture_table() -> str:
    with open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8") as fh:
        text = fh.read()
    section = text.split("## 2.", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def package_entries() -> tuple[set[str], set[str]]:
    """Top-level modules and subpackages of electric/ (generated code in pb/ counts as one)."""
    modules, packages = set(), set()
    for name in os.listdir(PACKAGE):
        path = os.path.join(PACKAGE, name)
        if os.path.isdir(path) and os.path.exists(os.path.join(path, "__init__.py")):
            packages.add(name)
        elif name.endswith(".py") and name != "__init__.py":
            modules.add(name)
    return modules, packages


def test_readme_layout_names_every_top_level_module_and_package():
    layout = readme_layout()
    modules, packages = package_entries()
    words = set(re.findall(r"[\w.]+/?", layout))
    missing = sorted(m for m in modules if m not in words)
    missing += sorted(f"{p}/" for p in packages if f"{p}/" not in words)
    assert not missing, f"README Layout does not mention: {missing}"


def test_readme_layout_names_only_files_that_exist():
    layout = readme_layout()
    everywhere = {name for _folder, _dirs, files in os.walk(PACKAGE) for name in files}
    gone = sorted(name for name in set(re.findall(r"\b[a-z_]+\.py\b", layout)) if name not in everywhere)
    assert not gone, f"README Layout names modules that do not exist: {gone}"


def test_architecture_cores_and_shells_exist():
    table = architecture_table()
    named = set(re.findall(r"`([a-z_]+(?:/[a-z_]+)*\.py)`", table)) | set(
        re.findall(r"`([a-z_]+(?:/[a-z_]+)*/)`", table)
    )
    assert named, "the cores and shells table is empty"
    gone = sorted(n for n in named if not os.path.exists(os.path.join(PACKAGE, n)))
    assert not gone, f"docs/architecture.md §2 names files that do not exist: {gone}"
