"""The package's import structure has no cycle (an independent check of the layers contract
that `lint-imports` enforces from pyproject.toml): every import of every module, lazy ones
inside functions included, read with the standard library's ``ast``."""

import ast
from pathlib import Path

import bench

PACKAGE = Path(bench.__file__).parent


def _imports() -> dict[str, set[str]]:
    mods = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            edges[m] |= {n for n in names if n in mods and n != m}
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules, found by depth-first search (white/grey/black colouring)."""
    colour = dict.fromkeys(edges, 0)
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        colour[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if colour[n] == 1:
                return stack[stack.index(n):] + [n]
            if colour[n] == 0 and (found := visit(n)):
                return found
        stack.pop()
        colour[m] = 2
        return None

    for m in sorted(edges):
        if colour[m] == 0 and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    assert _cycle(_imports()) is None


def test_stages_do_not_import_the_runner_or_the_cli():
    edges = _imports()
    for stage in ("bench.cell.train", "bench.cell.evaluate", "bench.cell.throughput", "bench.report.build",
                  "bench.cell.plan", "bench.tools.check", "bench.tools.gpu_check"):
        assert not edges[stage] & {"bench.runner.stages", "bench.cli"}, stage
