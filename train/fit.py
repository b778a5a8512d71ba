"""Fine-tune a student on a snapshot with the transformers Trainer (full, or LoRA through peft). Checkpoints go to
OUT/checkpoints; a rerun resumes from the last one. The saved student (OUT) is a plain transformers folder
(LoRA merged in, the adapter kept in OUT/adapter) with `student.json`: snapshot name and hash and the
full training config. It is registered in the `students` table."""

from __future__ import annotations

import json
import random
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from corpus import snapshot_frame, snapshot_row
from store import SMOLLM2, SkdError, Store, open_store, pad_with_eos, resolve_model, write_atomic
from store.hardware import bf16_native

from .formats import encode, example
from .mixture import Mixture, domain_losses, sampler
from .student_trainer import mixture_callback, student_trainer


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
    mixture: Literal["natural", "uniform", "ddk"] = Field(
        "natural", description="How domains are sampled: natural (as many as the snapshot has), uniform, or ddk "
                               "(re-weighted by the student/teacher loss gap per domain, Liu et al. 2024).")
    domain: str | None = Field(None, description="Column whose value is an example's domain (default: a "
                                                 "triple's relation, else the item's domain, else its kind).")
    mixture_every: int = Field(50, ge=1, description="Measure the domains and update the mixture every this many "
                                                     "steps (DDK's K).")
    mixture_alpha: float = Field(0.5, gt=0, le=1, description="DDK's smoothing: the share of the update in the "
                                                              "new weights (the rest is uniform).")
    mixture_holdout: int = Field(16, ge=1, description="Examples per domain held out of training to measure it.")
    teacher: str | None = Field(None, description="Teacher for DDK's loss gap and the KL term (default: the "
                                                  "snapshot's teacher).")
    kd_weight: float = Field(0.0, ge=0, description="Weight of the KL term to the teacher's token distribution "
                                                    "(white-box distillation; DDK uses 0.2).")
    kd_temperature: float = Field(1.0, gt=0, description="Temperature of the KL term.")


class TrainConfig(StudentOptions):
    snapshot: str = Field(..., description="Snapshot to train on.")
    split: str = Field("train", description="The snapshot split to train on.")


