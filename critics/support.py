"""Support: how closely what an item says matches what people wrote for the same relation, in a label source of
human-written knowledge (ATOMIC-2020's tuples: `skd labels import FILE --format atomic2020`), as the highest cosine
between the item's tail (or rationale, or answer) and any human-written positive of the same kind and relation,
under a sentence encoder.

Why: a critic reads one triple; support asks whether a tail like this one is something people say for this
relation at all. On the CKBP v2 expert triples, candidates mined from text whose tails people rarely write for the
relation are mostly implausible, and support from ATOMIC-2020's human tuples, stacked beside the trained critics,
lifts AUC by +0.034 (bench/critic_quality.py), in every CKBP class. The reference texts are embedded once, when the
stack is built, and saved with it (`support.npz`), so scoring does not depend on labels imported later. An item of
a kind or relation the source has nothing for has no support (NaN): the stack scores it without."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .agreement import encode_distinct, said

FILE = "support.npz"
CHUNK = 512  # rows compared at once: CHUNK x (positives of one relation) similarities in memory


def relation_of(row: dict[str, Any]) -> str:
    """The pool an item is compared within: its kind and, for a triple, its relation."""
    return f"{row.get('kind')}:{row.get('relation') or ''}" if row.get("kind") == "triple" else str(row.get("kind"))


class Support:
    """Human-written positives of one label source, embedded: vectors, the pool of each, their item ids."""

    def __init__(self, source: str, vectors: np.ndarray, pools: np.ndarray, item_ids: np.ndarray):
        self.source, self.vectors, self.pools, self.item_ids = source, vectors, pools, item_ids

    @classmethod
    def from_labels(cls, rows: list[dict[str, Any]], source: str, encode: Callable[[list[str]], np.ndarray]):
        """From the positive labels of SOURCE among ROWS (a `load_labels` frame's dicts)."""
        keep = [r for r in rows if r["source"] == source and r["label"] == 1 and said(r)]
        return cls(source, np.asarray(encode([said(r) for r in keep]), dtype=np.float32),
                   np.asarray([relation_of(r) for r in keep]), np.asarray([r["item_id"] for r in keep]))

    def save(self, folder: Path) -> None:
        np.savez(folder / FILE, vectors=self.vectors, pools=self.pools, item_ids=self.item_ids,
                 source=np.asarray(self.source))

    @classmethod
    def load(cls, folder: Path) -> Support:
        z = np.load(folder / FILE)
        return cls(str(z["source"]), z["vectors"], z["pools"], z["item_ids"])

    def __call__(self, rows: list[dict[str, Any]], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Each row's highest cosine to a positive of its pool other than itself (NaN where the pool is empty)."""
        out = np.full(len(rows), np.nan)
        vectors = encode_distinct({said(r) for r in rows if said(r)}, encode)
        pools = np.asarray([relation_of(r) for r in rows])
        for pool in np.unique(pools):
            ref = self.pools == pool
            idx = [i for i in np.where(pools == pool)[0] if said(rows[i])]
            if not ref.any() or not idx:
                continue
            for start in range(0, len(idx), CHUNK):
                part = idx[start:start + CHUNK]
                sims = np.stack([vectors[said(rows[i])] for i in part]) @ self.vectors[ref].T
                ids = np.asarray([rows[i].get("item_id") for i in part])
                sims[ids[:, None] == self.item_ids[ref][None, :]] = -np.inf  # a positive does not support itself
                out[part] = sims.max(axis=1)
        out[np.isinf(out)] = np.nan  # its only positive was itself
        return out
