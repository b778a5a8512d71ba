"""What the statement recipes (generics, comparatives) share: seed lists of lines, few-shot draws, and
cutting a completion down to the one short statement it should be."""

from __future__ import annotations

import json
import random
import re
from importlib.resources import files
from pathlib import Path

from store import SkdError

from ..constraints import unmet
from ..types import Lexical
from .base import ParseError

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
