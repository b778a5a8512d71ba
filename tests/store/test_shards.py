import json

import pyarrow as pa
import pytest

from store import ShardWriter, SkdError, Store, ingest_shards, pending_shards


def items_shard(requests):
    return pa.table({
        "kind": ["triple"] * len(requests),
        "head": ["PersonX cooks"] * len(requests),
        "relation": ["xWant"] * len(requests),
        "tail": [f"to eat {r[-1]}" for r in requests],
        "request_id": requests,
        "sample_index": list(range(len(requests))),
        "teacher": ["smollm2"] * len(requests),
        "params": [json.dumps({"temperature": 1.0})] * len(requests),
    })


def generations(requests):
    return pa.table({"request_id": requests, "run_id": ["g"] * len(requests), "sample_index": [0] * len(requests),
                     "text": ["out"] * len(requests), "parsed_ok": [True] * len(requests)})


def test_batches_are_ingested_once_with_provenance(db_path):
    with Store(db_path) as s:
        w = ShardWriter(s.files_dir / "shards")
        w.write({"items": items_shard(["r1", "r2"]), "generations": generations(["r1", "r2"])})
        w.write({"items": items_shard(["r3", "r1"])})  # "to eat 1" again: one item, two sources
        assert ingest_shards(s, w.directory, run_id="gen-1") == 6
        assert ingest_shards(s, w.directory, run_id="gen-1") == 0
        assert pending_shards(s, w.directory) == [] and list(w.directory.iterdir()) == []  # ingested: deleted
        assert s.scalar("SELECT count(*) FROM items") == 3
        assert s.scalar("SELECT count(*) FROM generations") == 2
        src = s.query("SELECT request_id, run_id, teacher FROM item_sources ORDER BY request_id")
        assert src["request_id"].to_list() == ["r1", "r1", "r2", "r3"]
        assert set(src["run_id"]) == {"gen-1"} and set(src["teacher"]) == {"smollm2"}
        assert s.scalar("SELECT extra FROM items LIMIT 1") is None  # provenance is not item content


def test_two_processes_writing_the_same_rows_store_them_once(db_path):
    """Two `skd critic score` (or embed, or generate) runs at once each write every missing row in their own
    shards; a score stored twice was an item twice in every snapshot cut with that critic."""
    scores = pa.table({"item_id": ["a", "b"], "critic_id": ["c", "c"], "score": [0.25, 0.75]})
    with Store(db_path) as s:
        w = ShardWriter(s.files_dir / "shards")
        for _ in range(2):
            w.write({"scores": scores, "generations": generations(["r1"])})
        w.write({"generations": generations(["r2"]), "scores": pa.table({"item_id": ["a"], "critic_id": ["d"],
                                                                          "score": [0.5]})})
        assert ingest_shards(s, w.directory) == 3 + 2
        assert s.query("SELECT item_id, critic_id FROM scores ORDER BY ALL").rows() == [("a", "c"), ("a", "d"),
                                                                                        ("b", "c")]
        assert s.scalar("SELECT count(*) FROM generations") == 2


def test_half_written_batch_is_never_ingested_and_a_bad_batch_changes_nothing(db_path):
    with Store(db_path) as s:
        w = ShardWriter(s.files_dir / "shards")
        crashed = w.directory / ".crashed.tmp"
        crashed.mkdir()
        (crashed / "items.parquet").write_bytes(b"PAR1 half")
        w.write({"generations": generations(["q"])}, name="b1")
        assert [p.name for p in pending_shards(s, w.directory)] == ["b1"]
        assert ingest_shards(s, w.directory) == 1
        bad = w.write({"generations": generations(["x"]), "items": pa.table({"head": ["h"]})}, name="b2")
        (bad / "items.parquet").write_bytes(b"corrupt")  # a damaged shard: its whole batch stays out
        with pytest.raises(SkdError, match="b2"):
            ingest_shards(s, w.directory)
        assert s.scalar("SELECT count(*) FROM generations") == 1
        assert [p.name for p in pending_shards(s, w.directory)] == ["b2"]
        with pytest.raises(SkdError, match="unknown shard target"):
            w.write({"nope": generations(["y"])})
