"""The shape of adapters/diffusion (issue 28): counted by imports, the package stands at most
six floors high (a module stands one floor above the highest module of the package it
imports at import time; the package's ``__init__`` counts) with no cycle, and no module
imports another's private (underscore) name, lazy imports included.

Today: six floors (precision/schedule, model/output, inputs/ode, window/samplers,
picard/taa, auto; __init__ above them): the window samplers share :mod:`.inputs` (checked
arguments, the first state) and :mod:`.output` instead of standing on ``samplers.py``, the
planner is handed the samplers by :mod:`.auto` instead of importing them."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "adapters" / "diffusion"
#: private names other modules still import (pretrained/train_digits_flow.py: train_digits'
#: helpers, to be made public there)
KNOWN_PRIVATE = {("pretrained.train_digits_flow", "_diffusers_version"),
                 ("pretrained.train_digits_flow", "_kw")}
MAX_FLOORS = 6


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts) or "__init__"] = ast.parse(path.read_text(), str(path))
    return out


def _module_level(tree: ast.Module):
    """The statements run at import time (not inside functions): what makes a floor."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            stack.extend(ast.iter_child_nodes(node))


def _imports(name: str, tree: ast.Module, known: set[str],
             lazy: bool = False) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import-time import of a module of the package."""
    pkg = name.split(".")[:-1] if name != "__init__" else []
    if (PACKAGE / Path(*name.split(".")) / "__init__.py").exists():
        pkg = name.split(".")  # a subpackage's __init__ imports relative to itself
    found = []
    for node in (ast.walk(tree) if lazy else _module_level(tree)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - node.level + 1] if node.level > 1 else pkg
                target = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            elif (node.module or "").startswith("adapters.diffusion"):
                target = node.module[len("adapters.diffusion"):].strip(".")
            else:
                continue
            names = [a.name for a in node.names]
            target = target or "__init__"
            if target not in known:  # ``from . import x``: the module x itself
                continue
            subs = [f"{target}.{n}".removeprefix("__init__.") for n in names]
            if target == "__init__" or any(s in known for s in subs):
                mods = [s for s in subs if s in known]
                rest = [n for n, s in zip(names, subs, strict=True) if s not in known]
                found += [(m, []) for m in mods]
                if rest:
                    found.append((target, rest))
            else:
                found.append((target, names))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("adapters.diffusion"):
                    found.append((a.name[len("adapters.diffusion"):].strip(".") or "__init__",
                                  []))
    return [(m, n) for m, n in found if m in known and m != name]


def _floors() -> dict[str, int]:
    mods = _modules()
    deps = {m: {t for t, _ in _imports(m, tree, set(mods))} for m, tree in mods.items()}
    floors: dict[str, int] = {}

    def floor(m: str, seen: tuple[str, ...] = ()) -> int:
        assert m not in seen, f"import cycle: {' -> '.join([*seen, m])}"
        if m not in floors:
            floors[m] = 1 + max((floor(d, (*seen, m)) for d in deps[m]), default=0)
        return floors[m]

    for m in mods:
        floor(m)
    return floors


def test_at_most_six_floors_and_no_cycle():
    floors = _floors()
    top = max(floors.values())
    assert top <= MAX_FLOORS, sorted(floors.items(), key=lambda kv: -kv[1])


def test_no_private_name_is_imported_across_modules():
    mods = _modules()
    bad = [(m, n) for m, tree in mods.items()
           for _, names in _imports(m, tree, set(mods), lazy=True)
           for n in names if n.startswith("_") and not n.startswith("__")
           and (m, n) not in KNOWN_PRIVATE]
    assert not bad


def test_one_window_loop_shared_by_the_window_samplers():
    """picard.py and taa.py import the core (window.py), not each other."""
    mods = _modules()
    for m in ("picard", "taa"):
        targets = {t for t, _ in _imports(m, mods[m], set(mods))}
        assert "window" in targets and not targets & {"picard", "taa"}


#: a function of adapters/ longer than MAX_FUNCTION_LINES (its body, docstring excluded) says
#: why in its docstring with this phrase
LONG_REASON = "Kept in one piece:"
MAX_FUNCTION_LINES = 80


def test_functions_a_reader_can_hold():
    """No function in adapters/ above ~80 lines without a reason stated in its docstring."""
    long = []
    for path in sorted(PACKAGE.parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node) or ""
            body = node.body[1:] if doc else node.body
            if body and body[-1].end_lineno - body[0].lineno + 1 > MAX_FUNCTION_LINES \
                    and LONG_REASON not in doc:
                long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    assert not long
