"""Generics after I2D2 (Bhagavatula et al. 2023): a weak teacher writes short general statements about
everyday concepts ("Birds can fly."), decoding constrained so that the concept appears (NeuroLogic's
positive constraint), for a critic to filter and for self-imitation rounds to improve on."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from store import Store

from ..constraints import make_lexical, noun_forms
from ..types import Completion, Lexical, Request, Sampling, derive_seed
from .base import Recipe
from .statements import require, seed_lines, shipped_examples, shots, statement

EXAMPLES = shipped_examples("generic_examples.json")  # [concept, generic] pairs, written for skd


class GenericsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    concepts: Path | None = Field(None, description="Concepts, one per line (default: everyday nouns shipped "
                                                    "with skd).")
    max_concepts: int | None = Field(None, ge=1, description="Use at most this many concepts.")
    prompts_per_concept: int = Field(1, ge=1, description="Prompts per concept, each with other examples.")
    examples: int = Field(4, ge=1, le=len(EXAMPLES) - 1, description="Few-shot generics per prompt.")
    constrain: bool = Field(True, description="Decode so that the concept appears (a lexical constraint).")
    boost: float = Field(2.0, ge=0.0, le=10.0, description="With constrain: logit bias towards the required "
                                                           "words until they appear (0: the grammar alone).")
    exclude: list[str] = Field([], description="Words no generic may contain (enforced while decoding).")
    min_words: int = Field(3, ge=1)
    max_words: int = Field(20, ge=2)
    sampling: Sampling = Sampling(n=10, temperature=1.0, top_p=0.9, max_tokens=32, stop=("\n",))


def generics_prompt(concept: str, shown: list[list[str]]) -> str:
    lines = ["Generic statements: short, true, general facts about everyday things.", ""]
    lines += [f"About {c}: {g}" for c, g in shown]
    return "\n".join(lines) + f"\nAbout {concept}:"


class Generics(Recipe):
    name = "generics"
    Config = GenericsConfig

    def check_inputs(self) -> None:
        self.concepts()

    def concepts(self) -> list[str]:
        c = self.config
        return seed_lines(c.concepts, "generic_concepts.txt", "concepts")[: c.max_concepts]

    def constraint_for(self, concept: str) -> Lexical | None:
        c = self.config
        include = (noun_forms(concept),) if c.constrain else ()
        return make_lexical(include, tuple(c.exclude), c.boost, f"generics: concept {concept!r}")

    def requests(self, model: str, seed: int, store: Store | None = None) -> list[Request]:
        out = []
        for concept in self.concepts():
            for k in range(self.config.prompts_per_concept):
                rng = random.Random(derive_seed(seed, "generics", concept, k))
                prompt = generics_prompt(concept, shots(EXAMPLES, self.config.examples, {concept.lower()}, rng))
                sampling = self.config.sampling.model_copy(
                    update={"seed": derive_seed(seed, prompt), "lexical": self.constraint_for(concept)})
                out.append(Request(model=model, sampling=sampling, prompt=prompt, meta={"concept": concept}))
        return out

    def parse(self, request: Request, completion: Completion) -> list[dict[str, Any]]:
        concept = request.meta["concept"]
        text = statement(completion.text, self.config.min_words, self.config.max_words)
        require(noun_forms(concept), text, "the concept")
        return [{"kind": "text", "text": text, "head": concept, "domain": "generics",
                 "extra": {"recipe": self.name, "concept": concept}}]
