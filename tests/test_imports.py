"""The engine's module graph: no two modules import each other (directly or in a cycle),
and the public names stay importable from where they always were."""

import ast
import importlib
from pathlib import Path

import pint

PKG = Path(pint.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The pint modules ``path`` imports anywhere (top level or inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        out.update(t for t in targets if t.startswith("pint") and t != name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in mods.items():
        # an import of a package's submodule also names the package: keep module targets
        graph[name] = {t for t in _imports(path) if t in mods}
    return graph


def test_no_two_modules_import_each_other():
    graph = _graph()
    pairs = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps
                    if a in graph.get(b, ())})
    assert pairs == [], f"modules importing each other: {pairs}"


def test_no_import_cycle_between_engine_modules():
    # packages import their own submodules to re-export them; count cycles among modules
    graph = {a: {b for b in deps if not a.startswith(b + ".") and not b.startswith(a + ".")}
             for a, deps in _graph().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(a: str) -> None:
        state[a] = 1
        stack.append(a)
        for b in sorted(graph[a]):
            if state.get(b) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(b):] + [b])}")
            if b not in state:
                visit(b)
        stack.pop()
        state[a] = 2

    for a in sorted(graph):
        if a not in state:
            visit(a)


def test_public_names_importable_from_where_they_were():
    from pint.parareal import NonFiniteStateError, Runner, parareal, serial
    from pint.pipeline import pipelined_parareal
    from pint.runner import NonFiniteStateError as E2
    from pint.runner import Runner as R2

    assert Runner is R2 and NonFiniteStateError is E2 is pint.NonFiniteStateError
    assert parareal is pint.parareal and serial is pint.serial and callable(pipelined_parareal)
    for mod in ("pint.executors", "pint.pipeline", "pint.parareal", "pint.runner"):
        importlib.import_module(mod)
