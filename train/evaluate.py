"""Evaluate a student or a teacher on held-out inputs: a snapshot split, a file of heads, ATOMIC-2020
references or a question set. Generation, critic scoring and answer checking come in as functions (the
caller owns the backends), so a teacher and a student are measured the same way and land in one table."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from corpus import snapshot_frame, snapshot_row
from store import MINILM, SkdError, Store, open_store
from store.head_parts import in_part, parse_part
from store.question_sets import question_type
from store.readers import iter_atomic2020

from .formats import extract_answer
from .textmetrics import corpus_bleu, degenerate, rouge_l


@dataclass
class Case:
    """One input: the item to complete (head + relation, or a question), its human references or gold."""
    item: dict[str, Any]
    references: list[str] = field(default_factory=list)


def cases_from_snapshot(store: Store, name: str, split: str, limit: int | None = None) -> list[Case]:
    """Triples grouped by (head, relation), every tail a reference; questions one case each."""
    df = snapshot_frame(store, name)
    rows = [r for r in df.to_dicts() if r["split"] == split]
    if not rows:
        raise SkdError(f"snapshot {name!r} has no items in split {split!r}")
    return group_triples(rows)[:limit] if limit else group_triples(rows)


def group_triples(rows: list[dict[str, Any]]) -> list[Case]:
    """One case per (head, relation) and one per question, in the order they first come."""
    cases: dict[tuple, Case] = {}
    asked: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["kind"] == "triple":
            key = ("t", r["head"], r["relation"])
            cases.setdefault(key, Case({"kind": "triple", "head": r["head"], "relation": r["relation"]}))
            cases[key].references.append(r["tail"])
        elif r["kind"] in ("qa", "rationale"):
            cases.setdefault(("q", input_key(r)), Case({}))
            asked.setdefault(input_key(r), []).append(r)
    for q, samples in asked.items():
        cases[("q", q)] = question_case(samples)
    return list(cases.values())


def question_case(samples: list[dict[str, Any]]) -> Case:
    """A question the snapshot holds one or more answers to (a teacher's samples), checked against the dataset's
    gold answer where the recipe kept it (`extra.gold`), else the answer most samples give, and the way its
    dataset is checked (GSM8K as numbers, StrategyQA as yes/no), not as free text."""
    extras = [json.loads(r["extra"]) if isinstance(r.get("extra"), str) else r.get("extra") or {} for r in samples]
    golds = [str(e["gold"]) for e in extras if isinstance(e, dict) and e.get("gold") is not None]
    gold = Counter(golds or [str(r["answer"]) for r in samples]).most_common(1)[0][0]
    first = samples[0]
    item = {"kind": first["kind"], "question": first["question"], "answer": gold, "choices": first.get("choices"),
            "type": first.get("type") or question_type(first.get("choices"), gold, first.get("domain"))}
    return Case(item, [gold])


def input_key(item: dict[str, Any]) -> str:
    """What makes two inputs the same input: the head of a triple or the question, case and spacing aside."""
    return " ".join(str(item.get("head") or item.get("question") or "").lower().split())


def training_inputs(store: Store, student: dict[str, Any]) -> set[str] | None:
    """The heads and questions a student trained on (its snapshot's training split), as `input_key`s; None when
    its snapshot is not in this store (a student folder brought from elsewhere)."""
    try:
        df = snapshot_frame(store, student["snapshot"])
    except (KeyError, SkdError):
        return None
    split = (student.get("config") or {}).get("split", "train")  # the card keeps the split in its config
    return {input_key(r) for r in df.to_dicts() if r["split"] == split}


def read_references(path: Path, heads: str | None = None) -> dict[tuple[str, str], list[str]]:
    """ATOMIC-2020 `head @@ relation<TAB>tail| tail` as {(head, relation): tails} ('none' tails dropped); with
    HEADS (`K/N`), those of that part of the heads only (store.head_parts)."""
    if heads:
        parse_part(heads)  # a bad part is one line before the file is read
    refs: dict[tuple[str, str], list[str]] = {}
    try:
        for _, row, err, _ in iter_atomic2020(Path(path)):
            if row is not None and not err:
                tails = [t for t in row["tails"] if t and t.lower() != "none"]
                if tails and (not heads or in_part(row, heads)):
                    refs.setdefault((row["head"], row["relation"]), []).extend(tails)
    except OSError as e:
        raise SkdError(f"cannot read references {path}: {e.strerror}") from None
    if not refs:
        raise SkdError(f"{path}: no ATOMIC-2020 references (`head @@ relation<TAB>tail| tail` lines)"
                       + (f" of heads {heads}" if heads else ""))
    return refs


def cases_from_heads(path: Path, relations: list[str], refs: dict[tuple[str, str], list[str]] | None = None
                     ) -> list[Case]:
    try:
        heads = [h.strip() for h in Path(path).read_text(encoding="utf-8").splitlines() if h.strip()]
    except OSError as e:
        raise SkdError(f"cannot read heads {path}: {e.strerror}") from None
    return [Case({"kind": "triple", "head": h, "relation": r}, list((refs or {}).get((h, r), [])))
            for h in heads for r in relations]


def cases_from_references(refs: dict[tuple[str, str], list[str]], relations: list[str] | None,
                          limit: int | None, seed: int = 0) -> list[Case]:
    keys = sorted(k for k in refs if not relations or k[1] in relations)
    rng = np.random.default_rng(seed)
    if limit and limit < len(keys):
        keys = [keys[i] for i in sorted(rng.choice(len(keys), limit, replace=False))]
    return [Case({"kind": "triple", "head": h, "relation": r}, refs[(h, r)]) for h, r in keys]


def cases_from_questions(questions: list[dict[str, Any]]) -> list[Case]:
    """Questions as read by the rationale recipe: {question, choices, gold, type}."""
    return [Case({"kind": "qa", "question": q["question"], "choices": q.get("choices"), "answer": q.get("gold"),
                  "type": q.get("type")}, [q["gold"]] if q.get("gold") else []) for q in questions]


def similarity(outputs: list[str], cases: list[Case], model: str) -> float | None:
    """Mean over inputs of the best cosine between the output and a reference (sentence embeddings)."""
    from corpus.embed import encode_texts, load_encoder

    pairs = [(o, c.references) for o, c in zip(outputs, cases, strict=True) if c.references]
    if not pairs:
        return None
    enc = load_encoder(model)
    refs = [r for _, rs in pairs for r in rs]
    ho, hr = encode_texts(enc, [o for o, _ in pairs]), encode_texts(enc, refs)
    best, k = [], 0
    for i, (_, rs) in enumerate(pairs):
        best.append(float((hr[k:k + len(rs)] @ ho[i]).max()))
        k += len(rs)
    return float(np.mean(best))


def critic_scores(cases: list[Case], outputs: list[str],
                  scorer: Callable[[list[dict[str, Any]]], np.ndarray]) -> list[float | None]:
    """The critic's score of each output completing its triple (None for an input that is not a triple), kept with
    the evaluation's samples so two models can be compared pair by pair."""
    at = [i for i, c in enumerate(cases) if c.item["kind"] == "triple"]
    got = np.asarray(scorer([cases[i].item | {"tail": outputs[i].strip()} for i in at]), dtype=np.float64) if at \
        else []
    out: list[float | None] = [None] * len(cases)
    for i, s in zip(at, got, strict=True):
        out[i] = float(s)
    return out


def score_outputs(cases: list[Case], outputs: list[str], *, embed_model: str | None = MINILM,
                  scores: list[float | None] | None = None, threshold: float | None = None,
                  checker: Callable[[str, dict[str, Any]], bool | None] | None = None) -> dict[str, Any]:
    """Every measure that applies to these inputs, each with the number of inputs it covers; `scores` are the
    critic's (`critic_scores`)."""
    m: dict[str, Any] = {"n": len(cases), "degenerate_rate": float(np.mean([degenerate(o) for o in outputs]))}
    triples = [(o, c) for o, c in zip(outputs, cases, strict=True) if c.item["kind"] == "triple"]
    with_refs = [(o, c) for o, c in triples if c.references]
    if with_refs:
        m["references"] = {"n": len(with_refs),
                           "bleu2": corpus_bleu([o for o, _ in with_refs], [c.references for _, c in with_refs]),
                           "rouge_l": float(np.mean([rouge_l(o, c.references) for o, c in with_refs]))}
        if embed_model:
            m["references"]["embedding_similarity"] = similarity([o for o, _ in with_refs],
                                                                 [c for _, c in with_refs], embed_model)
    questions = [(o, c) for o, c in zip(outputs, cases, strict=True) if c.item["kind"] != "triple"
                 and c.item.get("answer")]
    if questions:
        right = [checker(o, c.item) if checker else default_check(o, c.item) for o, c in questions]
        m["accuracy"] = {"n": len(questions), "exact_match": float(np.mean([bool(x) for x in right]))}
    judged = [x for x in scores or [] if x is not None]
    if judged:
        s = np.asarray(judged, dtype=np.float64)
        m["critic"] = {"n": len(s), "threshold": threshold, "mean_score": float(s.mean()),
                       "acceptance": float((s >= (threshold if threshold is not None else 0.5)).mean())}
    return m


def default_check(output: str, item: dict[str, Any]) -> bool:
    from .formats import normalise_answer

    got, gold = normalise_answer(extract_answer(output, item)), normalise_answer(str(item["answer"]))
    try:
        return abs(float(got) - float(gold)) < 1e-6
    except ValueError:
        return got == gold


def eval_key(model: str, config: dict[str, Any], student_id: str | None, snapshot: str | None,
             cases: list[Case]) -> str:
    """The id of an evaluation: a hash of the model, the settings and the inputs themselves, so a rerun (after
    a kill, or of the same pipeline) finds the stored result instead of adding a second row."""
    inputs = [[c.item, c.references] for c in cases]
    what = json.dumps([model, config, student_id, snapshot, inputs], sort_keys=True, default=str)
    return f"eval-{hashlib.sha256(what.encode()).hexdigest()[:12]}"


def stored_eval(store: Store, eval_id: str) -> dict[str, Any] | None:
    """A recorded evaluation with its outputs, as `evaluate_model` returns it; None when there is none."""
    row = store.evals.get(eval_id)
    if row is None:
        return None
    out = Path(row["config"].get("outputs", ""))
    samples = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    return {"eval_id": eval_id, "model": row["model"], "metrics": row["metrics"], "config": row["config"],
            "samples": samples, "reused": True}


def record_eval(db: Path, eval_id: str, model: str, metrics: dict[str, Any], config: dict[str, Any],
                student_id: str | None, snapshot: str | None, samples: list[dict[str, Any]]) -> str:
    """Store the result in `evals` (linked to the student and its snapshot) and the outputs beside the corpus;
    an evaluation already recorded under `eval_id` is kept as it is."""
    with open_store(db) as s:
        snapshot_id = snapshot_row(s, snapshot)["snapshot_id"] if snapshot else None
        if student_id and snapshot_id is None:
            snapshot_id = (s.students.get(student_id) or {}).get("snapshot_id")
        out = s.files_dir / "evals" / f"{eval_id}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(x, default=str) + "\n" for x in samples))
        s.evals.record(eval_id, model, student_id, snapshot_id, metrics, config | {"outputs": str(out)})
    return eval_id


def flat_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one evaluation, flat, for side-by-side tables."""
    out = {"n": metrics.get("n"), "degen.": metrics.get("degenerate_rate")}
    ref = metrics.get("references") or {}
    out |= {"BLEU-2": ref.get("bleu2"), "ROUGE-L": ref.get("rouge_l"), "emb.": ref.get("embedding_similarity")}
    out["EM"] = (metrics.get("accuracy") or {}).get("exact_match")
    out["critic"] = (metrics.get("critic") or {}).get("acceptance")
    return out


def paired_difference(a: Any, b: Any, resamples: int = 2000, seed: int = 0,
                      groups: Any = None) -> dict[str, float]:
    """mean(A) - mean(B), measured on the same inputs, with a paired bootstrap 95% interval (the inputs are
    resampled together, so what every model finds easy or hard cancels out). With GROUPS (one per input: its head
    or question), whole groups are resampled: a head's seven relations are not seven independent draws, and
    resampling them one by one made the interval too narrow. Without, each input is its own group."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or not x.size or (groups is not None and len(groups) != len(x)):
        raise ValueError("a paired difference needs the same, non-empty inputs on both sides")
    codes = np.arange(len(x)) if groups is None else np.unique(np.asarray(groups, dtype=object),
                                                               return_inverse=True)[1].ravel()
    k = int(codes.max()) + 1
    sums, counts = np.bincount(codes, weights=x - y, minlength=k), np.bincount(codes, minlength=k)
    pick = np.random.default_rng(seed).integers(0, k, (resamples, k))
    lo, hi = np.percentile(sums[pick].sum(1) / counts[pick].sum(1), [2.5, 97.5])
    return {"diff": float(x.mean() - y.mean()), "lo": float(lo), "hi": float(hi), "n": int(len(x)),
            **({"groups": k} if groups is not None else {})}


def accepted(ev: dict[str, Any]) -> tuple[list[Any], np.ndarray] | None:
    """A stored evaluation's inputs and whether its critic accepted each output; None when it kept no critic
    score for every output (no critic, or inputs that are not triples)."""
    critic = ev["metrics"].get("critic")
    scores = [x.get("critic_score") for x in ev["samples"]]
    if not critic or not scores or any(x is None for x in scores):
        return None
    threshold = critic["threshold"] if critic["threshold"] is not None else 0.5
    return [x["input"] for x in ev["samples"]], np.asarray(scores) >= threshold


def per_input(ev: dict[str, Any]) -> dict[str, np.ndarray]:
    """A stored evaluation's measures input by input (NaN where one does not apply): critic acceptance, when every
    output was scored (`accepted`), and ROUGE-L of a triple's output against its own references, as the
    evaluation's ROUGE-L counts it (a question's reference is its gold answer, not a text to overlap)."""
    out = {}
    if (acc := accepted(ev)) is not None:
        out["critic"] = acc[1].astype(np.float64)
    rouge = [rouge_l(x["output"], x["references"]) if x["input"].get("kind") == "triple" and x.get("references")
             else np.nan for x in ev["samples"]]
    if not np.isnan(rouge).all():
        out["ROUGE-L"] = np.asarray(rouge, dtype=np.float64)
    return out


def differences(store: Store, eval_id: str, base_id: str) -> dict[str, dict[str, float]]:
    """EVAL_ID minus BASE_ID for each measure both have (`per_input`), on the inputs it applies to, pair by pair
    with a paired bootstrap interval over heads or questions (`paired_difference`). Empty unless both asked the
    same inputs; critic acceptance only when both used the same critic at the same cut (another critic's
    acceptance is another scale)."""
    a, b = (stored_eval(store, i) for i in (eval_id, base_id))
    if a is None or b is None or not a["samples"] or [x["input"] for x in a["samples"]] != \
            [x["input"] for x in b["samples"]]:
        return {}
    ma, mb = per_input(a), per_input(b)
    same_critic = (a["config"].get("critic"), (a["metrics"].get("critic") or {}).get("threshold")) == \
        (b["config"].get("critic"), (b["metrics"].get("critic") or {}).get("threshold"))
    groups = np.asarray([input_key(x["input"]) for x in a["samples"]], dtype=object)  # by head or question
    out = {}
    for k in (k for k in ma if k in mb and (k != "critic" or same_critic)):
        both = ~(np.isnan(ma[k]) | np.isnan(mb[k]))
        if both.any():
            out[k] = paired_difference(ma[k][both], mb[k][both], groups=groups[both])
    return out


def compare(store: Store, eval_ids: list[str] | None = None, snapshot: str | None = None,
            base: str | None = None) -> list[dict[str, Any]]:
    """One row per evaluation; with BASE (an eval id), each row's differences from it on the same inputs
    (`differences`: critic acceptance and ROUGE-L, with intervals), None where they cannot be compared."""
    snapshot_id = snapshot_row(store, snapshot)["snapshot_id"] if snapshot and not eval_ids else None
    if base is not None and store.evals.get(base) is None:
        raise SkdError(f"no evaluation {base!r} to compare with (skd compare lists them)")
    rows = [{"eval_id": r["eval_id"], "model": r["model"], "inputs": r["config"].get("inputs", ""),
             **flat_metrics(r["metrics"])} for r in store.evals.select(eval_ids or None, snapshot_id)]
    for r in rows if base else []:
        d = differences(store, r["eval_id"], base) if r["eval_id"] != base else {}
        r |= {f"{k} vs base": d.get(k) for k in ("critic", "ROUGE-L")}
    return rows
