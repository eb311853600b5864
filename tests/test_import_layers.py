"""The import layers, read from the source: no circle between modules, and no import
that its package's docstring does not allow.

    python -m pytest -q tests/test_import_layers.py
    python benchmarks/import_graph.py          # the same graph, printed

Every `.py` file under `plasticity/`, `tune/` and `cluster/` is parsed with `ast` (nothing
is imported) and every import in it counts: at module level, inside functions and
classes, and relative ones (resolved against the file's package).

**Circles.** The graph has one node per module (a package is its `__init__.py`); an
import of `a.b.c` is an edge to the module `a.b.c` (`from a.b import c`: to `a.b.c` when
that is a module, else to `a.b`). Any circle, through function-level imports too, fails.

**Layers.** A *unit* is a package or module directly under `plasticity`
(`plasticity.nn`, `plasticity.models`), `tune` or `cluster`. The docstring of the unit's
file (a package's `__init__.py`, else the module itself) says what the unit may import,
in one or two lines of this form:

    May import: plasticity.errors, plasticity.rules, torch
    May import in functions: plasticity.envs, mlflow

- `May import:` (required) lists what the unit's modules may import anywhere;
  `May import in functions:` (optional) what they may import only inside a function
  (an optional dependency or an edge, kept off the import path of the unit).
- Items are dotted module names, separated by commas (backquotes allowed); a name allows
  itself and everything under it (`plasticity` allows the whole library, `mlflow` all of
  MLflow). `nothing` is the empty list. A line ending in a comma goes on on the next.
- A module of the unit may add to the unit's lists with the same lines in its own
  docstring: an edge module (serving's MLflow pyfunc, its Ray app) names what only it
  may import.
- The standard library, the unit's own modules and the root package `plasticity` itself
  (its `__version__`) are always allowed.

Every other import (the library's other units and third-party packages alike) must be
listed, so "no Ray or MLflow in the core" is a test, not a sentence.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("plasticity", "tune", "cluster")
"""The top-level packages whose source is read."""
ALLOW = "May import:"
ALLOW_LAZY = "May import in functions:"
ALWAYS = frozenset(sys.stdlib_module_names) | {"__future__"}
"""Top-level names every module may import."""


@dataclass(frozen=True)
class Import:
    """One imported module, as written in the source."""

    source: str
    """The importing module (`plasticity.nn.plastic`)."""
    target: str
    """The imported module: for the library, the module the import loads (`plasticity.nn`
    for `from plasticity.nn import PlasticRNN`); for others, the name as written."""
    lazy: bool
    """Inside a function (or a class body of one) rather than at module level."""
    line: int

    @property
    def where(self) -> str:
        return f"{module_path(self.source).relative_to(ROOT)}:{self.line}"


def module_path(module: str) -> Path:
    """The file of a module of this repository."""
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def modules() -> dict[str, Path]:
    """Every module of the repository's packages -> its file (`plasticity.nn` ->
    plasticity/nn/__init__.py)."""
    found = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            found[".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str:
    """The longest prefix of `name` that is a module of ours (`plasticity.nn.X` -> `plasticity.nn`)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return name


