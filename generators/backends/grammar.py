"""Constrained decoding for the transformers backend through xgrammar (the engine vLLM uses for its
structured outputs): a compiled grammar per constraint, and a logits processor that masks each row of a
batch by its own grammar, so requests with different constraints (one concept each) share a batch."""

from __future__ import annotations

import json
from typing import Any

import torch
from transformers import LogitsProcessor

from ..constraints import choice_regex
from ..types import Constraint


class Grammars:
    """xgrammar's compiler for one tokenizer; compiled grammars are cached by constraint (a generics run
    asks for the same few hundred concepts many times)."""

    def __init__(self, tokenizer: Any, vocab_size: int):
        import xgrammar as xgr

        self.xgr = xgr
        # Stop tokens: the tokenizer's end of sequence, which is what the backend cuts completions at.
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=[tokenizer.eos_token_id])
        self.compiler = xgr.GrammarCompiler(info, max_threads=1)
        self.vocab_size = vocab_size
        self.cache: dict[str, Any] = {}

    def compile(self, c: Constraint) -> Any:
        key = c.model_dump_json()
        if key not in self.cache:
            if c.json_schema is not None:
                self.cache[key] = self.compiler.compile_json_schema(json.dumps(c.json_schema))
            else:
                regex = c.regex if c.regex is not None else choice_regex(c.choice)
                self.cache[key] = self.compiler.compile_regex(regex)
        return self.cache[key]

    def processor(self, constraints: list[Constraint | None]) -> GrammarProcessor:
        return GrammarProcessor(self.xgr, [None if c is None else self.compile(c) for c in constraints],
                                self.vocab_size)


class GrammarProcessor(LogitsProcessor):
    """One matcher per row (None: unconstrained). A row that has finished (its grammar accepted the end of
    sequence, or a stop string ended it and generate() pads it) is left alone; one generate() call each."""

    def __init__(self, xgr: Any, grammars: list[Any], vocab_size: int):
        self.xgr = xgr
        self.matchers = [None if g is None else xgr.GrammarMatcher(g) for g in grammars]
        self.bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.started:  # the token each row took last step
            last = input_ids[:, -1].tolist()
            for row, m in enumerate(self.matchers):
                if m is not None and (not m.accept_token(last[row]) or m.is_terminated()):
                    self.matchers[row] = None  # finished: whatever generate() pads it with is not ours to judge
        self.started = True
        active = [row for row, m in enumerate(self.matchers) if m is not None]
        if not active:
            return scores
        for row in active:
            self.matchers[row].fill_next_token_bitmask(self.bitmask, row)
        masked = scores.to("cpu", torch.float32)
        self.xgr.apply_token_bitmask_inplace(masked, self.bitmask, vocab_size=scores.shape[-1], indices=active)
        return masked.to(scores.device, scores.dtype)


class BoostProcessor(LogitsProcessor):
    """NeuroLogic's look towards unmet constraints, at its cheapest: each row's bias on the first tokens of
    its required words, until one of a clause's first tokens has been generated."""

    def __init__(self, prompt_len: int, rows: list[list[list[int]]], bias: float):
        self.prompt_len, self.bias = prompt_len, bias
        self.rows = [[torch.tensor(clause) for clause in row] for row in rows]  # row -> clause -> first tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_len:]
        for row, clauses in enumerate(self.rows):
            for ids in clauses:
                if not torch.isin(ids, generated[row]).any():
                    scores[row, ids] += self.bias
        return scores

