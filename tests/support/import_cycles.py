"""No import cycle among the product's modules: ``python -m tests.support.import_cycles`` (``make lint`` runs it).

The graph is grimp's (the one import-linter reads), which records every
import in a module's text: at the top, inside functions and under
``TYPE_CHECKING``. An import inside a function still ties the two modules
together; only its timing differs. Each cycle found is printed as a chain,
``a -> b -> c -> a``, and the exit status is 1.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import grimp

#: The product's packages (setup.cfg's import-linter root packages).
PACKAGES = ("enrichment_actors", "enrichment_middleware")


def cycles(graph: grimp.ImportGraph, packages: Iterable[str]) -> list[list[str]]:
    """One cycle per group of modules that import one another, as a chain that ends where it starts."""
    roots = tuple(packages)
    modules = sorted(m for m in graph.modules if m.split(".")[0] in roots)
    found = []
    for group in _strongly_connected(graph, modules):
        first = group[0]
        # Any module of the group imports, through the others, back to the first.
        step = min(m for m in graph.find_modules_directly_imported_by(first) if m in group)
        back = graph.find_shortest_chain(importer=step, imported=first)
        assert back is not None
        found.append([first, *back])
    return found


def _strongly_connected(graph: grimp.ImportGraph, modules: Sequence[str]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively: the groups of two or more modules, each sorted, in order."""
    inside = set(modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root) & inside)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph.find_modules_directly_imported_by(step) & inside))))
                elif step in on_stack:
                    low[module] = min(low[module], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[module])
            if low[module] == index[module]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == module:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return sorted(groups)


def main(packages: Sequence[str] = PACKAGES) -> int:
    found = cycles(grimp.build_graph(*packages, cache_dir=None), packages)
    for chain in found:
        print(f"Import cycle: {' -> '.join(chain)}", file=sys.stderr)
    if found:
        print(
            f"{len(found)} import cycle(s) among {', '.join(packages)}: move what both modules need into a "
            "third, or pass it in.",
            file=sys.stderr,
        )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or PACKAGES))
