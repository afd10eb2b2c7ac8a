"""The package's import graph has no cycle, imports inside functions included.

``python tests/test_layout.py`` prints the graph between folders (``--modules``: between modules).
"""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "siamgrad"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of the package that ``module`` imports anywhere in its body."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    g = {m: imported(m, p, known) for m, p in known.items()}
    # a package's __init__ re-exporting its submodules is not an arrow back from them
    for m in g:
        g[m] = {t for t in g[m] if not m.startswith(t + ".")}
    return g


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(g[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                cycle = visit(w)
                if cycle:
                    return cycle
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(g):
        if v not in state:
            cycle = visit(v)
            if cycle:
                return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def package_graph(g: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between the package's top-level folders and modules (``siamgrad.train.loop`` -> ``train``)."""
    top = lambda m: m.split(".")[1] if "." in m else m  # noqa: E731
    out: dict[str, set[str]] = {}
    for a, deps in g.items():
        out.setdefault(top(a), set()).update(top(d) for d in deps if top(d) != top(a))
    return out


def test_folders_import_one_way():
    """No two folders import each other, even through others: the arrows between capabilities point one way."""
    cycle = find_cycle(package_graph(graph()))
    assert cycle is None, "folders import each other: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


if __name__ == "__main__":  # the import graph, by folder (--modules: by module)
    g = graph() if "--modules" in sys.argv else package_graph(graph())
    for mod, deps in sorted(g.items()):
        print(f"{mod}: {', '.join(sorted(deps)) or '-'}")
