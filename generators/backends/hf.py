"""transformers backend: batched `generate` with `num_return_sequences`, on CPU or GPU."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList
from transformers.utils import logging as hf_logging

from store import SkdError, pad_with_eos, resolve_model
from store.hardware import compute_dtype
from store.hardware import device as default_device

from ..constraints import banned_words, first_tokens, grammar_of
from ..types import Completion, Request, Response, cut_at_stop, stable_hash
from .grammar import BoostProcessor, Grammars


class PenaltyProcessor(LogitsProcessor):
    """OpenAI/vLLM presence and frequency penalties over the generated tokens (transformers has neither)."""

    def __init__(self, prompt_len: int, presence: float, frequency: float):
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_len:]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def shareable(lm: Any, cache: Any) -> bool:
    """Whether a prefilled cache can be repeated for n samples and handed to generate(): a dynamic cache of
    plain (or sliding-window) attention layers, and no cache implementation of the model's own."""
    from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

    return (isinstance(cache, DynamicCache) and lm.generation_config.cache_implementation is None
            and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers))


def group_key(r: Request) -> dict[str, Any]:
    """The sampling settings one generate() call must share: all but the seed and the grammar, which each
    row has of its own."""
    key = r.sampling.model_dump(mode="json", exclude={"seed", "constraint"})
    if key.get("lexical"):
        key["lexical"] = {k: key["lexical"][k] for k in ("exclude", "boost")}
    return key | {"raw": r.prompt is not None}  # plain prompts and chat templates tokenise apart (BOS)


