"""Where the long stages compute: in this process (`local`), or on a Ray cluster (`ray`) through Ray Data.

A stage hands its engine a `store.BatchJob` (the pending rows and a class that loads a model once and turns a
batch of rows into rows to store) and commits what comes back itself, as staging batches: request keys, resume,
lineage and the one-writer rule are the stage's, whichever engine ran the batches. On Ray the job is a Ray
Dataset mapped by an actor pool (`map_batches`, one model load per actor), and dedup's partitions are Ray tasks.
The components never import Ray; this module does, and only when the engine is `ray`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from store import BatchJob, Mapper, SkdError, local_mapper
from store.redact import redact


class EngineConfig(BaseModel):
    """The pipeline's [engine] table and the commands' --engine options."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["local", "ray"] = Field("local", description="local: this process; ray: a Ray cluster.")
    address: str | None = Field(None, description="Ray cluster to join ('auto', 'ray://HOST:10001'); none starts a "
                                                  "local one on this machine.")
    actors: int = Field(2, ge=1, description="Ray: actors in the pool that generates, scores or embeds "
                                             "(one model load each; vLLM engines, HTTP workers).")
    teachers: int | None = Field(None, ge=1, description="Ray: teacher replicas generation runs on (vLLM engines, "
                                                         "HTTP workers, transformers actors); default: actors.")
    cpus_per_actor: float = Field(1.0, gt=0, description="Ray: CPUs each actor reserves.")
    gpus_per_actor: float = Field(0.0, ge=0, description="Ray: GPUs each actor reserves (a GPU cluster).")
    num_cpus: int | None = Field(None, ge=1, description="Ray: CPUs of the local cluster started when no address "
                                                         "is given (default: all of this machine's).")


    @property
    def teacher_replicas(self) -> int:
        """Ray: the teacher copies generation runs on (`teachers`, else the pool's `actors`)."""
        return self.teachers or self.actors


def start_ray(cfg: EngineConfig) -> None:
    """Join the cluster once per process (or start a local one); a missing ray package is one line."""
    try:
        import ray
    except ImportError:
        raise SkdError("the ray engine needs the ray package: pip install 'skd[ray]'") from None
    if ray.is_initialized():
        return
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if cfg.address:
        kw["address"] = cfg.address
    elif cfg.num_cpus:
        kw["num_cpus"] = cfg.num_cpus
    try:
        ray.init(**kw)
    except ConnectionError as e:
        raise SkdError(f"cannot join the Ray cluster at {cfg.address!r}: {str(e).splitlines()[0]}") from None
    ray.data.DataContext.get_current().enable_progress_bars = False  # skd shows its own progress
    # no plan and timing lines between skd's own, and no worker traceback: a failure is skd's one line
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


def ray_mapper(cfg: EngineConfig) -> Mapper:
    """The job as a Ray Dataset mapped by an actor pool (or, for a vLLM or HTTP teacher, by Ray Data's LLM
    processors); tables come back as the workers finish them."""
    def run(job: BatchJob) -> Iterator[pa.Table]:
        import ray

        # checked here first: a missing or broken model is one line before the cluster starts work, not an
        # actor's traceback. A job that can check without loading its model says how (a teacher's preflight);
        # otherwise one instance is built here (the local engine builds its one instance in this process anyway)
        preflight = getattr(job.fn, "preflight", None)
        preflight(**job.kwargs) if preflight else job.fn(**job.kwargs)
        start_ray(cfg)
        try:
            for batch in mapped(job, cfg):
                if batch.num_rows:
                    yield batch
        except ray.exceptions.RayError as e:
            raise SkdError(f"the Ray engine failed: {redact(root_cause(e))}") from None
    return run


