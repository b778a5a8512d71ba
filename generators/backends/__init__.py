"""Teacher backends: one interface, requests in, completions out (in input order)."""

from __future__ import annotations

from typing import Any, Protocol

from store import SkdError

from ..types import Completion, Request

BACKENDS = ("transformers", "vllm", "openai")


class Teacher(Protocol):
    model: str  # the name the user gave: recorded as provenance and part of every request key

    def generate(self, requests: list[Request]) -> list[list[Completion]]:
        """Completions for each request, `request.sampling.n` of them, in input order."""
        ...

    def close(self) -> None: ...


def make_teacher(backend: str, model: str, **options: Any) -> Teacher:
    """Load-time configuration once; sampling comes with each request."""
    if backend == "transformers":
        from .hf import TransformersTeacher
        return TransformersTeacher(model, **options)
    if backend == "vllm":
        from .vllm_engine import VllmTeacher
        return VllmTeacher(model, **options)
    if backend == "openai":
        from .openai_http import OpenAITeacher
        return OpenAITeacher(model, **options)
    raise SkdError(f"unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
