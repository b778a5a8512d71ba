"""Comparatives after NeuroComparatives (Howard et al. 2024): for a pair of entities a weak teacher writes
one comparative statement ("Steel is stronger than styrofoam."), decoding constrained to name both
entities and "than"; items keep the pair and the comparative, and dedup runs within each pair
(`scope = "head-tail"`)."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from store import SkdError, Store

from ..constraints import make_lexical, noun_forms
from ..types import Completion, Lexical, Request, Sampling, derive_seed
from .base import ParseError, Recipe
from .statements import require, seed_lines, shipped_examples, shots, statement

EXAMPLES = shipped_examples("comparative_examples.json")  # [entity, entity, statement], written for skd
# "stronger than", "more expensive than", "better than"; not "rather than" or "other than".
COMPARATIVE = re.compile(r"\b((?:more|less|much|far)\s+\w+|\w{3,}er|better|worse|more|less|fewer)\s+than\b",
                         re.IGNORECASE)
# Words in -er before "than" that compare nothing ("rather than", "water than"); the pair's own entities too.
NOT_COMPARATIVE = {"rather", "other", "whether", "either", "neither", "never", "ever", "over", "under", "after",
                   "water", "paper", "number", "order", "offer", "mother", "father", "brother", "sister", "river",
                   "silver", "copper", "tiger", "spider", "computer", "letter", "teacher", "farmer", "winter",
                   "summer", "flower", "tower", "power", "finger", "corner", "dinner", "weather", "feather",
                   "leather", "cucumber", "ladder", "hammer", "butter", "pepper", "danger", "member", "answer"}


def read_pairs(path: Path | None) -> list[tuple[str, str]]:
    """Entity pairs, one per line: `a<TAB>b` (or `a,b`)."""
    pairs = []
    for n, line in enumerate(seed_lines(path, "comparative_pairs.tsv", "entity pairs"), 1):
        parts = [p.strip() for p in (line.split("\t") if "\t" in line else line.split(","))]
        if len(parts) != 2 or not all(parts) or parts[0].lower() == parts[1].lower():
            raise SkdError(f"{path}: entry {n}: expected two different entities separated by a tab, got {line!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def comparative_of(sentence: str, entities: tuple[str, ...] = ()) -> str:
    others = NOT_COMPARATIVE | {w.lower() for e in entities for w in e.split()}
    for m in COMPARATIVE.finditer(sentence):
        words = m.group(1).lower().split()
        if words[-1] not in others:
            return " ".join(words[1:] if words[0] in ("much", "far") else words) + " than"
    raise ParseError("no comparative ('...er than', 'more ... than')")


class ComparativesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: Path | None = Field(None, description="Entity pairs, one per line as a<TAB>b (default: pairs shipped "
                                                 "with skd).")
    max_pairs: int | None = Field(None, ge=1, description="Use at most this many pairs.")
    prompts_per_pair: int = Field(1, ge=1, description="Prompts per pair, each with other examples.")
    examples: int = Field(4, ge=1, le=len(EXAMPLES) - 1, description="Few-shot comparatives per prompt.")
    constrain: bool = Field(True, description="Decode so that both entities and 'than' appear.")
    boost: float = Field(2.0, ge=0.0, le=10.0, description="With constrain: logit bias towards the required "
                                                           "words until they appear (0: the grammar alone).")
    exclude: list[str] = Field([], description="Words no statement may contain (enforced while decoding).")
    min_words: int = Field(4, ge=1)
    max_words: int = Field(25, ge=2)
    sampling: Sampling = Sampling(n=10, temperature=1.0, top_p=0.9, max_tokens=32, stop=("\n",))


def comparatives_prompt(a: str, b: str, shown: list[list[str]]) -> str:
    lines = ["Compare two things in one true sentence.", ""]
    lines += [f"{x}, {y}: {s}" for x, y, s in shown]
    return "\n".join(lines) + f"\n{a}, {b}:"


class Comparatives(Recipe):
    name = "comparatives"
    Config = ComparativesConfig

    def check_inputs(self) -> None:
        self.pairs()

    def pairs(self) -> list[tuple[str, str]]:
        return read_pairs(self.config.pairs)[: self.config.max_pairs]

    def constraint_for(self, a: str, b: str) -> Lexical | None:
        c = self.config
        include = (noun_forms(a), noun_forms(b), ("than",)) if c.constrain else ()
        return make_lexical(include, tuple(c.exclude), c.boost, f"comparatives: pair {a!r}, {b!r}")

    def requests(self, model: str, seed: int, store: Store | None = None) -> list[Request]:
        out = []
        for a, b in self.pairs():
            for k in range(self.config.prompts_per_pair):
                rng = random.Random(derive_seed(seed, "comparatives", a, b, k))
                shown = shots(EXAMPLES, self.config.examples, {a.lower(), b.lower()}, rng)
                prompt = comparatives_prompt(a, b, shown)
                sampling = self.config.sampling.model_copy(
                    update={"seed": derive_seed(seed, prompt), "lexical": self.constraint_for(a, b)})
                out.append(Request(model=model, sampling=sampling, prompt=prompt, meta={"pair": [a, b]}))
        return out

    def parse(self, request: Request, completion: Completion) -> list[dict[str, Any]]:
        a, b = request.meta["pair"]
        text = statement(completion.text, self.config.min_words, self.config.max_words)
        require(noun_forms(a), text, f"{a!r}")
        require(noun_forms(b), text, f"{b!r}")
        return [{"kind": "text", "text": text, "head": a, "tail": b, "relation": "comparative",
                 "domain": "comparatives", "extra": {"recipe": self.name, "comparative": comparative_of(text, (a, b))}}]
