"""One evaluation, end to end: its config (`EvalConfig`, the one definition behind `skd eval`'s options and the
pipeline's [eval] table), the inputs it names, generation by the model under test, the metrics, the record.

The backends are the caller's: the model generates through a `Generate` callable, a critic scores through a
`ScorerFor` callable and answers are checked by a `Checker`, so train/ never loads a teacher or a critic
itself and a teacher and a student are measured the same way."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from store import MINILM, SkdError, Store
from store.head_parts import in_part, normal_part
from store.question_sets import read_questions

from .evaluate import (
    Case,
    cases_from_heads,
    cases_from_questions,
    cases_from_references,
    cases_from_snapshot,
    critic_scores,
    eval_key,
    input_key,
    read_references,
    record_eval,
    score_outputs,
    stored_eval,
    training_inputs,
)
from .formats import FORMATS

# (model path or id, the inputs to complete, prompt format, settings) -> one output per input. The caller owns
# prompting for the "fewshot" format (the teacher's own generation prompt); train.formats.prompt_of the others.
Generate = Callable[[str, list[dict[str, Any]], str, "EvalConfig"], list[str]]
# (a registered critic's row, the recall to cut at or None for the critics' default, or a raw score to cut at)
# -> (score items, threshold)
ScorerFor = Callable[[dict[str, Any], float | None, float | None],
                     tuple[Callable[[list[dict[str, Any]]], np.ndarray], float]]
Checker = Callable[[str, dict[str, Any]], bool | None]


class EvalConfig(BaseModel):
    """What to evaluate on and how to generate; every field is an `skd eval` option and an [eval] key."""

    model_config = ConfigDict(extra="forbid")
    snapshot: str | None = Field(None, description="Evaluate on this snapshot's --split.")
    split: str = Field("test", description="The snapshot split to evaluate on.")
    heads: Path | None = Field(None, description="A file of heads, one per line (with --relations).")
    references: Path | None = Field(None, description="ATOMIC-2020 file: human references (and the inputs).")
    reference_heads: str | None = Field(
        None, description="Only the heads (or questions) of part K/N of --references, --heads or --questions, split "
                          "by a hash of each: e.g. 2/2 when a critic trained on the same file's 1/2 (`skd labels "
                          "import --heads 1/2`).")
    questions: Path | None = Field(None, description="A question set (CommonsenseQA, GSM8K, StrategyQA, JSONL).")
    questions_format: Literal["csqa", "gsm8k", "strategyqa", "jsonl"] = Field("jsonl",
                                                                             description="The question set's format.")
    offset: int = Field(0, ge=0, description="Skip this many questions first (those the teacher was asked).")
    unseen_only: bool = Field(False, description="Drop inputs whose head or question the student trained on.")
    relations: list[str] = Field(default_factory=list, description="Relations to ask (repeatable; default: all).")
    critic: str | None = Field(None, description="Report this critic's acceptance rate of the outputs.")
    critic_recall: float | None = Field(None, gt=0, le=1, description="Accept at the critic's dev threshold for "
                                                                      "this recall (default: the critics' cut).")
    critic_min_score: float | None = Field(None, ge=0, le=1, description="... or at this critic score.")
    format: Literal["comet", "chat", "rationale", "fewshot"] | None = Field(
        None, description="Prompt format (default: the student's; chat for a teacher). fewshot: the prompt the "
                          "teacher generated with.")
    backend: Literal["transformers", "vllm", "openai", "openai-batch"] = Field("transformers",
                                                                              description="Generation backend.")
    limit: int = Field(200, ge=0, description="At most this many inputs (a seeded draw of references; 0: all).")
    max_tokens: int = Field(24, gt=0, description="Tokens per output.")
    temperature: float = Field(0.0, ge=0, description="0 is greedy.")
    seed: int = 0
    embed_model: str = Field(MINILM, description="Encoder for the embedding similarity to the references.")

    @field_validator("reference_heads")
    @classmethod
    def _a_part(cls, v: str | None) -> str | None:
        return None if v is None else normal_part(v)

    @model_validator(mode="after")
    def _parts_of_heads(self) -> EvalConfig:
        if self.reference_heads and not (self.references or self.heads or self.questions):  # it would split nothing
            raise ValueError("reference_heads splits the heads of --references or --heads, or the --questions; give "
                             "one of them")
        return self


DEFAULT_RELATIONS = ("xAttr", "xEffect", "xIntent", "xNeed", "xReact", "xWant", "HinderedBy")  # ATOMIC-10x's


def find_student(store: Store, name: str) -> dict[str, Any] | None:
    """A registered student by id or folder; None when NAME is a teacher model."""
    card_file = Path(name) / "student.json"
    if card_file.is_file():
        return json.loads(card_file.read_text()) | {"path": name}
    row = store.students.get(name)
    return row["config"] | {"path": row["path"]} if row else None


def in_part_cases(cases: list[Case], part: str | None) -> list[Case]:
    """The cases whose head (or question) is in PART (every case without one)."""
    return [c for c in cases if in_part(c.item, part)] if part else cases


def eval_cases(store: Store, cfg: EvalConfig) -> tuple[list[Case], str]:
    """The inputs the config names, and a short description of where they came from."""
    refs = read_references(cfg.references, cfg.reference_heads) if cfg.references else None
    limit, relations = cfg.limit or None, cfg.relations or None
    part = f" (heads {cfg.reference_heads})" if cfg.reference_heads else ""  # recorded with the inputs
    if cfg.questions:  # the offset counts in the whole set (the teacher was asked its first questions); then the part
        cases = in_part_cases(cases_from_questions(read_questions(cfg.questions, cfg.questions_format))[cfg.offset:],
                              cfg.reference_heads)
        return cases[:limit] if limit else cases, f"{cfg.questions} ({cfg.questions_format}, from {cfg.offset}){part}"
    if cfg.heads:
        cases = in_part_cases(cases_from_heads(cfg.heads, relations or list(DEFAULT_RELATIONS), refs),
                              cfg.reference_heads)
        return cases[:limit] if limit else cases, f"{cfg.heads}{part}"
    if refs:
        return cases_from_references(refs, relations, limit, cfg.seed), f"{cfg.references}{part}"
    if cfg.snapshot:
        return cases_from_snapshot(store, cfg.snapshot, cfg.split, limit), f"snapshot {cfg.snapshot}:{cfg.split}"
    raise SkdError("give the inputs: --snapshot NAME [--split test], --heads FILE, --references FILE or --questions")


def unseen_cases(store: Store, student: dict[str, Any] | None, cases: list[Case], unseen_only: bool
                 ) -> tuple[list[Case], int | None]:
    """The cases to evaluate on and how many of them the student trained on (None when that is unknown: a
    teacher, or a student whose snapshot is not in this store). A head in the training split flatters a student
    on --heads or --references inputs; --unseen-only drops those."""
    seen = training_inputs(store, student) if student else None
    if seen is None:
        if unseen_only:
            raise SkdError("--unseen-only needs a student whose snapshot is in this store")
        return cases, None
    if unseen_only:
        cases = [c for c in cases if input_key(c.item) not in seen]
        if not cases:
            raise SkdError("every input is a head or question the student trained on")
    return cases, sum(input_key(c.item) in seen for c in cases)


def evaluate_model(db_path: Path, model: str, cfg: EvalConfig, *, generate: Generate, scorer_for: ScorerFor,
                   checker: Checker | None = None, prompt_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a student or a teacher and record the result; returns eval_id, model, metrics, config, samples.
    An evaluation recorded before (same model, inputs and settings) is returned as it is, not repeated.
    PROMPT_CONFIG is what else shapes the prompts (the recipe config of a few-shot prompt): recorded and keyed."""
    with Store(db_path, read_only=True) as s:
        student = find_student(s, model)
        cases, source = eval_cases(s, cfg)
        cases, seen = unseen_cases(s, student, cases, cfg.unseen_only)
        critic_row = s.critics.get(cfg.critic) if cfg.critic else None
        fmt = cfg.format or (student["format"] if student else "chat")
        if fmt not in (*FORMATS, "fewshot"):
            raise SkdError(f"--format must be one of {', '.join(FORMATS)}, fewshot")
        if fmt == "fewshot" and student:
            raise SkdError("--format fewshot is the teacher's generation prompt; a student answers in its own format")
        config = cfg.model_dump(mode="json", exclude={"snapshot", "split", "heads", "references", "reference_heads",
                                                      "questions", "offset"}) | {"inputs": source, "format": fmt}
        if prompt_config:
            config["prompt_config"] = prompt_config
        label = f"{student['student_id']} (student)" if student else f"{model} (teacher)"
        student_id = (student or {}).get("student_id")
        snapshot = cfg.snapshot or (student or {}).get("snapshot")
        eval_id = eval_key(label, config | {"critic_id": critic_row and critic_row["critic_id"]}, student_id,
                           snapshot, cases)
        done = stored_eval(s, eval_id)
    if done:
        return done
    scorer, threshold = scorer_for(critic_row, cfg.critic_recall, cfg.critic_min_score) if critic_row else (None,
                                                                                                          None)
    outputs = generate(student["path"] if student else model, [c.item for c in cases], fmt, cfg)
    scores = critic_scores(cases, outputs, scorer) if scorer else [None] * len(cases)
    metrics = score_outputs(cases, outputs, embed_model=cfg.embed_model, scores=scores, threshold=threshold,
                            checker=checker)
    metrics["seen_in_training"] = seen
    samples = [{"input": c.item, "references": c.references, "output": o}
               | ({"critic_score": score} if score is not None else {})
               for c, o, score in zip(cases, outputs, scores, strict=True)]
    record_eval(db_path, eval_id, label, metrics, config, student_id, snapshot, samples)
    return {"eval_id": eval_id, "model": label, "metrics": metrics, "config": config, "samples": samples}
