"""House rules that keep the architecture honest."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import core

CORE_MODULES = sorted(m.name for m in pkgutil.walk_packages(core.__path__, "core.") if not m.name.endswith("__main__"))


def test_core_never_imports_qt_or_the_workbench():
    code = (
        "import importlib, sys\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'PyQt5', 'PyQt6', 'pyqtgraph', 'workbench', 'shiboken6'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"core imported {result.stdout.strip()}"


def test_no_pickle_loading_in_the_product():
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for folder in ("core", "workbench"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if "pickle.load" in text or "torch.load(" in text or "allow_pickle=True" in text:
                offenders.append(str(path.relative_to(root)))
    assert offenders == []


# ---------------------------------------------------------------------------------------------- import contract
ROOT = Path(__file__).resolve().parents[2]
#: core's bottom layer: shared by every other layer, importing nothing of core above it.
BOTTOM = ("core.config", "core.progress", "core.atomic", "core.outputs", "core.seeding", "core.resources")
#: Private modules used outside their package, each with why it is still so. Empty it, never grow it.
PRIVATE_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function (``from a import b`` counts ``a.b`` when
    ``b`` is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}"))
    return found


def _graph(*folders: str) -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_core_never_imports_the_workbench_even_lazily():
    offenders = [f"{m} -> {t}" for m, targets in _graph("core").items() for t in targets
                 if t.split(".")[0] in ("workbench", "PySide6", "PyQt5", "PyQt6", "pyqtgraph", "shiboken6")]
    assert offenders == []


def test_only_the_workflows_import_the_workflows():
    offenders = [f"{m} -> {t}" for m, targets in _graph("core").items() if not _within(m, "core.workflows")
                 for t in targets if _within(t, "core.workflows")]
    assert offenders == [], "core.workflows is the top of core: the layers below it never import it"


def test_data_and_nn_import_nothing_above_them():
    allowed = ("core.data", "core.nn", *BOTTOM)
    offenders = [f"{m} -> {t}" for m, targets in _graph("core/data", "core/nn").items() for t in targets
                 if _within(t, "core") and t != "core" and not any(_within(t, a) for a in allowed)]
    assert offenders == [], "core.data and core.nn may only import each other and the bottom layer"


def test_the_bottom_layer_imports_nothing_of_core_above_it():
    graph = _graph("core")
    offenders = [f"{m} -> {t}" for m in BOTTOM for t in graph[m]
                 if _within(t, "core") and t != "core" and not any(_within(t, b) for b in BOTTOM)]
    assert offenders == []


def test_nothing_imports_a_private_module_of_another_package():
    graph = {**_graph("core", "workbench"), "app": _imports(ROOT / "app.py")}
    offenders = []
    for importer, targets in graph.items():
        for target in targets:
            parts = target.split(".")
            private = next((i for i, p in enumerate(parts) if i and p.startswith("_") and not p.startswith("__")), None)
            if private is None:
                continue
            owner, module = ".".join(parts[:private]), ".".join(parts[: private + 1])
            if not _within(importer, owner) and (importer, module) not in PRIVATE_EXCEPTIONS:
                offenders.append(f"{importer} -> {module}")
    assert sorted(set(offenders)) == []
