"""The standalone server package may use the Vaxine client's core; never the other way round."""

import ast
from pathlib import Path

import electric

ROOT = Path(electric.__file__).parent
EMBEDDED = ROOT / "vaxine" / "embedded"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_nothing_outside_the_server_package_imports_it():
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in _imports(path)
                                            if n.startswith("electric.vaxine.embedded"))
        for path in ROOT.rglob("*.py") if EMBEDDED not in path.parents
    }
    assert {path: names for path, names in offenders.items() if names} == {}
