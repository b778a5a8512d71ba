"""Files written whole or not at all."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import SkdError


def write_atomic(path: Path, text: str) -> Path:
    """Write TEXT to PATH through a temporary file beside it: a kill leaves the previous file or none, never half
    of one (a truncated JSON card or state would fail every later read). A folder or an unwritable place is one
    line, and leaves no temporary file."""
    path = Path(path)
    if path.is_dir():
        raise SkdError(f"{path} is a folder; give a file name")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise SkdError(f"cannot write {path}: {e.strerror or e}") from None
    return path
