"""The generation loop: recipe requests -> teacher -> parse -> staging batches -> store.

Requests are keyed by a hash of model, prompt, sampling parameters and seed, so a rerun skips what is
stored and finishes the rest. Each chunk of requests is written as one atomic batch (requests,
generations, items) and ingested in its own short transaction; the database is opened only for that,
so a kill loses at most the chunk in flight and other processes can read between chunks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from store import BatchJob, Mapper, ShardWriter, SkdError, Store, commit_batch, ingest_shards, open_store
from store.items import TEXT_FIELDS

from .backends import Teacher
from .constraints import unmet
from .recipes import ParseError, Recipe
from .teacher_job import GenerateBatch, TeacherSpec, request_rows, response_from
from .types import REFUSED, Completion, PartialAnswers, Request, usage_of

# A staged batch's items: the text fields of store.items' one field list, then choices, extra and provenance.
ITEM_SCHEMA = pa.schema(
    [(f, pa.string()) for f in ("kind", *TEXT_FIELDS)]
    + [("choices", pa.list_(pa.string())), ("extra", pa.string())]
    + [(f, pa.string()) for f in ("run_id", "request_id")] + [("sample_index", pa.int32())]
    + [(f, pa.string()) for f in ("prompt_hash", "teacher", "params")]
)


@dataclass
class GenerateSummary:
    run_id: str
    requests: int = 0
    already_done: int = 0
    generated: int = 0
    completions: int = 0
    parsed: int = 0
    items: int = 0
    new_items: int = 0
    tokens: int = 0
    prompt_tokens: int = 0
    cost: float | None = None
    seconds: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def count_usage(self, prompt_tokens: int | None, completion_tokens: int | None, cost: float | None) -> None:
        """One request's usage: the provider's totals (a sample's share of them would round)."""
        self.prompt_tokens += prompt_tokens or 0
        self.tokens += completion_tokens or 0
        if cost is not None:
            self.cost = (self.cost or 0.0) + cost

    @property
    def parse_rate(self) -> float:
        return self.parsed / self.completions if self.completions else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"parse_rate": round(self.parse_rate, 4)}

    def plus(self, other: GenerateSummary) -> GenerateSummary:
        """Two stages' summaries as one (the run id is the later one's)."""
        counts = {k: getattr(self, k) + getattr(other, k) for k in ("requests", "already_done", "generated",
                                                                     "completions", "parsed", "items", "new_items",
                                                                     "tokens", "prompt_tokens", "seconds")}
        failures = {k: self.failures.get(k, 0) + other.failures.get(k, 0) for k in {*self.failures, *other.failures}}
        costs = [c for c in (self.cost, other.cost) if c is not None]
        return GenerateSummary(other.run_id, **counts, cost=sum(costs) if costs else None, failures=failures)


def shard_dir(db_path: Path) -> Path:
    return Path(str(db_path) + ".d") / "shards" / "generate"


def parse_completion(recipe: Recipe, request: Request, c: Completion) -> tuple[list[dict[str, Any]], str | None]:
    """Items from one completion, or none and the reason. A parser bug is recorded, not raised. A lexical
    constraint is checked first, whichever backend decoded: a sample that ran out of tokens before its
    required words is a recorded failure."""
    if c.finish_reason and c.finish_reason.startswith(REFUSED):  # the endpoint refused this request
        return [], c.finish_reason
    reason = unmet(request.sampling.lexical, c.text)
    if reason:
        return [], reason
    try:
        return recipe.parse(request, c), None
    except ParseError as e:
        return [], str(e)
    except Exception as e:  # noqa: BLE001 - any teacher output must be recorded, never crash the run
        return [], f"parser error: {type(e).__name__}: {e}"[:200]


