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
        self.eos = tokenizer.eos_token_id

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
            elif c.grammar is not None:
                self.cache[key] = self.compiler.compile_grammar(c.grammar)
            else:
                regex = c.regex if c.regex is not None else choice_regex(c.choice)
                self.cache[key] = self.compiler.compile_regex(regex)
        return self.cache[key]

    def processor(self, constraints: list[Constraint | None]) -> GrammarProcessor:
        return GrammarProcessor(self.xgr, [None if c is None else self.compile(c) for c in constraints],
                                self.vocab_size, self.eos)


class GrammarProcessor(LogitsProcessor):
    """One matcher per row (None: unconstrained), advanced and asked for masks in one batched call per step
    (xgrammar's BatchGrammarMatcher, on a thread per core). A row that has finished (its grammar accepted
    the end of sequence, or a stop string ended it and generate() pads it) is left alone; one generate() call
    each."""

    def __init__(self, xgr: Any, grammars: list[Any], vocab_size: int, eos: int):
        self.xgr, self.eos = xgr, eos
        self.matchers = [None if g is None else xgr.GrammarMatcher(g) for g in grammars]
        self.bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
        self.batch = xgr.BatchGrammarMatcher(max_threads=torch.get_num_threads())
        self.active = [row for row, m in enumerate(self.matchers) if m is not None]
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.started and self.active:  # the token each row took last step
            last = input_ids[self.active, -1].tolist()
            accepted = self.batch.batch_accept_token([self.matchers[r] for r in self.active], last)
            # finished rows: whatever generate() pads them with is not ours to judge
            self.active = [r for r, ok in zip(self.active, accepted, strict=True)
                           if ok and not self.matchers[r].is_terminated()]
        self.started = True
        if not self.active:
            return scores
        self.batch.batch_fill_next_token_bitmask([self.matchers[r] for r in self.active], self.bitmask,
                                                 indices=self.active)
        on_gpu = scores.device.type == "cuda"  # xgrammar masks on CUDA or on the CPU
        masked = scores if on_gpu else scores.to("cpu", torch.float32)
        self.xgr.apply_token_bitmask_inplace(masked, self.bitmask.to(masked.device), vocab_size=scores.shape[-1],
                                             indices=self.active)
        # A row whose grammar allows only tokens another processor banned (a narrow regex and an excluded
        # word) has nothing left to sample: end it, so it is a recorded failure, not a NaN in sampling.
        dead = torch.isneginf(masked).all(dim=-1)
        if dead.any():
            masked[dead, self.eos] = 0.0
        return masked.to(scores.device, scores.dtype)


class BoostProcessor(LogitsProcessor):
    """NeuroLogic's look towards unmet constraints, at its cheapest: each row's bias on the first tokens of
    its required words, until one of a clause's first tokens has been generated. Vectorised over rows,
    clauses and tokens: [rows, clauses, tokens] ids, padded, and a [rows, clauses] record of met clauses."""

    def __init__(self, rows: list[list[list[int]]], bias: float):
        width = max((len(c) for row in rows for c in row), default=1)
        depth = max((len(row) for row in rows), default=1)
        ids = torch.full((len(rows), depth, width), -1, dtype=torch.long)
        for r, row in enumerate(rows):
            for c, clause in enumerate(row):
                ids[r, c, :len(clause)] = torch.tensor(clause, dtype=torch.long)
        self.valid, self.ids = ids >= 0, ids.clamp(min=0)
        self.met = torch.zeros(ids.shape[:2], dtype=torch.bool)
        self.bias, self.started = bias, False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.started:
            last = input_ids[:, -1].cpu()
            self.met |= ((self.ids == last[:, None, None]) & self.valid).any(-1)
        self.started = True
        values = (self.valid & ~self.met[..., None]).to(scores.dtype) * self.bias
        rows = self.ids.shape[0]
        return scores.scatter_add(1, self.ids.view(rows, -1).to(scores.device), values.view(rows, -1).to(scores.device))