def mapped(job: BatchJob, cfg: EngineConfig) -> Iterator[pa.Table]:
    """A vLLM or HTTP teacher's job through Ray Data's LLM processors; any other job through an actor pool."""
    from generators.teacher_job import GenerateBatch

    backend = job.kwargs.get("backend") if job.fn is GenerateBatch else None
    if backend in ("vllm", "openai"):
        from .ray_llm import llm_responses

        yield from llm_responses(job, cfg)
        return
    import ray

    # one block per chunk: the pool's actors take blocks in parallel, and each comes back as one staging batch
    blocks = [job.rows.slice(k, job.chunk) for k in range(0, job.rows.num_rows, job.chunk)]
    # no more actors than blocks: an actor without a block would load its model for nothing
    size = min(len(blocks), cfg.teacher_replicas if job.fn is GenerateBatch else cfg.actors)
    yield from ray.data.from_arrow(blocks).map_batches(
        job.fn, fn_constructor_kwargs=job.kwargs, batch_size=job.chunk, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=size), num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor or None).iter_batches(batch_size=None, batch_format="pyarrow")


def root_cause(e: BaseException) -> str:
    """The worker's own error, in one line. Ray wraps it (a task error around a 'UDF failed' error) and keeps the
    original only as the text of its traceback, where a chained traceback names the innermost error first."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    retried = re.search(r"Reached maximum retries of (\d+) for input row .*?Previous Exception: (\w+)", text, re.S)
    if retried:  # Ray's HTTP processor names the whole payload (the prompt): say what failed instead
        return f"the endpoint failed after {int(retried.group(1)) + 1} attempts (last: {retried.group(2)})"
    for line in text.splitlines():
        m = re.match(r"([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): (.+)", line)
        if m and not m.group(1).startswith("ray."):
            name = m.group(1).rsplit(".", 1)[-1]
            return (m.group(2) if name == "SkdError" else f"{name}: {m.group(2)}")[:300]
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"[:300]


def ray_task_map(cfg: EngineConfig, in_flight: int | None = None) -> Callable[[Callable, Iterable], Iterator]:
    """map(f, tasks) as Ray tasks, at most IN_FLIGHT submitted at once (so the driver builds one task's data
    while the cluster works on the others), results as they finish."""
    def imap(f: Callable, tasks: Iterable) -> Iterator:
        import ray

        start_ray(cfg)
        remote = ray.remote(num_cpus=1)(f)
        limit = in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        pending: list = []
        try:
            for t in tasks:
                pending.append(remote.remote(t))
                if len(pending) >= limit:
                    done, pending = ray.wait(pending, num_returns=1)
                    yield ray.get(done[0])
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        except ray.exceptions.RayError as e:  # a task's failure (a worker without faiss, killed for memory)
            raise SkdError(f"the Ray engine failed: {redact(root_cause(e))}") from None
    return imap


def engine_from(kind: str, address: str | None = None, actors: int = 2) -> EngineConfig:
    """The engine named by a command's options; a bad one is one line."""
    from generators.recipes.base import validate_config

    return validate_config(EngineConfig, {"kind": kind, "address": address, "actors": actors}, "--engine")


def mapper_for(cfg: EngineConfig | None) -> Mapper:
    return ray_mapper(cfg) if cfg and cfg.kind == "ray" else local_mapper


def teacher_for(cfg: EngineConfig | None, backend: str, model: str,
                options: dict[str, Any]) -> tuple[Any, Mapper | None]:
    """The teacher a generation stage hands run_generation, and its mapper: on the local engine a teacher built
    here (no mapper); on Ray a spec its workers build, so the driver never loads the model."""
    from generators import make_teacher
    from generators.teacher_job import GenerateBatch, TeacherSpec

    if cfg and cfg.kind == "ray":
        GenerateBatch.preflight(backend, model, options)
        return TeacherSpec(backend, model, options), ray_mapper(cfg)
    return make_teacher(backend, model, **options), None


def task_map_for(cfg: EngineConfig | None) -> Callable:
    return ray_task_map(cfg) if cfg and cfg.kind == "ray" else map
