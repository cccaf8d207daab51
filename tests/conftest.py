"""Shared fixtures: real server processes on ports the OS picks, cleaned up after use."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers.server import ServerProcess  # noqa: E402


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One demo server per test module; tests use their own conversations."""
    db = tmp_path_factory.mktemp("server") / "warmline.db"
    with ServerProcess(db) as server:
        yield server
