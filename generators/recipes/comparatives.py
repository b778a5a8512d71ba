"""Comparatives after NeuroComparatives (Howard et al. 2024): for a pair of entities a weak teacher writes
one comparative statement ("Steel is stronger than styrofoam."), decoding constrained to name both
entities and "than"; items keep the pair and the comparative, and dedup runs within each pair
(`scope = "head-tail"`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field

from store import SkdError

from .base import ParseError
from .statements import StatementConfig, StatementRecipe, seed_lines, shipped_examples

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


class ComparativesConfig(StatementConfig):
    pairs: Path | None = Field(None, description="Entity pairs, one per line as a<TAB>b (default: pairs shipped "
                                                 "with skd).")
    max_pairs: int | None = Field(None, ge=1, description="Use at most this many pairs.")
    min_words: int = Field(4, ge=1)
    max_words: int = Field(25, ge=2)


class Comparatives(StatementRecipe):
    name = "comparatives"
    Config = ComparativesConfig
    examples = EXAMPLES

    def pairs(self) -> list[tuple[str, str]]:
        return read_pairs(self.config.pairs)[: self.config.max_pairs]

    def inputs(self) -> list[tuple[str, ...]]:
        return self.pairs()

    def prompt(self, entities: tuple[str, ...], shown: list[list[str]]) -> str:
        lines = ["Compare two things in one true sentence.", ""]
        lines += [f"{x}, {y}: {s}" for x, y, s in shown]
        return "\n".join(lines) + f"\n{entities[0]}, {entities[1]}:"

    def required(self, entities: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
        return (*super().required(entities), ("than",))

    def item(self, entities: tuple[str, ...], text: str) -> dict[str, Any]:
        a, b = entities
        return {"kind": "text", "text": text, "head": a, "tail": b, "relation": "comparative",
                "domain": "comparatives", "extra": {"recipe": self.name, "comparative": comparative_of(text, (a, b))}}
