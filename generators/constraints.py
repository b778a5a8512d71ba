"""Lexical constraints as the engines can enforce them: the include clauses become one regular expression
(the grammar every backend's structured decoding takes), the exclude words become banned words; and the
check that every completion is held to, whichever backend wrote it."""

from __future__ import annotations

import itertools
import re
from typing import Any

from store import SkdError

from .types import Constraint, Lexical, Sampling

REGEX_SPECIAL = set("\\.^$|?*+()[]{}/")
# What may stand next to a required word (whole words only, as `\b` would have it; xgrammar's regex dialect
# has no `\b`), for single-line and multi-line outputs.
NOT_WORD = {True: r"[^A-Za-z0-9_\n]", False: r"[^A-Za-z0-9_]"}


def escape(text: str) -> str:
    """A literal for xgrammar's regex dialect (Python's re.escape escapes spaces, which it refuses)."""
    return "".join("\\" + ch if ch in REGEX_SPECIAL else ch for ch in text)


def include_regex(include: tuple[tuple[str, ...], ...], single_line: bool) -> str:
    """Outputs holding every clause as whole words, in any order. Until the last required word the output
    cannot end, and a single-line output cannot end its first sentence either: a small teacher that is only
    kept from stopping rambles on past its budget (measured on SmolLM2 generics, 240 samples: 46 ran out
    without the word; with the sentence rule 40; with the rule and a boost of 2.0, 8)."""
    edge = NOT_WORD[single_line]
    before, after = (r"[^\n.!?]*", r"[^\n]*") if single_line else (r"[\s\S]*", r"[\s\S]*")
    inner = edge[:-1] + r".!?]" if single_line else edge  # a gap's edges do not end the sentence either
    gap = f"({inner}{before}{inner}|{inner})"
    clauses = ["(" + "|".join(escape(w) for w in clause) + ")" for clause in include]
    orders = ["".join(c if k == 0 else gap + c for k, c in enumerate(order))
              for order in itertools.permutations(clauses)]
    body = orders[0] if len(orders) == 1 else "(" + "|".join(orders) + ")"
    return f"({before}{inner})?{body}({edge}{after})?" + (r"\n?" if single_line else "")


def choice_regex(choices: list[str]) -> str:
    return "(" + "|".join(escape(c) for c in choices) + ")"


def grammar_of(s: Sampling) -> Constraint | None:
    """The structured constraint a backend enforces for these sampling parameters: the one given, or the
    include clauses as a regex."""
    if s.constraint is not None:
        if s.constraint.regex is not None:  # group names are for parsing; grammar engines refuse them
            return Constraint(regex=re.sub(r"\(\?P<\w+>", "(", s.constraint.regex))
        return s.constraint
    if s.lexical is not None and s.lexical.include:
        return Constraint(regex=include_regex(s.lexical.include, single_line="\n" in s.stop))
    return None


def cased(word: str) -> tuple[str, ...]:
    """A word as written and with its first letter capitalised (it may start a sentence)."""
    return tuple(dict.fromkeys((word, word[:1].upper() + word[1:])))


def banned_words(s: Sampling) -> list[str]:
    """The exclude words in the forms a sentence may use them."""
    if s.lexical is None:
        return []
    return list(dict.fromkeys(f for w in s.lexical.exclude for f in cased(w)))


def _whole(word: str) -> re.Pattern:
    return re.compile(rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])", re.IGNORECASE)


def unmet(lexical: Lexical | None, text: str) -> str | None:
    """Why `text` breaks the constraint (the reason recorded with the completion), or None."""
    if lexical is None:
        return None
    for clause in lexical.include:
        if not any(_whole(w).search(text) for w in clause):
            return f"constraint not met: no {clause[0]!r}"
    for w in lexical.exclude:
        if _whole(w).search(text):
            return f"constraint not met: excluded {w!r}"
    return None


IRREGULAR = {"mouse": "mice", "child": "children", "tooth": "teeth", "foot": "feet", "goose": "geese",
             "man": "men", "woman": "women", "person": "people", "knife": "knives", "leaf": "leaves",
             "wolf": "wolves", "loaf": "loaves", "shelf": "shelves", "half": "halves", "life": "lives",
             "wife": "wives", "potato": "potatoes", "tomato": "tomatoes", "hero": "heroes", "volcano": "volcanoes",
             "sheep": "sheep", "fish": "fish", "deer": "deer", "scissors": "scissors", "glasses": "glasses",
             "police officer": "police officers", "cactus": "cacti"}


def plural(noun: str) -> str:
    head, _, last = noun.rpartition(" ")
    lower = last.lower()
    if lower in IRREGULAR:
        form = IRREGULAR[lower]
    elif re.search(r"[^aeiou]y$", lower):
        form = last[:-1] + "ies"
    elif re.search(r"(s|x|z|ch|sh)$", lower):
        form = last + "es"
    else:
        form = last + "s"
    return f"{head} {form}" if head else form


def noun_forms(noun: str) -> tuple[str, ...]:
    """A noun as a generic may use it: singular and plural, each as written and capitalised."""
    noun = noun.strip()
    return tuple(dict.fromkeys(f for w in (noun, plural(noun)) for f in cased(w)))


def make_lexical(include: tuple[tuple[str, ...], ...], exclude: tuple[str, ...], boost: float,
                 where: str) -> Lexical | None:
    """A recipe's lexical constraint for one input; a contradiction in it is one line naming the input."""
    if not include and not exclude:
        return None
    try:
        return Lexical(include=include, exclude=exclude, boost=boost if include else 0.0)
    except ValueError as e:
        msg = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
        raise SkdError(f"{where}: {msg.removeprefix('Value error, ')}") from None


def first_tokens(tokenizer: Any, words: tuple[str, ...]) -> list[int]:
    """The tokens a word can start with, alone or after a space, where that token is a word piece of its
    own (at least 3 characters, or the whole word): a tokenizer that splits " mouse" into " m" + "ouse"
    would otherwise have every word in m biased."""
    out = set()
    for w in words:
        for prefix in ("", " "):
            ids = tokenizer.encode(prefix + w, add_special_tokens=False)
            if ids and len(tokenizer.decode(ids[:1]).strip()) >= min(3, len(w)):
                out.add(ids[0])
    return sorted(out)
