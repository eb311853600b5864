"""The import graph between the packages of this repository, from the source (ast).

    python benchmarks/import_graph.py            # package -> packages it imports, and cycles
    python benchmarks/import_graph.py --lazy     # also imports inside functions

A package is `plasticity.<name>` (or a top-level module `plasticity.<name>`), `tune` or
`cluster`. Module-level imports define the layering; imports inside functions (used to
keep optional dependencies and heavy modules off the import path) are shown with --lazy.
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("plasticity", "tune", "cluster")


def unit(module: str) -> str | None:
    """`plasticity.nn.fused` -> `plasticity.nn`; `tune.sweep` -> `tune`; others None."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    return ".".join(parts[:2]) if parts[0] == "plasticity" and len(parts) > 1 else parts[0]


def edges(lazy: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            src = unit(module)
            tree = ast.parse(path.read_text())
            nodes = ast.walk(tree) if lazy else tree.body
            for node in nodes:
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    dst = unit(name)
                    if dst and dst != src:
                        graph[src].add(dst)
            graph.setdefault(src, set())
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, stack = [], []

    def visit(node: str, seen: set[str]) -> None:
        if node in stack:
            cycle = stack[stack.index(node):] + [node]
            if sorted(cycle[:-1]) not in [sorted(c[:-1]) for c in found]:
                found.append(cycle)
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, seen)
        stack.pop()

    for start in sorted(graph):
        visit(start, set())
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lazy", action="store_true", help="include imports inside functions")
    args = ap.parse_args()
    graph = edges(args.lazy)
    width = max(map(len, graph))
    for src in sorted(graph):
        print(f"{src:<{width}}  -> {', '.join(sorted(graph[src])) or '(nothing)'}")
    found = cycles(graph)
    print(f"\n{sum(map(len, graph.values()))} edges, {len(found)} cycles" +
          "".join(f"\n  cycle: {' -> '.join(c)}" for c in found))


if __name__ == "__main__":
    main()
