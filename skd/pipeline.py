"""The pipeline config (`skd run PIPELINE.toml`): one pydantic model per stage, each a component's own config
(extended with what the pipeline fills in). Paths are relative to the directory `skd run` is started in. A
stage table that is absent is skipped (except corpus and snapshot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from corpus import DedupConfig, SliceSpec, SnapshotRecipe
from critics.config import CriticConfig
from critics.cut import DEFAULT_RECALL, CriticCut
from generators.config import GenerateConfig
from store.head_parts import normal_part
from train import StudentOptions, TrainConfig
from train.eval_run import EvalConfig

from .engines import EngineConfig

STAGES = ("ingest", "generate", "critic", "score", "embed", "dedup", "snapshot", "export", "train", "eval")
# what every self-imitation round after the first runs again (the critic, ingest and export are the first's)
LOOP_STAGES = ("generate", "score", "embed", "dedup", "snapshot", "train", "eval")


def step_name(stage: str, round_: int) -> str:
    """A step of the run: round 1's stages by their names (as without a loop), later ones as STAGE@ROUND."""
    return stage if round_ == 1 else f"{stage}@{round_}"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# an HTTP teacher's pacing and patience: they change how fast it is asked, not what it answers
PACING = {"rpm", "tpm", "concurrency", "timeout", "max_retries", "backoff", "max_backoff", "poll_interval",
          "max_poll_interval"}


class SourceFile(Strict):
    file: Path
    format: str = "jsonl"


class LabelFile(SourceFile):
    heads: str | None = Field(None, description="Only part K/N of its heads (store.head_parts), e.g. 1/2 of a "
                                                 "file of human tuples whose 2/2 the evaluation reads "
                                                 "(eval.reference_heads).")
    weight: float = Field(1.0, ge=0, allow_inf_nan=False, description="Loss weight of its labels beside the others'.")

    @field_validator("heads")
    @classmethod
    def _a_part(cls, v: str | None) -> str | None:
        return None if v is None else normal_part(v)

    def source(self) -> str:
        """The label source its import makes (store.import_labels' default name)."""
        from store.labels import default_source  # pyarrow: not at config load

        return default_source(self.format, self.file, self.heads)


class CorpusStage(Strict):
    path: Path = Field(Path("skd.duckdb"), description="The corpus database file.")
    ingest: list[SourceFile] = Field(default_factory=list, description="Files to ingest first (seeds, references).")


class GenerateStage(GenerateConfig):
    """generators.GenerateConfig, plus the recipe and the backend's load-time options."""

    recipe: str = Field(description="A generator recipe: atomic10x, rationale, template, generics, comparatives.")

    @field_validator("recipe")
    @classmethod
    def known_recipe(cls, v: str) -> str:
        from generators import RECIPES

        if v not in RECIPES:
            raise ValueError(f"unknown recipe {v!r} (expected one of {', '.join(RECIPES)})")
        return v
    recipe_config: dict[str, Any] = Field(default_factory=dict, description="The recipe's config (as its TOML).")
    teacher_options: dict[str, Any] = Field(default_factory=dict, description="Backend load-time options.")


class CriticStage(CriticConfig, CriticCut):
    """The critic to train (critics.CriticConfig) and the cut the snapshot makes with it (critics.CriticCut)."""

    name: str = Field("critic", description="Name of the critic to train.")
    use: str | None = Field(None, description="Use this critic of the corpus instead of training one.")
    labels: list[LabelFile] = Field(default_factory=list,
                                    description="Label files, first present one wins (e.g. CKBP, then shipped).")
    also_labels: list[LabelFile] = Field(
        default_factory=list, description="Label files trained on beside it, each that is present (e.g. human tuples, "
                                          "each with a tail swap as its negative, of heads the evaluation leaves out).")

    @model_validator(mode="after")
    def _cut_has_a_threshold(self) -> CriticStage:
        """The snapshot's cut must be one of the recalls the critic chooses thresholds for."""
        recall = DEFAULT_RECALL if self.threshold_at_recall is None else self.threshold_at_recall
        if self.use is None and self.min_score is None and recall not in self.recalls:
            raise ValueError(f"threshold_at_recall {recall:g} must be one of the recalls the critic gets "
                             f"thresholds for: {', '.join(f'{r:g}' for r in self.recalls)}")
        return self

    @model_validator(mode="after")
    def _sources_apart(self) -> CriticStage:
        """Each file of also_labels is a source of its own: two with one name would replace each other's labels."""
        if self.also_labels and self.use is not None:
            raise ValueError("also_labels trains a critic; with use (an existing one) it would be ignored")
        if self.also_labels and not self.labels:
            raise ValueError("also_labels trains beside labels: give labels too")
        names = [f.source() for f in self.also_labels]
        clash = next((n for n in names if names.count(n) > 1 or n in {f.source() for f in self.labels}), None)
        if clash:
            raise ValueError(f"two label files would both be the source {clash!r}: give them different file names")
        return self

    def training(self, sources: dict[str, float]) -> CriticConfig:
        """The training config: this table's CriticConfig fields, on the sources it names and those imported
        (SOURCES: name -> the weight its file was given; the source_weights named in the table come first)."""
        named = self.model_dump(include=set(CriticConfig.model_fields))
        weights = {s: w for s, w in sources.items() if w != 1.0} | named["source_weights"]
        return CriticConfig(**named | {"sources": sorted(set(self.sources) | set(sources)), "source_weights": weights})


