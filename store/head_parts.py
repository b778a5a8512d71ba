"""A fixed split of heads (or questions) into N parts by a hash of their normalised form, so one file of human
tuples can give a critic part of its heads and an evaluation the rest, with no head in both. `1/2` and `2/2` are
the two halves; the split needs no seed and no list of heads, so a critic's labels and an evaluation's references
agree on it wherever they are read."""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

from .errors import SkdError

_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


class PartError(SkdError, ValueError):
    """A bad `K/N`: one line on the command line, a validation error in a config."""


@functools.lru_cache(maxsize=64)  # in_part asks it once per row
def parse_part(spec: str) -> tuple[int, int]:
    """`K/N` as (K, N): part K of N, 1 <= K <= N."""
    m = _SPEC.fullmatch(spec or "")
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise PartError(f"heads part {spec!r}: give K/N, part K of N with 1 <= K <= N (1/2 and 2/2 are the halves)")
    return int(m[1]), int(m[2])


def normal_part(spec: str) -> str:
    """SPEC written as `K/N` (" 2 / 2" is "2/2"), so one part has one spelling in source names and keys."""
    return "{}/{}".format(*parse_part(spec))


def part_of(key: str, n: int) -> int:
    """Which of N parts a head or question falls in (1..N), the same for any spelling of case and spaces."""
    norm = " ".join(key.lower().split())
    return int(hashlib.sha256(norm.encode()).hexdigest()[:12], 16) % n + 1


def in_part(row: dict[str, Any], spec: str) -> bool:
    """Whether a judgement or reference row (by its head, else its question, else its text) is in part SPEC."""
    k, n = parse_part(spec)
    return part_of(str(row.get("head") or row.get("question") or row.get("text") or ""), n) == k
