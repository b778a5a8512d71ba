"""The Trainer behind `fit` when a student learns from more than its examples: a domain mixture sampler
(train/mixture.py) and white-box distillation, a KL term between the teacher's and the student's token
distributions added to the SFT loss (DDK: weight 0.2, temperature 1)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .mixture import Mixture, domain_losses


def kd_term(student_logits: Any, teacher_logits: Any, labels: Any, temperature: float,
            num_items: Any = None) -> Any:
    """T^2 * KL(teacher || student) at every position that has a label, summed and divided by the label
    tokens of the (accumulated) batch, as the SFT loss is."""
    import torch.nn.functional as F

    t = temperature
    mask = labels[:, 1:] != -100
    vocab = min(student_logits.size(-1), teacher_logits.size(-1))  # embedding rows past the tokenizer are padding
    # only the completion's positions: a batch x length x vocab float32 copy of everything would not fit
    s = F.log_softmax(student_logits[:, :-1][mask][:, :vocab].float() / t, dim=-1)
    p = F.log_softmax(teacher_logits[:, :-1][mask][:, :vocab].float() / t, dim=-1)
    kl = F.kl_div(s, p, log_target=True, reduction="sum")
    denom = num_items if num_items is not None else mask.sum().clamp(min=1)
    return kl / denom * t * t


def student_trainer():
    """The transformers Trainer class that samples by a mixture and adds the KL term (imported on use)."""
    import torch
    from transformers import Trainer

    class StudentTrainer(Trainer):
        def __init__(self, *args: Any, mixture_sampler: Any = None, teacher: Any = None, kd_weight: float = 0.0,
                     kd_temperature: float = 1.0, **kw: Any):
            super().__init__(*args, **kw)
            if teacher is not None:
                teacher.to(self.args.device)  # this process's device, once the Trainer has set it
            self.mixture_sampler, self.teacher = mixture_sampler, teacher
            self.kd_weight, self.kd_temperature = kd_weight, kd_temperature

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return self.mixture_sampler or super()._get_train_sampler(train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            if self.teacher is not None and self.kd_weight:
                with torch.no_grad():
                    teacher_logits = self.teacher(input_ids=inputs["input_ids"],
                                                  attention_mask=inputs["attention_mask"]).logits
                kd = kd_term(outputs.logits, teacher_logits, inputs["labels"], self.kd_temperature,
                                 num_items_in_batch)
                if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                    kd = kd * self.accelerator.num_processes  # as the Trainer scales the SFT loss across ranks
                loss = loss + self.kd_weight * kd
            return (loss, outputs) if return_outputs else loss

    return StudentTrainer


def mixture_callback(mixture: Mixture, heldout: list[list[dict[str, Any]]], collate: Callable, every: int):
    """Measures the student per domain every `every` steps and updates the mixture; saves the mixture into
    each checkpoint, so a resumed run continues it."""
    from transformers import TrainerCallback

    class MixtureCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            if not mixture.history:  # a fresh run: the weights start from the first measurement
                mixture.observe(state.global_step, domain_losses(model, heldout, collate))

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % every == 0:  # before this step's checkpoint is saved: it holds the update
                mixture.observe(state.global_step, domain_losses(model, heldout, collate))

        def on_train_end(self, args, state, control, model=None, **kw):
            if mixture.history[-1]["step"] != state.global_step:
                mixture.observe(state.global_step, domain_losses(model, heldout, collate))

        def on_save(self, args, state, control, **kw):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                mixture.save(folder)

    return MixtureCallback()
