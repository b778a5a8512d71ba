"""Rationale distillation after the 2024 study of distillation from Llama-3.1-405B: the teacher writes a
reasoning chain and a final answer; the answer is parsed and, where a gold answer exists, checked, so a
slice of correct rationales can be cut later (`json_extract(extra, '$.correct')`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from store import Store
from store.question_sets import read_questions

from ..types import Completion, Request, Sampling, derive_seed
from .base import ParseError, Recipe

ANSWER = re.compile(r"(?im)^[\s*#]*(?:final\s+)?answer\s*(?:is)?\s*[:：]\s*\**(.+?)\**\s*$")
NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")  # ".5" is a half, not 5

INSTRUCTIONS = {
    "choice": 'Think step by step, then give the final answer on the last line as "Answer: <one of the choices>".',
    "number": 'Think step by step, then give the final answer on the last line as "Answer: <number>".',
    "yesno": 'Think step by step, then give the final answer on the last line as "Answer: yes" or "Answer: no".',
    "free": 'Think step by step, then give the final answer on the last line as "Answer: <answer>".',
}
# One worked example per answer type, written for skd, so small teachers see the expected format.
DEMOS = {
    "choice": ("Question: Where would you put a plate after washing it?\nChoices: (A) cupboard (B) oven "
               "(C) garden (D) bed (E) car",
               "Clean plates are stored where dishes are kept, which is a kitchen cupboard.\nAnswer: cupboard"),
    "number": ("Question: Tom has 3 boxes with 4 apples each. He eats 2 apples. How many apples are left?",
               "3 boxes with 4 apples each is 3 * 4 = 12 apples. After eating 2, 12 - 2 = 10 are left.\nAnswer: 10"),
    "yesno": ("Question: Could a cat fit inside a teacup?",
              "An adult cat is about 45 cm long and a teacup holds about 8 cm of space, so it could not.\nAnswer: no"),
    "free": ("Question: What gas do plants absorb from the air?",
             "Plants take in carbon dioxide for photosynthesis.\nAnswer: carbon dioxide"),
}


class RationaleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: Path = Field(..., description="Questions file.")
    format: Literal["csqa", "gsm8k", "strategyqa", "jsonl"] = Field("jsonl", description="Input format.")
    limit: int | None = Field(None, ge=1, description="Use at most this many questions.")
    demo: bool = Field(True, description="Show one worked example before each question.")
    sampling: Sampling = Sampling(n=4, temperature=0.7, top_p=0.95, max_tokens=256)


def render(q: dict[str, Any]) -> str:
    text = f"Question: {q['question']}"
    if q["choices"]:
        text += "\nChoices: " + " ".join(f"({chr(65 + k)}) {c}" for k, c in enumerate(q["choices"]))
    return f"{text}\n{INSTRUCTIONS[q['type']]}"


def normalise_answer(answer: str, q: dict[str, Any]) -> str:
    a = re.sub(r"^\.+(?!\d)|\.+$", "", answer.strip()).strip()  # ".5" keeps its point
    if q["type"] == "choice" and q["choices"]:
        # a letter only as "(B)", "B." / "B)" before text, or alone: "a house" is an article, not choice (A)
        m = re.fullmatch(r"\(([A-Ja-j])\).*|([A-Ja-j])(?:[.):]\s+.*)?", a, flags=re.DOTALL)
        letter = m and (m.group(1) or m.group(2)).upper()
        if letter and ord(letter) - 65 < len(q["choices"]):
            return q["choices"][ord(letter) - 65]
        low = a.lower()
        exact = [c for c in q["choices"] if c.lower() == low]
        # else the longest choice named as whole words: "grocery store" is not "store", "bobcat" not "cat"
        named = sorted((c for c in q["choices"] if re.search(rf"\b{re.escape(c.lower())}\b", low)), key=len)
        return (exact or named[-1:] or [a])[0]
    if q["type"] == "number":
        nums = NUMBER.findall(a)
        return nums[-1].replace(",", "").rstrip(".") if nums else a
    if q["type"] == "yesno":
        word = re.match(r"(yes|true|no|false)\b", a.lower())  # a whole word: "Not enough information" is no "no"
        return a if not word else "yes" if word.group(1) in ("yes", "true") else "no"
    return a


def is_correct(answer: str, gold: str | None, q: dict[str, Any]) -> bool | None:
    if gold is None:
        return None
    if q["type"] == "number":
        try:
            return abs(float(answer) - float(gold.replace(",", ""))) < 1e-6
        except ValueError:
            return False
    return answer.strip().lower() == normalise_answer(gold, q).strip().lower()


class Rationale(Recipe):
    name = "rationale"
    Config = RationaleConfig

    def check_inputs(self) -> None:
        read_questions(self.config.input, self.config.format)

    def requests(self, model: str, seed: int, store: Store | None = None) -> list[Request]:
        c = self.config
        questions = read_questions(c.input, c.format)[: c.limit]
        out = []
        for q in questions:
            messages: list[tuple[str, str]] = []
            if c.demo:
                ask, reply = DEMOS[q["type"]]
                messages += [("user", f"{ask}\n{INSTRUCTIONS[q['type']]}"), ("assistant", reply)]
            messages.append(("user", render(q)))
            sampling = c.sampling.model_copy(update={"seed": derive_seed(seed, q["question"])})
            out.append(Request(model=model, sampling=sampling, messages=tuple(messages),
                               meta={**q, "dataset": c.format}))
        return out

    def parse(self, request: Request, completion: Completion) -> list[dict[str, Any]]:
        q = request.meta
        matches = list(ANSWER.finditer(completion.text))
        if not matches:
            raise ParseError("no final 'Answer:' line")
        last = matches[-1]
        rationale = completion.text[: last.start()].strip()
        if len(rationale) < 10:
            raise ParseError("no reasoning before the answer")
        answer = normalise_answer(last.group(1), q)
        if not answer:
            raise ParseError("empty answer")
        return [{"kind": "rationale", "question": q["question"], "answer": answer, "rationale": rationale,
                 "choices": q["choices"], "domain": q["dataset"],
                 "extra": {"gold": q["gold"], "correct": is_correct(answer, q["gold"], q), "qid": q["qid"]}}]
