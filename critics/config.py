"""A critic's training config, free of torch so configs load (and `--help` shows) without the models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from store.models import MINILM, SMOLLM2

from .cut import RECALL_GRID


class CriticConfig(BaseModel):
    """How a critic trains; the one definition behind `skd critic train`'s options and the pipeline's [critic]."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["finetune", "embedding", "llm-judge", "likelihood"] = Field(
        "finetune", description="Fine-tune a classifier, fit a head on frozen embeddings, ask an LLM yes/no, or read "
                   "how likely an LM finds the item (the last two train nothing; their base defaults to SmolLM2).")
    pair: bool = Field(
        False, description="embedding: also embed what an item answers (a head and relation; a question and answer) "
                           "and its answer (the tail; the explanation) apart, and give the head both vectors with "
                           "their product and difference (Sentence-BERT's pair features). One vector of the whole "
                           "item barely says whether a tail fits its head.")
    prompt: str | None = Field(None, description="llm-judge: question template with {text}.")
    base: str = Field("all-minilm-l6-v2", description="Base model: HF id, local path or an embedded one "
                      "(all-minilm-l6-v2, all-mpnet-base-v2; a decoder such as smollm2-135m-instruct fine-tunes too).")
    labels_where: str | None = Field(None, description="SQL filter over the labels table.")
    sources: list[str] = Field([], description="Train on these label sources only (every source when empty).")
    source_weights: dict[str, float] = Field({}, description="Loss weight per label source, e.g. ckbp2=3,ckbp1=1 "
                                                              "(1 for a source not named).")
    soft_labels: bool = Field(
        False, description="Train toward the annotators' vote share (votes_pos / votes_total) where a label has "
                           "votes, not its majority: a 2-of-3 label is less sure than a 3-of-3 one. Dev (early "
                           "stopping, calibration, thresholds) keeps the majority labels.")
    rank_weight: float = Field(
        0.0, ge=0, description="finetune: weight of a ranking loss within groups (a question's explanations, a "
                               "head's tails) beside the per-label loss. Batches then hold whole groups, and each "
                               "pair of a group whose targets differ is pushed into order, by how much they differ.")
    freeze_embeddings: bool = Field(
        False, description="finetune: keep the token embeddings as the base has them. EmbeddingGemma's are 201M of its "
                           "308M parameters (a 262k vocabulary): frozen, a step skips their gradient and optimiser "
                           "update, and a few thousand labels cannot move most of them anyway.")
    dev_fraction: float = Field(0.15, gt=0, lt=0.5, description="Share of heads/questions held out for dev.")
    dev_sources: list[str] = Field(
        [], description="Hold out dev (early stopping, calibration, thresholds) from these label sources only, e.g. "
                        "the expert labels, so a score is a probability on the labels you trust (every source when "
                        "empty). Other sources' labels of the dev heads train nothing.")
    seed: int = 0
    epochs: float = Field(3.0, gt=0, description="Passes over the training labels (finetune).")
    max_steps: int = Field(-1, description="Stop after this many steps (-1: run the epochs).")
    batch_size: int = Field(32, ge=1, description="Texts per step.")
    lr: float = Field(5e-5, gt=0, description="Learning rate (finetune).")
    weight_decay: float = Field(1e-4, ge=0, description="L2 penalty (embedding head).")
    max_length: int | None = Field(
        None, ge=8, description="Tokens per text (finetune); default: enough for 99% of the training texts.")
    eval_steps: int = Field(200, ge=1, description="Evaluate on dev every this many steps (finetune).")
    patience: int = Field(3, ge=1, description="Early stopping: evaluations without dev AUC gain.")
    calibrate: bool = Field(True, description="Calibrate scores on dev (Platt), so a score is a probability.")
    recalls: list[float] = Field(list(RECALL_GRID), description="Thresholds chosen on dev for these recalls.")
    precisions: list[float] = Field([], description="... and for these precisions.")

    @model_validator(mode="after")
    def _fits_the_mode(self) -> CriticConfig:
        if self.mode in ("llm-judge", "likelihood") and self.base == MINILM:  # the encoder default is no LM
            self.base = SMOLLM2
        if self.pair and self.mode != "embedding":  # the other modes read the whole item as one text
            raise ValueError(f"pair features are for the embedding mode; mode {self.mode!r} would ignore them")
        if self.rank_weight > 0 and self.mode != "finetune":  # the other modes have no loss to add it to
            raise ValueError(f"rank_weight ranks only while fine-tuning; mode {self.mode!r} would ignore it")
        if self.freeze_embeddings and self.mode != "finetune":  # the other modes train no embeddings
            raise ValueError(f"freeze_embeddings is for fine-tuning; mode {self.mode!r} trains no embeddings")
        # a negative weight is a loss to maximise; NaN or infinity makes every weight NaN once they are scaled to mean 1
        bad = {s: w for s, w in self.source_weights.items() if not 0 <= w < float("inf")}
        if bad:
            raise ValueError(f"source weights must be at least 0 and finite (got {bad})")
        return self