def batch_tables(run_id: str, recipe: Recipe, teacher: Teacher, chunk: list[Request],
                 outputs: list[list[Completion]], stats: GenerateSummary,
                 batch_key: str | None = None) -> dict[str, pa.Table]:
    reqs, gens, items = [], [], []
    for r, completions in zip(chunk, outputs, strict=True):
        params = json.dumps(r.sampling.key(), sort_keys=True)
        prompt_tokens, completion_tokens, cost = usage_of(completions)
        stats.count_usage(prompt_tokens, completion_tokens, cost)
        reqs.append({"request_id": r.request_id, "run_id": run_id, "recipe": recipe.name, "model": teacher.model,
                     "prompt": r.prompt_text, "prompt_hash": r.prompt_hash, "params": params,
                     "meta": json.dumps(r.meta, default=str), "prompt_tokens": prompt_tokens,
                     "completion_tokens": completion_tokens, "cost": cost, "batch_key": batch_key})
        for c in completions:
            parsed, error = parse_completion(recipe, r, c)
            stats.completions += 1
            if error:
                stats.failures[error] = stats.failures.get(error, 0) + 1
            else:
                stats.parsed += 1
            gens.append({"request_id": r.request_id, "run_id": run_id, "sample_index": c.index,
                         "prompt_hash": r.prompt_hash, "text": c.text, "parsed_ok": error is None, "error": error,
                         "n_items": len(parsed), "teacher": teacher.model, "finish_reason": c.finish_reason,
                         "n_tokens": c.n_tokens, "logprob": c.logprob})
            for item in parsed:
                extra = item.get("extra")
                items.append({**item, "extra": json.dumps(extra, sort_keys=True, default=str) if extra else None,
                              "run_id": run_id, "request_id": r.request_id, "sample_index": c.index,
                              "prompt_hash": r.prompt_hash, "teacher": teacher.model, "params": params})
    stats.items += len(items)
    tables = {"requests": pa.Table.from_pylist(reqs), "generations": pa.Table.from_pylist(gens)}
    if items:
        tables["items"] = pa.Table.from_pylist(items, schema=ITEM_SCHEMA)
    return tables


def pending_requests(store: Store, requests: list[Request]) -> list[Request]:
    """Requests whose completions are not stored yet (the generations table is the record of done work)."""
    done = store.generations.done([r.request_id for r in requests])
    return [r for r in requests if r.request_id not in done]


def planned_requests(recipe: Recipe, model: str, seed: int, store: Store, limit: int | None = None) -> list[Request]:
    """The requests a run of this recipe stage makes, once each, in order, at most `limit`."""
    return list({r.request_id: r for r in recipe.requests(model, seed, store)}.values())[:limit]


def check_constraints(teacher: Teacher, requests: list[Request]) -> None:
    """A constraint the teacher cannot enforce is one line before any request is sent."""
    check = getattr(teacher, "check", None)
    if check is not None:
        distinct = {r.sampling.model_dump_json(exclude={"seed"}): r.sampling for r in requests}
        for sampling in distinct.values():
            check(sampling)


def run_generation(db_path: str | Path, recipe: Recipe, teacher: Teacher, *, seed: int = 0,
                   limit: int | None = None, batch_size: int = 32, config: dict[str, Any] | None = None,
                   on_batch: Callable[[GenerateSummary, int], None] | None = None,
                   mapper: Mapper | None = None) -> GenerateSummary:
    """Every stage of the recipe in order, each a resumable run; the summary adds them up. With a MAPPER (an
    engine: Ray), TEACHER is a `TeacherSpec` that the engine's workers build; without, a teacher built here."""
    total: GenerateSummary | None = None
    stage: Callable[..., GenerateSummary] = run_stage
    extra: dict[str, Any] = {"mapper": mapper}
    if getattr(teacher, "batch", False):  # provider batch jobs: the same batches, another way to get them
        from .batch import run_batch_stage as stage
        extra = {}
    for part in recipe.stages():
        stats = stage(db_path, part, teacher, seed=seed, limit=limit, batch_size=batch_size, config=config,
                      on_batch=on_batch, **extra)
        total = stats if total is None else total.plus(stats)
    assert total is not None
    return total


