"""The layers hold: the app starts without torch (a real import in a fresh interpreter), the
import-linter contracts in pyproject.toml are kept, and no two modules import each other."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_app_side_modules_do_not_import_torch_at_start_up():
    code = (
        "import kdtui.cli, kdtui.app, engine.core.reading, engine.core.planning, engine.core.writing, engine.core.store, engine.core.leaderboard, engine.core.export, "
        "engine.core.registry, engine.daemon.client, engine.daemon.server, sys; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_import_contract_holds():
    local = Path(sys.executable).parent / "lint-imports"  # installed by the dev extra
    exe = str(local) if local.exists() else shutil.which("lint-imports")
    assert exe, "import-linter is part of the dev extra: pip install -e '.[dev]'"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([exe], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_module_imports_itself_back():
    """No import cycle between any two modules of kdtui, engine and bench (a cycle is what makes
    a module impossible to read, test or move on its own)."""
    import graphlib

    import grimp

    graph = grimp.build_graph("kdtui", "engine", "bench", cache_dir=None)
    imports = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    assert len(imports) > 100  # the whole tree was read, not an empty graph
    try:
        tuple(graphlib.TopologicalSorter(imports).static_order())
    except graphlib.CycleError as e:
        cycle = reversed(e.args[1])  # graphlib lists dependencies first
        raise AssertionError(f"import cycle: {' -> '.join(cycle)}") from None


def test_ci_lints_then_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("`.ci/run` runs):", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    script = (ROOT / ".ci" / "run").read_text()
    assert block.strip() in script.splitlines(), "the README's test command changed: copy it"
    tests_at = script.index(block.strip())
    for lint in (
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        ".venv/bin/lint-imports",
    ):
        assert -1 < script.find(lint) < tests_at, f"{lint} must run before the tests"
    assert "set -euo pipefail" in script  # so a lint failure fails CI


def _defines(tree: ast.AST, names: list[str]) -> bool:
    """Whether a module's source defines names[0] at top level (names[1:] inside its class)."""
    body = tree.body
    for i, name in enumerate(names):
        found = None
        for node in body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                hit = node.name == name
            elif isinstance(node, ast.Assign):
                hit = any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
            elif isinstance(node, ast.AnnAssign):
                hit = isinstance(node.target, ast.Name) and node.target.id == name
            else:
                hit = False
            if hit:
                found = node
        if found is None or (i < len(names) - 1 and not isinstance(found, ast.ClassDef)):
            return False
        body = getattr(found, "body", [])
    return True


def _exists(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        for source in (base.with_suffix(".py"), base / "__init__.py"):
            if source.is_file():
                rest = parts[cut:]
                return not rest or _defines(ast.parse(source.read_text()), rest)
    return False


def test_architecture_names_only_what_exists():
    """ARCHITECTURE.md cannot go stale: every path and every engine.x / kdtui.x / bench.x name
    it mentions is in the tree (a module, a package, or a name a module defines)."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    paths = set(re.findall(r"\b(?:kdtui|engine|bench|tests|experiments)/[\w/.]*", text))
    dotted = set(re.findall(r"\b(?:kdtui|engine|bench)\.[A-Za-z_][\w.]*", text))
    assert len(paths) > 20 and len(dotted) > 20  # the page was read, not skipped
    missing = [p for p in sorted(paths) if not (ROOT / p.rstrip(".")).exists()]
    missing += [d for d in sorted(dotted) if not _exists(d.rstrip("."))]
    assert not missing, f"ARCHITECTURE.md names what the tree does not have: {missing}"


SPELLED_ONCE = {
    # owner module: a string literal that starts with a name it owns
    "engine/core/metrics.py": re.compile(
        r"[\"'](train/loss|train/lr|train/top1|test/top1|test/top5|teacher_cache/)"
    ),
    "engine/core/layout.py": re.compile(
        r"[\"'](log\.txt|worker\.log|last\.pth|prev\.pth|best\.pth|config\.toml)[\"']"
    ),
}


def test_metric_and_run_folder_file_names_are_spelled_only_by_their_owner():
    """Everyone else reads them from engine.core.metrics / engine.core.layout, so a renamed
    metric or file cannot leave a reader behind (tests may spell them: they check the owner)."""
    sources = [p for top in ("kdtui", "engine", "bench") for p in (ROOT / top).rglob("*.py")]
    for owner, pattern in SPELLED_ONCE.items():
        spellers = {
            p.relative_to(ROOT).as_posix() for p in sources if pattern.search(p.read_text())
        }
        assert spellers == {owner}, f"spelled outside {owner}: {sorted(spellers - {owner})}"
