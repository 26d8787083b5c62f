"""
The package layout, kept true by test: each part of poolproxy imports only
the parts below it on the request path (the rule is the table
L{MAY_IMPORT}), and docs/architecture.md names every module there is, and
no module that is not.
"""

from __future__ import annotations

import ast
import os
import re
from typing import Dict, FrozenSet, Iterable, Iterator, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests.support import ROOT

PACKAGE = os.path.join(ROOT, "poolproxy")

#: What each part of poolproxy may import of poolproxy, besides itself and
#: the package's own __init__ (its version).  A part is a subpackage
#: (codecs/, backends/...) or a top-level module (codec.py, tap.py...).
#: Read down the request path: codecs know only the seam; backends know
#: codecs but no client; the proxy's modes know backends and configuration;
#: the operator's views know what they show; nothing below ops/ and
#: workers/ knows them.
MAY_IMPORT: Dict[str, FrozenSet[str]] = {name: frozenset(allowed) for name, allowed in {
    # Leaves: Twisted helpers and small modules that import nothing of poolproxy
    # (listening only util's gate on accepting).
    "util": (), "codec": (), "stats": (), "logs": (), "reactor": (),
    "demo": (), "listening": ("util",),
    "plugins": ("codec",),
    "codecs": ("codec", "util"),
    "backends": ("codec", "codecs", "stats", "util"),
    # config names the balancing policies backends/ implements, and the codec plugins.
    # hooks: users' Python called by the frontends; only util's throttled log.
    "hooks": ("util",),
    "config": ("backends", "codec", "hooks", "plugins", "util"),
    "proxy": ("backends", "codec", "codecs", "config", "hooks", "stats", "util"),
    "ops": ("backends", "codec", "config", "hooks", "proxy", "stats", "util"),
    "workers": ("config", "demo", "listening", "ops", "util"),
    # The top: what builds the proxy from its configuration.
    "assemble": ("backends", "codec", "config", "plugins", "proxy", "util"),
    "service": ("assemble", "backends", "codec", "config", "demo", "hooks", "listening", "ops",
                "proxy", "stats", "util", "workers"),
    "tap": ("config", "hooks", "service", "util", "workers"),
    # Fakes and in-memory wiring for tests: the real assembly on fake endpoints.
    "testing": ("assemble", "codecs", "config", "hooks", "proxy", "util"),
}.items()}


def modules() -> Iterator[Tuple[str, str]]:
    """(path relative to the checkout, dotted name) of every module of poolproxy."""
    for directory, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.relpath(os.path.join(directory, name), ROOT)
                dotted = path[:-3].replace(os.sep, ".")
                if dotted.endswith(".__init__"):
                    dotted = dotted[:-len(".__init__")]
                yield path, dotted


def part(dotted: str) -> str:
    """The part of poolproxy a dotted module name belongs to ('' for the package itself)."""
    names = dotted.split(".")
    return names[1] if len(names) > 1 else ""


def imports(source: str, path: str) -> Iterator[Tuple[int, str]]:
    """(line, module) of every poolproxy import in a module's source, type-only ones included."""
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "poolproxy":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "poolproxy":
                # from poolproxy import x: x is a part, or a name of the package itself.
                for alias in node.names:
                    yield node.lineno, f"poolproxy.{alias.name}"
            elif node.module.split(".")[0] == "poolproxy":
                yield node.lineno, node.module


def sources() -> Iterator[Tuple[str, str, str]]:
    """(path, dotted name, source) of every module of poolproxy."""
    for path, dotted in modules():
        with open(os.path.join(ROOT, path)) as f:
            yield path, dotted, f.read()


def forbidden(files: Iterable[Tuple[str, str, str]]) -> List[str]:
    """Every import that breaks L{MAY_IMPORT}, as one line naming it and the rule."""
    parts = set(MAY_IMPORT)
    found = []
    for path, dotted, source in files:
        here = part(dotted)
        if here == "":
            allowed: FrozenSet[str] = frozenset()
        elif here not in MAY_IMPORT:
            found.append(f"{path}: poolproxy.{here} is in no row of MAY_IMPORT (tests/test_layout.py)")
            continue
        else:
            allowed = MAY_IMPORT[here]
        for line, target in imports(source, path):
            there = part(target)
            if there == here or there == "" or there not in parts:
                continue  # itself, or a name of the package (__version__)
            if there not in allowed:
                rule = ", ".join(sorted(allowed)) or "nothing of poolproxy"
                found.append(f"{path}:{line}: imports {target}, but {here} may import only {rule}")
    return found


class LayeringTests(SynchronousTestCase):
    def test_every_part_has_a_rule(self) -> None:
        """Every subpackage and top-level module is a row of the table."""
        self.assertEqual(sorted({part(d) for _, d in modules()} - {""}), sorted(MAY_IMPORT))

    def test_imports_go_down_the_path(self) -> None:
        """
        No module imports a part its own may not (for example: codecs/ only
        codec and util/; backends/ never proxy/ or ops/; nothing in proxy/
        or backends/ imports ops/ or workers/).  Each offence is named.
        """
        found = forbidden(sources())
        if found:
            self.fail("imports against tests/test_layout.MAY_IMPORT:\n" + "\n".join(found))

    def test_a_forbidden_import_is_named(self) -> None:
        """
        An import against the table, type-only or in a function, is named
        with its file, line and the rule; allowed ones and the package's
        version are not.
        """
        source = ("from poolproxy import __version__\n"
                  "from poolproxy.util.deadlines import Deadlines\n"
                  "if TYPE_CHECKING:\n"
                  "    from poolproxy.proxy.session import SessionFrontend\n"
                  "def f():\n"
                  "    import poolproxy.ops.web\n")
        self.assertEqual(forbidden([("poolproxy/backends/new.py", "poolproxy.backends.new", source)]), [
            "poolproxy/backends/new.py:4: imports poolproxy.proxy.session, but backends may "
            "import only codec, codecs, stats, util",
            "poolproxy/backends/new.py:6: imports poolproxy.ops.web, but backends may "
            "import only codec, codecs, stats, util",
        ])
        self.assertEqual(forbidden([("poolproxy/codecs/x.py", "poolproxy.codecs.x",
                                     "from poolproxy.stats import Tally\n")]),
                         ["poolproxy/codecs/x.py:1: imports poolproxy.stats, but codecs may "
                          "import only codec, util"])


ARCHITECTURE = os.path.join(ROOT, "docs", "architecture.md")


def named_paths(text: str) -> List[str]:
    """Every poolproxy/... path the text names."""
    return re.findall(r"poolproxy/[\w/]*(?:\.py|/)", text)


class ArchitectureDocTests(SynchronousTestCase):
    def setUp(self) -> None:
        with open(ARCHITECTURE) as f:
            self.text = f.read()

    def test_every_module_named(self) -> None:
        """
        docs/architecture.md names every module under poolproxy/ by its
        path (a package's __init__.py by its directory, poolproxy/x/, unless
        it holds code of its own, like config/__init__.py).
        """
        named = set(named_paths(self.text))
        missing = []
        for path, dotted in modules():
            path = path.replace(os.sep, "/")
            if path.endswith("/__init__.py") and path != "poolproxy/__init__.py":
                if path in named or path[:-len("__init__.py")] in named:
                    continue
            if path not in named:
                missing.append(path)
        self.assertEqual(missing, [])

    def test_every_path_named_exists(self) -> None:
        """Every poolproxy/ path the page names is there: nothing stale."""
        stale = [p for p in named_paths(self.text) if not os.path.exists(os.path.join(ROOT, p))]
        self.assertEqual(stale, [])
