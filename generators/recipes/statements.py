"""What the statement recipes (generics, comparatives) share: seed lists of lines, few-shot draws, and
cutting a completion down to the one short statement it should be."""

from __future__ import annotations

import json
import random
import re
from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from store import SkdError, Store

from ..constraints import make_lexical, noun_forms, unmet
from ..types import Completion, Lexical, Request, Sampling, derive_seed
from .base import ParseError, Recipe

DATA = files("generators") / "data"
PERSONAL = re.compile(r"\b(I|me|my|we|our|you|your)\b", re.IGNORECASE)  # a generic is nobody's opinion


def seed_lines(path: Path | None, shipped: str, what: str) -> list[str]:
    """A seed list: the user's file or the shipped one; one entry per line, `#` comments and blanks skipped."""
    try:
        text = (DATA / shipped).read_text() if path is None else Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SkdError(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SkdError(f"{path}: {what} must be UTF-8 text") from None
    lines = list(dict.fromkeys(line.strip() for line in text.splitlines()
                               if line.strip() and not line.lstrip().startswith("#")))
    if not lines:
        raise SkdError(f"{path or shipped} has no {what}")
    return lines


def shipped_examples(name: str) -> list[list[str]]:
    return json.loads((DATA / name).read_text())


def shots(examples: list[list[str]], k: int, avoid: set[str], rng: random.Random) -> list[list[str]]:
    """k few-shot examples that do not mention the target's own entities."""
    pool = [e for e in examples if not avoid & {x.lower() for x in e[:-1]}]
    return rng.sample(pool, min(k, len(pool)))


def statement(text: str, min_words: int, max_words: int) -> str:
    """The first sentence of a completion's first line, as a statement of `min_words`..`max_words` words."""
    line = re.sub(r"^\s*(?:[-*•]|\d+[.)])?\s*", "", text.strip().split("\n")[0]).strip()  # list markers only
    if not line:
        raise ParseError("empty output")
    sentence = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0].strip()
    if sentence.endswith("?"):
        raise ParseError("a question, not a statement")
    n = len(sentence.split())
    if not min_words <= n <= max_words:
        raise ParseError(f"statement of {n} words (keeps {min_words}-{max_words})")
    if PERSONAL.search(sentence):
        raise ParseError("personal, not a general statement")
    sentence = sentence.rstrip(".!").strip()
    return sentence[:1].upper() + sentence[1:] + "."


def require(words: tuple[str, ...], sentence: str, what: str) -> None:
    """The statement names `what` (in one of its forms), whether or not decoding was constrained."""
    if unmet(Lexical(include=(words,)), sentence):
        raise ParseError(f"{what} does not appear")


class StatementConfig(BaseModel):
    """What both statement recipes take; each adds its inputs."""
    model_config = ConfigDict(extra="forbid")
    prompts_per_input: int = Field(1, ge=1, description="Prompts per concept or pair, each with other examples.")
    examples: int = Field(4, ge=1, description="Few-shot examples per prompt.")
    constrain: bool = Field(True, description="Decode so that the required words appear (a lexical constraint).")
    boost: float = Field(2.0, ge=0.0, le=10.0, description="With constrain: logit bias towards the required "
                                                           "words until they appear (0: the grammar alone).")
    exclude: list[str] = Field([], description="Words no statement may contain (enforced while decoding).")
    min_words: int = Field(3, ge=1)
    max_words: int = Field(20, ge=2)
    sampling: Sampling = Sampling(n=10, temperature=1.0, top_p=0.9, max_tokens=32, stop=("\n",))


class StatementRecipe(Recipe):
    """One short statement per sample about an input (a concept, a pair of entities): few-shot prompts over
    the shipped examples, the input's entities required while decoding and in the parsed statement."""
    examples: ClassVar[list[list[str]]]  # [entity, ..., statement]

    def inputs(self) -> list[tuple[str, ...]]:
        raise NotImplementedError

    def prompt(self, entities: tuple[str, ...], shown: list[list[str]]) -> str:
        raise NotImplementedError

    def required(self, entities: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
        """The include clauses: each entity in its forms, and whatever the recipe adds."""
        return tuple(noun_forms(e) for e in entities)

    def item(self, entities: tuple[str, ...], text: str) -> dict[str, Any]:
        raise NotImplementedError

    def check_inputs(self) -> None:
        self.inputs()

    def constraint_for(self, entities: tuple[str, ...]) -> Lexical | None:
        c = self.config
        return make_lexical(self.required(entities) if c.constrain else (), tuple(c.exclude), c.boost,
                            f"{self.name}: {', '.join(map(repr, entities))}")

    def requests(self, model: str, seed: int, store: Store | None = None) -> list[Request]:
        c, out = self.config, []
        for entities in self.inputs():
            for k in range(c.prompts_per_input):
                rng = random.Random(derive_seed(seed, self.name, *entities, k))
                prompt = self.prompt(entities, shots(self.examples, c.examples, {e.lower() for e in entities}, rng))
                sampling = c.sampling.model_copy(
                    update={"seed": derive_seed(seed, prompt), "lexical": self.constraint_for(entities)})
                out.append(Request(model=model, sampling=sampling, prompt=prompt, meta={"entities": list(entities)}))
        return out

    def parse(self, request: Request, completion: Completion) -> list[dict[str, Any]]:
        entities = tuple(request.meta["entities"])
        text = statement(completion.text, self.config.min_words, self.config.max_words)
        for entity in entities:  # also when decoding was not constrained
            require(noun_forms(entity), text, repr(entity))
        return [self.item(entities, text)]
