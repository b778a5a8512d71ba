"""Files written whole or not at all (store.write_atomic)."""

from __future__ import annotations

import json
import threading

import pytest

from store import SkdError, write_atomic


def test_writers_of_one_path_never_cut_each_others_file_short(tmp_path):
    # one temporary name shared by every writer would let one truncate the file another is about to move in, or move
    # it away first (a FileNotFoundError): each writer's own name means every replace is of a whole file
    path, errors = tmp_path / "card.json", []
    texts = [json.dumps({"writer": w, "pad": "x" * 200_000}) for w in range(6)]

    def writer(text: str) -> None:
        try:
            for _ in range(40):
                write_atomic(path, text)
                assert json.loads(path.read_text())["pad"]  # whatever is there reads whole
        except Exception as e:  # noqa: BLE001 - every failure is the finding
            errors.append(repr(e))
    threads = [threading.Thread(target=writer, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and path.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]  # no temporary file left


def test_a_folder_or_an_unwritable_place_is_one_line_and_leaves_nothing(tmp_path):
    with pytest.raises(SkdError, match="is a folder; give a file name"):
        write_atomic(tmp_path, "{}")
    (tmp_path / "file").write_text("")
    with pytest.raises(SkdError, match="cannot write"):
        write_atomic(tmp_path / "file" / "below.json", "{}")  # a file where a folder should be
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