@contextmanager
def stage_run(db_path: Path, recipe: Recipe, teacher: Teacher, seed: int, limit: int | None,
              config: dict[str, Any]) -> Iterator[tuple[GenerateSummary, list[Request]]]:
    """A stage's run: its requests planned and the pending ones yielded with the run's summary; the run is
    finished, 'ok', 'interrupted' or 'failed', whatever the body does."""
    started = time.monotonic()
    with open_store(db_path) as s:
        ingest_shards(s, shard_dir(db_path))  # batches a killed run wrote but did not ingest
        requests = planned_requests(recipe, teacher.model, seed, s, limit)
        check_constraints(teacher, requests)
        todo = pending_requests(s, requests)
        run_id = s.start_run("generate", {**config, "recipe": recipe.name, "teacher": teacher.model,
                                          "seed": seed, "limit": limit, "recipe_config":
                                          recipe.config.model_dump(mode="json")})
    stats = GenerateSummary(run_id, requests=len(requests), already_done=len(requests) - len(todo))
    status = "failed"
    try:
        yield stats, todo
        status = "ok"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        stats.seconds = time.monotonic() - started
        with open_store(db_path) as s:
            stats.new_items = new_items(s, run_id)
            s.finish_run(run_id, status, stats.as_dict())


def run_stage(db_path: str | Path, recipe: Recipe, teacher: Teacher, *, seed: int = 0,
              limit: int | None = None, batch_size: int = 32, config: dict[str, Any] | None = None,
              on_batch: Callable[[GenerateSummary, int], None] | None = None,
              mapper: Mapper | None = None) -> GenerateSummary:
    db_path = Path(db_path)
    started = time.monotonic()
    writer = ShardWriter(shard_dir(db_path))
    with stage_run(db_path, recipe, teacher, seed, limit, config or {}) as (stats, todo):
        if on_batch:
            on_batch(stats, len(todo))
        for k, (chunk, outputs) in enumerate(answers(teacher, todo, batch_size, mapper)):
            commit_batch(db_path, writer, batch_tables(stats.run_id, recipe, teacher, chunk, outputs, stats),
                         f"{stats.run_id}-{k:08d}", stats.run_id)
            stats.generated += len(chunk)
            stats.seconds = time.monotonic() - started
            if on_batch:
                on_batch(stats, len(todo))
    return stats


def answers(teacher: Teacher | TeacherSpec, todo: list[Request], batch_size: int,
            mapper: Mapper | None) -> Iterator[tuple[list[Request], list[list[Completion]]]]:
    """Each chunk of pending requests with its completions: asked of the teacher here, or handed to the engine
    as a job whose workers build the teacher (chunks then come back as workers finish them, in any order)."""
    if mapper is None:
        if isinstance(teacher, TeacherSpec):
            raise TypeError("a TeacherSpec is built by an engine's workers: pass the engine's mapper")
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            try:
                outputs = teacher.generate(chunk)
            except PartialAnswers as e:  # store what was answered (paid for), then stop
                kept = [(r, o) for r, o in zip(chunk, e.answered, strict=True) if o is not None]
                yield [r for r, _ in kept], [o for _, o in kept]
                raise SkdError(str(e)) from None
            yield chunk, outputs
        return
    if not isinstance(teacher, TeacherSpec):
        raise TypeError("an engine builds its own teachers: pass a TeacherSpec, not a loaded teacher")
    if not todo:  # nothing pending: no engine is started and no model is loaded
        return
    by_id = {r.request_id: r for r in todo}
    for table in mapper(BatchJob(request_rows(todo), GenerateBatch, teacher.job_kwargs(), "responses", batch_size)):
        ids = table.column("request_id").to_pylist()
        yield [by_id[i] for i in ids], [response_from(t) for t in table.column("response").to_pylist()]


def new_items(store: Store, run_id: str) -> int:
    """Items this run was the first to produce."""
    return store.items.new_in_run(run_id)
