"""Embeddings of corpus items: sentence-transformers over each item's verbalisation, L2-normalised,
stored per model in `embeddings`; items that already have one are skipped, so embedding resumes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from critics.verbalize import verbalize_rows
from store import MINILM, SkdError, open_store, resolve_model, stage_in_chunks


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
    from critics.model import sentence_encoder
    try:
        return sentence_encoder(resolve_model(model))
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
    with open_store(db_path) as s:
        todo, total = s.embeddings.missing(model, where)
        run_id = s.start_run("embed", {"model": model, "where": where})
    stats = EmbedSummary(model, items=total, already_embedded=total - todo.num_rows)
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