def training_items(db: Path, cfg: TrainConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The snapshot's training items and its row (read-only: training never holds the write lock)."""
    with Store(db, read_only=True) as s:
        row = snapshot_row(s, cfg.snapshot)
        df = snapshot_frame(s, cfg.snapshot)
    items = [r for r in df.to_dicts() if r["split"] == cfg.split and r["kind"] in ("triple", "qa", "rationale")]
    if not items:
        raise SkdError(f"snapshot {cfg.snapshot!r} has no triples, qa or rationale items in split {cfg.split!r}")
    return items, row


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
    except (OSError, ValueError) as e:  # ValueError: not a causal LM (an encoder such as MPNet, a T5)
        raise SkdError(f"cannot load base model {cfg.base!r}: {str(e).splitlines()[0]}") from None
    pad_with_eos(tok)
    return model, tok


def checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """The Trainer's checkpoints in CKPT_DIR by step, the newest first."""
    found = [(int(p.name.split("-")[-1]), p) for p in ckpt_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(found, reverse=True)


def last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest checkpoint that was fully written. The Trainer writes `trainer_state.json` last, so a
    checkpoint without it was cut by a kill: it is removed, and the one before it is the resume point."""
    for _, p in checkpoints(ckpt_dir):
        if (p / "trainer_state.json").is_file():
            return str(p)
        shutil.rmtree(p, ignore_errors=True)
    return None


def epoch_of(checkpoint: Path) -> float:
    """How many epochs a checkpoint had trained (0 for one cut before its state was written)."""
    try:
        return float(json.loads((checkpoint / "trainer_state.json").read_text()).get("epoch") or 0)
    except (OSError, json.JSONDecodeError):
        return 0.0


def own_checkpoints(ckpt_dir: Path, cfg: TrainConfig, snap: dict[str, Any]) -> list[Any]:
    """Checkpoints are resumed only by a training of the same snapshot content and settings, run longer or as long
    (a training's length may grow: more steps continue it); those of another (another snapshot into the same
    --out, another learning rate or base) are removed, and so are any past a shorter --max-steps or --epochs, or
    the student would be trained longer than its card says (the Trainer resumed past the end and trained 0
    steps). Returns the lengths (steps, or "N epochs") of the schedules the student was trained under: a longer
    run continues with its own learning-rate schedule from the checkpoint, so it is not the student a fresh run
    of that length gives, and its card says so."""
    identity = cfg.model_dump(mode="json", exclude={"out", "save_steps", "max_steps", "epochs"})
    identity |= {"snapshot_hash": snap["content_hash"]}
    length = cfg.max_steps if cfg.max_steps > 0 else f"{cfg.epochs:g} epochs"
    mark = ckpt_dir / "training.json"
    try:
        held = json.loads(mark.read_text()) if mark.is_file() else {}
    except json.JSONDecodeError:
        held = {}
    if ckpt_dir.is_dir() and held.get("identity") != identity:
        shutil.rmtree(ckpt_dir)
        held = {}
    for step, p in checkpoints(ckpt_dir):  # past the end of this run: its steps, or its epochs
        if step > cfg.max_steps if cfg.max_steps > 0 else epoch_of(p) > cfg.epochs + 1e-6:
            shutil.rmtree(p)
    resumed = any((p / "trainer_state.json").is_file() for _, p in checkpoints(ckpt_dir))
    lengths = [x for x in held.get("lengths", []) if resumed]
    lengths = lengths if lengths and lengths[-1] == length else [*lengths, length]
    write_atomic(mark, json.dumps({"identity": identity, "lengths": lengths}, sort_keys=True, default=str))
    return lengths


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
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, set_seed
    from transformers.utils import logging as hf_logging

    items, snap = training_items(Path(db), cfg)
    # the seed governs the adapters' random init too (the Trainer seeds only once the model exists): otherwise a
    # student depends on what the process drew before it, and retraining the same config in another process,
    # or after other work in the same one, gives another student
    set_seed(cfg.seed)
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    model, tok = load_base(cfg)
    teacher = load_teacher(cfg, items, tok) if cfg.mixture == "ddk" or cfg.kd_weight else None
    collate = DataCollatorForSeq2Seq(tok, padding=True)
    data, mix, too_long = training_data(items, tok, cfg, teacher, collate)
    if cfg.lora:
        model = with_lora(model, cfg)
    schedules = own_checkpoints(cfg.out / "checkpoints", cfg, snap)
    resume = last_complete_checkpoint(cfg.out / "checkpoints")
    while mix is not None and resume and not mix.mixture.restore(Path(resume)):
        # killed after the Trainer's state was written but before the mixture: the one before is whole
        shutil.rmtree(resume, ignore_errors=True)
        resume = last_complete_checkpoint(cfg.out / "checkpoints")
    callbacks = [no_final_checkpoint()] + ([progress_callback(on_step)] if on_step else [])
    if mix is not None:
        callbacks.append(mixture_callback(mix.mixture, mix.heldout, collate, cfg.mixture_every))
    if teacher is not None and not cfg.kd_weight:  # its loss per domain is measured: free it for training
        teacher = (None, teacher[1])
    trainer = student_trainer()(
        model=model, args=training_args(cfg), train_dataset=datasets.Dataset.from_list(data), data_collator=collate,
        processing_class=tok, callbacks=callbacks, mixture_sampler=mix.sampler if mix else None,
        teacher=teacher[0] if teacher else None, kd_weight=cfg.kd_weight,
        kd_temperature=cfg.kd_temperature)
    trainer.remove_callback(PrinterCallback)  # progress goes through on_step, not printed dicts
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {"steps": trainer.state.global_step, "examples": len(data), "train_loss": result.training_loss,
               "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
               "seconds": time.monotonic() - started, "resumed_from": Path(resume).name if resume else None,
               "bf16": bf16(cfg), "tokens": sum(len(x["input_ids"]) for x in data), "too_long": too_long,
               "schedules": schedules}
    if teacher is not None:  # the model of the KL term and of DDK's loss gap (the default is the snapshot's)
        summary["teacher"] = teacher[1]
    if mix is not None:
        summary["mixture"] = mix.mixture.state() | {"teacher": teacher[1] if teacher else None}
    (cfg.out / "student.json").unlink(missing_ok=True)  # a kill while the weights are replaced leaves no card
    save_student(trainer, tok, cfg)
    if mix is not None:
        plot_mixture(mix.mixture, cfg.out / "mixture.png")
    return register(Path(db), cfg, snap, summary)


def domain_of(item: dict[str, Any], column: str | None) -> str:
    """An example's domain: the named column (or `extra` field); else a triple's relation (a generated corpus
    names one `domain` for all its triples); else the item's `domain` (a question's source dataset); else
    its kind."""
    if column:
        value = item.get(column)
        if value is None and item.get("extra"):
            value = (json.loads(item["extra"]) if isinstance(item["extra"], str) else item["extra"]).get(column)
        return str(value) if value is not None else "(none)"
    if item["kind"] == "triple" and item.get("relation"):
        return str(item["relation"])
    return str(item.get("domain") or item["kind"])


@dataclass
class MixtureSetup:
    mixture: Mixture
    sampler: Any
    heldout: list[list[dict[str, Any]]]


def training_data(items: list[dict[str, Any]], tok: Any, cfg: TrainConfig, teacher: tuple[Any, str] | None,
                  collate: Any) -> tuple[list[dict[str, Any]], MixtureSetup | None, int]:
    """Encoded training examples; with a mixture, also each domain's held-out examples (not trained on), the
    sampler and the mixture, with the teacher's loss per domain measured once; and how many examples were left
    out for not fitting in --max-length."""
    encoded = [(domain_of(it, cfg.domain), encode(example(it, cfg.format), tok, cfg.max_length, whole=True))
               for it in items]
    too_long = sum(x is None for _, x in encoded)
    encoded = [(d, x) for d, x in encoded if x is not None]
    if not encoded:
        raise SkdError(f"every example is longer than --max-length {cfg.max_length} tokens; raise it")
    if cfg.mixture == "natural":
        return [x for _, x in encoded], None, too_long
    domains = sorted({d for d, _ in encoded})
    order = list(range(len(encoded)))
    random.Random(cfg.seed).shuffle(order)
    sizes = {d: sum(1 for e, _ in encoded if e == d) for d in domains}
    quota = {d: min(cfg.mixture_holdout, sizes[d] // 2) for d in domains}  # a small domain still trains
    heldout: dict[str, list[dict[str, Any]]] = {d: [] for d in domains}
    train: list[tuple[str, dict[str, Any]]] = []
    for i in order:
        d, x = encoded[i]
        if len(heldout[d]) < quota[d]:
            heldout[d].append(x)
        else:
            train.append((d, x))
    kept = [d for d in domains if heldout[d]]
    train = [(d, x) for d, x in train if d in kept]  # a domain of one example cannot be measured
    if len(kept) < 2:
        raise SkdError(f"--mixture {cfg.mixture}: the snapshot's split {cfg.split!r} has {len(kept)} domain(s) "
                       "with two examples or more; a mixture needs two")
    mixture = Mixture(kept, cfg.mixture, cfg.mixture_alpha)
    batches = [heldout[d] for d in kept]
    if teacher is not None:
        mixture.teacher_loss = domain_losses(teacher[0], batches, collate)
    index = {d: k for k, d in enumerate(kept)}
    draw = sampler([index[d] for d, _ in train], mixture, cfg.seed, cfg.batch_size, cfg.grad_accum)
    return [x for _, x in train], MixtureSetup(mixture, draw, batches), too_long


def load_teacher(cfg: TrainConfig, items: list[dict[str, Any]], tok: Any) -> tuple[Any, str]:
    """The teacher for the loss gap and the KL term, which must share the student's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = cfg.teacher or snapshot_teacher(items)
    path = resolve_model(name)
    try:
        teacher_tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise SkdError(f"cannot load teacher {name!r}: {str(e).splitlines()[0]}") from None
    if teacher_tok.get_vocab() != tok.get_vocab():
        raise SkdError(f"teacher {name!r} and student base {cfg.base!r} do not share a tokenizer "
                       f"({len(teacher_tok)} and {len(tok)} tokens): the loss gap and the KL term compare their "
                       "token distributions, so they need one")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype="bfloat16" if bf16(cfg) else "float32")
    except (OSError, ValueError) as e:
        raise SkdError(f"cannot load teacher {name!r}: {str(e).splitlines()[0]}") from None
    model.eval().requires_grad_(False)
    if _cuda():  # for the loss per domain; the Trainer moves it to each process's device
        model.to("cuda")
    return model, name


def snapshot_teacher(items: list[dict[str, Any]]) -> str:
    """The teacher that wrote most of the snapshot's training items."""
    counts: dict[str, int] = {}
    for it in items:
        for t in (it.get("teacher") or "").split(", "):
            if t:
                counts[t] = counts.get(t, 0) + 1
    if not counts:
        raise SkdError("the snapshot's items name no teacher (they were ingested, not generated): give --teacher")
    return max(sorted(counts), key=lambda t: counts[t])


def plot_mixture(mixture: Mixture, path: Path) -> None:
    from corpus.plots import lines

    steps = [h["step"] for h in mixture.history]
    lines(path, f"domain mixture ({mixture.kind}) over training", steps,
          {d: [h["weights"][k] for h in mixture.history] for k, d in enumerate(mixture.domains)}, "step", "weight")


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
    write_atomic(cfg.out / "student.json", json.dumps(card, indent=2, default=str))
    with open_store(db) as s:
        s.students.register(student_id, snap["snapshot_id"], cfg.base, str(cfg.out.resolve()), card)
    return card
