"""The pipeline config (`skd run PIPELINE.toml`): one pydantic model per stage. Paths are relative to the
directory `skd run` is started in. A stage table that is absent is skipped (except corpus and snapshot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from corpus import SnapshotRecipe
from store import MINILM, SMOLLM2
from train import StudentOptions

# Every pipeline critic chooses a dev threshold at each of these recalls, so changing the snapshot's cut
# (which retrains nothing) always finds its threshold.
RECALL_GRID = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
STAGES = ("ingest", "generate", "critic", "score", "embed", "dedup", "snapshot", "export", "train", "eval")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceFile(Strict):
    file: Path
    format: str = "jsonl"


class CorpusStage(Strict):
    path: Path = Field(Path("skd.duckdb"), description="The corpus database file.")
    ingest: list[SourceFile] = Field(default_factory=list, description="Files to ingest first (seeds, references).")


class GenerateStage(Strict):
    recipe: Literal["atomic10x", "rationale", "template"]
    recipe_config: dict[str, Any] = Field(default_factory=dict, description="The recipe's config (as its TOML).")
    teacher: str = SMOLLM2
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    teacher_options: dict[str, Any] = Field(default_factory=dict, description="Backend load-time options.")
    limit: int | None = Field(None, gt=0, description="At most this many requests.")
    seed: int = 0
    batch_size: int = Field(32, ge=1)


class CriticStage(Strict):
    name: str = "critic"
    use: str | None = Field(None, description="Use this critic of the corpus instead of training one.")
    labels: list[SourceFile] = Field(default_factory=list,
                                     description="Label files, first present one wins (e.g. CKBP, then shipped).")
    mode: Literal["finetune", "embedding", "llm-judge"] = "embedding"
    base: str = MINILM
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 32
    lr: float = 5e-5
    threshold_at_recall: float | None = Field(0.8, description="Snapshot keeps items above the dev threshold "
                                                               f"reaching this recall: one of {RECALL_GRID}.")
    min_score: float | None = Field(None, ge=0, le=1, description="... or above this score.")

    @field_validator("threshold_at_recall")
    @classmethod
    def _on_the_grid(cls, v: float | None) -> float | None:
        if v is not None and v not in RECALL_GRID:
            raise ValueError(f"must be one of {', '.join(map(str, RECALL_GRID))} (the recalls every pipeline "
                             "critic has a dev threshold for)")
        return v

    @staticmethod
    def recalls() -> list[float]:
        return list(RECALL_GRID)


class DedupStage(Strict):
    method: Literal["exact", "semantic"] = "semantic"
    threshold: float = Field(0.9, gt=0, le=1)
    scope: Literal["global", "head", "head-relation"] = "head-relation"
    model: str = MINILM


class SnapshotStage(Strict):
    name: str
    where: str | None = None
    kinds: list[str] = Field(default_factory=list)
    relations: list[str] = Field(default_factory=list)
    limit: int | None = None
    seed: int = 0
    balance: str | None = None
    split: dict[str, float] = Field(default_factory=lambda: {"train": 0.9, "test": 0.1})


class ExportStage(Strict):
    format: Literal["hf", "parquet", "jsonl"] = "hf"
    out: Path
    repo_id: str | None = Field(None, description="Push to this Hub dataset repo after export.")
    private: bool = False


class StudentStage(StudentOptions):
    format: Literal["comet", "chat", "rationale"] = "comet"  # checked when the config is read


class EvalStage(Strict):
    split: str = "test"
    references: Path | None = Field(None, description="ATOMIC-2020 file of human references (instead of the split).")
    questions: Path | None = Field(None, description="A question set to evaluate on (instead of the split).")
    questions_format: Literal["csqa", "gsm8k", "strategyqa", "jsonl"] = "jsonl"
    offset: int = Field(0, ge=0, description="Skip this many questions first (those the teacher was asked).")
    relations: list[str] = Field(default_factory=list)
    limit: int | None = Field(50, gt=0)
    max_tokens: int = Field(24, gt=0)
    teacher: bool = Field(True, description="Evaluate the teacher on the same inputs.")
    teacher_format: Literal["comet", "chat", "rationale"] = "chat"
    use_critic: bool = Field(True, description="Report the pipeline critic's acceptance of the outputs.")


class Pipeline(Strict):
    corpus: CorpusStage = Field(default_factory=CorpusStage)
    generate: GenerateStage | None = None
    critic: CriticStage | None = None
    dedup: DedupStage | None = None
    snapshot: SnapshotStage
    export: ExportStage | None = None
    student: StudentStage | None = None
    eval: EvalStage | None = None

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
            make_recipe(self.generate.recipe, self.generate.recipe_config, source="generate.recipe_config")
        return self

    def snapshot_recipe(self, critic: str | None) -> SnapshotRecipe:
        s, c, d = self.snapshot, self.critic, self.dedup
        return SnapshotRecipe(
            where=s.where, kinds=s.kinds, relations=s.relations, limit=s.limit, seed=s.seed, balance=s.balance,
            split=s.split, critic=critic, min_score=c.min_score if c else None,
            threshold_at_recall=c.threshold_at_recall if c and c.min_score is None else None,
            dedup=d.method if d else None, dedup_threshold=(1.0 if d.method == "exact" else d.threshold) if d else None,
            dedup_scope=d.scope if d else None)

    def stage_config(self, stage: str) -> dict[str, Any] | None:
        """The part of the config a stage depends on (None: the stage is not configured)."""
        table = {"ingest": self.corpus.ingest or None, "generate": self.generate, "critic": self.critic,
                 "score": self.critic, "embed": self.dedup.model if self.dedup else None, "dedup": self.dedup,
                 "snapshot": self.snapshot, "export": self.export, "train": self.student, "eval": self.eval}[stage]
        if table is None:
            return None
        if stage in ("critic", "score"):  # the cut belongs to the snapshot: changing it retrains nothing
            return table.model_dump(mode="json", exclude={"threshold_at_recall", "min_score"})
        if stage == "snapshot":
            return table.model_dump(mode="json") | {"critic_cut": [self.critic.threshold_at_recall,
                                                                   self.critic.min_score] if self.critic else None}
        if isinstance(table, BaseModel):
            return table.model_dump(mode="json")
        if isinstance(table, list):
            return {"files": [t.model_dump(mode="json") for t in table]}
        return {"value": table}
