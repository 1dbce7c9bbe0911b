"""The house's floor plan, checked on the source: imports point one way, down the layers

    ground (version, config, registry, errors, utils, distributed, provenance) <- algorithms (data, models, losses,
    training, ood, diffusion, minority, outliers, report) <- engine <- methods <- pipeline <- cli / api

every import counted (module level and inside functions; ``from .. import distributed`` is the ground module, not
the package), no cycle between the packages of one layer, and no ``pipeline/`` module that names a method family
with stages of its own (those stages live in the method's package and reach the pipeline through the graph)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "tailsynth"

LAYERS = {
    "ground": ["version", "config", "registry", "errors", "utils", "distributed", "provenance"],
    "algorithms": ["data", "models", "losses", "training", "ood", "diffusion", "minority", "outliers", "guard", "report"],
    "engine": ["engine"],
    "methods": ["methods"],
    "pipeline": ["pipeline"],
    "interfaces": ["cli", "api", "__init__"],  # the package's own __init__: the facade (tailsynth.load)
}
RANK = {unit: rank for rank, units in enumerate(LAYERS.values()) for unit in units}
# words of the method families that own stages (methods/ldmlr, dream_ood, minority); the pipeline must not name them
FAMILY_WORDS = ("ldmlr", "label_shift", "pseudo", "dream", "bood", "outlier", "vmf", "minority")

# violations of today, each to be removed by the commit that fixes it; empty: the layout holds everywhere
ALLOWED: set[tuple[str, str]] = set()


def unit_of(module: str) -> str:
    """The layer unit of a dotted module under tailsynth: its top-level package or ground module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> list[str]:
    """Every tailsynth module ``path`` imports, anywhere in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "tailsynth"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "tailsynth":
                target = node.module
            else:
                continue
            if node.module is None:  # from .. import distributed, __version__: each name is a module or attribute
                found += [f"{target}.{a.name}" if (SRC.parent / target.replace(".", "/") / f"{a.name}.py").is_file()
                          or (SRC.parent / target.replace(".", "/") / a.name).is_dir() else target
                          for a in node.names]
            else:
                found.append(target)
    return found


def edges() -> list[tuple[str, str, str]]:
    """(importing file, importing unit, imported unit) for every import across units."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        unit = unit_of(module_name(path))
        for target in imported_modules(path):
            other = unit_of(target)
            if other != unit:
                out.append((str(path.relative_to(SRC)), unit, other))
    return out


def test_the_layer_map_covers_every_package_and_ground_module():
    units = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
             if (p.is_file() and p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").is_file())}
    assert units - set(RANK) == set(), "add the new package or module to LAYERS"


def test_imports_point_down_the_layers():
    upward = sorted({(f, f"{u} -> {o}") for f, u, o in edges() if RANK[o] > RANK[u]} - ALLOWED)
    assert not upward, "imports pointing up the layer order:\n" + "\n".join(f"  {f}: {e}" for f, e in upward)


def test_no_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for _, unit, other in edges():
        graph.setdefault(unit, set()).add(other)
    cycles = []
    for start in graph:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    cycles.append(" -> ".join(path + [start]))
                elif nxt not in path:
                    stack.append((nxt, path + [nxt]))
    assert not cycles, "import cycles between packages:\n" + "\n".join(sorted(set(cycles)))


def _code_words(path: Path) -> set[str]:
    """Names, attributes and string constants of a module's code (docstrings and comments left out)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.add(node.value)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            words.add(node.name)
    return {w.lower() for w in words}


@pytest.mark.parametrize("path", sorted((SRC / "pipeline").glob("*.py")), ids=lambda p: p.name)
def test_the_pipeline_names_no_method_family(path):
    named = sorted({f"{word!r} in {w!r}" for w in _code_words(path) for word in FAMILY_WORDS if word in w})
    assert not named, f"pipeline/{path.name} names a method family: {named}"


def test_the_checker_sees_upward_and_function_local_imports(tmp_path, monkeypatch):
    """The test above can fail: a ground module importing the pipeline inside a function is caught."""
    fake = tmp_path / "tailsynth"
    (fake / "pipeline").mkdir(parents=True)
    (fake / "pipeline" / "__init__.py").write_text("")
    (fake / "utils.py").write_text("def f():\n    from .pipeline import graph\n    from . import distributed\n")
    (fake / "distributed.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    found = [(f, u, o) for f, u, o in edges()]
    assert ("utils.py", "utils", "pipeline") in found
    assert ("utils.py", "utils", "distributed") in found
    assert RANK["pipeline"] > RANK["utils"]
