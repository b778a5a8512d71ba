"""Critic artifacts: a folder with safetensors weights, a tokenizer and `critic.json`. No pickle anywhere.

- embedding: a frozen sentence-transformers encoder (saved in `encoder/`) + a logistic head (`head.safetensors`).
- finetune: a transformers sequence classifier (saved in `model/`), label 1 = acceptable.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file

from store import SkdError, pad_with_eos
from store.hardware import bf16_native, compute_dtype, device


class Critic(Protocol):
    """What every critic is to the rest of skd: texts in, P(acceptable) out. Scoring, snapshots, dedup's choice
    of representative and evaluation call it through `score_rows` (items in: a critic that reads more than one
    text, a stack or a pair-feature head, scores the rows); which model is behind it is the artifact's business."""

    def score(self, texts: list[str], batch_size: int = ...) -> np.ndarray: ...


def score_rows(critic: Critic, rows: list[dict[str, Any]], batch_size: int = 128) -> np.ndarray:
    """Scores of item rows. Most critics read only the verbalised text; one that reads more (a stack with the
    teacher's likelihood, critics.stack) has `score_rows` and gets the rows themselves."""
    if hasattr(critic, "score_rows"):
        return critic.score_rows(rows, batch_size=batch_size)
    from .verbalize import verbalize_rows
    return critic.score(verbalize_rows(rows), batch_size=batch_size)


def reads_teacher_nll(card: dict[str, Any]) -> bool:
    """Whether the critic, or any member of it, reads the teacher's NLL: scoring then fetches it for each item."""
    return _reads(card, "nll")


def reads_siblings(card: dict[str, Any]) -> bool:
    """Whether the critic, or any member of it, reads sibling agreement: scoring then fetches each item's siblings."""
    return _reads(card, "agreement")


def _reads(card: dict[str, Any], signal: str) -> bool:
    from .stack import reads

    return reads(card.get("stack"), signal) or any(_reads(read_card(Path(m["path"])), signal)
                                                   for m in card.get("members", []))


def sentence_encoder(path: str | Path, dtype: torch.dtype | None = None) -> Any:
    """A sentence-transformers encoder for inference, by default in the device's compute precision (bfloat16
    where native: 4x faster for MPNet on an AMX CPU, embeddings at cosine 0.9999 of float32's)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device=device()).to(dtype or compute_dtype())


def encoder_prompt(encoder: Any, task: str) -> str | None:
    """The encoder's own prompt for TASK (sentence-transformers' `prompts`: EmbeddingGemma's "STS" is "task: sentence
    similarity | query: "), None for an encoder without prompts (MiniLM, MPNet: their vectors are unchanged).
    EmbeddingGemma was trained with them: its sibling agreement ranks the CommonsenseQA rationales at AUC 0.742
    with the similarity prompt, 0.725 without (bench/critic_quality.py --encoder)."""
    return (getattr(encoder, "prompts", None) or {}).get(task)


def unit_vectors(encoder: Any, texts: list[str], task: str, batch_size: int = 128,
                 progress: bool = False) -> np.ndarray:
    """ENCODER's normalised vectors of TEXTS under its prompt for TASK, if it has one: "STS" where they are compared
    by cosine (agreement, support, dedup, reference similarity), "Classification" where a head reads them."""
    return prompted_vectors(encoder, texts, encoder_prompt(encoder, task), batch_size, progress)


def prompted_vectors(encoder: Any, texts: list[str], prompt: str | None, batch_size: int = 128,
                     progress: bool = False) -> np.ndarray:
    """ENCODER's normalised vectors of TEXTS, each prefixed with PROMPT (None: as they are)."""
    return encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                          show_progress_bar=progress, prompt=prompt)


def precision() -> str:
    """The precision critics trained in this process score at, as their card records it."""
    return "bfloat16" if compute_dtype() == torch.bfloat16 else "float32"


def card_dtype(card: dict[str, Any]) -> torch.dtype:
    """The precision a saved critic scores at: the one its dev thresholds were chosen at (float32 for a card
    from before precision was recorded), unless this machine would only emulate bfloat16."""
    return torch.bfloat16 if card.get("precision") == "bfloat16" and bf16_native() else torch.float32