class SnapshotStage(SliceSpec):
    """corpus.SliceSpec and the snapshot's name; the cut and the dedup setting come from [critic] and [dedup]."""

    name: str = Field(..., description="Name of the snapshot.")


class ExportStage(Strict):
    format: Literal["hf", "parquet", "jsonl"] = "hf"
    out: Path
    repo_id: str | None = Field(None, description="Push to this Hub dataset repo after export.")
    private: bool = False


class EvalStage(EvalConfig):
    """train.EvalConfig, plus what the pipeline fills in: by default the inputs are the snapshot's split and the
    critic is the pipeline's (cut where the snapshot cut)."""

    teacher: bool = Field(True, description="Evaluate the teacher on the same inputs.")
    teacher_format: Literal["comet", "chat", "rationale", "fewshot"] | None = Field(
        None, description="The teacher's prompt: default fewshot (the prompt it generated with) for atomic10x, "
                          "else chat.")
    use_critic: bool = Field(True, description="Report the pipeline critic's acceptance of the outputs.")


class LoopStage(Strict):
    """Self-imitation after I2D2: round 1 generates with the teacher; each later round generates with the
    previous round's student (prompted in its own training format), through the same critic and dedup (over
    everything earlier rounds made), then cuts its own snapshot of the accepted corpus so far and trains its
    student on it."""

    rounds: int = Field(1, ge=1, description="Rounds of generate, filter, snapshot and train.")


