"""`skd run`: the stages of a pipeline in order. Each stage has a key: a hash of its config and the key of the
stage before it. A stage whose key has a finished record in `runs` is skipped, so a rerun after a crash goes
on where it stopped (stages resume inside too), and changing one stage's config reruns it and those after it.
Outputs with names (critic, snapshot, folders) are planned when a stage starts and kept in its record, so a
stage cut short by a kill reuses them on the rerun."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corpus import create_snapshot, dedup, embed_items, export_snapshot, push_snapshot, snapshot_row
from corpus.stats import distinct_n
from critics import train_critic
from critics.score import score_items
from generators import make_recipe, planned_requests, run_generation
from store import SkdError, Store, file_digest, import_labels, ingest_file, open_store
from train import fit
from train.eval_run import EvalConfig
from train.evaluate import compare, differences

from .cmd_critic import coverage_warnings
from .cmd_generate import progress_view
from .engines import mapper_for, task_map_for, teacher_for
from .output import progress_bar, run_with_progress
from .pipeline import EvalStage, Pipeline, step_name
from .wiring import evaluate, student_recipe

Say = Callable[[str], None]


def stage_keys(p: Pipeline) -> dict[str, str]:
    """Each step's key, chained through the steps before it. Round 1's keys are those of a pipeline without a
    loop, and a round's keys do not depend on how many rounds follow: adding rounds reruns nothing."""
    keys, prev = {}, ""
    for stage, round_ in p.steps():
        if stage == "generate" and round_ > 1:  # a round's generator is the last round's student, not its eval
            prev = keys[step_name("train", round_ - 1)]
        digest = input_digest(p, stage) if round_ == 1 or stage == "eval" else []  # every round's eval reads them
        parts = [stage, p.stage_config(stage), prev] + ([round_] if round_ > 1 else []) + ([digest] if digest else [])
        prev = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
        keys[step_name(stage, round_)] = prev
    return keys


def plan_name(store: Store, key: str, base: str, taken: Callable[[str], bool], prior: dict[str, Any] | None,
              field: str, fresh: bool = False) -> str:
    """The stage's output name: the one planned by an earlier try of this key, else BASE if free, else
    BASE-<key> (so a changed config never collides with the output of the old one). FRESH (a stage forced by
    --from or --only after it succeeded) takes a name nothing holds yet: reusing the old one redid nothing."""
    if prior and prior["config"].get("plan", {}).get(field) and not fresh:
        return prior["config"]["plan"][field]
    names = [base, f"{base}-{key[:6]}"] + ([f"{base}-{key[:6]}-{n}" for n in range(2, 1000)] if fresh else [])
    return next((n for n in names if not taken(n)), names[-1])


def input_digest(p: Pipeline, stage: str) -> list[Any]:
    """What a stage reads from files, beyond its config: the content of the files it ingests, the label files it
    trains on (the first present of `labels`, and each of `also_labels`), the references or questions it evaluates
    on, or that they are absent. An edited file, or a label file that appeared since, changes the stage's key, so
    it reruns."""
    if stage == "ingest":
        return [file_digest(f.file) for f in p.corpus.ingest]
    if stage == "critic" and p.critic and (p.critic.labels or p.critic.also_labels):
        first = next((f.file for f in p.critic.labels if Path(f.file).exists()), None)
        return [str(first), file_digest(first) if first else None, *(file_digest(f.file) for f in p.critic.also_labels)]
    if stage == "eval" and p.eval:
        return [file_digest(f) if f else None for f in (p.eval.references, p.eval.questions, p.eval.heads)]
    return []


def without_absent_references(e: EvalStage) -> tuple[dict[str, Any], str | None]:
    """What [eval] changes when its references file is absent (e.g. ../shared/data not there), and what to say:
    the inputs fall back to the heads file or question set, else to the snapshot's split."""
    if e.references is None or Path(e.references).is_file():
        return {}, None
    gone = f"eval.references {e.references} is absent"
    if e.questions:  # scored against their own gold answers; still split by reference_heads
        return {"references": None}, f"{gone}: evaluating on {e.questions}"
    if e.heads:  # still inputs to split by reference_heads, now without references to score against
        return {"references": None}, f"{gone}: evaluating on {e.heads} without its references"
    return {"references": None, "reference_heads": None}, f"{gone}: evaluating on the snapshot's {e.split} split"


