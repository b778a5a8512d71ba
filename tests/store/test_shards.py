import json

import pyarrow as pa

from store import ShardWriter, Store, ingest_shards, pending_shards


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


def test_shards_are_ingested_once_with_provenance(db_path):
    with Store(db_path) as s:
        w = ShardWriter(s.files_dir / "shards", "items")
        w.write(items_shard(["r1", "r2"]))
        w.write(items_shard(["r3", "r1"]))  # "to eat 1" again: one item, two sources
        assert ingest_shards(s, w.directory, run_id="gen-1") == 4
        assert ingest_shards(s, w.directory, run_id="gen-1") == 0
        assert pending_shards(s, w.directory) == []
        assert s.scalar("SELECT count(*) FROM items") == 3
        src = s.query("SELECT request_id, run_id, teacher FROM item_sources ORDER BY request_id")
        assert src["request_id"].to_list() == ["r1", "r1", "r2", "r3"]
        assert set(src["run_id"]) == {"gen-1"} and set(src["teacher"]) == {"smollm2"}
        assert s.scalar("SELECT extra FROM items LIMIT 1") is None  # provenance is not item content


def test_half_written_shard_is_never_ingested(db_path):
    with Store(db_path) as s:
        w = ShardWriter(s.files_dir / "shards", "generations")
        (w.directory / ".generations--crashed.parquet.tmp").write_bytes(b"PAR1 half")
        path = w.write(pa.table({"request_id": ["q"], "run_id": ["g"], "sample_index": [0], "text": ["hello"],
                                 "parsed_ok": [True]}))
        assert path.name.startswith("generations--") and not list(w.directory.glob("*.tmp"))[1:]
        assert ingest_shards(s, w.directory) == 1
        assert s.scalar("SELECT text FROM generations") == "hello"
