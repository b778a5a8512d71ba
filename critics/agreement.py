"""Sibling agreement: how closely an item agrees with the teacher's other samples for the same prompt (its
siblings: other rationales for one question, other tails for one head and relation), as the highest cosine
similarity between what it says and what any sibling says, under a sentence encoder.

Why: a teacher that overgenerates says the right thing more consistently than the wrong thing, so an output that
some other sample repeats is more often acceptable (the idea behind self-consistency and SelfCheckGPT). It needs
no labels and reads what no single-text critic sees. On the CommonsenseQA rationales (five GPT-3 samples per
question) it ranks at AUC 0.707 alone, above GPT-3's own NLL, and stacked beside the fine-tuned critics and the
NLL it adds +0.017 (bench/critic_quality.py). An item without siblings has no agreement (NaN): a stack scores it
by a fit without this input, never by a guessed one."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from store import SAID, SIBLINGS, resolve_model


def encoder_name(model: str) -> str:
    """What a critic records of the encoder: an embedded name as given, a folder as an absolute path (a relative
    one would not resolve from another directory or on a Ray worker)."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def said(row: dict[str, Any]) -> str | None:
    field = SAID.get(row.get("kind") or "")
    return row.get(field) if field else None


def encode_distinct(texts: set[str], encode) -> dict[str, np.ndarray]:
    """Each distinct text's vector, encoded once (in a fixed order)."""
    ordered = sorted(texts)
    return dict(zip(ordered, np.asarray(encode(ordered), dtype=np.float32), strict=True)) if ordered else {}


def agreement(rows: list[dict[str, Any]], encode) -> np.ndarray:
    """Each row's highest cosine similarity to a sibling (its `siblings` column), NaN where it has none. ENCODE maps
    texts to unit vectors; each distinct text is encoded once."""
    vectors = encode_distinct({t for r in rows if said(r) is not None and r.get(SIBLINGS)
                               for t in (said(r), *r[SIBLINGS]) if t is not None}, encode)
    out = np.full(len(rows), np.nan)
    for i, r in enumerate(rows):
        others = [vectors[t] for t in r.get(SIBLINGS) or () if t is not None] if said(r) is not None else []
        if others:
            out[i] = float(np.max(np.stack(others) @ vectors[said(r)]))
    return out


class Prompt(Enum):
    OWN = "own"  # an Encoder's prompt when none is given: the one its folder sets for "STS", read once loaded


OWN = Prompt.OWN  # an enum member, so it is still itself after pickling (a Ray worker's copy of an Encoder)


class Encoder:
    """The sentence encoder MODEL (an embedded name or a folder) that a stack's signals compare texts under, at
    DTYPE (by default this machine's compute precision; a saved critic passes the one it was fitted at), each text
    prefixed with PROMPT (by default the encoder's own "STS" prompt; a saved stack passes the one its card recorded,
    since its fit read cosines made under that one). The name is resolved at once, so a missing model fails before
    any scoring; the weights load on first use, once: a stack that scores bare texts (no siblings, no support) never
    needs them."""

    def __init__(self, model: str, dtype: Any = None, prompt: Any = OWN):
        self.model, self.path, self.dtype, self._encoder = model, resolve_model(model), dtype, None
        self._prompt = prompt

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from .model import sentence_encoder

            self._encoder = sentence_encoder(self.path, self.dtype)
        return self._encoder

    @property
    def prompt(self) -> str | None:
        """What each text is prefixed with (None: nothing), as a stack's card records it."""
        if self._prompt is OWN:
            from .model import encoder_prompt

            self._prompt = encoder_prompt(self.encoder, "STS")
        return self._prompt

    def encode(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Unit vectors to compare by cosine (agreement, support)."""
        from .model import prompted_vectors

        return prompted_vectors(self.encoder, texts, self.prompt, batch_size)

    def agreement(self, rows: list[dict[str, Any]], batch_size: int = 128) -> np.ndarray:
        return agreement(rows, lambda texts: self.encode(texts, batch_size))
