"""Score corpus items with a critic, resumably: items already scored by this critic are skipped, and
each chunk of scores is one staging batch ingested in a short transaction."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from store import SIBLINGS, TEACHER_NLL, BatchJob, Mapper, SkdError, local_mapper, open_store, stage_job

from .model import load_critic, read_card, reads_siblings, reads_teacher_nll, score_rows


@dataclass
class ScoreSummary:
    critic: str
    critic_id: str
    items: int = 0
    already_scored: int = 0
    scored: int = 0
    seconds: float = 0.0
    uncovered: dict[str, int] = field(default_factory=dict)  # items of a kind or relation it has no labels for
    without_teacher_nll: int | None = None  # for a critic that reads it: items scored without (members alone)
    without_siblings: int | None = None  # for a critic that reads sibling agreement: items that have no siblings

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ScoreBatch:
    """A worker's critic: loaded once, then scores batches of items (a Ray actor, or this process)."""

    def __init__(self, path: str, critic_id: str, batch_size: int = 128):
        self.critic, self.critic_id, self.batch_size = load_critic(path, critic_id), critic_id, batch_size

    @staticmethod
    def preflight(path: str, critic_id: str, batch_size: int = 128) -> None:
        """What an engine checks before its workers start, without loading the critic: that it is one (a model
        that fails to load later is still one line: the engine reports the worker's error)."""
        read_card(Path(path), critic_id)

    def __call__(self, part: pa.Table) -> pa.Table:
        scores = score_rows(self.critic, part.to_pylist(), batch_size=self.batch_size)
        bad = int((~np.isfinite(scores)).sum())
        if bad:  # a NaN passes every threshold in DuckDB (it sorts above all numbers): a snapshot would keep it
            raise SkdError(f"critic {self.critic_id} gave {bad:,} of {part.num_rows:,} items no finite score (NaN "
                           "parameters?); their batch is not stored, nor any later one")
        return pa.table({"item_id": part["item_id"], "critic_id": [self.critic_id] * part.num_rows,
                         "score": pa.array(scores, type=pa.float64())})


def score_items(db_path: str | Path, name: str, where: str | None = None, chunk: int = 2048,
                batch_size: int = 128, on_chunk: Callable[[ScoreSummary, int], None] | None = None,
                mapper: Mapper = local_mapper) -> ScoreSummary:
    """Score the items this critic has not scored yet; MAPPER is the engine that runs the batches."""
    db_path = Path(db_path)
    with open_store(db_path) as s:
        row = s.critics.get(name)
        card = read_card(Path(row["path"]))
        todo, total = s.scores.missing(row["critic_id"], where, teacher_nll=reads_teacher_nll(card),
                                       siblings=reads_siblings(card))
        run_id = s.start_run("score", {"critic": name, "critic_id": row["critic_id"], "where": where})
    stats = ScoreSummary(name, row["critic_id"], items=total, already_scored=total - todo.num_rows)
    if TEACHER_NLL in todo.column_names:
        stats.without_teacher_nll = todo[TEACHER_NLL].null_count
    if SIBLINGS in todo.column_names:
        stats.without_siblings = todo[SIBLINGS].null_count
    outside = outside_coverage(card.get("coverage"))
    for key in filter(None, map(outside, todo.select(["kind", "relation"]).to_pylist())):
        stats.uncovered[key] = stats.uncovered.get(key, 0) + 1
    started = time.monotonic()

    def advance(n: int) -> None:
        stats.scored += n
        stats.seconds = time.monotonic() - started
        if on_chunk:
            on_chunk(stats, todo.num_rows)

    advance(0)
    job = BatchJob(todo, ScoreBatch, {"path": str(row["path"]), "critic_id": row["critic_id"],
                                      "batch_size": batch_size}, "scores", chunk)
    stage_job(db_path, run_id, job, mapper, advance, stats.as_dict)
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
