"""The application connects components that may not import each other: a teacher backend (generators) and a
critic (critics) become the callables train/ evaluates with. No measuring happens here."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from store import SIBLINGS, TEACHER_NLL, SkdError
from train.eval_run import EvalConfig, evaluate_model


def critic_scorer(row: dict[str, Any], recall: float | None, min_score: float | None = None) -> tuple[Any, float]:
    """Score items with the registered critic `row`; accept at its cut (the critics' default recall). As the critic
    scored its dev labels when its thresholds were chosen (a likelihood critic the tail given head and relation, a
    stack its support too), but never by the teacher's NLL or siblings even for a critic that reads them: a
    student's outputs and its teacher's are compared here, and only the teacher's would have them."""
    from critics import load_critic, score_rows, threshold_of

    critic = load_critic(row["path"], row.get("critic_id"))

    def score(items: list[dict[str, Any]]) -> np.ndarray:
        return np.asarray(score_rows(critic, [{k: v for k, v in i.items() if k not in (TEACHER_NLL, SIBLINGS)}
                                              for i in items]))

    return score, threshold_of(row, recall, min_score)


def check_answer(output: str, item: dict[str, Any]) -> bool | None:
    """Answer checking shared with the rationale recipe (choices, numbers, yes/no)."""
    from generators.recipes.rationale import is_correct, normalise_answer
    from store.question_sets import question_type
    from train.formats import extract_answer

    choices = item.get("choices")
    q = {"choices": choices, "type": item.get("type") or question_type(choices, item.get("answer"))}
    return is_correct(normalise_answer(extract_answer(output, item), q), item.get("answer"), q)


def fewshot_requests(model: str, items: list[dict[str, Any]], cfg: EvalConfig, sampling: Any,
                     recipe_config: dict[str, Any] | None = None):
    """The ATOMIC-10x recipe's own few-shot prompts for (head, relation) inputs, and the recipe to parse with:
    a teacher is measured with the prompt it generated the corpus with (RECIPE_CONFIG, the pipeline's: its number
    of examples), not a zero-shot instruction."""
    from generators import make_recipe
    from generators.recipes.atomic10x import RELATIONS

    unknown = sorted({i.get("relation") for i in items if i.get("relation") not in RELATIONS}, key=str)
    if unknown:
        raise SkdError(f"--format fewshot: the atomic10x recipe has no prompt for relation {unknown[0]!r} "
                       f"(it has {', '.join(RELATIONS)})")
    config = (recipe_config or {}) | {"stage": "inferences", "events_from": "seeds"}
    recipe = make_recipe("atomic10x", config, source="fewshot")
    reqs = [recipe.inference_request(model, i["head"], i["relation"], cfg.seed) for i in items]
    return [dataclasses.replace(r, sampling=sampling) for r in reqs], recipe


def student_recipe(recipe: Any, fmt: str, student_id: str) -> Any:
    """RECIPE's inference requests in a student's training format (its (head, relation) prompt for comet), parsed
    as the recipe parses: how the student of one self-imitation round writes the next round's corpus. The
    requests are keyed by the student's id, not its folder: a student retrained into the same folder is
    asked again."""
    from generators.recipes.base import Recipe
    from train.formats import prompt_of

    part = next(r for r in recipe.stages() if r.config.stage == "inferences")  # a student writes no events

    class StudentPrompts(Recipe):
        name = recipe.name

        def requests(self, model: str, seed: int, store: Any = None) -> list[Any]:
            return [dataclasses.replace(
                r, prompt=prompt_of({"kind": "triple", "head": r.meta["head"], "relation": r.meta["relation"]}, fmt),
                meta=r.meta | {"x": "PersonX", "y": "PersonY"})  # the prompt names nobody: nothing to map back
                for r in part.requests(student_id, seed, store)]

        def parse(self, request: Any, completion: Any) -> list[dict[str, Any]]:
            return part.parse(request, completion)

    return StudentPrompts(part.config)


def stop_of(items: list[dict[str, Any]], fmt: str) -> tuple[str, ...]:
    """One line for a tail; a question may be answered after reasoning over lines in any format (a chat student's
    rationale, a teacher asked a question set, end "So the answer is X." after them), so no stop: the answer is
    read from the output (`extract_answer`: after "the answer is", else its first line)."""
    return () if fmt == "rationale" or any(i.get("kind") in ("qa", "rationale") for i in items) else ("\n",)


def generate(model: str, items: list[dict[str, Any]], fmt: str, cfg: EvalConfig,
             options: dict[str, Any] | None = None, recipe_config: dict[str, Any] | None = None) -> list[str]:
    """One output per input from MODEL on the config's backend (greedy at temperature 0), loaded with the
    backend's OPTIONS (the pipeline's teacher_options for its teacher: its GPUs, context length, endpoint)."""
    from generators import Request, Sampling, make_teacher
    from generators.recipes.base import ParseError
    from train.formats import prompt_of

    sampling = Sampling(n=1, temperature=cfg.temperature, max_tokens=cfg.max_tokens, stop=stop_of(items, fmt),
                        seed=cfg.seed)
    recipe = None
    if fmt == "fewshot":
        reqs, recipe = fewshot_requests(model, items, cfg, sampling, recipe_config)
    else:
        reqs = []
        for item in items:
            p = prompt_of(item, fmt)
            reqs.append(Request(model=model, sampling=sampling, prompt=p) if isinstance(p, str) else
                        Request(model=model, sampling=sampling, messages=tuple((m["role"], m["content"]) for m in p)))
    teacher = make_teacher(cfg.backend, model, **(options or {}))
    try:
        completions = teacher.generate(reqs)
    finally:
        teacher.close()
    outputs = []
    for req, c in zip(reqs, completions, strict=True):
        text = c[0].text.strip() if c else ""
        if recipe is not None and c:
            try:  # the recipe's parse maps the prompt's names back to PersonX/PersonY
                text = recipe.parse(req, c[0])[0]["tail"]
            except ParseError:
                pass  # measured as the model wrote it (degenerate outputs count as such)
        outputs.append(text)
    return outputs


def evaluate(db_path: Path, model: str, cfg: EvalConfig, teacher_options: dict[str, Any] | None = None,
             recipe_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """`skd eval` and the pipeline's eval stage: the model generates on its backend (loaded with TEACHER_OPTIONS;
    a few-shot prompt from RECIPE_CONFIG), the critic scores."""
    def run(model: str, items: list[dict[str, Any]], fmt: str, cfg: EvalConfig) -> list[str]:
        return generate(model, items, fmt, cfg, teacher_options, recipe_config)

    fewshot = recipe_config if (cfg.format == "fewshot" and recipe_config) else None
    return evaluate_model(db_path, model, cfg, generate=run, scorer_for=critic_scorer, checker=check_answer,
                          prompt_config=fewshot)
