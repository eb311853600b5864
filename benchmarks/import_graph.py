"""The import graph between the packages of this repository, from the source (ast).

    python benchmarks/import_graph.py            # unit -> units it imports, circles, layer problems
    python benchmarks/import_graph.py --lazy     # also imports inside functions (what the test reads)
    python benchmarks/import_graph.py --modules  # module -> modules instead of units

A unit is `plasticity.<name>` (a package or a top-level module), `tune` or `cluster`.
Module-level imports define the import path; imports inside functions (optional
dependencies, edges) count for the layers too, and tests/test_import_layers.py reads
both: this script prints what that test checks (the same code).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_import_layers import circles, graph, imports, layer_problems, modules, unit_graph  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lazy", action="store_true", help="include imports inside functions")
    ap.add_argument("--modules", action="store_true", help="print modules, not units")
    args = ap.parse_args()
    known = modules()
    found = [i for i in imports(known) if args.lazy or not i.lazy]
    edges = graph(found, known)
    shown = edges if args.modules else unit_graph(edges)
    width = max(map(len, shown))
    for src in sorted(shown):
        print(f"{src:<{width}}  -> {', '.join(sorted(shown[src])) or '(nothing)'}")
    kind = "modules" if args.modules else "units"
    print(f"\n{len(shown)} {kind}, {sum(map(len, shown.values()))} edges"
          f" ({'with' if args.lazy else 'without'} function-level imports)")
    for name, graph_ in (("unit", unit_graph(edges)), ("module", edges)):
        found_circles = circles(graph_)
        print(f"{len(found_circles)} {name} circles" + "".join(f"\n  {' -> '.join(c)}" for c in found_circles))
    problems = layer_problems(found, known)
    print(f"{len(problems)} imports outside the layers" + "".join(f"\n  {p}" for p in problems))


if __name__ == "__main__":
    main()
