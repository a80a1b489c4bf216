"""The layers of lab/ (ARCHITECTURE.md): the import-linter contract holds, it names every module's
layer, and an AST scan that counts imports written inside functions finds no import cycle and only
the two deliberate function-local imports of the lab's own modules (lab.app.cli -> lab.app.run,
lab.app.run -> lab.app.after)."""
import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import HANG_S

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "lab"
# the package roots, which hold no code of a layer: lab (lazy public attributes), lab.__main__ and
# lab.config (the schema and compose layers' package)
OUTSIDE_LAYERS = {"lab", "lab.__main__", "lab.config"}


def layers() -> list[str]:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["type"] == "layers")["layers"]


def modules() -> dict[str, Path]:
    out = {}
    for path in LAB.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def lab_imports(path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported lab module, written inside a function) for every import statement in the file."""
    tree = ast.parse(path.read_text())
    inside = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside |= {id(n) for n in ast.walk(fn) if n is not fn}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports a module; `from mod import name` the module itself
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        out += [(n, id(node) in inside) for n in names if n in known]
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_import_contract_holds():
    lint = Path(sys.executable).parent / "lint-imports"
    p = subprocess.run([lint, "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=HANG_S)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "1 kept, 0 broken" in p.stdout


def test_every_module_has_a_layer():
    named = layers()
    unplaced = [m for m in modules() if m not in OUTSIDE_LAYERS
                and not any(m == layer or m.startswith(layer + ".") for layer in named)]
    assert not unplaced, f"modules in no layer of the import contract: {unplaced}"


def test_no_import_cycle_counting_function_local_imports():
    mods = modules()
    graph = {m: {t for t, _ in lab_imports(p, set(mods)) if t != m} for m, p in mods.items()}
    assert cycles(graph) == []
    # the scan sees function-local imports: a made-up cycle through one is found
    graph["lab.core"] = {"lab.app.cli"}
    assert cycles(graph)


def test_one_deliberate_function_local_import():
    mods = modules()
    local = sorted((m, t) for m, p in mods.items() for t, in_function in lab_imports(p, set(mods)) if in_function)
    assert local == [("lab.app.cli", "lab.app.run"), ("lab.app.run", "lab.app.after")]
