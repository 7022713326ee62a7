"""The app starts without torch: the layering contract and a real import in a fresh interpreter."""

from __future__ import annotations

import os
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
