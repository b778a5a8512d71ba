"""Where the long stages compute: in this process (`local`), or on a Ray cluster (`ray`) through Ray Data.

A stage hands its engine a `store.BatchJob` (the pending rows and a class that loads a model once and turns a
batch of rows into rows to store) and commits what comes back itself, as staging batches: request keys, resume,
lineage and the one-writer rule are the stage's, whichever engine ran the batches. On Ray the job is a Ray
Dataset mapped by an actor pool (`map_batches`, one model load per actor), and dedup's partitions are Ray tasks.
The components never import Ray; this module does, and only when the engine is `ray`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from store import BatchJob, Mapper, SkdError, local_mapper


class EngineConfig(BaseModel):
    """The pipeline's [engine] table and the commands' --engine options."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["local", "ray"] = Field("local", description="local: this process; ray: a Ray cluster.")
    address: str | None = Field(None, description="Ray cluster to join ('auto', 'ray://HOST:10001'); none starts a "
                                                  "local one on this machine.")
    actors: int = Field(2, ge=1, description="Ray: actors in the pool that scores or embeds (one model load each).")
    cpus_per_actor: float = Field(1.0, gt=0, description="Ray: CPUs each actor reserves.")
    gpus_per_actor: float = Field(0.0, ge=0, description="Ray: GPUs each actor reserves (a GPU cluster).")
    num_cpus: int | None = Field(None, ge=1, description="Ray: CPUs of the local cluster started when no address "
                                                         "is given (default: all of this machine's).")


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
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no plan and timing lines between skd's own


def ray_mapper(cfg: EngineConfig) -> Mapper:
    """The job as a Ray Dataset mapped by an actor pool; tables come back as the actors finish them."""
    def run(job: BatchJob) -> Iterator[pa.Table]:
        import ray

        # one instance here first: a missing or broken model is one line before the cluster starts work, not an
        # actor's traceback (the local engine builds its one instance in this process anyway)
        job.fn(**job.kwargs)
        start_ray(cfg)
        # one block per chunk: the pool's actors take blocks in parallel, and each comes back as one staging batch
        blocks = [job.rows.slice(k, job.chunk) for k in range(0, job.rows.num_rows, job.chunk)]
        ds = ray.data.from_arrow(blocks).map_batches(
            job.fn, fn_constructor_kwargs=job.kwargs, batch_size=job.chunk, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=cfg.actors), num_cpus=cfg.cpus_per_actor,
            num_gpus=cfg.gpus_per_actor or None)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if batch.num_rows:
                yield batch
    return run


def ray_task_map(cfg: EngineConfig, in_flight: int | None = None) -> Callable[[Callable, Iterable], Iterator]:
    """map(f, tasks) as Ray tasks, at most IN_FLIGHT submitted at once (so the driver builds one task's data
    while the cluster works on the others), results as they finish."""
    def imap(f: Callable, tasks: Iterable) -> Iterator:
        import ray

        start_ray(cfg)
        remote = ray.remote(num_cpus=1)(f)
        limit = in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        pending: list = []
        for t in tasks:
            pending.append(remote.remote(t))
            if len(pending) >= limit:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    return imap


def engine_from(kind: str, address: str | None = None, actors: int = 2) -> EngineConfig:
    """The engine named by a command's options; a bad one is one line."""
    from generators.recipes.base import validate_config

    return validate_config(EngineConfig, {"kind": kind, "address": address, "actors": actors}, "--engine")


def mapper_for(cfg: EngineConfig | None) -> Mapper:
    return ray_mapper(cfg) if cfg and cfg.kind == "ray" else local_mapper


def task_map_for(cfg: EngineConfig | None) -> Callable:
    return ray_task_map(cfg) if cfg and cfg.kind == "ray" else map