class EmbeddingCritic:
    """A frozen encoder and a logistic head. PROMPT prefixes every text the encoder reads: a new critic takes the
    encoder's "Classification" prompt; a saved one the prompt its card recorded, the one its head was trained under."""

    def __init__(self, encoder: Any, weight: torch.Tensor, bias: torch.Tensor, pair: bool = False,
                 prompt: str | None = None):
        self.encoder, self.weight, self.bias, self.pair = encoder, weight.float(), bias.float(), pair
        self.prompt = prompt

    def embed(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> np.ndarray:
        return prompted_vectors(self.encoder, texts, self.prompt, batch_size, progress)

    def score(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        if self.pair:
            raise SkdError("this critic embeds an item's parts apart: score item rows (score_rows), not texts")
        return self.score_vectors(self.embed(texts, batch_size))

    def score_rows(self, rows: list[dict[str, Any]], batch_size: int = 128) -> np.ndarray:
        return self.score_vectors(self.features(rows, lambda texts: self.embed(texts, batch_size)))

    def features(self, rows: list[dict[str, Any]], embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """What the head reads for item rows, each text embedded by EMBED: the whole item's vector and, with pair
        features, the vectors of what it answers (u) and of its answer (v), u * v and |u - v|."""
        from .verbalize import verbalize_pair, verbalize_rows

        if not rows:
            return np.zeros((0, self.weight.shape[0]), np.float32)
        whole = embed(verbalize_rows(rows))
        if not self.pair:
            return whole
        context, answer = (list(part) for part in zip(*map(verbalize_pair, rows), strict=True))
        u, v = embed_once(context, embed), embed(answer)
        return np.hstack([whole, u, v, u * v, np.abs(u - v)])

    def score_vectors(self, x: np.ndarray) -> np.ndarray:
        """Scores of items already turned into the head's features (`features`)."""
        return torch.sigmoid(torch.from_numpy(x) @ self.weight + self.bias).numpy().astype(np.float64)


def embed_once(texts: list[str], embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """EMBED's vectors of TEXTS, each distinct text encoded once (a head and relation is the context of all its
    tails)."""
    distinct = list(dict.fromkeys(texts))
    at = {t: i for i, t in enumerate(distinct)}
    return embed(distinct)[[at[t] for t in texts]]


class FinetunedCritic:
    def __init__(self, model: Any, tokenizer: Any, max_length: int = 128):
        self.model, self.tokenizer, self.max_length = model.eval(), tokenizer, max_length

    @torch.inference_mode()
    def score(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.model.device)
            out.append(torch.softmax(self.model(**enc).logits.float(), dim=-1)[:, 1].cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


JUDGE_PROMPT = ("Is the following statement plausible and acceptable as commonsense knowledge?\n"
                "Statement: {text}\nAnswer yes or no.")


class LlmJudge:
    """Asks a causal LM a yes/no acceptability question; the score is P(yes) / (P(yes) + P(no)) read from
    the next-token distribution (exact, where sampling would only estimate it)."""

    def __init__(self, model: Any, tokenizer: Any, prompt: str = JUDGE_PROMPT):
        self.model, self.tokenizer, self.prompt = model.eval(), tokenizer, prompt
        tokenizer.padding_side = "left"
        pad_with_eos(tokenizer)
        yes = {tokenizer.encode(w, add_special_tokens=False)[0] for w in ("yes", "Yes", " yes", " Yes")}
        no = {tokenizer.encode(w, add_special_tokens=False)[0] for w in ("no", "No", " no", " No")}
        # a token both start with (SentencePiece's bare "▁" before " yes" and " no") says neither
        self.yes, self.no = sorted(yes - no), sorted(no - yes)
        if not self.yes or not self.no:
            raise SkdError("this tokenizer cannot tell yes from no by a first token: use another judge model")

    def render(self, text: str) -> str:
        message = [{"role": "user", "content": self.prompt.format(text=text)}]
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
        return message[0]["content"] + "\nAnswer:"

    @torch.inference_mode()
    def score(self, texts: list[str], batch_size: int = 16) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer([self.render(t) for t in texts[i:i + batch_size]], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.model.device)
            logp = torch.log_softmax(self.model(**enc).logits[:, -1].float(), dim=-1)
            yes, no = torch.logsumexp(logp[:, self.yes], -1), torch.logsumexp(logp[:, self.no], -1)
            out.append(torch.sigmoid(yes - no).cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def causal_lm(base: str, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """A causal LM (by name, path or embedded default) on this device in its compute precision, and its tokenizer:
    what the judge and the likelihood critic read."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from store import resolve_model
    path = resolve_model(base)
    return (AutoModelForCausalLM.from_pretrained(path, dtype=dtype or compute_dtype()).to(device()),
            AutoTokenizer.from_pretrained(path))


def load_judge(base: str, prompt: str = JUDGE_PROMPT, dtype: torch.dtype | None = None) -> LlmJudge:
    return LlmJudge(*causal_lm(base, dtype), prompt)


def read_card(path: Path, critic_id: str | None = None) -> dict[str, Any]:
    """The card at PATH; with CRITIC_ID, the card of that critic or one line."""
    card_file = Path(path) / "critic.json"
    if not card_file.is_file():
        raise SkdError(f"{path} is not a critic (no critic.json)")
    card = json.loads(card_file.read_text())
    if critic_id is not None and card.get("critic_id") != critic_id:
        raise SkdError(f"{path} holds critic {card.get('critic_id')!r}, not {critic_id!r} as registered: it was "
                       "replaced; train the critic again under a new name")
    return card


def load_critic(path: str | Path, critic_id: str | None = None) -> Critic:
    """The critic saved at PATH, its scores calibrated as on dev when it was trained. With CRITIC_ID (the one the
    catalog registered), a folder that now holds another critic (retrained into it from another corpus) is one
    line: its scores would go under the old id and be cut at the old thresholds."""
    from .calibration import Calibrated

    card = read_card(Path(path), critic_id)
    critic = _load_model(Path(path), card)
    return Calibrated(critic, card["calibration"]) if card.get("calibration") else critic


def _load_model(path: Path, card: dict[str, Any]) -> Critic:
    if card["mode"] == "ensemble":  # its members are critics saved elsewhere, each loaded with its calibration
        from .ensemble import load_ensemble
        return load_ensemble(card, path)
    dtype = card_dtype(card)
    if card["mode"] == "likelihood":
        from .likelihood import load_likelihood
        return load_likelihood(card["base_model"], dtype)
    if card["mode"] == "llm-judge":
        return load_judge(card["base_model"], card["config"].get("prompt") or JUDGE_PROMPT, dtype)
    if card["mode"] == "embedding":
        head = load_file(path / "head.safetensors")
        encoder = sentence_encoder(path / "encoder", dtype)
        # a card from before the prompt was recorded: the saved encoder's own, as it was scored then
        prompt = card["encoder_prompt"] if "encoder_prompt" in card else encoder_prompt(encoder, "Classification")
        return EmbeddingCritic(encoder, head["weight"], head["bias"], pair=bool(card.get("config", {}).get("pair")),
                               prompt=prompt)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained(path / "model", dtype=dtype).to(device())
    return FinetunedCritic(model, AutoTokenizer.from_pretrained(path / "model"),
                           card.get("config", {}).get("max_length", 128))