class Pipeline(Strict):
    corpus: CorpusStage = Field(default_factory=CorpusStage)
    generate: GenerateStage | None = None
    critic: CriticStage | None = None
    dedup: DedupConfig | None = None
    snapshot: SnapshotStage
    export: ExportStage | None = None
    student: StudentOptions | None = None
    eval: EvalStage | None = None
    loop: LoopStage = Field(default_factory=LoopStage)
    engine: EngineConfig = Field(default_factory=EngineConfig)  # where generation, scoring, embedding and dedup run

    @model_validator(mode="after")
    def _check_across_stages(self) -> Pipeline:
        """What would fail at a later stage fails when the config loads, before any stage runs."""
        try:
            self.snapshot_recipe(self.critic.name if self.critic else None)
        except ValidationError as e:
            err = e.errors()[0]
            raise ValueError(f"snapshot.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        if self.generate:
            from generators import make_recipe
            from generators.backends import check_teacher_options

            check_teacher_options(self.generate.backend, self.generate.teacher_options, "generate.teacher_options")
            recipe = make_recipe(self.generate.recipe, self.generate.recipe_config, source="generate.recipe_config")
            if self.loop.rounds > 1 and getattr(recipe.config, "stage", None) == "events":
                raise ValueError("loop.rounds > 1: the recipe's stage is 'events', and a student writes inferences")
            if self.student and self.generate.recipe in ("generics", "comparatives"):
                raise ValueError(f"student: the {self.generate.recipe} recipe writes statements (text items), and a "
                                 "student trains on triples, questions or rationales; drop [student] and [eval]")
        if self.loop.rounds > 1:
            missing = [t for t in ("generate", "critic", "student") if getattr(self, t) is None]
            if missing:
                raise ValueError(f"loop.rounds > 1 needs the tables {', '.join(f'[{t}]' for t in missing)}: each "
                                 "round generates, filters and trains a student")
            if self.generate.recipe != "atomic10x" or self.student.format != "comet":
                raise ValueError("loop.rounds > 1: a student generates the next round for the atomic10x recipe "
                                 "with format = 'comet' (its (head, relation) prompt); other recipes have no "
                                 "student prompt yet")
        self._check_splits_and_eval()
        return self

    def _check_splits_and_eval(self) -> None:
        """A student trains on the snapshot's train split, an evaluation without inputs of its own reads the
        snapshot's eval split (references may be absent and fall back to it), and an evaluation needs a model."""
        splits = set(self.snapshot.split)
        if self.student and "train" not in splits:
            raise ValueError(f"student: the snapshot's split ({', '.join(sorted(splits))}) has no 'train' part")
        e = self.eval
        if e is None:
            return
        if not (e.questions or e.heads) and e.split not in splits:
            raise ValueError(f"eval.split: the snapshot has no {e.split!r} part (it has {', '.join(sorted(splits))})")
        if self.student is None and not (e.teacher and self.generate):
            raise ValueError("eval: nothing to evaluate; add [student], or [generate] with eval.teacher = true")

    def steps(self) -> list[tuple[str, int]]:
        """(stage, round) in the order they run: the configured stages, then LOOP_STAGES for each later round."""
        first = [stage for stage in STAGES if self.stage_config(stage) is not None]
        later = [stage for stage in LOOP_STAGES if stage in first]
        return [(stage, 1) for stage in first] + [(stage, r) for r in range(2, self.loop.rounds + 1) for stage in later]

    def snapshot_recipe(self, critic: str | None) -> SnapshotRecipe:
        s, c, d = self.snapshot, self.critic, self.dedup
        return SnapshotRecipe(
            **s.model_dump(exclude={"name"}), critic=critic, min_score=c.min_score if c else None,
            threshold_at_recall=c.threshold_at_recall if c and c.min_score is None else None,
            per_relation=bool(c and c.per_relation), per_prompt=c.per_prompt if c else None,
            dedup=d.method if d else None, dedup_threshold=(1.0 if d.method == "exact" else d.threshold) if d else None,
            dedup_scope=d.scope if d else None)

    def student_training(self, snapshot: str, out: Path) -> TrainConfig:
        """The student's training config. DDK and the KD term need a teacher: by default the generator's, since
        from round 2 the corpus holds a student's writing too, maybe most of it, and the model that wrote most
        items (what a snapshot alone tells) would be that student."""
        cfg = TrainConfig(snapshot=snapshot, out=out, **self.student.model_dump(exclude={"out"}))
        if cfg.teacher is None and self.generate is not None and (cfg.mixture == "ddk" or cfg.kd_weight):
            cfg = cfg.model_copy(update={"teacher": self.generate.teacher})
        return cfg

    def stage_config(self, stage: str) -> dict[str, Any] | None:
        """The part of the config a stage depends on (None: the stage is not configured)."""
        table = {"ingest": self.corpus.ingest or None, "generate": self.generate, "critic": self.critic,
                 "score": self.critic, "embed": self.dedup.model if self.dedup else None, "dedup": self.dedup,
                 "snapshot": self.snapshot, "export": self.export, "train": self.student, "eval": self.eval}[stage]
        if table is None:
            return None
        if stage == "generate":  # how fast an endpoint is asked changes no answer: a new rate limit redoes nothing
            d = table.model_dump(mode="json")
            d["teacher_options"] = {k: v for k, v in d["teacher_options"].items() if k not in PACING}
            return d
        if stage in ("critic", "score"):  # the cut belongs to the snapshot: changing it retrains nothing
            # and a critic trained before an option existed is not retrained for its default
            left = {"threshold_at_recall", "min_score", "per_relation", "per_prompt"}
            left |= {f for f in ("dev_sources", "pair", "also_labels") if not getattr(table, f)}
            d = table.model_dump(mode="json", exclude=left)
            d["labels"] = [{k: v for k, v in f.items() if (k, v) not in (("heads", None), ("weight", 1.0))}
                           for f in d["labels"]]
            return d
        if stage == "dedup":
            # one index: the partition settings change nothing, and a corpus made before they existed is not redone
            d = table.model_dump(mode="json", exclude=set() if table.partitions else {"partitions", "max_visits"})
            return d | ({"where": self.snapshot.where} if self.snapshot.where else {})  # what the snapshot is cut from
        if stage == "eval":  # an evaluation made before reference_heads existed is not redone for its default
            return table.model_dump(mode="json", exclude=set() if table.reference_heads else {"reference_heads"})
        if stage == "snapshot":
            c = self.critic
            cut = [c.threshold_at_recall, c.min_score] + (["per relation"] if c.per_relation else []) + (
                [f"{c.per_prompt} per prompt"] if c.per_prompt else []) if c else None
            # a cut made before per_relation or per_prompt existed is not redone
            return table.model_dump(mode="json") | {"critic_cut": cut}
        if isinstance(table, BaseModel):
            return table.model_dump(mode="json")
        if isinstance(table, list):
            return {"files": [t.model_dump(mode="json") for t in table]}
        return {"value": table}
