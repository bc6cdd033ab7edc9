"""The one-way data flow of docs/architecture.md, checked on the source: env -> episodes ->
grounding -> imagination -> RL -> evaluation -> report, with no import circles and no generic
module reaching into one environment."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# lower layers never import higher ones (imports inside functions count too); the package root
# `kalm` only registers the envs with gymnasium on import and is left out
LAYERS = [
    ("kalm", "kalm.io", "kalm.config"),
    ("kalm.envs.base",),
    ("kalm.envs",),
    ("kalm.data",),
    ("kalm.llm",),
    ("kalm.imagination",),
    ("kalm.rl",),
    ("kalm.eval",),
    ("kalm.run_folder",),
    ("kalm.eval.report",),
    ("kalm.pipeline",),
    ("kalm.cli",),
]
# modules allowed to name a built-in environment: the envs themselves and the registry
ENV_SPECIFIC = ("kalm.envs.clevr", "kalm.envs.metaworld")
MAY_NAME_BUILTIN_ENVS = ("kalm.envs",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p) for p in SRC.rglob("*.py")}
    for path in SRC.rglob("*.py"):
        name = _module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    found.add(t)
        graph[name] = found
    return graph


def _layer(module: str) -> int:
    best, best_len = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best >= 0, f"{module} has no layer in tests/test_architecture.py"
    return best


def test_no_module_imports_a_later_stage():
    bad = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
           for m, targets in _imports().items() for t in targets
           if _layer(t) > _layer(m) and "kalm" not in (m, t)]
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    graph = _imports()
    # `import kalm` (for the version) is the package root, not a dependency on a stage
    graph = {m: {t for t in ts if t != "kalm"} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append([*stack[stack.index(t):], t])
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # a package importing its own submodules (kalm.envs.clevr -> kalm.envs.clevr.env) is fine
    real = [c for c in cycles if not all(x.startswith(c[0]) or c[0].startswith(x) for x in c)]
    assert not real, "\n".join(" -> ".join(c) for c in real)


def test_generic_modules_do_not_reach_into_one_environment():
    bad = [f"{m} imports {t}" for m, targets in _imports().items() for t in targets
           if t.startswith(ENV_SPECIFIC) and not m.startswith(MAY_NAME_BUILTIN_ENVS)]
    assert not bad, "\n".join(bad)
