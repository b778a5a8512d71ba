"""Domain mixtures for student training: DDK (Liu et al. 2024) re-weights the domains a student samples
from by its loss gap to the teacher, so training steps go where the student is furthest behind.

Every `every` steps the student's and the teacher's mean token loss per domain are measured on a held-out
slice of the snapshot (the teacher's once: it does not change), and the sampling weights move as DDK's
factor-smooth update does. The mixture's whole history goes in the student's card and in each checkpoint,
so a resumed run continues the same mixture."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from store import SkdError, write_atomic

MIXTURE_FILE = "mixture.json"


def initial_weights(student: list[float], teacher: list[float]) -> list[float]:
    """r = softmax over domains of student perplexity / teacher perplexity."""
    gaps = [math.exp(min(s - t, 50.0)) for s, t in zip(student, teacher, strict=True)]  # PPL_S / PPL_T
    return _softmax(gaps)


def ddk_update(weights: list[float], student: list[float], teacher: list[float], alpha: float = 0.5) -> list[float]:
    """psi = r * exp(lS / lT); r <- alpha * psi / sum(psi) + (1 - alpha) / N (DDK's factor-smooth update:
    the uniform share keeps every domain in the mixture)."""
    log_psi = [math.log(max(r, 1e-300)) + s / t for r, s, t in zip(weights, student, teacher, strict=True)]
    share = _softmax(log_psi)  # psi / sum(psi), in log space: exp(lS / lT) alone can overflow
    return [alpha * p + (1 - alpha) / len(share) for p in share]


def _softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    exps = [math.exp(x - top) for x in xs]
    return [e / sum(exps) for e in exps]


class Mixture:
    """Sampling weights over domains, and how they moved."""

    def __init__(self, domains: list[str], kind: str, alpha: float = 0.5):
        self.domains, self.kind, self.alpha = domains, kind, alpha
        self.weights = [1.0 / len(domains)] * len(domains)
        self.teacher_loss: list[float] | None = None
        self.history: list[dict[str, Any]] = []

    def observe(self, step: int, student_loss: list[float]) -> None:
        """A measurement of the student (the teacher's is fixed): DDK moves the weights; uniform keeps them."""
        if self.kind == "ddk":
            assert self.teacher_loss is not None
            self.weights = (initial_weights(student_loss, self.teacher_loss) if not self.history else
                            ddk_update(self.weights, student_loss, self.teacher_loss, self.alpha))
        self.history.append({"step": step, "weights": [round(w, 6) for w in self.weights],
                             "student_loss": [round(x, 6) for x in student_loss]})

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "alpha": self.alpha, "domains": self.domains, "weights": self.weights,
                "teacher_loss": self.teacher_loss, "history": self.history}

    def save(self, folder: Path) -> None:
        write_atomic(folder / MIXTURE_FILE, json.dumps(self.state(), indent=1))

    def restore(self, folder: Path) -> bool:
        """Continue from a checkpoint's mixture (the same domains), if it has one."""
        f = folder / MIXTURE_FILE
        try:
            state = json.loads(f.read_text())
        except (OSError, ValueError):  # none, or cut off by a kill before the atomic write: the one before is whole
            return False
        if state["domains"] != self.domains or state["kind"] != self.kind:
            raise SkdError(f"the checkpoint {folder.name} was trained with a {state['kind']} mixture over "
                           f"{len(state['domains'])} domains, not this {self.kind} one over {len(self.domains)}: "
                           "give a new --out to start over")
        self.weights, self.teacher_loss, self.history = state["weights"], state["teacher_loss"], state["history"]
        return True


def sampler(domain_of: list[int], mixture: Mixture, seed: int, batch_size: int = 1, grad_accum: int = 1):
    """Draws a domain by the mixture's weights, then an example of it: one epoch is as many draws as there are
    examples. Each draw is seeded by (seed, epoch, position), and its weights are those in effect at its batch by
    the mixture's history: the loader fetches one batch ahead, so the update at step k applies from batch
    k * grad_accum + 1 on. A resumed run (the history restored) therefore draws exactly what an uninterrupted one
    does; reading the live weights instead drew the batch after a checkpoint with the update it had not seen."""
    import torch

    per_epoch = -(-len(domain_of) // batch_size)

    def weights_at(batch: int) -> list[float]:
        live = [h for h in mixture.history if (h["step"] * grad_accum + 1 if h["step"] else 0) <= batch]
        return live[-1]["weights"] if live else mixture.weights

    class MixtureSampler(torch.utils.data.Sampler):
        def __init__(self):
            self.members = [[i for i, d in enumerate(domain_of) if d == k] for k in range(len(mixture.domains))]
            self.epoch = 0

        def __len__(self) -> int:
            return len(domain_of)

        def set_epoch(self, epoch: int) -> None:  # the Trainer calls it, on resume too
            self.epoch = epoch

        def __iter__(self):
            for i in range(len(domain_of)):
                rng = random.Random(f"{seed}-{self.epoch}-{i}")
                weights = weights_at(self.epoch * per_epoch + i // batch_size)
                k = rng.choices(range(len(self.members)), weights=weights)[0]
                yield rng.choice(self.members[k])

    return MixtureSampler()


def domain_losses(model: Any, batches: list[list[dict[str, Any]]], collate: Callable) -> list[float]:
    """Mean token loss of `model` on each domain's held-out examples."""
    import torch

    was_training = model.training
    model.eval()
    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for examples in batches:
            total, tokens = 0.0, 0
            for start in range(0, len(examples), 8):
                b = {k: v.to(device) for k, v in collate(examples[start:start + 8]).items()}
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
                labels = b["labels"][:, 1:]
                mask = labels != -100
                nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels.clamp(min=0),
                                                        reduction="none")
                total += float((nll * mask).sum())
                tokens += int(mask.sum())
            out.append(total / max(tokens, 1))
    model.train(was_training)
    return out