@dataclass
class Made:
    """What stages make that later stages use, by name (each stage's full summary is a record in `runs`)."""
    critic: str | None = None
    snapshot: str | None = None
    student_id: str | None = None
    student_path: str | None = None

    # stage -> (field of Made, key of that stage's summary): how a skipped stage's product is found again
    FROM_SUMMARY = {"critic": [("critic", "critic")], "snapshot": [("snapshot", "snapshot")],
                    "train": [("student_id", "student_id"), ("student_path", "out")]}

    def restore(self, stage: str, summary: dict[str, Any]) -> None:
        for name, key in self.FROM_SUMMARY.get(stage, []):
            setattr(self, name, summary[key])


@dataclass(frozen=True)
class Step:
    """One stage of one round, as the runner runs it: its key in `runs` and the function that does it."""
    stage: str
    round: int
    key: str
    run: Callable[[dict[str, Any]], dict[str, Any]]  # plan in, summary out

    @property
    def name(self) -> str:
        return step_name(self.stage, self.round)


class Runner:
    def __init__(self, p: Pipeline, say: Say, quiet: bool = False):
        self.p, self.say, self.quiet = p, say, quiet
        self.db = p.corpus.path
        keys = stage_keys(p)
        functions = self.stage_functions()
        self.steps = [Step(stage, r, keys[step_name(stage, r)], functions[stage]) for stage, r in p.steps()]
        self.summaries: dict[str, dict[str, Any]] = {}  # by step: STAGE, or STAGE@ROUND for later rounds
        self.made = Made()
        self.round = 1

    def run(self, only: str | None = None, start: str | None = None) -> Made:
        names = [step.name for step in self.steps]
        for name in (only, start):
            if name and name not in names:
                raise SkdError(f"stage {name!r} is not in this pipeline (stages: {', '.join(names)})")
        self.db.parent.mkdir(parents=True, exist_ok=True)
        forced = set(names[names.index(start):]) if start else {only} if only else set()
        for k, step in enumerate(self.steps, 1):
            self.round = step.round
            with open_store(self.db) as s:
                prior = s.runs.pipeline_stage(step.key)
            if prior and prior["status"] == "ok" and step.name not in forced:
                self.summaries[step.name] = prior["summary"]
                self.made.restore(step.stage, prior["summary"])
                self.say(f"[{k}/{len(names)}] {step.name}: done before, skipped")
                continue
            if only and step.name != only:
                if names.index(step.name) > names.index(only):  # after the one asked for: left for a full run
                    self.say(f"[{k}/{len(names)}] {step.name}: not run (--only {only})")
                    continue
                raise SkdError(f"stage {step.name!r} has not run with this config; run without --only first")
            self.say(f"[{k}/{len(names)}] {step.name}")
            fresh = step.name in forced and bool(prior) and prior["status"] == "ok"
            self.summaries[step.name] = self.run_step(step, prior, fresh)
            self.made.restore(step.stage, self.summaries[step.name])
        return self.made

    def run_step(self, step: Step, prior: dict[str, Any] | None, fresh: bool = False) -> dict[str, Any]:
        with open_store(self.db) as s:
            plan = self.plan(s, step, prior, fresh)
            # the stage's own config and the engine: a key in `runs` can be traced back to the TOML that made it
            run_id = s.start_run("pipeline", {"stage": step.stage, "round": step.round, "key": step.key,
                                              "plan": plan, "config": self.p.stage_config(step.stage),
                                              "engine": self.p.engine.model_dump(mode="json")})
        try:
            summary = step.run(plan) | {"plan": plan}
        except BaseException as e:
            with open_store(self.db) as s:
                s.finish_run(run_id, "failed", error=f"{type(e).__name__}: {e}"[:500])
            raise
        with open_store(self.db) as s:
            s.finish_run(run_id, "ok", summary)
        return summary

    def plan(self, s: Store, step: Step, prior: dict[str, Any] | None, fresh: bool = False) -> dict[str, Any]:
        """The names of what the step makes, fixed before it starts (a later round's: NAME-rN)."""
        p, key, later = self.p, step.key, f"-r{step.round}" if step.round > 1 else ""
        if step.stage == "critic" and not p.critic.use:
            return {"critic": plan_name(s, key, p.critic.name, s.critics.exists, prior, "critic", fresh)}
        if step.stage == "critic":
            return {"critic": p.critic.use}
        if step.stage == "snapshot":
            return {"snapshot": plan_name(s, key, p.snapshot.name + later, s.snapshots.exists, prior, "snapshot",
                                          fresh)}
        if step.stage in ("export", "train"):
            base = str(p.export.out if step.stage == "export" else p.student.out) + later
            return {"out": plan_name(s, key, base, lambda n: Path(n).exists(), prior, "out", fresh)}
        return {}

    def stage_functions(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        """Each stage of STAGES and the function that runs it: the one place a stage's name meets its code."""
        return {"ingest": self.stage_ingest, "generate": self.stage_generate, "critic": self.stage_critic,
                "score": self.stage_score, "embed": self.stage_embed, "dedup": self.stage_dedup,
                "snapshot": self.stage_snapshot, "export": self.stage_export, "train": self.stage_train,
                "eval": self.stage_eval}

    # -- stages -----------------------------------------------------------------------------------
    def stage_ingest(self, plan: dict[str, Any]) -> dict[str, Any]:
        out = {}
        with open_store(self.db) as s:
            for f in self.p.corpus.ingest:
                r = ingest_file(s, f.file, f.format)
                out[str(f.file)] = {"accepted": r.accepted, "new_items": r.new_items, "rejected": r.rejected}
        return {"files": out}

    def stage_generate(self, plan: dict[str, Any]) -> dict[str, Any]:
        g = self.p.generate
        recipe = make_recipe(g.recipe, g.recipe_config, source="generate.recipe_config")
        recipe.check_inputs()
        backend, options = g.backend, g.teacher_options
        lineage: dict[str, Any] = {"round": self.round, "generator": "teacher"}
        if self.round == 1:
            teacher, mapper = teacher_for(self.p.engine, backend, g.teacher, options)
        else:  # self-imitation: the previous round's student, asked as it was trained
            with Store(self.db, read_only=True) as s:
                student = s.students.get(self.made.student_id)
            # the teacher's load options (a GGUF file, tensor parallelism) are not the student's
            backend = g.backend if g.backend in ("transformers", "vllm") else "transformers"
            options = {k: v for k, v in options.items() if k == "batch_size"} if backend == g.backend else {}
            teacher, mapper = teacher_for(self.p.engine, backend, student["path"], options)
            recipe = student_recipe(recipe, self.p.student.format, self.made.student_id)
            lineage |= {"generator": "student", "student_id": self.made.student_id,
                        "prompt_format": self.p.student.format}
        progress, update = progress_view(self.quiet)
        try:
            stats = run_with_progress(progress, lambda: run_generation(
                self.db, recipe, teacher, seed=g.seed, limit=g.limit, batch_size=g.batch_size,
                config={"backend": backend, "teacher_options": options, "pipeline": True} | lineage,
                on_batch=update, mapper=mapper))
        finally:
            teacher.close()
        diversity = self.generated_diversity(recipe, teacher.model)
        self.say(f"    {stats.completions:,} completions, {stats.parsed:,} parsed, {stats.new_items:,} new items, "
                 f"distinct-2 {diversity['distinct_2']:.3f}")
        return stats.as_dict() | lineage | {"distinct_n": diversity}

    def generated_diversity(self, recipe: Any, model: str) -> dict[str, Any]:
        """Distinct-2 of every tail the step's requests produced (in all tries of it, repeats counted): a
        collapse of the generator from round to round shows here."""
        g = self.p.generate
        with Store(self.db, read_only=True) as s:
            ids = [r.request_id for part in recipe.stages()
                   for r in planned_requests(part, model, g.seed, s, g.limit)]
            tails = s.items.outputs_of(ids)
        return distinct_n(tails, (2,)) | {"n": len(tails)}

    def stage_critic(self, plan: dict[str, Any]) -> dict[str, Any]:
        c = self.p.critic
        name = c.use or plan["critic"]
        with open_store(self.db) as s:
            if c.use and not s.critics.exists(c.use):
                raise SkdError(f"critic.use: no critic named {c.use!r} in {self.db}")
            if s.critics.exists(name):  # its figures from its record: the summary shows them as for a trained one
                row = s.critics.get(name)
                dev = (row["metrics"] or {}).get("dev") or {}
                return {"critic": name, "reused": True, "dev_auc": dev.get("auc"),
                        "dev_average_precision": dev.get("average_precision"), "thresholds": row["thresholds"]}
            source = next((f for f in c.labels if Path(f.file).is_file()), None)
            if source is None:
                raise SkdError(f"critic: none of the label files exist: {', '.join(str(f.file) for f in c.labels)}")
            files = [source, *(f for f in c.also_labels if Path(f.file).is_file())]
            absent = [str(f.file) for f in c.also_labels if not Path(f.file).is_file()]
            for f in absent:
                self.say(f"    critic: {f} is absent; training without it")
            # the pipeline declares each file as its source's content: it replaces an older version of it
            sources = {import_labels(s, f.file, f.format, replace=True, heads=f.heads).source: f.weight for f in files}
            files_dir = s.files_dir
        card = train_critic(self.db, name, c.training(sources), files_dir / "critics" / name)
        dev = card["metrics"]["dev"]
        read = " + ".join(sources)
        self.say(f"    critic {name} on {read}: dev AUC {dev['auc']:.3f}, thresholds {card['thresholds']}")
        return {"critic": name, "labels": str(source.file), "label_sources": list(sources), "dev_auc": dev["auc"],
                "dev_average_precision": dev["average_precision"], "thresholds": card["thresholds"]} | (
                    {"labels_absent": absent} if absent else {})

    def stage_score(self, plan: dict[str, Any]) -> dict[str, Any]:
        progress, update = progress_bar("score", "items", self.quiet)
        stats = run_with_progress(progress, lambda: score_items(
            self.db, self.made.critic, on_chunk=lambda st, n: update(st.scored, n), mapper=mapper_for(self.p.engine)))
        for line in coverage_warnings(stats):
            self.say(f"    {line}")
        return stats.as_dict()

    def stage_embed(self, plan: dict[str, Any]) -> dict[str, Any]:
        progress, update = progress_bar("embed", "items", self.quiet)
        return run_with_progress(progress, lambda: embed_items(
            self.db, self.p.dedup.model, on_chunk=lambda st, n: update(st.embedded, n),
            mapper=mapper_for(self.p.engine))).as_dict()

    def round_where(self, s: Store) -> str | None:
        """The snapshot's filter for this round: the items later rounds' students wrote are left out. They exist
        only when an earlier round runs again after a config change (in a first run the later rounds come
        after), and a round-1 snapshot must not hold what round 3's student wrote."""
        later = s.runs.later_rounds_filter(self.round)
        where = self.p.snapshot.where
        return where if later is None else f"({where or 'TRUE'}) AND {later}"

    def stage_dedup(self, plan: dict[str, Any]) -> dict[str, Any]:
        d = self.p.dedup
        critic = self.made.critic
        with open_store(self.db) as s:
            r = dedup(s, d.method, d.threshold, d.scope, critic, self.round_where(s), d.model,
                      partitions=d.partitions, max_visits=d.max_visits, map_fn=task_map_for(self.p.engine))
        self.say(f"    {r.items:,} items, {r.clusters:,} clusters, {r.removed:,} duplicates")
        return r.as_dict()

    def stage_snapshot(self, plan: dict[str, Any]) -> dict[str, Any]:
        name = plan["snapshot"]
        with open_store(self.db) as s:
            exists = s.snapshots.exists(name)
            recipe = self.p.snapshot_recipe(self.made.critic).model_copy(update={"where": self.round_where(s)})
            row = snapshot_row(s, name) if exists else create_snapshot(s, name, recipe)
        self.say(f"    snapshot {name}: {row['funnel']['snapshot']:,} items, hash {row['content_hash'][:12]}")
        return {"snapshot": name, "content_hash": row["content_hash"], "funnel": row["funnel"]}

    def stage_export(self, plan: dict[str, Any]) -> dict[str, Any]:
        e = self.p.export
        name = self.made.snapshot
        with Store(self.db, read_only=True) as s:
            r = export_snapshot(s, name, Path(plan["out"]), e.format) if not Path(plan["out"]).exists() else \
                {"out": plan["out"], "reused": True}
            if e.repo_id:
                r["push"] = push_snapshot(s, name, e.repo_id, private=e.private)
        return r

    def stage_train(self, plan: dict[str, Any]) -> dict[str, Any]:
        cfg = self.p.student_training(self.made.snapshot, Path(plan["out"]))
        progress, update = progress_bar("train", "steps", self.quiet, note="loss {task.fields[loss]}")
        card = run_with_progress(progress, lambda: fit(self.db, cfg, on_step=lambda k, n, loss: update(
            k, n, loss="-" if loss is None else f"{loss:.3f}")))
        sm = card["summary"]
        self.say(f"    student {card['student_id']}: {sm['steps']} steps, loss {sm['first_loss']:.3f} -> "
                 f"{sm['last_loss']:.3f}")
        return {"student_id": card["student_id"], "out": plan["out"], **sm}

    def stage_eval(self, plan: dict[str, Any]) -> dict[str, Any]:
        e, p, g = self.p.eval, self.p, self.p.generate
        fill, absent = without_absent_references(e)
        if absent:
            self.say(f"    {absent}")
        own = not ((e.references and "references" not in fill) or e.questions or e.heads)
        atomic = g is not None and g.recipe == "atomic10x"
        if own and e.snapshot is None:  # every round on round 1's split: later ones hold student-written tails
            fill["snapshot"] = self.summaries["snapshot"]["snapshot"]
        if atomic and not own and not e.relations:  # ask what the corpus was distilled for
            fill["relations"] = make_recipe(g.recipe, g.recipe_config).config.relations
        # accept at the critic's threshold for the snapshot's recall: one threshold for every relation, even where
        # the snapshot cut the same share of each (per_relation), so acceptance compares across rounds and models
        if e.use_critic and e.critic is None and self.made.critic:
            cut = e.critic_recall is None and e.critic_min_score is None  # unset: the snapshot's
            fill |= {"critic": self.made.critic,
                     "critic_recall": p.critic.threshold_at_recall if cut else e.critic_recall,
                     "critic_min_score": p.critic.min_score if cut else e.critic_min_score}
        cfg = EvalConfig(**e.model_dump(include=set(EvalConfig.model_fields)) | fill)
        ids = []
        if self.made.student_id:
            ids.append(evaluate(self.db, self.made.student_id, cfg)["eval_id"])
        if e.teacher and self.round == 1:  # the teacher does not change from round to round
            teacher, backend = (g.teacher, g.backend) if g else (p.student.base, "transformers")
            fmt = e.teacher_format or ("fewshot" if atomic else "chat")
            # loaded as it generated the corpus: its GPUs, context length or endpoint (teacher_options)
            ids.append(evaluate(self.db, teacher, cfg.model_copy(update={"format": fmt, "backend": backend}),
                                g.teacher_options if g else None, g.recipe_config if atomic else None)["eval_id"])
        asked = "snapshot split" if own else str(cfg.references or cfg.questions or cfg.heads)  # after a fallback
        return {"eval_ids": ids, "inputs": asked}

    def eval_ids(self, round_: int | None = None) -> list[str]:
        """The evaluations the eval steps made (of ROUND, or of every round), in the order they ran: round 1's
        include the teacher's."""
        return [i for step in self.steps if step.stage == "eval" and round_ in (None, step.round)
                for i in self.summaries.get(step.name, {}).get("eval_ids", [])]

    def round_rows(self) -> list[dict[str, Any]]:
        """One row per self-imitation round: what it generated, what the critic and dedup kept of the corpus so
        far, how varied its output was, and its student's evaluation, with its critic acceptance and ROUGE-L against
        round 1's on the same inputs (a paired bootstrap interval: is the round's gain more than the choice of
        inputs?)."""
        rows, first = [], None
        with Store(self.db, read_only=True) as s:
            for r in range(1, self.p.loop.rounds + 1):
                gen, snap = (self.summaries.get(step_name(stage, r), {}) for stage in ("generate", "snapshot"))
                funnel = snap.get("funnel", {})
                ids = self.eval_ids(r)
                student = next((e for e in compare(s, ids) if "(student)" in e["model"]), {}) if ids else {}
                if r == 1:
                    first = student.get("eval_id")
                gain = differences(s, student["eval_id"], first) if r > 1 and first and student else {}
                diversity = gen.get("distinct_n") or {}
                rows.append({"round": r, "generator": gen.get("generator"), "generated": diversity.get("n"),
                             "new_items": gen.get("new_items"), "distinct_2": diversity.get("distinct_2"),
                             "passed_critic": funnel.get("passed_critic"),
                             "after_dedup": funnel.get("representatives"), "snapshot": snap.get("snapshot"),
                             "snapshot_items": funnel.get("snapshot"),
                             **{f"eval {k}": student.get(k) for k in ("critic", "ROUGE-L", "BLEU-2", "n")},
                             "eval critic vs round 1": gain.get("critic"),
                             "eval ROUGE-L vs round 1": gain.get("ROUGE-L")})
        return rows
