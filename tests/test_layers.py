"""The layers' import rules (ARCHITECTURE.md), read from the code itself: a new import that breaks one fails here.

    flows  ->  tasks  ->  etl, amojo        amojo imports nothing of ours, nor pandas or Prefect
    etl.cli (the entry point) may run flows  the emulator uses only amojo's signing
    a flow module imports no other flow      a package's insides are imported through the package
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("amojo", "etl", "tasks", "flows")
PRIVATE_INSIDES = ("etl.ledger", "tasks.load")
"""Packages whose modules are their own business: others import what the package's __init__ exports."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved; `from X import y` counts as X and as X.y."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _modules() -> dict[str, set[str]]:
    return {_module_name(path): _imports(path)
            for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


MODULES = _modules()
FLOW_MODULES = {name for name in MODULES if name.startswith("flows.")
                and "@flow" in (ROOT / (name.replace(".", "/") + ".py")).read_text()}


def _ours(imported: str) -> bool:
    return imported.split(".")[0] in PACKAGES


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_rules_see_the_code():
    assert {"amojo.transport", "etl.ledger", "tasks.load.send", "flows.import_chats"} <= set(MODULES)
    assert "flows.import_chats" in FLOW_MODULES


@pytest.mark.parametrize("module", sorted(name for name in MODULES if _within(name, "amojo")))
def test_amojo_imports_nothing_of_ours_nor_pandas_or_prefect(module):
    imports = MODULES[module]
    outside = {i for i in imports if _ours(i) and not _within(i, "amojo")}
    assert not outside, f"{module} imports {sorted(outside)}: amojo is the wire, it knows no pipeline"
    heavy = {i for i in imports if i.split(".")[0] in ("pandas", "prefect", "numpy")}
    assert not heavy, f"{module} imports {sorted(heavy)}"
    if _within(module, "amojo.emulator"):
        of_amojo = {i for i in imports if _within(i, "amojo") and not _within(i, "amojo.emulator")}
        assert of_amojo <= {"amojo.signing", "amojo.signing.signature"}, \
            f"{module} imports {sorted(of_amojo)}: the emulator stands in for amoCRM and shares only the signing"
    else:
        assert not any(_within(i, "amojo.emulator") for i in imports), f"{module} imports the emulator"


@pytest.mark.parametrize("module", sorted(name for name in MODULES if not _within(name, "amojo")))
def test_imports_point_down_the_layers(module):
    imports = {i for i in MODULES[module] if _ours(i)}
    if _within(module, "etl") and not _within(module, "etl.cli"):
        up = {i for i in imports if _within(i, "tasks") or _within(i, "flows")}
        assert not up, f"{module} imports {sorted(up)}: etl is below tasks and flows (only etl.cli runs flows)"
    if _within(module, "tasks"):
        up = {i for i in imports if _within(i, "flows")}
        assert not up, f"{module} imports {sorted(up)}: tasks are below flows"
    if module in FLOW_MODULES:
        other_flows = {i for i in imports if i in FLOW_MODULES - {module}}
        assert not other_flows, f"{module} imports {sorted(other_flows)}: a flow imports tasks and etl, not flows"


@pytest.mark.parametrize("package", PRIVATE_INSIDES)
def test_a_package_s_insides_are_reached_through_the_package(package):
    reaching_in = {module: sorted(i for i in imports if i in MODULES and i.startswith(package + "."))
                   for module, imports in MODULES.items() if not _within(module, package)}
    reaching_in = {module: found for module, found in reaching_in.items() if found}
    assert not reaching_in, f"import {package}'s public names from {package} itself: {reaching_in}"
