"""A likelihood critic: how likely a causal LM finds an item's content given its context (a rationale given its
question and answer, a tail given its head and relation), as exp(-mean token NLL). No training; dev calibrates it.

Why: the teacher's own likelihood of its output ranks rationales nearly as well as a fine-tuned critic (GPT-3's NLL:
AUC 0.695) and adds to one, but items imported or generated without logprobs have none. A small local LM's
likelihood is a stand-in that every item has: on CommonsenseQA rationales SmolLM2-135M's correlates 0.85 with
GPT-3's (bench/critic_quality.py). Stacked with a text critic (`skd critic ensemble --combine stack`) it reads what
the text critic does not."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .verbalize import RELATION_PHRASES, verbalize


def context_and_content(item: dict[str, Any]) -> tuple[str, str]:
    """The part of an item that is judged (the content) and what it is judged against (its context)."""
    kind = item.get("kind")
    if kind == "triple":
        rel = item.get("relation") or ""
        return f"{item.get('head') or ''}. {RELATION_PHRASES.get(rel, rel)}", f" {item.get('tail') or ''}"
    if kind == "rationale":
        return (f"Question: {item.get('question') or ''}\nAnswer: {item.get('answer') or ''}\nExplanation:",
                f" {item.get('rationale') or ''}")
    if kind == "qa":
        return f"Question: {item.get('question') or ''}\nAnswer:", f" {item.get('answer') or ''}"
    return "", verbalize(item)


class LikelihoodCritic:
    """exp(-mean NLL) of an item's content given its context under a causal LM; `score(texts)` (no rows, so no
    context) takes the whole text as content. With KEEP, each (context, content) is computed once per critic: cross-
    validation scores mostly the same dev labels in every fold (scoring a corpus keeps nothing)."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int = 256, keep: bool = False):
        self.model, self.tokenizer, self.max_length, self.keep = model.eval(), tokenizer, max_length, keep
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.cache: dict[tuple[str, str], float] = {}

    def score(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        return self._scores([("", t) for t in texts], batch_size)

    def score_rows(self, rows: list[dict[str, Any]], batch_size: int = 32) -> np.ndarray:
        return self._scores([context_and_content(r) for r in rows], batch_size)

    def _scores(self, pairs: list[tuple[str, str]], batch_size: int) -> np.ndarray:
        batch_size = min(batch_size, 32)  # logits are batch x tokens x vocabulary (49k): 128 x 256 would be 6 GB
        todo = list(dict.fromkeys(p for p in pairs if p not in self.cache))
        todo.sort(key=lambda p: len(p[0]) + len(p[1]))  # like lengths together: little padding
        for i in range(0, len(todo), batch_size):
            self.cache.update(zip(todo[i:i + batch_size], self._nll(todo[i:i + batch_size]), strict=True))
        nll = [self.cache[p] for p in pairs]
        if not self.keep:
            self.cache.clear()
        return np.exp(-np.asarray(nll, dtype=np.float64))

    @torch.inference_mode()
    def _nll(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Mean NLL of each content's tokens (the context's are read, not scored), right-padded in one batch."""
        seqs, starts = [], []
        for context, content in pairs:
            said = self.tokenizer(content, add_special_tokens=False)["input_ids"][:self.max_length - 1]
            room = self.max_length - len(said) - len(self.bos)  # a long context loses its start, not the content
            ctx = self.bos + (self.tokenizer(context, add_special_tokens=False)["input_ids"][-room:] if room else [])
            seqs.append(ctx + said or [self.pad])  # the model needs a token to read, even for no text at all
            starts.append(max(len(ctx), 1))  # the first token has nothing to be predicted from
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), self.pad)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, :len(s)], mask[j, :len(s)] = torch.tensor(s), 1
        logits = self.model(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device)).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None].to(logits.device))[..., 0]
        scored = torch.zeros_like(logp)
        for j, (s, start) in enumerate(zip(seqs, starts, strict=True)):
            scored[j, start - 1:len(s) - 1] = 1  # token t is predicted at position t - 1
        nll = -(logp * scored).sum(1) / scored.sum(1).clamp(min=1)
        return nll.masked_fill(scored.sum(1) == 0, float("inf")).cpu().tolist()  # no content: the worst, not the best


def load_likelihood(base: str, dtype: torch.dtype | None = None, keep: bool = False) -> LikelihoodCritic:
    from .model import causal_lm

    return LikelihoodCritic(*causal_lm(base, dtype), keep=keep)
