"""Shared fixtures: every test gets its own store directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see engine/__init__.py

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh $KDTUI_HOME for this test."""
    path = tmp_path / "kdtui-home"
    monkeypatch.setenv("KDTUI_HOME", str(path))
    return path


@pytest.fixture
def store(home):
    from engine.store import Store

    s = Store(home)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    # two cores: keep torch from oversubscribing when tests run training
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
