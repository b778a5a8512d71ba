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
from store import (
    MINILM,
    BatchJob,
    Mapper,
    SkdError,
    Store,
    local_mapper,
    model_prompt,
    open_store,
    resolve_model,
    stage_job,
)


@dataclass
class EmbedSummary:
    model: str
    items: int = 0
    already_embedded: int = 0
    embedded: int = 0
    replaced: int = 0  # vectors deleted first (`replace`)
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


def encode_texts(encoder: Any, texts: list[str], batch_size: int = 128) -> np.ndarray:
    """Unit vectors to compare by cosine (critics.model.unit_vectors, for train/, which may not import critics)."""
    from critics.model import unit_vectors

    return unit_vectors(encoder, texts, "STS", batch_size).astype(np.float32)


class EmbedBatch:
    """A worker's embedder: loads the model once, then embeds batches of items (a Ray actor, or this process) under
    PROMPT, the one the run recorded (read once, before the workers start), not each worker's own reading of the
    model folder: what later runs check their prompt against must be what the vectors were made under."""

    def __init__(self, model: str, batch_size: int = 128, prompt: str | None = None):
        self.model, self.batch_size, self.prompt = model, batch_size, prompt
        self.encoder = load_encoder(model)

    @staticmethod
    def preflight(model: str, batch_size: int = 128, prompt: str | None = None) -> None:
        """What an engine checks before its workers start, without loading the model: that it exists."""
        resolve_model(model)

    def __call__(self, part: pa.Table) -> pa.Table:
        from critics.model import prompted_vectors

        texts = [embedding_text(r) for r in part.to_pylist()]
        vectors = prompted_vectors(self.encoder, texts, self.prompt, self.batch_size).astype(np.float32)
        return pa.table({"item_id": part["item_id"], "model": [self.model] * part.num_rows,
                         "vector": pa.array(list(vectors), type=pa.list_(pa.float32()))})


def check_prompt(s: Store, model: str, prompt: str | None) -> None:
    """Refuse to add vectors made under PROMPT beside MODEL's stored ones made under another (its folder's prompts
    changed): a cosine between the two kinds means nothing, and dedup would compare them."""
    if other := s.embeddings.other_prompt(model, prompt):
        n, before = other
        raise SkdError(f"the {n:,} vectors stored for {model} were made under {said(before)}, and the model now "
                       f"gives {said(prompt)}: run `skd embed --model {model} --replace` to embed every item again "
                       "under the new one (or embed under a copy of the model folder, and dedup by that name)")


def said(prompt: str | None) -> str:
    return f"the prompt {prompt!r}" if prompt is not None else "no prompt"


def embed_items(db_path: str | Path, model: str = MINILM, where: str | None = None, chunk: int = 4096,
                batch_size: int = 128, on_chunk: Callable[[EmbedSummary, int], None] | None = None,
                mapper: Mapper = local_mapper, replace: bool = False) -> EmbedSummary:
    """Embed the items not yet embedded with MODEL; MAPPER is the engine that runs the batches. REPLACE deletes
    MODEL's stored vectors first (all of them: it takes no WHERE), so every item is embedded again; after a failed
    replace, a plain run resumes it."""
    db_path = Path(db_path)
    if replace and where:
        raise SkdError("--replace embeds every item again (the model's vectors all go); it takes no --where")
    if replace:  # before anything is deleted: the model exists (with nothing to do, none is needed)
        EmbedBatch.preflight(model)
    prompt = model_prompt(model, "STS")  # before the store's lock: the first use of a model may assemble it
    replaced = 0
    with open_store(db_path) as s:
        if replace:
            replaced = s.embeddings.drop(model)
        else:
            check_prompt(s, model, prompt)
        todo, total = s.embeddings.missing(model, where)
        # the run records the prompt its vectors were made under (they are stored by model name alone)
        run_id = s.start_run("embed", {"model": model, "where": where, "prompt": prompt, "replace": replace})
    stats = EmbedSummary(model, items=total, already_embedded=total - todo.num_rows, replaced=replaced)
    started = time.monotonic()

    def advance(n: int) -> None:
        stats.embedded += n
        stats.seconds = time.monotonic() - started
        if on_chunk:
            on_chunk(stats, todo.num_rows)

    advance(0)
    job = BatchJob(todo, EmbedBatch, {"model": model, "batch_size": batch_size, "prompt": prompt}, "embeddings", chunk)
    stage_job(db_path, run_id, job, mapper, advance, stats.as_dict)
    return stats
