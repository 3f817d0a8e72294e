"""The package layout's rules, read from the source: no import cycle between modules, no
package importing one above it in the declared layer order, the pipeline stages rl and
eval siblings that never import each other, and one home for each shared piece."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "echo_nemo"

# The layers, lowest first. A module may import its own layer and those below it, never
# one above. Each entry is a top-level module or package of echo_nemo ("" is the package's
# __init__); a new one must be placed here (test_every_module_has_a_layer).
#  - foundations: errors, the ECHO_NEMO_* switches (env), metrics files, signals, shared
#    argparse pieces, the checkpoint schedule; they import no other layer.
#  - the process layer: config (it builds the process groups its `parallel` section
#    names), distributed and the collectives, the torch/megatron patches, the speed seam
#    the model asks for its hot operations (speed) and the CPU layer that fills it (cpu).
#  - reward is a self-contained service (formats, truth, sandbox, server); the data
#    sources label and check documents with it, so it sits below data.
#  - data, the tokenizer and checkpoints feed the stages; the stages (pretraining, RL,
#    evaluation, export, and the optimizer step they share) sit above them; reports read
#    the stages' outputs.
#  - echo_nemo.cli finds its commands by name (its COMMANDS table, not an import: `--help`
#    stays light), so it sits below the layers that run commands through it: launch runs
#    every sweep point in-process with cli.main, and the study and the quickstart run
#    their stages through launch and the CLI.
LAYERS: list[set[str]] = [
    {"", "errors", "env", "net", "metrics", "preempt", "cli_args", "schedule"},
    {"config", "distributed", "parallel", "patches", "speed", "cpu"},
    {"model"},
    {"reward"},
    {"data", "tokenizer", "checkpoint"},
    {"train", "rl", "eval", "export", "optim", "integrations"},  # integrations: other frameworks' hooks
    {"report"},
    {"cli", "config_cli"},
    {"launch"},
    {"study", "quickstart"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph(modules: dict[str, Path] = MODULES) -> dict[str, set[str]]:
    """module -> the echo_nemo modules it imports, at any depth of the file (function-local
    and `if TYPE_CHECKING:` imports too: a type named across a cycle still ties the modules
    together). `from pkg import name` counts as an import of `pkg.name` when that is a module."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, `level - 1` packages up
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = {_nearest_module(m, modules) for m in found if m.split(".")[0] == "echo_nemo"} - {name}
    return graph


@functools.cache
def package_graph() -> dict[str, set[str]]:
    return import_graph(MODULES)


def _nearest_module(dotted: str, modules: dict[str, Path]) -> str:
    while dotted not in modules and "." in dotted:
        dotted = dotted.rpartition(".")[0]
    return dotted


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) through each group of mutually importing modules
    (each strongly connected component with more than one module), then the whole group."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(group, graph) + [f"(the group: {', '.join(group)})"] for group in groups]


def _cycle_in(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the group's first module (breadth-first back to it)."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle in {group}")


def layer_of(module: str) -> int | None:
    top = module.split(".")[1] if "." in module else ""
    return next((i for i, layer in enumerate(LAYERS) if top in layer), None)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
                  for m, targets in graph.items() for t in targets
                  if None not in (layer_of(m), layer_of(t)) and layer_of(t) > layer_of(m))


def test_import_graph_reads_every_form(tmp_path):
    pkg = tmp_path / "echo_nemo"
    (pkg / "sub").mkdir(parents=True)
    for f in ("__init__.py", "a.py", "b.py", "sub/__init__.py", "sub/c.py", "sub/d.py"):
        (pkg / f).write_text("")
    (pkg / "a.py").write_text("import echo_nemo.b\ndef f():\n    from echo_nemo.sub import c\n")
    (pkg / "sub/c.py").write_text("from . import d\nfrom ..a import f\nfrom typing import TYPE_CHECKING\n"
                                  "if TYPE_CHECKING:\n    from echo_nemo.sub.d import X\n")
    (pkg / "sub/d.py").write_text("from echo_nemo.sub.c import g\n")
    modules = {".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
               for p in pkg.rglob("*.py")}
    graph = import_graph(modules)
    assert graph["echo_nemo.a"] == {"echo_nemo.b", "echo_nemo.sub.c"}
    assert graph["echo_nemo.sub.c"] == {"echo_nemo.sub.d", "echo_nemo.a"}
    assert graph["echo_nemo.sub.d"] == {"echo_nemo.sub.c"}
    assert find_cycles(graph) == [["echo_nemo.a", "echo_nemo.sub.c", "echo_nemo.a",
                                   "(the group: echo_nemo.a, echo_nemo.sub.c, echo_nemo.sub.d)"]]


def test_no_import_cycle():
    cycles = find_cycles(package_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c[:-1]) + "  " + c[-1] for c in cycles)


def test_every_module_has_a_layer():
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_no_package_imports_one_above_it():
    bad = upward_imports(package_graph())
    assert not bad, "upward imports (LAYERS in this file gives the order):\n" + "\n".join(bad)


def test_the_cli_stays_light():
    """`echo-nemo --help` builds every command's parser: their modules import no layer above
    the foundations at module level (the handlers import what they run)."""
    heavy = {}
    for name, path in MODULES.items():
        if name.endswith(".cli") or name.endswith("_cli"):
            tree = ast.parse(path.read_text())
            top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
            mods = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
            mods |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
            mods = {m for m in mods if m.split(".")[0] in ("torch", "megatron")}
            if mods:
                heavy[name] = sorted(mods)
    assert heavy == {}


def imported_modules(path: Path) -> set[str]:
    """Every echo_nemo module a file imports, at any depth of the file (function-local too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("echo_nemo")}


def imports_of(package: str) -> dict[str, set[str]]:
    return {str(p.relative_to(PACKAGE.parent)): imported_modules(p) for p in (PACKAGE / package).rglob("*.py")}


def test_imported_modules_sees_every_form(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import echo_nemo.eval.run\nfrom echo_nemo.rl import loop\n"
                 "def f():\n    from echo_nemo.eval.metrics import pass_at_k\n")
    assert {"echo_nemo.eval.run", "echo_nemo.rl.loop", "echo_nemo.eval.metrics"} <= imported_modules(f)


def test_rl_and_eval_do_not_import_each_other():
    for package, other in (("rl", "echo_nemo.eval"), ("eval", "echo_nemo.rl")):
        found = imports_of(package)
        assert found, package
        bad = {f: sorted(m for m in mods if m == other or m.startswith(other + ".")) for f, mods in found.items()}
        assert not {f: m for f, m in bad.items() if m}, f"echo_nemo.{package} imports {other}"


ONE_HOME = {  # shared pieces that once had several, drifting copies
    "last_boxed", "free_port", "format_stats", "lr_factor", "log_spaced_steps", "save_checkpoint",
    "load_checkpoint", "average_gradients", "clip_gradients", "policy_update", "FORMATS", "BENCHMARKS",
}


def test_each_shared_piece_is_defined_once():
    homes: dict[str, list[str]] = {name: [] for name in ONE_HOME}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = [node.name] if isinstance(node, ast.FunctionDef | ast.ClassDef) else [
                t.id for t in getattr(node, "targets", [getattr(node, "target", None)]) if isinstance(t, ast.Name)]
            for name in names:
                if name in homes:
                    homes[name].append(str(path.relative_to(PACKAGE)))
    assert {n: h for n, h in homes.items() if len(h) != 1} == {}
    assert homes["save_checkpoint"] == ["checkpoint.py"] and homes["FORMATS"] == ["reward/formats.py"]
