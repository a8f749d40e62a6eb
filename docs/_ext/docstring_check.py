"""Sphinx extension: fail the build when a public name of the API has no docstring or is
missing from the API reference.

``docstring_check_modules`` in ``conf.py`` lists the modules to check, each mapped to its
public names (``None``: the module's ``__all__``, else every public name the module
defines). For each class, its public methods and properties are checked as well (a
docstring inherited from a base class of ours counts, as autodoc shows it). Every public
class and function must also be documented by autodoc somewhere in the build (under any
name: ``pint.RK4`` covers ``pint.propagators.RK4``). Both are Sphinx warnings, so
``sphinx-build -W`` fails on them.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)


def public_objects(modules: dict[str, list[str] | None],
                   packages: tuple[str, ...] = ("pint", "adapters")) -> dict[str, Any]:
    """``{dotted name: object}`` of the public classes and functions of ``modules``."""
    out: dict[str, Any] = {}
    for mod_name, names in modules.items():
        module = importlib.import_module(mod_name)
        for name in names if names is not None else _public_names(module):
            obj = getattr(module, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and _ours(obj, packages):
                out[f"{mod_name}.{name}"] = obj
    return out


def _identity(obj: Any) -> str | None:
    """Where an object is defined, the same under every name it is imported as."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else None


def _public_names(module: Any) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [n for n, v in vars(module).items() if not n.startswith("_")
            and getattr(v, "__module__", None) == module.__name__]


def _documentable(obj: Any) -> bool:
    return inspect.isclass(obj) or inspect.isfunction(obj) or isinstance(obj, property)


def _ours(obj: Any, packages: tuple[str, ...]) -> bool:
    target = obj.fget if isinstance(obj, property) else obj
    return str(getattr(target, "__module__", "")).split(".")[0] in packages


def missing_docstrings(modules: dict[str, list[str] | None],
                       packages: tuple[str, ...] = ("pint", "adapters")) -> list[str]:
    """Dotted names of public classes, functions, methods and properties without a docstring."""
    missing: list[str] = []
    seen: set[int] = set()
    for mod_name, names in modules.items():
        module = importlib.import_module(mod_name)
        if not (module.__doc__ or "").strip():
            missing.append(mod_name)
        for name in names if names is not None else _public_names(module):
            obj = getattr(module, name)
            if not _documentable(obj) or not _ours(obj, packages) or id(obj) in seen:
                continue
            seen.add(id(obj))
            own = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
            if not (own or "").strip():  # a class's own docstring, not its base class's
                missing.append(f"{mod_name}.{name}")
            if not inspect.isclass(obj):
                continue
            for member_name, member in vars(obj).items():
                if member_name.startswith("_"):
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if not (inspect.isfunction(member) or isinstance(member, property)):
                    continue
                if not (member.__doc__ or "").strip() and not _inherited_doc(obj, member_name, packages):
                    missing.append(f"{mod_name}.{name}.{member_name}")
    return missing


def _inherited_doc(cls: type, name: str, packages: tuple[str, ...]) -> bool:
    """Whether a base class from our packages documents ``name`` (autodoc shows that
    docstring; a generic one from torch's ``Module.forward`` does not count)."""
    for base in cls.__mro__[1:]:
        member = vars(base).get(name)
        if (member is not None and base.__module__.split(".")[0] in packages
                and (getattr(member, "__doc__", None) or "").strip()):
            return True
    return False


def check(app: Sphinx) -> None:
    modules = app.config.docstring_check_modules
    if not modules:
        return
    for name in missing_docstrings(modules):
        logger.warning("public name %s has no docstring (document it with shapes and units)",
                       name, type="docstring_check")


def record(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Remember which objects autodoc documented, per document (kept across incremental
    builds in the environment)."""
    ident = _identity(obj)
    if ident is not None:
        documented = app.env.__dict__.setdefault("docstring_check_documented", {})
        documented.setdefault(app.env.docname, set()).add(ident)


def purge(app: Sphinx, env: Any, docname: str) -> None:
    env.__dict__.get("docstring_check_documented", {}).pop(docname, None)


def reread_all_once(app: Sphinx, env: Any, added: set[str], changed: set[str],
                    removed: set[str]) -> list[str]:
    """An environment pickled before this extension ran has no records: read every
    document again so that the coverage check sees them all."""
    if "docstring_check_documented" in env.__dict__:
        return []
    env.__dict__["docstring_check_documented"] = {}
    return sorted(env.found_docs)


def check_coverage(app: Sphinx, env: Any) -> None:
    modules = app.config.docstring_check_modules
    if not modules:
        return
    documented = set().union(*env.__dict__.get("docstring_check_documented", {}).values())
    for name, obj in public_objects(modules).items():
        if _identity(obj) not in documented:
            logger.warning("public name %s is not in the API reference (add it to a page "
                           "under docs/api/)", name, type="docstring_check")


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("docstring_check_modules", {}, "env")
    app.connect("builder-inited", check)
    app.connect("autodoc-process-docstring", record)
    app.connect("env-purge-doc", purge)
    app.connect("env-get-outdated", reread_all_once)
    app.connect("env-check-consistency", check_coverage)
    # documented objects are collected in the environment of one process
    return {"version": "1.0", "parallel_read_safe": False, "parallel_write_safe": True}