def _package(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _walk(node: ast.AST, lazy: bool = False):
    """(import node, inside a function) for every import under `node`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, lazy
        inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _walk(child, inner)


def imports(known: dict[str, Path] | None = None) -> list[Import]:
    """Every import of every module of the repository's packages."""
    known = modules() if known is None else known
    found = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, lazy in _walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    package = _package(module, path).split(".")
                    package = package[:len(package) - (node.level - 1)]
                    base = ".".join([*package, *([base] if base else [])])
                # `from a.b import c`: the module a.b.c when there is one, else a.b itself.
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for name in dict.fromkeys(names):
                target = _resolve(name, known) if name.split(".")[0] in PACKAGES else name
                found.append(Import(module, target, lazy, node.lineno))
    return found


def graph(found: list[Import], known: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (itself excluded)."""
    edges: dict[str, set[str]] = {m: set() for m in known}
    for imp in found:
        if imp.target in known and imp.target != imp.source:
            edges[imp.source].add(imp.target)
    return edges


def unit(module: str) -> str:
    """`plasticity.nn.fused` -> `plasticity.nn`; `tune.sweep` -> `tune`; `plasticity` itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "plasticity" else parts[0]


def unit_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed to units (what `benchmarks/import_graph.py` prints)."""
    out: dict[str, set[str]] = defaultdict(set)
    for src, dsts in edges.items():
        out[unit(src)].update(unit(d) for d in dsts if unit(d) != unit(src))
    return dict(out)


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Circles (`[a, b, ..., a]`) that together pass through every edge lying on one: the
    strongly connected groups of modules (Tarjan's algorithm), and in each, for every edge
    `v -> w` not yet on a circle found, the shortest way back from `w` to `v`."""
    found = []
    for group in _groups(edges):
        members, covered = set(group), set()
        for v in group:
            for w in sorted(edges[v] & members):
                if (v, w) not in covered:
                    circle = [v, *_shortest(w, v, edges, members)]
                    covered.update(zip(circle, circle[1:], strict=False))
                    found.append(circle)
    return found


def _groups(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module, each sorted (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(edges) + 100))
    try:
        for v in sorted(edges):
            if v not in index:
                connect(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(groups)


def _shortest(start: str, end: str, edges: dict[str, set[str]], members: set[str]) -> list[str]:
    """The shortest path `[start, ..., end]` inside `members` (breadth first)."""
    came = {start: start}
    frontier = [start]
    while frontier and end not in came:
        reached = []
        for v in frontier:
            for w in sorted(edges[v] & members):
                if w not in came:
                    came[w] = v
                    reached.append(w)
        frontier = reached
    path = [end]
    while path[-1] != start:
        path.append(came[path[-1]])
    return path[::-1]


@dataclass(frozen=True)
class Rules:
    """What a unit's module may import, from the docstrings."""

    files: tuple[Path, ...]
    """The unit's file, then the module's own if it adds to it."""
    anywhere: tuple[str, ...]
    in_functions: tuple[str, ...]

    def allows(self, name: str, lazy: bool) -> bool:
        listed = self.anywhere + (self.in_functions if lazy else ())
        return any(name == item or name.startswith(item + ".") for item in listed)

    def describe(self) -> str:
        lazy = f"; in functions also {', '.join(self.in_functions)}" if self.in_functions else ""
        where = " + ".join(str(f.relative_to(ROOT)) for f in self.files)
        return f"{where} allow {', '.join(self.anywhere) or 'nothing'}{lazy}"


def _items(doc: str, label: str) -> tuple[str, ...] | None:
    """The names on the docstring line starting with `label` (and on the lines it continues
    on, each after one ending in a comma); None when there is no such line."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(label):
            text = line.strip()[len(label):]
            while text.rstrip().endswith(",") and i + 1 < len(lines):
                i += 1
                text += " " + lines[i].strip()
            items = [item.strip().strip("`").strip() for item in text.strip().rstrip(".").split(",")]
            items = [item for item in items if item]
            bad = [item for item in items if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", item)]
            if bad:
                raise ValueError(f"{label} lists {bad[0]!r}, which is not a module name: write dotted names "
                                 "separated by commas")
            return () if items == ["nothing"] else tuple(items)
    return None


def _docstring_rules(file: Path, known: dict[str, Path]) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """(`May import:` names or None, `May import in functions:` names) of a file's docstring;
    ValueError naming the file if a line is malformed or names a module that does not exist."""
    rel = file.relative_to(ROOT)
    doc = ast.get_docstring(ast.parse(file.read_text(encoding="utf-8"))) or ""
    try:
        anywhere, lazy = _items(doc, ALLOW), _items(doc, ALLOW_LAZY) or ()
    except ValueError as e:
        raise ValueError(f"{rel}: {e}") from None
    stale = [item for item in (anywhere or ()) + lazy if item.split(".")[0] in PACKAGES and item not in known]
    if stale:
        raise ValueError(f"{rel}: its docstring allows {stale[0]}, which is not a module of this repository")
    return anywhere, lazy


def module_rules(module: str, known: dict[str, Path]) -> Rules:
    """The rules of `module`: its unit's, plus its own docstring's; ValueError naming the
    file when the unit's docstring has none or a line is malformed."""
    home = known[unit(module)]
    anywhere, lazy = _docstring_rules(home, known)
    if anywhere is None:
        raise ValueError(f"{home.relative_to(ROOT)}: its docstring has no `{ALLOW} ...` line: list what "
                         f"{unit(module)} may import")
    files = (home,)
    if known[module] != home:
        more, more_lazy = _docstring_rules(known[module], known)
        if more or more_lazy:
            files, anywhere, lazy = (home, known[module]), anywhere + (more or ()), lazy + more_lazy
    return Rules(files, anywhere, lazy)


def layer_problems(found: list[Import], known: dict[str, Path]) -> list[str]:
    """One line per import that its docstrings do not allow (and per docstring whose
    rules cannot be read)."""
    rules: dict[str, Rules | str] = {}
    for module in known:
        try:
            rules[module] = module_rules(module, known)
        except ValueError as e:
            rules[module] = str(e)
    problems = sorted({r for r in rules.values() if isinstance(r, str)})
    for imp in found:
        rule, top = rules[imp.source], imp.target.split(".")[0]
        own = top in PACKAGES and unit(imp.target) == unit(imp.source)
        if top in ALWAYS or own or imp.target == "plasticity" or isinstance(rule, str) or \
                rule.allows(imp.target, imp.lazy):
            continue
        kind = "inside a function" if imp.lazy else "at module level"
        problems.append(f"{imp.where}: {imp.source} imports {imp.target} {kind}, which its docstrings do not "
                        f"allow ({rule.describe()})")
    return problems


def test_no_import_circles():
    known = modules()
    found = circles(graph(imports(known), known))
    assert not found, f"{len(found)} import circle(s), function-level imports included:\n" + \
        "\n".join("  " + " -> ".join(c) for c in found)


def test_every_import_is_allowed_by_its_packages_docstring():
    known = modules()
    problems = layer_problems(imports(known), known)
    assert not problems, f"{len(problems)} import(s) outside the layers:\n" + "\n".join(problems)


CORE = ("plasticity.rules", "plasticity.config", "plasticity.nn", "plasticity.models", "plasticity.agents",
        "plasticity.tasks", "plasticity.train")
EDGES = ("plasticity.tracking", "plasticity.serving", "plasticity.cli", "plasticity.cliargs", "plasticity.localray",
         "tune", "cluster", "ray", "mlflow", "optuna")


def test_the_core_may_not_import_the_edges():
    """The core's docstrings themselves keep to the architecture (STYLE.md): none of them
    allows the edges (tracking, serving, the CLI), the sweep service, Ray, MLflow or Optuna."""
    known = modules()
    for module in known:
        if unit(module) in CORE:
            rules = module_rules(module, known)
            allowed = [item for item in rules.anywhere + rules.in_functions
                       if any(item == edge or item.startswith(edge + ".") or edge.startswith(item + ".")
                              for edge in EDGES)]
            assert not allowed, f"{rules.describe()}: the core may not import {', '.join(allowed)}"


def test_the_reader_sees_every_kind_of_import(tmp_path, monkeypatch):
    """Function-level, relative and `from package import module` imports are read, and a
    circle through a function-level import is found."""
    pkg = tmp_path / "plasticity"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""May import: nothing"""\n')
    (pkg / "a.py").write_text('"""May import: plasticity.sub"""\nfrom plasticity.sub import b\n')
    (pkg / "sub" / "__init__.py").write_text('"""May import: torch"""\n')
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n    import mlflow.entities\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", ("plasticity",))
    known = modules()
    found = {(i.source, i.target, i.lazy) for i in imports(known)}
    assert found == {("plasticity.a", "plasticity.sub.b", False), ("plasticity.sub.b", "plasticity.a", True),
                     ("plasticity.sub.b", "mlflow.entities", True)}
    assert circles(graph(imports(known), known)) == [["plasticity.a", "plasticity.sub.b", "plasticity.a"]]
    problems = layer_problems(imports(known), known)
    assert len(problems) == 2 and all("inside a function" in p for p in problems), problems
