"""How a snapshot item becomes a training example and an evaluation prompt, per student format:

- `comet`: "{head} {relation} [GEN]" -> " {tail}" (COMET / the SKD student), loss on the tail only;
- `chat`: the base model's chat template, a user instruction and the assistant's answer;
- `rationale`: question (+ choices) -> reasoning and the final answer.

Examples are prompt-completion rows (TRL's convention); `tokenized` masks the prompt out of the loss.
"""

from __future__ import annotations

import re
from typing import Any

FORMATS = ("comet", "chat", "rationale")
GEN = "[GEN]"
ANSWER_PREFIX = "So the answer is"


def _choices(item: dict[str, Any]) -> str:
    choices = item.get("choices") or []
    return "\n".join(f"({chr(65 + k)}) {c}" for k, c in enumerate(choices))


def question_text(item: dict[str, Any]) -> str:
    choices = _choices(item)
    return f"{item['question']}\n{choices}" if choices else str(item["question"])


def triple_instruction(item: dict[str, Any]) -> str:
    return f"Event: {item['head']}\nRelation: {item['relation']}\nWrite one short inference for this relation."


def prompt_of(item: dict[str, Any], fmt: str) -> str | list[dict[str, str]]:
    """The input side: a raw prompt (comet, rationale) or chat messages (chat)."""
    kind = item["kind"]
    if kind == "triple":
        if fmt == "chat":
            return [{"role": "user", "content": triple_instruction(item)}]
        return f"{item['head']} {item['relation']} {GEN}"
    if kind in ("qa", "rationale"):
        if fmt == "chat":
            return [{"role": "user", "content": question_text(item)}]
        return f"Question: {question_text(item)}\nAnswer:"
    raise ValueError(f"items of kind {kind!r} have no {fmt} prompt")


def target_of(item: dict[str, Any], fmt: str) -> str:
    """The output side the student learns to write."""
    if item["kind"] == "triple":
        return str(item["tail"])
    answer = str(item.get("answer") or "")
    if item.get("rationale") and fmt in ("rationale", "chat"):
        return f"{item['rationale']} {ANSWER_PREFIX} {answer}."
    return answer


def example(item: dict[str, Any], fmt: str) -> dict[str, Any]:
    """A TRL prompt-completion row (conversational for chat)."""
    prompt, target = prompt_of(item, fmt), target_of(item, fmt)
    if fmt == "chat":
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": target}]}
    return {"prompt": prompt, "completion": " " + target}


# a number may start at its point (".5"); a sentence ends at a period that does not close an abbreviation
# or an initial ("St. Louis", "U.S.", "B. because" keep going)
NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")
SENTENCE_END = re.compile(r"(?<!\b[A-Z][a-z])(?<!\b[A-Za-z])\.(?:\s|$)")
LETTER = re.compile(r"\(?([A-Ja-j])\)?(?:[.):]\s|[.)]?$)")
# "the answer is X" / "Answer: X", not "to answer this" or "answered"
ANSWER_LINE = re.compile(r"\banswer(?:\s+is\b\s*[:：]?|\s*[:：])\s*([^\n]+)", flags=re.IGNORECASE)
MARKUP = re.compile(r"[*_`]+")  # chat models bold their answers: "**B**", "**Answer:** yes"


def extract_answer(text: str, item: dict[str, Any]) -> str:
    """The final answer in a generated output: the rest of the line after the last 'the answer is' or
    'Answer:', else the first line; a choice letter becomes the choice's text; for numeric gold answers, the
    last number of the answer's first sentence (of the whole output when it names no answer); else the
    first sentence."""
    found = ANSWER_LINE.findall(MARKUP.sub("", text))
    lines = [x for x in text.splitlines() if x.strip()]
    line = MARKUP.sub("", found[-1] if found else lines[0] if lines else "").strip()
    gold = str(item.get("answer") or "")
    if NUMBER.fullmatch(gold.replace(",", "")):
        where = SENTENCE_END.split(line, maxsplit=1)[0] if found else text
        nums = NUMBER.findall(where) or NUMBER.findall(text)
        return nums[-1].replace(",", "") if nums else line
    choices = item.get("choices") or []
    letter = LETTER.match(line)
    if letter and choices and ord(letter.group(1).upper()) - 65 < len(choices):
        return str(choices[ord(letter.group(1).upper()) - 65])
    return SENTENCE_END.split(line, maxsplit=1)[0].strip()


def normalise_answer(text: str) -> str:
    text = re.sub(r"[^\w\s.-]", " ", text.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split()).rstrip(".")


def encode(row: dict[str, Any], tok: Any, max_length: int, whole: bool = False) -> dict[str, list[int]] | None:
    """Token ids with labels on the completion only (-100 on the prompt); chat rows through the template. Cut at
    MAX_LENGTH; with WHOLE, None for an example that does not fit (a cut rationale loses its answer and its EOS,
    and the student learns reasoning that never concludes)."""
    if isinstance(row["prompt"], list):
        prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        if full.startswith(prompt):  # the template's own end of turn is in the completion
            c = tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
        else:  # a template that renders the prompt otherwise in the whole (a date, a thinking block): the reply
            # and EOS, or the student never learns to stop and fills max_tokens at evaluation
            c = tok(row["completion"][0]["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    else:
        p = tok(row["prompt"])["input_ids"]
        c = tok(row["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    if whole and len(p) + len(c) > max_length:
        return None
    ids = (p + c)[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ([-100] * len(p) + c)[:max_length]}
