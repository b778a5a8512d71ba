"""Files written whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path

from .errors import SkdError


def write_atomic(path: Path, text: str) -> Path:
    """Write TEXT to PATH through a temporary file beside it: a kill leaves the previous file or none, never half
    of one (a truncated JSON card or state would fail every later read). A folder or an unwritable place is one
    line, and leaves no temporary file. Each writer has its own temporary name (process and thread), so two
    writers of one path each replace it whole: the last one wins, and neither cuts the other's file short."""
    path = Path(path)
    if path.is_dir():
        raise SkdError(f"{path} is a folder; give a file name")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # on disk before it takes the name: a power loss cannot leave an empty file there
        os.replace(tmp, path)
    except BaseException as e:  # an interrupt too: a temporary name of its own is never written over again
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise SkdError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return path


def file_digest(path: Path | str) -> str | None:
    """A file's content hash, a folder's over its files' names, sizes and times; None when it is absent."""
    path = Path(path)
    if path.is_dir():
        listing = sorted((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns)
                         for f in path.rglob("*") if f.is_file())
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
