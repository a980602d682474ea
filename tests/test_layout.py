"""The package's shape, checked from its source: no import circles among neuralsvd modules, no module over
450 lines, and every public name of the API contract (DESIGN §2) importable."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "neuralsvd"
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The neuralsvd modules ``path`` imports (at any depth: a function-level import is an edge too; not
    those under ``if TYPE_CHECKING:``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import mod` imports the module pkg.mod when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `a.b.c` for a name c in module a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _graph() -> dict[str, set[str]]:
    """Module -> the neuralsvd modules its import runs: those it names, and their packages' ``__init__``
    (importing ``a.b.c`` runs ``a.b`` first), except its own packages (running already)."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    graph = {}
    for p in paths:
        m = _module_name(p)
        own = set(_ancestors(m))
        graph[m] = {t for target in _imports(p, modules) for t in (target, *_ancestors(target)) if t not in own and t != m}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules along it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_circles():
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_circle_finder_finds_circles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_over_450_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


#: the public names of the API contract (DESIGN.md §2-3)
CONTRACT = [
    "neuralsvd.fit", "neuralsvd.load", "neuralsvd.evaluate", "neuralsvd.FitResult", "neuralsvd.NestedLoRA",
    "neuralsvd.SpIN", "neuralsvd.NeuralEF", "neuralsvd.SpectralLoss", "neuralsvd.LossOutput", "neuralsvd.Operator",
    "neuralsvd.CrossOperator", "neuralsvd.sampling.Gaussian", "neuralsvd.operators.Schrodinger",
    "neuralsvd.operators.Hydrogen2D", "neuralsvd.operators.HarmonicOscillator", "neuralsvd.operators.DenseOperator",
    "neuralsvd.models.ParallelMLP", "neuralsvd.models.MLP", "neuralsvd.models.Tabular",
    "neuralsvd.estimators.NeuralKoopman", "neuralsvd.operators.TrajectoryOperator",
]


@pytest.mark.parametrize("name", CONTRACT)
def test_contract_names_are_importable(name):
    module, _, attr = name.rpartition(".")
    import neuralsvd as nsvd

    obj = nsvd
    for part in name.split(".")[1:]:
        obj = getattr(obj, part)
    assert obj is getattr(importlib.import_module(module), attr)


#: package -> the packages it must not import (DESIGN §1: cli -> problems -> the core)
FORBIDDEN = {
    **{core: ("neuralsvd.problems", "neuralsvd.cli") for core in
       ("neuralsvd.training", "neuralsvd.numerics", "neuralsvd.losses", "neuralsvd.operators", "neuralsvd.models",
        "neuralsvd.plotting", "neuralsvd.estimators")},
    "neuralsvd.problems": ("neuralsvd.cli",),
}


def test_dependencies_point_down():
    wrong = sorted(f"{m} -> {t}" for m, targets in _graph().items() for t in targets
                   for pkg, banned in FORBIDDEN.items() if m == pkg or m.startswith(pkg + ".")
                   for b in banned if t == b or t.startswith(b + "."))
    assert not wrong, wrong
