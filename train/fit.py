"""Fine-tune a student on a snapshot with the transformers Trainer (full, or LoRA through peft). Checkpoints go to
OUT/checkpoints; a rerun resumes from the last one. The saved student (OUT) is a plain transformers folder
(LoRA merged in, the adapter kept in OUT/adapter) with `student.json`: snapshot name and hash and the
full training config. It is registered in the `students` table."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from corpus import snapshot_frame, snapshot_row
from store import SMOLLM2, SkdError, Store, open_store, resolve_model
from store.hardware import bf16_native

from .formats import example, tokenized


class StudentOptions(BaseModel):
    """How to train a student: the one definition behind `skd train`'s options and the pipeline's [student]."""
    model_config = ConfigDict(extra="forbid")
    base: str = Field(SMOLLM2, description="Base model: HF id, local path, or the embedded SmolLM2.")
    out: Path = Field(..., description="Folder for the student (and its checkpoints).")
    format: Literal["comet", "chat", "rationale"] = Field("comet", description="How items become examples.")
    lora: tuple[int, int] | None = Field(None, description="LoRA rank,alpha (e.g. 16,32); full fine-tuning when "
                                                           "unset.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    epochs: float = Field(1.0, gt=0, description="Passes over the train split.")
    max_steps: int = Field(-1, description="Stop after this many optimiser steps (-1: all epochs).")
    lr: float = Field(5e-5, gt=0, description="Learning rate.")
    batch_size: int = Field(8, ge=1, description="Examples per device step.")
    grad_accum: int = Field(1, ge=1, description="Steps per optimiser update.")
    bf16: bool | None = Field(None, description="bfloat16 mixed precision; default: where the hardware has it "
                                                "natively (recent GPUs, CPUs with AMX or AVX512-BF16).")
    seed: int = 0
    max_length: int = Field(256, ge=8, description="Tokens per example.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every this many steps (the resume point).")


class TrainConfig(StudentOptions):
    snapshot: str = Field(..., description="Snapshot to train on.")
    split: str = Field("train", description="The snapshot split to train on.")


def training_rows(db: Path, cfg: TrainConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The snapshot's training examples and its row (read-only: training never holds the write lock)."""
    with Store(db, read_only=True) as s:
        row = snapshot_row(s, cfg.snapshot)
        df = snapshot_frame(s, cfg.snapshot)
    items = [r for r in df.to_dicts() if r["split"] == cfg.split and r["kind"] in ("triple", "qa", "rationale")]
    if not items:
        raise SkdError(f"snapshot {cfg.snapshot!r} has no triples, qa or rationale items in split {cfg.split!r}")
    return [example(r, cfg.format) for r in items], row


def training_args(cfg: TrainConfig):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(cfg.out / "checkpoints"), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        learning_rate=cfg.lr, per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        gradient_checkpointing=cfg.gradient_checkpointing, bf16=bf16(cfg), seed=cfg.seed, data_seed=cfg.seed,
        save_steps=cfg.save_steps, save_total_limit=2, logging_steps=1, report_to=[], disable_tqdm=True,
        use_cpu=not _cuda(), dataloader_num_workers=0, remove_unused_columns=False)


def bf16(cfg: StudentOptions) -> bool:
    return bf16_native() if cfg.bf16 is None else cfg.bf16


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def progress_callback(on_step: Callable[[int, int, float | None], None]):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        loss: float | None = None

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])
            on_step(state.global_step, state.max_steps, self.loss)

    return Progress()


def no_final_checkpoint():
    """The finished student is saved by `fit`; a checkpoint of the last step (optimizer state included)
    would only cost seconds and disk. Mid-run checkpoints, the resume points, are kept."""
    from transformers import TrainerCallback

    class NoFinalCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= state.max_steps and state.global_step % args.save_steps:
                control.should_save = False

    return NoFinalCheckpoint()


def load_base(cfg: TrainConfig):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(cfg.base)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        # A LoRA base is frozen, so it can be held in bfloat16 (peft keeps the adapters in float32); full
        # fine-tuning keeps float32 weights under autocast, as bfloat16 weights would lose small updates.
        frozen_bf16 = bf16(cfg) and cfg.lora is not None
        model = AutoModelForCausalLM.from_pretrained(path, dtype="bfloat16" if frozen_bf16 else "float32")
    except OSError as e:
        raise SkdError(f"cannot load base model {cfg.base!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest checkpoint that was fully written. The Trainer writes `trainer_state.json` last, so a
    checkpoint without it was cut by a kill: it is removed, and the one before it is the resume point."""
    if not ckpt_dir.is_dir():
        return None
    found = sorted((p for p in ckpt_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for p in found:
        if (p / "trainer_state.json").is_file():
            return str(p)
        shutil.rmtree(p, ignore_errors=True)
    return None


def with_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad path through frozen embeddings
    return get_peft_model(model, LoraConfig(r=cfg.lora[0], lora_alpha=cfg.lora[1], lora_dropout=0.0,
                                            task_type="CAUSAL_LM", target_modules="all-linear"))


def fit(db: str | Path, cfg: TrainConfig, on_step: Callable[[int, int, float | None], None] | None = None
        ) -> dict[str, Any]:
    """Train, save and register a student; resumes from OUT/checkpoints when a checkpoint is there."""
    import datasets
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer
    from transformers.utils import logging as hf_logging

    rows, snap = training_rows(Path(db), cfg)
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    model, tok = load_base(cfg)
    data = tokenized(rows, tok, cfg.max_length)
    if cfg.lora:
        model = with_lora(model, cfg)
    resume = last_complete_checkpoint(cfg.out / "checkpoints")
    trainer = Trainer(model=model, args=training_args(cfg), train_dataset=datasets.Dataset.from_list(data),
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True), processing_class=tok,
                      callbacks=[no_final_checkpoint()] + ([progress_callback(on_step)] if on_step else []))
    trainer.remove_callback(PrinterCallback)  # progress goes through on_step, not printed dicts
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {"steps": trainer.state.global_step, "examples": len(data), "train_loss": result.training_loss,
               "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
               "seconds": time.monotonic() - started, "resumed_from": Path(resume).name if resume else None,
               "bf16": bf16(cfg)}
    save_student(trainer, tok, cfg)
    return register(Path(db), cfg, snap, summary)


def save_student(trainer, tok, cfg: TrainConfig) -> None:
    import torch

    model = trainer.model
    if cfg.lora:
        model.save_pretrained(cfg.out / "adapter")
        # Merged in float32: added to a bfloat16 base, the small LoRA deltas would be rounded away.
        model = model.to(torch.float32).merge_and_unload()
    model.save_pretrained(cfg.out)
    tok.save_pretrained(cfg.out)


def register(db: Path, cfg: TrainConfig, snap: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    student_id = f"student-{uuid.uuid4().hex[:12]}"
    card = {"student_id": student_id, "snapshot": snap["name"], "snapshot_id": snap["snapshot_id"],
            "snapshot_hash": snap["content_hash"], "base_model": cfg.base, "format": cfg.format,
            "config": cfg.model_dump(mode="json"), "summary": summary}
    (cfg.out / "student.json").write_text(json.dumps(card, indent=2, default=str))
    with open_store(db) as s:
        s.students.register(student_id, snap["snapshot_id"], cfg.base, str(cfg.out.resolve()), card)
    return card
