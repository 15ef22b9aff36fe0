"""The house rules of the import graph, checked statically: every ``import`` statement in every
module, including those inside functions, so a deferred import cannot hide a forbidden edge.

- ``slimformer/`` (the library) imports nothing of ours and no web, queue or database framework;
- ``service/`` (the API) imports neither torch nor ``workers/``, and of the library only its
  torch-free modules;
- ``workers/`` may import both; nothing imports ``workers/``;
- none of the three imports ``testkit/`` (the test and benchmark helpers);
- no import cycles between packages, nor between the modules of a package.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("slimformer", "service", "workers")
FRAMEWORKS = (
    "fastapi",
    "starlette",
    "celery",
    "kombu",
    "sqlalchemy",
    "alembic",
    "uvicorn",
    "redis",
    "boto3",
)
# what the API may use of the library: torch-free modules only
LIBRARY_FOR_SERVICE = {
    "slimformer",
    "slimformer.spec",  # the package and each of its modules, each checked below
    "slimformer.spec.base",
    "slimformer.spec.stages",
    "slimformer.spec.inputs",
    "slimformer.spec.prune",
    "slimformer.spec.distill",
    "slimformer.spec.evaluation",
    "slimformer.spec.export",
    "slimformer.spec.job",
    "slimformer.spec.facts",
    "slimformer.checksum",
    "slimformer.families",
    "slimformer.formatting",
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (relative imports
    resolved)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.add(stem)
            # `from pkg import module` names a module too
            found.update(f"{stem}.{alias.name}" for alias in node.names)
    return found


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """module -> the modules of ``packages`` (and third-party top-level names) it imports."""
    files = [p for pkg in packages for p in (root / pkg).rglob("*.py") if (root / pkg).is_dir()]
    modules = {module_name(p, root): p for p in files}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target in imports_of(path, root):
            if target.split(".")[0] in packages:
                # the longest prefix that is one of our modules
                # (`from slimformer.spec import JobSpec`)
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
            else:
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT)


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_walker_sees_imports_inside_functions_and_relative_imports(tmp_path):
    pkg = tmp_path / "slimformer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from service import app\n    import celery.app\n")
    (pkg / "b.py").write_text("from . import a\nfrom .a import f\n")
    g = import_graph(tmp_path, packages=("slimformer", "service"))
    assert "celery.app" in g["slimformer.a"]
    assert g["slimformer.b"] == {"slimformer", "slimformer.a"}
    (tmp_path / "service").mkdir()
    (tmp_path / "service" / "__init__.py").write_text("import slimformer.a\n")
    (tmp_path / "service" / "app.py").write_text("")
    g = import_graph(tmp_path, packages=("slimformer", "service"))
    assert "service.app" in g["slimformer.a"]
    assert cycles({"x": {"y"}, "y": {"x"}, "z": {"x"}}) == [["x", "y"]]


def test_the_library_imports_nothing_of_ours_and_no_framework(graph):
    bad = {
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _top(module) == "slimformer"
        for target in targets
        if _top(target) in ("service", "workers", *FRAMEWORKS)
    }
    assert not bad, sorted(bad)


def test_the_service_imports_no_torch_no_workers_and_only_torch_free_library_modules(graph):
    bad = {
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _top(module) == "service"
        for target in targets
        if _top(target) in ("torch", "transformers", "datasets", "workers")
        or (_top(target) == "slimformer" and target not in LIBRARY_FOR_SERVICE)
    }
    assert not bad, sorted(bad)


def test_the_torch_free_library_modules_stay_torch_free(graph):
    for module in LIBRARY_FOR_SERVICE - {"slimformer"}:
        heavy = {t for t in graph[module] if _top(t) in ("torch", "transformers", "datasets")}
        ours = {
            t for t in graph[module] if _top(t) == "slimformer" and t not in LIBRARY_FOR_SERVICE
        }
        assert not heavy and not ours, (module, heavy | ours)


def test_nothing_imports_workers(graph):
    bad = {
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _top(module) != "workers"
        for target in targets
        if _top(target) == "workers"
    }
    assert not bad, sorted(bad)


def test_nothing_shipped_imports_the_testkit(graph):
    bad = {
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if _top(target) == "testkit"
    }
    assert not bad, sorted(bad)


def test_no_import_cycles_between_packages_or_modules(graph):
    ours = {m: {t for t in ts if _top(t) in PACKAGES} for m, ts in graph.items()}
    packages = {p: set() for p in PACKAGES}
    for module, targets in ours.items():
        packages[_top(module)].update(_top(t) for t in targets if _top(t) != _top(module))
    assert not cycles(packages), packages
    # a package's __init__ importing its own submodules is how packages re-export; not a cycle
    modules = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in ours.items()}
    assert not cycles(modules)


# accelerate (which lm-eval's HF model wrapper needs, and which transformers imports whenever it is
# installed) imports boto3 for its SageMaker launcher whenever boto3 is installed: a third party's
# import, not ours (the static rule above still holds for every module of ours)
THIRD_PARTY_IMPORTERS = {"boto3": "accelerate.commands.config.sagemaker"}


def test_importing_the_library_loads_no_framework():
    """The runtime view of the rule above: importing every library module pulls in no framework."""
    code = (
        "import sys, pkgutil, importlib, slimformer\n"
        "for m in pkgutil.walk_packages(slimformer.__path__, 'slimformer.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = [m for m in {FRAMEWORKS!r} + ('service', 'workers') if m in sys.modules\n"
        f"       and {THIRD_PARTY_IMPORTERS!r}.get(m) not in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_service_never_imports_torch():
    code = (
        "import sys, tempfile; from service.app import create_app; "
        "from service.settings import Settings; "
        "create_app(Settings(data_dir=tempfile.mkdtemp()), run_reaper=False); "
        "bad = [m for m in ('torch', 'transformers', 'workers') if m in sys.modules]; "
        "print(bad); sys.exit(bool(bad))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert r.returncode == 0, r.stdout + r.stderr
