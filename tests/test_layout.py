"""The package layout's rules, read from the source: shared services live one level down,
so the pipeline stages rl and eval are siblings that never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "echo_nemo"


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
