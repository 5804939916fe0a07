"""The layers of DESIGN.md, enforced: engine never sees the manager; the manager
never loads torch at import and uses only the engine's torch-free contract."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE_FORBIDDEN = ("app", "textual", "textual_plotext", "sqlmodel", "sqlalchemy", "alembic", "typer")
APP_MAY_IMPORT_FROM_ENGINE = {"engine.config", "engine.run"}


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
        if mod.split(".")[0] == "engine" and mod not in APP_MAY_IMPORT_FROM_ENGINE
    ]
    assert not bad, bad


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


def test_engine_contract_modules_are_torch_free():
    mods = _modules_after("import engine.config, engine.run, engine.cli")
    assert "torch" not in mods
