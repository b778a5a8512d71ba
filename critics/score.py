"""Score corpus items with a critic, resumably: items already scored by this critic are skipped, and
each chunk of scores is one staging batch ingested in a short transaction."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from store import open_store, stage_in_chunks

from .model import load_critic
from .verbalize import verbalize_rows


@dataclass
class ScoreSummary:
    critic: str
    critic_id: str
    items: int = 0
    already_scored: int = 0
    scored: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_items(db_path: str | Path, name: str, where: str | None = None, chunk: int = 2048,
                batch_size: int = 128, on_chunk: Callable[[ScoreSummary, int], None] | None = None) -> ScoreSummary:
    db_path = Path(db_path)
    with open_store(db_path) as s:
        row = s.critics.get(name)
        todo, total = s.scores.missing(row["critic_id"], where)
        run_id = s.start_run("score", {"critic": name, "critic_id": row["critic_id"], "where": where})
    stats = ScoreSummary(name, row["critic_id"], items=total, already_scored=total - todo.num_rows)
    critic = load_critic(row["path"])
    started = time.monotonic()

    def tables(part: pa.Table) -> dict[str, pa.Table]:
        scores = critic.score(verbalize_rows(part.to_pylist()), batch_size=batch_size)
        return {"scores": pa.table({"item_id": part["item_id"], "critic_id": [row["critic_id"]] * part.num_rows,
                                    "score": scores})}

    def advance(n: int) -> None:
        stats.scored += n
        stats.seconds = time.monotonic() - started
        if on_chunk:
            on_chunk(stats, todo.num_rows)

    advance(0)
    stage_in_chunks(db_path, run_id, todo, chunk, tables, advance, stats.as_dict)
    return stats
