"""The generation loop for provider batch jobs: pending requests -> batch JSONL -> upload -> job -> poll ->
output and error files -> the same staging batches the live loop writes.

Every step is recorded in `batch_jobs` as it happens (before upload, after upload, after create, at each
poll, after ingest), so a rerun after a kill at any point resumes the job it recorded rather than paying
again: a request covered by an open job is never resubmitted, and a job made from an uploaded file whose id
was not recorded yet is found by listing the endpoint's jobs. Lines a job did not answer are recorded in
`batch_failures` with their error and go into a new job (up to the teacher's `rounds` per run; the rest
wait for the next run)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from store import ShardWriter, commit_batch, open_store

from .backends.openai_batch import TERMINAL, NotFound, OpenAIBatchTeacher, job_error
from .generate import GenerateSummary, batch_tables, pending_requests, planned_requests, shard_dir, stage_run
from .recipes import Recipe
from .types import Request

OnBatch = Callable[[GenerateSummary, int], None]


LOST_AFTER = 3  # polls in a row that answer 404 before a job counts as lost


class BatchRun:
    def __init__(self, db_path: Path, recipe: Recipe, teacher: OpenAIBatchTeacher, stats: GenerateSummary,
                 batch_size: int, on_batch: OnBatch | None):
        self.db_path, self.recipe, self.teacher, self.stats = db_path, recipe, teacher, stats
        self.batch_size, self.on_batch = batch_size, on_batch
        self.writer = ShardWriter(shard_dir(db_path))
        self.unanswered: dict[str, str] = {}  # request -> why its latest job did not answer it

    def jobs(self, **fields: Any) -> None:
        """Record a step of a job (a short write transaction: the lock is not held while we wait)."""
        key = fields.pop("batch_key")
        closed = fields.pop("closed", False)
        with open_store(self.db_path) as s:
            s.batch_jobs.update(key, closed=closed, **fields)

    def submit(self, requests: list[Request], url: str) -> dict[str, Any]:
        key = f"{self.stats.run_id}-{uuid.uuid4().hex[:8]}"
        job = {"batch_key": key, "url": url, "request_ids": [r.request_id for r in requests], "status": "uploading"}
        with open_store(self.db_path) as s:
            s.batch_jobs.record(key, run_id=self.stats.run_id, recipe=self.recipe.name, model=self.teacher.model,
                                endpoint=self.teacher.shown_url, url=url, request_ids=job["request_ids"],
                                status="uploading")
        return self.advance(job, requests)

    def advance(self, job: dict[str, Any], requests: list[Request]) -> dict[str, Any]:
        """Carry a recorded job on from wherever a kill left it, up to a job id at the provider."""
        t = self.teacher
        if job.get("job_id"):
            return job
        if not job.get("input_file_id"):  # killed before the upload was recorded: an upload costs nothing
            job["request_ids"] = [r.request_id for r in requests]
            job["input_file_id"] = t.upload([t.line(r) for r in requests])
            self.jobs(batch_key=job["batch_key"], input_file_id=job["input_file_id"], status="uploaded",
                      request_ids=job["request_ids"])
        found = t.find(job["input_file_id"], job["batch_key"]) if job.get("status") == "uploaded" else None
        made = found or t.create(job["input_file_id"], job["url"], job["batch_key"])
        job |= {"job_id": made["id"], "status": made.get("status")}
        self.jobs(batch_key=job["batch_key"], job_id=job["job_id"], status=job["status"])
        return job

    def wait(self, jobs: list[dict[str, Any]]) -> None:
        """Poll until every job ends, ingesting each as it ends; the interval grows while nothing changes."""
        delay, waiting = self.teacher.poll_interval, list(jobs)
        while waiting:
            changed = False
            for job in list(waiting):
                try:
                    info = self.teacher.get(job["job_id"])
                    job["not_found"] = 0
                except NotFound:  # purged, or another account's: its requests go back to pending, once sure
                    job["not_found"] = job.get("not_found", 0) + 1
                    if job["not_found"] < LOST_AFTER:  # a proxy's blip would make us pay for every line twice
                        continue
                    info = {"id": job["job_id"], "status": "lost",
                            "errors": {"data": [{"code": "lost", "message": "the endpoint no longer knows this job"}]}}
                status = info.get("status")
                if status != job.get("status") or info.get("request_counts") != job.get("counts"):
                    changed = changed or status != job.get("status")  # counts move at every poll of a big job
                    job |= {"status": status, "counts": info.get("request_counts") or {}}
                    self.jobs(batch_key=job["batch_key"], status=status, counts=job["counts"])
                if status in (*TERMINAL, "lost"):
                    self.finish(job, info)
                    waiting.remove(job)
            self.show()
            if waiting:
                delay = self.teacher.poll_interval if changed else min(self.teacher.max_poll_interval, delay * 1.5)
                time.sleep(delay)

    def finish(self, job: dict[str, Any], info: dict[str, Any]) -> None:
        """Ingest a finished job's answers as staging batches; record the lines it did not answer."""
        by_id = self.requests
        asked = [by_id[rid] for rid in job["request_ids"] if rid in by_id]
        done, failed = self.teacher.results(info, chat=bool(asked) and asked[0].prompt is None)
        with open_store(self.db_path) as s:
            stored = s.generations.done(list(done))
        answered = [r for r in asked if r.request_id in done and r.request_id not in stored]
        for start in range(0, len(answered), self.batch_size):
            chunk = answered[start:start + self.batch_size]
            tables = batch_tables(self.stats.run_id, self.recipe, self.teacher, chunk,
                                  [done[r.request_id] for r in chunk], self.stats, batch_key=job["batch_key"])
            # named by this run too: a rerun after a kill mid-ingest writes the rest under new names
            name = f"{self.stats.run_id}-{job['batch_key'].rsplit('-', 1)[-1]}-{start:08d}"
            commit_batch(self.db_path, self.writer, tables, name, self.stats.run_id)
            self.stats.generated += len(chunk)
        whole = job_error(info) or f"no result (job {info.get('status')})"
        missing = {r.request_id: failed.get(r.request_id, whole) for r in asked if r.request_id not in done}
        for rid in done:
            self.unanswered.pop(rid, None)
        self.unanswered |= missing
        with open_store(self.db_path) as s, s.transaction():
            s.batch_jobs.fail(job["batch_key"], missing)
            s.batch_jobs.update(job["batch_key"], closed=True, status=info.get("status"),
                                output_file_id=info.get("output_file_id"), error_file_id=info.get("error_file_id"),
                                error=job_error(info))

    def show(self) -> None:
        if self.on_batch:
            self.stats.seconds = time.monotonic() - self.started
            self.on_batch(self.stats, self.total)

    def run(self, todo: list[Request], open_jobs: list[dict[str, Any]]) -> None:
        self.started, self.total = time.monotonic(), len(todo)
        self.requests = {r.request_id: r for r in todo}
        for _ in range(self.teacher.rounds):
            covered = {rid for j in open_jobs for rid in j["request_ids"]}
            with open_store(self.db_path) as s:
                pending = pending_requests(s, [r for r in todo if r.request_id not in covered])
            jobs = []
            for j in open_jobs:
                mine = [self.requests[rid] for rid in j["request_ids"] if rid in self.requests]
                if mine:
                    jobs.append(self.advance(j, mine))
                else:  # everything of it this stage wanted is stored already
                    self.jobs(batch_key=j["batch_key"], status="superseded", closed=True)
            for url in dict.fromkeys(self.teacher.url(r) for r in pending):  # a job takes one endpoint
                part = [r for r in pending if self.teacher.url(r) == url]
                for start in range(0, len(part), self.teacher.max_lines):
                    jobs.append(self.submit(part[start:start + self.teacher.max_lines], url))
            if not jobs:
                break
            self.show()
            self.wait(jobs)
            open_jobs = []
        for reason in self.unanswered.values():  # what no round answered: it waits for the next run
            self.stats.failures[f"batch: {reason}"] = self.stats.failures.get(f"batch: {reason}", 0) + 1


def run_batch_stage(db_path: str | Path, recipe: Recipe, teacher: OpenAIBatchTeacher, *, seed: int = 0,
                    limit: int | None = None, batch_size: int = 32, config: dict[str, Any] | None = None,
                    on_batch: OnBatch | None = None) -> GenerateSummary:
    db_path = Path(db_path)
    with open_store(db_path) as s:
        planned = {r.request_id for r in planned_requests(recipe, teacher.model, seed, s, limit)}
        # a job is this stage's when it asked for some of the stage's requests (the recipe name alone does
        # not tell the stages of one recipe apart); other jobs stay open for the run they belong to
        open_jobs = [j for j in s.batch_jobs.open(teacher.shown_url, teacher.model, recipe.name)
                     if planned.intersection(j["request_ids"])]
    record = {**(config or {}), "batch": True, "resumed_jobs": [j["job_id"] or j["batch_key"] for j in open_jobs]}
    with stage_run(db_path, recipe, teacher, seed, limit, record) as (stats, todo):
        BatchRun(db_path, recipe, teacher, stats, batch_size, on_batch).run(todo, open_jobs)
    return stats
