"""The import graph of sssrd/, read from the source (ast): no circles, and server.py is built
only by the CLI. Every import counts, including those inside functions and under TYPE_CHECKING:
a circle there is still two modules that each need the other."""

import ast
from pathlib import Path

import sssrd

ROOT = Path(sssrd.__file__).parent


def module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The sssrd modules `path` imports (a name imported from a package counts as its module
    when it is one, else as the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    known = module_names()
    return {name: imports_of(path, known) - {name} for name, path in known.items()}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> list[str] | None:
        if name in trail:
            return [*trail[trail.index(name) :], name]
        if name in done:
            return None
        for imported in sorted(graph[name]):
            circle = visit(imported, [*trail, name])
            if circle:
                return circle
        done.add(name)
        return None

    for name in sorted(graph):
        circle = visit(name, [])
        if circle:
            return circle
    return None


def test_sssrd_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 20, "found too few modules: the check is not reading sssrd/"
    assert "sssrd.viewer" in graph["sssrd.server"], "the graph misses plain imports"
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_circle(graph) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_only_the_cli_imports_the_server():
    """The CLI, and the entry point of a worker process (its own command line)."""
    importers = {name for name, imported in import_graph().items() if "sssrd.server" in imported}
    assert importers == {"sssrd.cli", "sssrd.worker"}
