"""Generics after I2D2 (Bhagavatula et al. 2023): a weak teacher writes short general statements about
everyday concepts ("Birds can fly."), decoding constrained so that the concept appears (NeuroLogic's
positive constraint), for a critic to filter and for self-imitation rounds to improve on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from .statements import StatementConfig, StatementRecipe, seed_lines, shipped_examples

EXAMPLES = shipped_examples("generic_examples.json")  # [concept, generic] pairs, written for skd


class GenericsConfig(StatementConfig):
    concepts: Path | None = Field(None, description="Concepts, one per line (default: everyday nouns shipped "
                                                    "with skd).")
    max_concepts: int | None = Field(None, ge=1, description="Use at most this many concepts.")


class Generics(StatementRecipe):
    name = "generics"
    Config = GenericsConfig
    examples = EXAMPLES

    def concepts(self) -> list[str]:
        c = self.config
        return seed_lines(c.concepts, "generic_concepts.txt", "concepts")[: c.max_concepts]

    def inputs(self) -> list[tuple[str, ...]]:
        return [(concept,) for concept in self.concepts()]

    def prompt(self, entities: tuple[str, ...], shown: list[list[str]]) -> str:
        lines = ["Generic statements: short, true, general facts about everyday things.", ""]
        lines += [f"About {c}: {g}" for c, g in shown]
        return "\n".join(lines) + f"\nAbout {entities[0]}:"

    def item(self, entities: tuple[str, ...], text: str) -> dict[str, Any]:
        return {"kind": "text", "text": text, "head": entities[0], "domain": "generics",
                "extra": {"recipe": self.name, "concept": entities[0]}}
