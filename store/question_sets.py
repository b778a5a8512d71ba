"""Question sets as the datasets ship them (CommonsenseQA, GSM8K, StrategyQA, or JSONL of your own), read into
one shape, {qid, question, choices, gold, type}: the rationale recipe asks them and evaluation scores them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .errors import SkdError

QUESTION_FORMATS = ("csqa", "gsm8k", "strategyqa", "jsonl")


def read_questions(path: Path, fmt: str) -> list[dict[str, Any]]:
    """Questions as {qid, question, choices, gold, type} from the dataset's own format."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SkdError(f"cannot read questions {path}: {e.strerror}") from None
    try:
        rows = json.loads(text) if fmt == "strategyqa" else [json.loads(x) for x in text.splitlines() if x.strip()]
    except json.JSONDecodeError as e:
        raise SkdError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}); is it {fmt}?") from None
    out = []
    for i, r in enumerate(rows):
        try:
            out.append(_question(r, fmt, i))
        except (KeyError, TypeError, AttributeError):
            raise SkdError(f"{path}: record {i + 1} is not in {fmt} format") from None
    if not out:
        raise SkdError(f"{path} has no questions")
    return out


def _question(r: dict[str, Any], fmt: str, i: int) -> dict[str, Any]:
    if fmt == "csqa":
        choices = [c["text"] for c in r["question"]["choices"]]
        labels = [c["label"] for c in r["question"]["choices"]]
        gold = choices[labels.index(r["answerKey"])] if r.get("answerKey") in labels else None
        return {"qid": r.get("id", str(i)), "question": r["question"]["stem"], "choices": choices, "gold": gold,
                "type": "choice"}
    if fmt == "gsm8k":
        gold = r["answer"].split("####")[-1].strip() if "answer" in r else None
        return {"qid": str(i), "question": r["question"], "choices": None, "gold": gold, "type": "number"}
    if fmt == "strategyqa":
        gold = None if r.get("answer") is None else ("yes" if r["answer"] else "no")
        return {"qid": r.get("qid", str(i)), "question": r["question"], "choices": None, "gold": gold,
                "type": "yesno"}
    choices = r.get("choices")
    gold = r.get("answer")
    return {"qid": str(r.get("id", i)), "question": r["question"], "choices": choices,
            "gold": None if gold is None else str(gold), "type": question_type(choices, gold)}


DATASET_TYPES = {"csqa": "choice", "gsm8k": "number", "strategyqa": "yesno"}


def question_type(choices: list[str] | None, gold: Any, dataset: str | None = None) -> str:
    """How a question's answer is checked: its dataset's way, else by what the gold answer looks like."""
    if dataset in DATASET_TYPES:
        return DATASET_TYPES[dataset]
    text = str(gold if gold is not None else "").strip().lower()
    if choices:
        return "choice"
    if text in ("yes", "no", "true", "false"):
        return "yesno"
    return "number" if re.fullmatch(r"-?(?:\d+(?:\.\d+)?|\.\d+)", text.replace(",", "")) else "free"
