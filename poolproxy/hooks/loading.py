"""
Importing hooks: C{module:callable} (C{module:object.attribute} too), at
start and again on reload.  A reload imports the hooks' modules afresh
(C{importlib.reload}), so an edited hook takes effect; if any of a
listener's hooks does not import, none of the new ones is used.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any, Callable, Dict, Mapping, Set

from poolproxy.hooks.points import POINTS_BY_NAME


class HookLoadError(Exception):
    """A hook is named wrongly or does not import; the message is one line naming it."""


def check_spec(point: str, spec: Any, where: str) -> str:
    """C{spec} if it names a hook for C{point} (C{module:callable}); else L{HookLoadError}."""
    if point not in POINTS_BY_NAME:
        raise HookLoadError(f"{where}: unknown hook point {point!r}; hook points are "
                            f"{', '.join(POINTS_BY_NAME)}")
    if not isinstance(spec, str):
        raise HookLoadError(f"{where}: expected 'module:callable', got {spec!r}")
    module, _, attribute = spec.partition(":")
    if not module or not attribute or not all(
            part.isidentifier() for part in module.split(".") + attribute.split(".")):
        raise HookLoadError(f"{where}: expected 'module:callable', e.g. "
                            f"'myhooks:{point}', got {spec!r}")
    return spec


def _import(name: str, fresh: bool, reloaded: Set[str]) -> ModuleType:
    module = sys.modules.get(name)
    if module is None:
        return importlib.import_module(name)
    if fresh and name not in reloaded:
        reloaded.add(name)
        return importlib.reload(module)
    return module


def load_hooks(specs: Mapping[str, str], where: str, fresh: bool = False,
               ) -> Dict[str, Callable[..., Any]]:
    """
    Import every hook of C{specs} (point -> C{module:callable}).

    @param fresh: import modules already imported again (a reload).
    @raise HookLoadError: naming the first hook that does not import, and why.
    """
    hooks: Dict[str, Callable[..., Any]] = {}
    reloaded: Set[str] = set()
    for point, spec in specs.items():
        check_spec(point, spec, f"{where}.{point}")
        module_name, _, attribute = spec.partition(":")
        at = f"{where}.{point} = {spec!r}"
        try:
            found: Any = _import(module_name, fresh, reloaded)
        except Exception as e:  # SyntaxError, ImportError, whatever the module raises
            raise HookLoadError(f"{at}: cannot import {module_name}: "
                                f"{type(e).__name__}: {_one_line(e)}") from None
        for name in attribute.split("."):
            try:
                found = getattr(found, name)
            except AttributeError:
                raise HookLoadError(f"{at}: {module_name} has no {attribute}") from None
        if not callable(found):
            raise HookLoadError(f"{at}: {attribute} is not callable")
        hooks[point] = found
    return hooks


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else repr(e)


__all__ = ["HookLoadError", "check_spec", "load_hooks"]
