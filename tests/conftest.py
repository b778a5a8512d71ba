"""Shared fixtures: real DuckDB files in temporary folders, the shared human data when present."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SKD_SHARED_DATA", ROOT.parent / "shared" / "data"))
EXAMPLES = ROOT / "examples" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def shared_file(rel: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED / rel
    if not path.is_file():
        pytest.skip(f"shared data {rel} is absent ({SHARED}); these tests need ../shared/data")
    return path


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "corpus.duckdb"


def run_skd(*args: str, db: Path | None = None, check: bool = False, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real `skd` command line in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    if db is not None:
        full_env["SKD_DB"] = str(db)
    proc = subprocess.run([sys.executable, "-m", "skd", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"skd {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
