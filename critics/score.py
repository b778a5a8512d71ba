"""Score corpus items with a critic, resumably: items already scored by this critic are skipped, and
each chunk of scores is one staging batch ingested in a short transaction."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from store import open_store, stage_in_chunks

from .model import load_critic, read_card
from .verbalize import verbalize_rows


@dataclass
class ScoreSummary:
    critic: str
    critic_id: str
    items: int = 0
    already_scored: int = 0
    scored: int = 0
    seconds: float = 0.0
    uncovered: dict[str, int] = field(default_factory=dict)  # items of a kind or relation it has no labels for

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
    outside = outside_coverage(read_card(Path(row["path"])).get("coverage"))
    started = time.monotonic()

    def tables(part: pa.Table) -> dict[str, pa.Table]:
        for key in filter(None, map(outside, part.select(["kind", "relation"]).to_pylist())):
            stats.uncovered[key] = stats.uncovered.get(key, 0) + 1
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


def outside_coverage(cov: dict[str, dict[str, int]] | None) -> Callable[[dict[str, Any]], str | None]:
    """Why an item lies outside what the critic was trained on ("relation HinderedBy"), or None."""
    if not cov:  # a critic from before coverage was recorded
        return lambda item: None

    def why(item: dict[str, Any]) -> str | None:
        if item["kind"] not in cov["kinds"]:
            return f"kind {item['kind']}"
        if item["kind"] == "triple" and item["relation"] not in cov["relations"]:
            return f"relation {item['relation']}"
        return None
    return why
