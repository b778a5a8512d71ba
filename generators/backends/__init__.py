"""Teacher backends: one interface, requests in, completions out (in input order)."""

from __future__ import annotations

import inspect
from typing import Any, Protocol

from store import SkdError

from ..types import Completion, Request

BACKENDS = ("transformers", "vllm", "openai", "openai-batch")


class Teacher(Protocol):
    model: str  # the name the user gave: recorded as provenance and part of every request key

    def generate(self, requests: list[Request]) -> list[list[Completion]]:
        """Completions for each request, `request.sampling.n` of them, in input order."""
        ...

    def close(self) -> None: ...


def teacher_class(backend: str) -> type:
    if backend == "transformers":
        from .hf import TransformersTeacher
        return TransformersTeacher
    if backend == "vllm":
        from .vllm_engine import VllmTeacher
        return VllmTeacher
    if backend == "openai":
        from .openai_http import OpenAITeacher
        return OpenAITeacher
    if backend == "openai-batch":
        from .openai_batch import OpenAIBatchTeacher
        return OpenAIBatchTeacher
    raise SkdError(f"unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")


def option_names(backend: str) -> list[str]:
    """The load-time options a backend takes (its constructor's keywords)."""
    params = inspect.signature(teacher_class(backend).__init__).parameters
    return [p for p in params if p not in ("self", "model")]


def check_teacher_options(backend: str, options: dict[str, Any], source: str = "teacher options") -> None:
    """Options the backend does not take are named before any model loads (not a TypeError after)."""
    known = option_names(backend)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SkdError(f"{source}: the {backend} backend takes no option {', '.join(map(repr, unknown))} "
                       f"(its options: {', '.join(known)})")


def make_teacher(backend: str, model: str, **options: Any) -> Teacher:
    """Load-time configuration once; sampling comes with each request."""
    check_teacher_options(backend, options)
    return teacher_class(backend)(model, **options)