class TransformersTeacher:
    def __init__(self, model: str, device: str | None = None, dtype: str = "auto", batch_size: int = 8):
        self.model = model
        self.batch_size = batch_size
        self.device = device or default_device()
        path = resolve_model(model)
        hf_logging.disable_progress_bar()  # skd shows its own progress
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype != "auto" and dtype not in dtypes:
            raise SkdError(f"dtype {dtype!r} is not one of auto, {', '.join(dtypes)}")
        torch_dtype = dtypes[dtype] if dtype != "auto" else compute_dtype(self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(self.device).eval()
        except OSError as e:
            raise SkdError(f"cannot load model {model!r}: {str(e).splitlines()[0]}") from None
        self.share_prefill: bool | None = None  # prefill once for n samples (see _shared_prefill)
        self.grammars: Grammars | None = None  # compiled on the first constrained request
        self.tokenizer.padding_side = "left"
        pad_with_eos(self.tokenizer)

    def close(self) -> None:
        del self.lm

    def render(self, request: Request) -> str:
        if request.prompt is not None:
            return request.prompt
        if not self.tokenizer.chat_template:
            raise SkdError(f"model {self.model!r} has no chat template; use a recipe with plain prompts")
        return self.tokenizer.apply_chat_template(request.chat(), tokenize=False, add_generation_prompt=True)

    def generate(self, requests: list[Request]) -> list[list[Completion]]:
        out: list[list[Completion]] = [[] for _ in requests]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):  # one generate() call takes one sampling setting; grammars are per row
            groups[stable_hash(group_key(r))].append(i)
        for idxs in groups.values():
            for start in range(0, len(idxs), self.batch_size):
                chunk = idxs[start:start + self.batch_size]
                for i, completions in zip(chunk, self._generate([requests[i] for i in chunk]), strict=True):
                    out[i] = completions
        return out

    @torch.inference_mode()
    def _generate(self, requests: list[Request]) -> list[list[Completion]]:
        s = requests[0].sampling
        # a plain prompt gets the tokenizer's special tokens (BOS), as a student was trained on it and as vLLM
        # prompts it; a chat template writes its own
        enc = self.tokenizer([self.render(r) for r in requests], return_tensors="pt", padding=True,
                             add_special_tokens=requests[0].prompt is not None).to(self.device)
        prompt_len = enc["input_ids"].shape[1]
        # The batch's seed depends on its requests only: a rerun of the same batch gives the same samples.
        torch.manual_seed(int(stable_hash([r.request_id for r in requests], 8), 16))
        processors = LogitsProcessorList()
        if s.presence_penalty or s.frequency_penalty:
            processors.append(PenaltyProcessor(prompt_len, s.presence_penalty, s.frequency_penalty))
        if s.lexical is not None and s.lexical.boost:
            rows = [[first_tokens(self.tokenizer, clause) for clause in r.sampling.lexical.include]
                    for r in requests for _ in range(s.n)]
            processors.append(BoostProcessor(rows, s.lexical.boost))
        constraints = [grammar_of(r.sampling) for r in requests]
        if any(c is not None for c in constraints):  # last: the grammar masks what the others have shaped
            processors.append(self._grammars().processor([c for c in constraints for _ in range(s.n)]))
        greedy = s.temperature == 0
        gen = self.lm.generate(
            **self._shared_prefill(enc, s.n), do_sample=not greedy, temperature=None if greedy else s.temperature,
            top_p=None if greedy else s.top_p, top_k=None, max_new_tokens=s.max_tokens,
            pad_token_id=self.tokenizer.pad_token_id, logits_processor=processors,
            stop_strings=list(s.stop) or None, tokenizer=self.tokenizer if s.stop else None,
            bad_words_ids=self._bad_words_ids(s),
            return_dict_in_generate=True, output_scores=s.logprobs)
        new = gen.sequences[:, prompt_len:]
        token_lp = (self.lm.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
                    if s.logprobs else None)
        results = []
        for row in range(new.shape[0]):
            results.append(self._completion(new[row], row % s.n, s.stop,
                                            token_lp[row] if token_lp is not None else None))
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()  # each prompt's own length, padding not counted
        return [Response(results[i * s.n:(i + 1) * s.n], prompt_tokens=int(prompt_tokens[i]))
                for i in range(len(requests))]

    def _grammars(self) -> Grammars:
        if self.grammars is None:  # the output layer's width: configs of composite models have no vocab_size
            self.grammars = Grammars(self.tokenizer, self.lm.get_output_embeddings().weight.shape[0])
        return self.grammars

    def check(self, s: Any) -> None:
        """A grammar xgrammar cannot compile (a regex with lookarounds or backreferences) is one line
        before any request runs."""
        c = grammar_of(s)
        if c is not None:
            try:
                self._grammars().compile(c)
            except RuntimeError as e:
                reason = re.sub(r"^\[[\d:]+\] \S+: ", "", str(e).strip().splitlines()[-1])  # xgrammar's log prefix
                raise SkdError(f"cannot enforce this constraint: {reason[:160]}") from None

    def _bad_words_ids(self, s: Any) -> list[list[int]] | None:
        """Each excluded word as the token sequences it takes alone and after a space (vLLM's rule)."""
        seqs = {tuple(self.tokenizer.encode(prefix + w, add_special_tokens=False))
                for w in banned_words(s) for prefix in ("", " ")}
        return [list(q) for q in sorted(seqs) if q] or None

    def _shared_prefill(self, enc: Any, n: int) -> dict[str, Any]:
        """generate()'s inputs for N samples of each prompt, the prompt read once: `num_return_sequences`
        would copy each prompt N times before the forward pass, and with few-shot prompts and short outputs
        that prefill is most of the work. All but the last prompt token go through the model here and their
        cache is repeated N times; in float32 the samples are exactly those `num_return_sequences` draws.
        Models whose cache is more than keys and values (recurrent, hybrid, static) take the plain way."""
        ids, mask = enc["input_ids"], enc["attention_mask"]
        plain = {"input_ids": ids, "attention_mask": mask, "num_return_sequences": n}
        if n == 1 or ids.shape[1] < 2 or self.share_prefill is False:
            return plain
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row counts from its first token
        keep = {"logits_to_keep": 1} if self.lm._supports_logits_to_keep() else {}  # no [B, L, vocab] logits
        cache = getattr(self.lm(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                                use_cache=True, **keep), "past_key_values", None)
        if self.share_prefill is None:  # decided on the first batch, for the model
            self.share_prefill = shareable(self.lm, cache)
            if not self.share_prefill:
                return plain
        cache.batch_repeat_interleave(n)
        return {"input_ids": ids.repeat_interleave(n, 0), "attention_mask": mask.repeat_interleave(n, 0),
                "past_key_values": cache}

    def _completion(self, tokens: torch.Tensor, index: int, stop: tuple[str, ...],
                    token_lp: torch.Tensor | None) -> Completion:
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        ids = tokens.tolist()
        length = next((k for k, t in enumerate(ids) if t in eos), len(ids))
        text, stopped = cut_at_stop(self.tokenizer.decode(ids[:length], skip_special_tokens=True), stop)
        finish = "stop" if stopped or length < len(ids) else "length"
        logprob = float(token_lp[:length].sum()) if token_lp is not None else None
        return Completion(text=text, index=index, finish_reason=finish, n_tokens=length, logprob=logprob)
