"""Overlap with human references and output sanity: corpus BLEU-n against all references of an input
(COMET reports BLEU-2), ROUGE-L (best reference), and the rate of empty or degenerate outputs."""

from __future__ import annotations

import math
from collections import Counter


def tokens(text: str) -> list[str]:
    return text.lower().replace(".", " ").replace(",", " ").split()


def _ngrams(toks: list[str], n: int) -> Counter:
    return Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


def corpus_bleu(hyps: list[str], refs: list[list[str]], max_n: int = 2) -> float:
    """Papineni et al.: clipped n-gram precision against each hypothesis's references, geometric mean up to
    max_n, brevity penalty against the closest reference length; add-one smoothing for n > 1."""
    match, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, rs in zip(hyps, refs, strict=True):
        h, rt = tokens(hyp), [tokens(r) for r in rs if r.strip()]
        if not rt:
            continue
        hyp_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rt)[1]
        for n in range(1, max_n + 1):
            hc = _ngrams(h, n)
            best = Counter()
            for r in rt:
                best |= _ngrams(r, n)
            match[n - 1] += sum(min(c, best[g]) for g, c in hc.items())
            total[n - 1] += sum(hc.values())
    if not hyp_len or not match[0]:
        return 0.0
    logp = sum(math.log((match[k] + (k > 0)) / (total[k] + (k > 0))) for k in range(max_n)) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(logp)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hyp: str, refs: list[str]) -> float:
    """ROUGE-L F1 against the best-matching reference."""
    h, best = tokens(hyp), 0.0
    for r in refs:
        rt = tokens(r)
        lcs = _lcs(h, rt)
        if lcs:
            p, rec = lcs / len(h), lcs / len(rt)
            best = max(best, 2 * p * rec / (p + rec))
    return best


def degenerate(text: str) -> bool:
    """Empty, or mostly a repeated token or bigram (the loops small students fall into)."""
    toks = tokens(text)
    if not toks:
        return True
    if len(toks) >= 6:
        bigrams = list(zip(toks, toks[1:], strict=False))
        return len(set(toks)) / len(toks) < 0.4 or len(set(bigrams)) / len(bigrams) < 0.5
    return False
