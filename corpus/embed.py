"""Embeddings of corpus items: sentence-transformers over each item's verbalisation, L2-normalised,
stored per model in `embeddings`; items that already have one are skipped, so embedding resumes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from critics.verbalize import verbalize_rows
from store import MINILM, SkdError, open_store, resolve_model, stage_in_chunks

COLUMNS = "item_id, kind, head, relation, tail, question, answer, rationale, text"
STREAM_MEMORY = "512MB"  # DuckDB's buffer while vectors stream out: they are copied into one matrix anyway


@dataclass
class EmbedSummary:
    model: str
    items: int = 0
    already_embedded: int = 0
    embedded: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_encoder(model: str):
    from sentence_transformers import SentenceTransformer

    from critics.model import device
    try:
        return SentenceTransformer(resolve_model(model), device=device())
    except OSError as e:
        raise SkdError(f"cannot load embedding model {model!r}: {str(e).splitlines()[0]}") from None


def embedding_text(row: dict[str, Any]) -> str:
    """A triple is embedded by its tail: overgeneration paraphrases tails of one head and relation, and
    within that scope the shared head would make every pair look alike. Other kinds: their verbalisation."""
    if row.get("kind") == "triple":
        return str(row.get("tail") or "")
    return verbalize_rows([row])[0]


def encode(encoder: Any, rows: list[dict[str, Any]], batch_size: int = 128) -> np.ndarray:
    return encoder.encode([embedding_text(r) for r in rows], batch_size=batch_size, normalize_embeddings=True,
                          convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


def embed_items(db_path: str | Path, model: str = MINILM, where: str | None = None, chunk: int = 4096,
                batch_size: int = 128, on_chunk: Callable[[EmbedSummary, int], None] | None = None) -> EmbedSummary:
    db_path = Path(db_path)
    cond = f"({where})" if where else "TRUE"
    with open_store(db_path) as s:
        try:
            total = s.scalar(f"SELECT count(*) FROM items WHERE {cond}")
            todo = s.con.sql(
                f"SELECT {COLUMNS} FROM items i WHERE {cond} AND NOT EXISTS (SELECT 1 FROM embeddings e "
                "WHERE e.item_id = i.item_id AND e.model = ?) ORDER BY item_id", params=[model]).to_arrow_table()
        except duckdb.Error as e:
            raise SkdError(f"--where: {str(e).splitlines()[0]}") from None
        run_id = s.start_run("embed", {"model": model, "where": where})
    stats = EmbedSummary(model, items=int(total), already_embedded=int(total) - todo.num_rows)
    encoder = load_encoder(model) if todo.num_rows else None
    started = time.monotonic()

    def tables(part: pa.Table) -> dict[str, pa.Table]:
        vectors = encode(encoder, part.to_pylist(), batch_size)
        return {"embeddings": pa.table({"item_id": part["item_id"], "model": [model] * part.num_rows,
                                        "vector": pa.array(list(vectors), type=pa.list_(pa.float32()))})}

    def advance(n: int) -> None:
        stats.embedded += n
        stats.seconds = time.monotonic() - started
        if on_chunk:
            on_chunk(stats, todo.num_rows)

    advance(0)
    stage_in_chunks(db_path, run_id, todo, chunk, tables, advance, stats.as_dict)
    return stats


def iter_vectors(con: duckdb.DuckDBPyConnection, model: str, sql_items: str,
                 batch: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(item_ids, float32 matrix) batches of the stored vectors of the items `sql_items` selects, in no
    particular order, with DuckDB's buffer capped while they stream (it would cache them all otherwise)."""
    limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    con.execute(f"SET memory_limit = '{STREAM_MEMORY}'")
    try:
        reader = con.sql(f"SELECT item_id, vector FROM embeddings WHERE model = ? AND item_id IN ({sql_items})",
                         params=[model]).to_arrow_reader(batch)
        for rb in reader:
            yield (np.asarray(rb.column(0).to_pylist()),
                   rb.column(1).values.to_numpy(zero_copy_only=False).reshape(rb.num_rows, -1))
    finally:
        con.execute(f"SET memory_limit = '{limit}'")


def load_vectors(con: duckdb.DuckDBPyConnection, model: str, sql_items: str,
                 batch: int = 65536) -> tuple[np.ndarray, list[str]]:
    """Embeddings of the items `sql_items` selects (a query returning item_id), in item_id order, streamed
    into one preallocated float32 matrix: no Python list of vectors is built, and only the ids are sorted
    (sorting a million vectors in DuckDB would cost gigabytes)."""
    ids = [r[0] for r in con.execute(f"SELECT item_id FROM embeddings WHERE model = ? AND item_id IN ({sql_items}) "
                                     "ORDER BY item_id", [model]).fetchall()]
    dim = con.execute("SELECT len(vector) FROM embeddings WHERE model = ? LIMIT 1", [model]).fetchall()
    if not ids or not dim:
        return np.zeros((0, 0), dtype=np.float32), []
    out = np.empty((len(ids), dim[0][0]), dtype=np.float32)
    order = np.asarray(ids)
    for batch_ids, vectors in iter_vectors(con, model, sql_items, batch):
        out[np.searchsorted(order, batch_ids)] = vectors
    return out, ids
