"""The layers of DESIGN.md, enforced: engine never sees the manager; the manager
never loads torch at import and uses only the engine's torch-free contract."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE_FORBIDDEN = ("app", "textual", "textual_plotext", "sqlmodel", "sqlalchemy", "alembic", "typer")
APP_MAY_IMPORT_FROM_ENGINE = ("engine.core.",)  # the torch-free contract


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at_module_level) for every import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
    return found


def test_engine_never_imports_the_manager_or_ui():
    bad = [
        f"{p.relative_to(ROOT)}: {mod}"
        for p in (ROOT / "engine").rglob("*.py")
        for mod, _ in imports(p)
        if mod.split(".")[0] in ENGINE_FORBIDDEN
    ]
    assert not bad, bad


def test_app_uses_only_the_engine_contract():
    bad = [
        f"{p.relative_to(ROOT)}: {mod}"
        for p in (ROOT / "app").rglob("*.py")
        for mod, _ in imports(p)
        if mod.split(".")[0] == "engine" and not mod.startswith(APP_MAY_IMPORT_FROM_ENGINE)
    ]
    assert not bad, bad


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _internal_graph() -> dict[str, set[str]]:
    """module -> the app/engine modules it imports (at any level: a lazy import is still a dependency)."""
    files = {_module_name(p): p for top in ("app", "engine") for p in (ROOT / top).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & files.keys()
                deps |= subs or ({node.module} & files.keys())
        graph[name] = deps - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_in_app_or_engine():
    assert _cycles(_internal_graph()) == []


def test_core_imports_only_the_stdlib_pydantic_and_itself():
    allowed = set(sys.stdlib_module_names) | {"pydantic", "engine", "yaml"}
    bad = [
        f"{p.relative_to(ROOT)}: {mod}"
        for p in (ROOT / "engine" / "core").rglob("*.py")
        for mod, _ in imports(p)
        if mod.split(".")[0] not in allowed or (mod.startswith("engine") and not mod.startswith("engine.core"))
    ]
    assert not bad, bad


def test_no_job_module_imports_another():
    from engine.core.config import JOBS

    jobs = {cls.job for cls in JOBS.values()}
    graph = _internal_graph()
    bad = [f"{job} imports {dep}" for job in sorted(jobs) for dep in sorted(graph[job] & jobs)]
    assert not bad, bad


def test_the_fast_kernels_import_no_job_and_their_switch_only_the_stdlib():
    """engine/fast serves the jobs (they import it), never the other way; its switch is read by the
    job configs, which the manager loads without torch or numpy."""
    from engine.core.config import JOBS

    jobs = {cls.job for cls in JOBS.values()}
    graph = _internal_graph()
    fast = [m for m in graph if m.startswith("engine.fast")]
    assert "engine.fast.switch" in fast
    bad = [f"{m} imports {dep}" for m in sorted(fast) for dep in sorted(graph[m] & jobs)]
    assert not bad, bad
    switch = [mod for mod, _ in imports(ROOT / "engine" / "fast" / "switch.py")]
    assert all(mod.split(".")[0] in sys.stdlib_module_names for mod in switch), switch


def test_every_job_module_lives_in_its_workload_package():
    from engine.core.config import JOBS

    for kind, cls in JOBS.items():
        package = cls.__module__.rsplit(".", 1)[0]  # engine.longtail.config -> engine.longtail
        assert cls.job.startswith(package + "."), (kind, cls.job)
        assert (ROOT / (cls.job.replace(".", "/") + ".py")).is_file(), (kind, cls.job)


def test_app_never_imports_torch_at_module_level():
    bad = [
        f"{p.relative_to(ROOT)}: {mod}"
        for p in (ROOT / "app").rglob("*.py")
        for mod, top in imports(p)
        if top and mod.split(".")[0] in ("torch", "torchvision", "numpy")
    ]
    assert not bad, bad


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_importing_the_manager_loads_no_torch():
    mods = _modules_after("import app.cli, app.ingest, app.queue.daemon, app.export, app.tui.app")
    assert "torch" not in mods
    assert "numpy" not in mods


def test_engine_core_and_every_job_config_are_torch_free():
    mods = _modules_after("import engine.core.config, engine.core.rundir, engine.core.events, engine.core.recorder, "
                          "engine.core.procs, engine.cli\nfrom engine.core.config import JOBS; list(JOBS)")
    assert "torch" not in mods
    assert "numpy" not in mods
