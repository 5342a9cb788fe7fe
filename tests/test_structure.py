"""The package's structure, read from its source: the top-level parts import each other without a cycle, the
upper floors import distsleep modules at the top of their files, one module loads bundles, and the bare-GPU
benchmark runs without Ray or MLflow."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "distsleep"
# The parts people work on every day: their imports of distsleep modules sit at the top of each file.
UPPER_FLOORS = ("train", "gan", "predict", "sweep", "bench", "cli", "tracking", "bundle")


def _modules():
    """(module name, path, parsed tree) of every distsleep module."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text())


def _imported(name: str, path: Path, node) -> list[str]:
    """The distsleep modules an import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = name.split(".")[: len(name.split(".")) - node.level + (1 if path.name == "__init__.py" else 0)]
        return [".".join(base + ([node.module] if node.module else []))]
    return [node.module or ""]


def _part(module: str) -> str | None:
    """distsleep.train.loop -> train; distsleep.predict -> predict; distsleep -> None."""
    bits = module.split(".")
    return bits[1] if len(bits) > 1 and bits[0] == "distsleep" else None


def import_graph() -> dict[str, dict[str, list[str]]]:
    """part -> imported part -> where ("file:line"), counting imports inside functions too."""
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name, path, tree in _modules():
        source = _part(name)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in map(_part, _imported(name, path, node)):
                    if source and target and target != source:
                        edges[source][target].append(f"{path.relative_to(REPO)}:{node.lineno}")
    return edges


def cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one part (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
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

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_top_level_parts():
    edges = import_graph()
    assert "train" in edges["cli"] and "shards" in edges["train"]  # the graph was read
    found = cycles(edges)
    detail = "; ".join(
        f"{' <-> '.join(c)}: " + ", ".join(f"{a}->{b} ({edges[a][b][0]})" for a in c for b in c if b in edges.get(a, {}))
        for c in found)
    assert not found, f"import cycles between distsleep's top-level parts: {detail}"


def test_cycle_finder_sees_a_cycle():
    assert cycles({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}) == [["a", "b", "c"]]


def test_upper_floors_import_distsleep_modules_at_the_top():
    inside = []
    for name, path, tree in _modules():
        if _part(name) not in UPPER_FLOORS:
            continue
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                            m.startswith("distsleep") for m in _imported(name, path, node)):
                        inside.append(f"{path.relative_to(REPO)}:{node.lineno} ({function.name})")
    assert not inside, f"distsleep imports inside functions: {inside}"


def test_one_module_loads_bundles_and_checkpoints():
    loaders = [f"{path.relative_to(REPO)}:{node.lineno}" for _, path, tree in _modules() for node in ast.walk(tree)
               if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
               and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"]
    assert loaders and all(where.startswith(os.path.join("distsleep", "bundle.py")) for where in loaders), loaders


BLOCK_RAY_AND_MLFLOW = """
import importlib.abc, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "mlflow"):
            raise ImportError(f"{name} is not installed on this machine")
        return None

sys.meta_path.insert(0, Refuse())
import distsleep.bench.engine
print("imported", sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "mlflow")))
"""


def test_bare_gpu_benchmark_needs_neither_ray_nor_mlflow():
    """`python -m distsleep.bench.engine` runs on a GPU box without Ray or MLflow: importing it (and so everything
    it imports, the trainer's step included) must not touch them."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", BLOCK_RAY_AND_MLFLOW], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "imported []"
