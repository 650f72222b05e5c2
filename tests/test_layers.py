"""Modules import only downward: no import circle anywhere in the
package (function-level imports included), views and reports never reach
up into commands, sessions or BPF, and nothing imports the CLI."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "ovltrace"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    """module -> the ovltrace modules it imports (anywhere in its body)."""
    out: dict[str, set[str]] = {}
    known = {module_name(p) for p in PKG.rglob("*.py")}
    for path in PKG.rglob("*.py"):
        mod = module_name(path)
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [f"{target}.{a.name}" for a in node.names]
                hits = [n for n in names if n in known] or ([target] if target in known else [])
                deps.update(hits)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in known)
        deps.discard(mod)
        out[mod] = {d for d in deps if d.startswith("ovltrace")}
    return out


def test_no_import_circle():
    graph = imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_views_and_reports_stay_below_commands():
    graph = imports()
    upward = ("ovltrace.cli", "ovltrace.commands", "ovltrace.session", "ovltrace.probes",
              "ovltrace.hooks",
              "ovltrace.recording", "ovltrace.annotate")
    for m, deps in graph.items():
        if m.startswith(("ovltrace.views", "ovltrace.report", "ovltrace.analysis",
                         "ovltrace.model", "ovltrace.counters")):
            bad = sorted(d for d in deps if d.startswith(upward))
            assert not bad, f"{m} imports {bad}"
    assert not [m for m, deps in graph.items() if "ovltrace.cli" in deps]


def test_the_model_and_analysis_import_no_host_or_kernel_code():
    graph = imports()
    allowed = {"ovltrace.counters", "ovltrace.model", "ovltrace.format", "ovltrace.untrusted"}
    for m in ("ovltrace.model", "ovltrace.analysis", "ovltrace.counters"):
        assert graph[m] <= allowed, (m, graph[m])
