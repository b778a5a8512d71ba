"""Train a critic from the `labels` table: split by head (or question) so no group is in both train
and dev, balance the classes, stop early on dev AUC, choose thresholds on dev, save and register."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors.torch import save_file

from store import SkdError, Store, pad_with_eos, resolve_model, skd_version
from store.hardware import bf16_native, compute_dtype

from .agreement import encoder_name
from .calibration import apply, calibration_error, fit_platt
from .config import CriticConfig
from .metrics import choose_thresholds, report
from .model import (
    JUDGE_PROMPT,
    EmbeddingCritic,
    FinetunedCritic,
    device,
    encoder_prompt,
    load_judge,
    precision,
    score_rows,
)
from .verbalize import verbalize_rows


def group_key(row: dict[str, Any]) -> str:
    """The head (or question, or text) as an item id normalises it (NFC, lower case, runs of whitespace to one
    space): two labels of one item, from sources that spaced its head differently, split together."""
    text = row.get("head") or row.get("question") or row.get("text") or ""
    return " ".join(unicodedata.normalize("NFC", text).lower().split())


def load_labels(store: Store, where: str | None, sources: list[str] | None = None,
                teacher_nll: bool = False, siblings: bool = False) -> pl.DataFrame:
    """The labels to train on, in a fixed order: the same labels always train the same critic (with the
    teacher's NLL of each and its siblings, where asked: a stack's inputs)."""
    df = store.labels.select(where, sources, teacher_nll=teacher_nll, siblings=siblings)
    if df.height == 0:
        which = " and ".join(x for x in (f"match {where!r}" if where else "",
                                          f"come from {', '.join(sources)}" if sources else "") if x)
        raise SkdError("no labels" + (f" {which}" if which else "") + "; import some with `skd labels import`")
    missing = sorted(set(sources or ()) - set(df["source"].to_list()))
    if missing:  # a typo trained on the other sources alone, the config still naming it
        raise SkdError(f"no labels{f' matching {where!r}' if where else ''} from source {missing[0]!r}; "
                       f"the sources are {', '.join(sorted(set(df['source'].to_list())))}")
    classes = set(df["label"].to_list())
    if len(classes) < 2:
        raise SkdError(f"the labels have only one class ({classes.pop()}); a critic needs acceptable and not")
    return df


def split(df: pl.DataFrame, dev_fraction: float, seed: int,
          dev_sources: list[str] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Deterministic split by group (head or question), so no group is in both parts. With DEV_SOURCES, dev
    holds only those sources' labels (of the groups they label); the other labels of dev groups are left out of
    both parts, so that no head is trained on and evaluated on."""
    def in_dev(key: str) -> bool:
        h = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16)
        return h / 0xFFFFFFFF < dev_fraction
    keys = [group_key(r) for r in df.iter_rows(named=True)]
    eligible = ({k for k, s in zip(keys, df["source"].to_list(), strict=True) if s in dev_sources}
                if dev_sources else set(keys))
    dev_mask = pl.Series([k in eligible and in_dev(k) for k in keys], dtype=pl.Boolean)
    train, dev = df.filter(~dev_mask), df.filter(dev_mask)
    if dev_sources:
        dev = dev.filter(pl.col("source").is_in(dev_sources))
    if train["label"].n_unique() < 2 or dev["label"].n_unique() < 2:
        which = f" from {', '.join(dev_sources)}" if dev_sources else ""
        raise SkdError(f"too few labels{which} to split into train and dev with both classes; add labels")
    return train, dev


def dev_pool(df: pl.DataFrame, dev_sources: list[str] | None) -> str | None:
    """With DEV_SOURCES, the heads that may go to dev are those they label (`split`), so a label of theirs for a new
    head can move a head a critic trained on into dev: a digest of that pool, recorded so an ensemble can refuse
    members whose pool has changed. Without, the split is by hash alone and new labels move no head."""
    if not dev_sources:
        return None
    keys = sorted({group_key(r) for r in df.filter(pl.col("source").is_in(dev_sources)).iter_rows(named=True)})
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def example_weights(df: pl.DataFrame, cfg: CriticConfig, training: bool = True) -> np.ndarray:
    """Each label's weight in the loss: its source's times its class's, mean 1, the classes balanced by what they
    weigh once the sources are weighted (by counts, a source of another positive rate weighing 3, or one weighing 0,
    tipped the balance). Expert labels can count more than crowd labels without discarding either. Dev labels (not
    TRAINING) whose sources all weigh 0 weigh 1 each: a source kept out of training can still be the dev split
    (`--dev-source`)."""
    labels = df["label"].to_numpy()
    w = np.asarray([cfg.source_weights.get(s, 1.0) for s in df["source"].to_list()], dtype=np.float64)
    per_class = np.bincount(labels, weights=w, minlength=2)  # each class's weight before balancing
    balance = np.divide(per_class.sum(), 2 * per_class, out=np.zeros(2), where=per_class > 0)
    w = w * balance[labels]
    if not w.any() and not training:
        return np.ones(len(w), dtype=np.float32)
    if not w.any():
        raise SkdError(f"every training label's source weighs 0 ({', '.join(sorted(set(df['source'])))})")
    return (w / w.mean()).astype(np.float32)


def targets(df: pl.DataFrame, soft: bool) -> np.ndarray:
    """What each label trains toward: 0 or 1, or with SOFT the share of its annotators who accepted it
    (where it has votes). Half of the CommonsenseQA rationale labels are 2-to-1 votes either way; whether learning
    how sure the annotators were ranks better than the majority is not settled (the bench: for MiniLM, within the
    spread between seeds)."""
    hard = df["label"].to_numpy().astype(np.float32)
    if not soft:
        return hard
    pos, total = (df[c].fill_null(0).to_numpy().astype(np.float32) for c in ("votes_pos", "votes_total"))
    return np.where(total > 0, pos / np.maximum(total, 1), hard).astype(np.float32)


def group_ids(df: pl.DataFrame) -> list[int]:
    """Each label's group (head or question) as a small integer, for the ranking loss."""
    ids: dict[str, int] = {}
    return [ids.setdefault(group_key(r), len(ids)) for r in df.iter_rows(named=True)]


def coverage(df: pl.DataFrame) -> dict[str, dict[str, int]]:
    """What the critic was trained on (its train split: a relation whose labels all fell in dev, or were left out
    of both parts by `dev_sources`, taught it nothing), per kind and per relation: scoring outside it is flagged."""
    def counts(col: str) -> dict[str, int]:
        vals = [v for v in df[col].to_list() if v is not None]
        return {str(k): int(n) for k, n in zip(*np.unique(vals, return_counts=True), strict=True)} if vals else {}
    return {"kinds": counts("kind"), "relations": counts("relation")}


_EMBEDDED: dict[tuple[str, str], np.ndarray] = {}  # (encoder and precision, text) -> vector, for this process


def cached_embeddings(critic: EmbeddingCritic, base: str, texts: list[str]) -> np.ndarray:
    """The frozen encoder's vectors, each text encoded once per process: cross-validation trains a head per
    fold on mostly the same texts, and encoding them is nearly all of an embedding critic's cost."""
    encoder = f"{base}@{next(critic.encoder.parameters()).dtype}@{critic.prompt!r}"
    if any(key[0] != encoder for key in _EMBEDDED):
        _EMBEDDED.clear()  # one encoder's vectors at a time
    todo = list(dict.fromkeys(t for t in texts if (encoder, t) not in _EMBEDDED))
    if todo:
        _EMBEDDED.update(zip(((encoder, t) for t in todo), critic.embed(todo), strict=True))
    return np.stack([_EMBEDDED[(encoder, t)] for t in texts]) if texts else np.zeros((0, 1), np.float32)


def fit_embedding(cfg: CriticConfig, base: str, train: pl.DataFrame, dev: pl.DataFrame, out: Path):
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(cfg.seed)
    encoder = SentenceTransformer(base, device=device())
    encoder.save(str(out / "encoder"))  # at the base's own precision, before it is cast to compute in
    critic = EmbeddingCritic(encoder.to(compute_dtype()), torch.zeros(1), torch.zeros(1), pair=cfg.pair,
                             prompt=encoder_prompt(encoder, "Classification"))
    x = torch.from_numpy(critic.features(train.to_dicts(), lambda texts: cached_embeddings(critic, base, texts)))
    y = torch.from_numpy(targets(train, cfg.soft_labels))
    w = torch.from_numpy(example_weights(train, cfg))
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, y, weight=w)
                + cfg.weight_decay * weight.pow(2).sum())
        loss.backward()
        return loss
    opt.step(closure)
    critic.weight, critic.bias = weight.detach(), bias.detach()
    save_file({"weight": critic.weight.contiguous(), "bias": critic.bias.contiguous()}, out / "head.safetensors")
    return critic


def fitted_length(tok: Any, texts: list[str], cap: int = 256) -> int:
    """Tokens enough for 99% of `texts` (rounded up to 8): a fixed default either cut most explanations
    short (rationales run to 80+ tokens) or padded short triples for nothing."""
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=cap)["input_ids"]] or [8]
    return int(min(cap, -(-np.percentile(lengths, 99) // 8) * 8))


def pad_for_decoder(tok: Any, model: Any) -> None:
    """A decoder (GPT-2, Llama, Qwen) classifies from its last token that is not padding, so its config needs
    the pad id, and its tokenizer often has no pad token at all: batches of more than one text then fail."""
    pad_with_eos(tok)
    if tok.pad_token is None:
        raise SkdError(f"{model.name_or_path}: its tokenizer has neither a pad nor an end-of-text token to pad "
                       "batches with")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id


class GroupOrder(torch.utils.data.Sampler):
    """Training order for a ranking loss: whole groups, the groups shuffled anew each epoch (seeded), so a batch
    holds each group's members together; only a group cut by a batch edge loses the pairs across that edge."""

    def __init__(self, groups: list[int], seed: int):
        members: dict[int, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        self.groups, self.size, self.rng = list(members.values()), len(groups), np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        for g in self.rng.permutation(len(self.groups)):
            yield from self.groups[g]


def rank_loss(score: torch.Tensor, target: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Pairwise logistic loss over the pairs of one group whose targets differ, each weighted by the gap: a 3-of-3
    explanation should outrank a 0-of-3 one of the same question more surely than a 2-of-3 one a 1-of-3 one."""
    gap = target[:, None] - target[None, :]  # > 0 where i should rank above j
    pairs = (group[:, None] == group[None, :]) & (gap > 0)
    if not pairs.any():
        return score.new_zeros(())
    diff = score[:, None] - score[None, :]
    return (torch.nn.functional.softplus(-diff)[pairs] * gap[pairs]).sum() / gap[pairs].sum()


def weighted_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cross-entropy toward TARGET (0/1, or the vote share), each label times its weight, summed and divided by the
    batch's size. The weights have mean 1 over the training labels, so every batch is a sample of the weighted loss
    of the whole set. Dividing by the batch's total weight instead (its weighted mean, as before) cancelled the
    weights of any batch that is all one class or one source, which length-grouped batches often are: a source
    weighing 3 counted as 1 there. A batch of weight-0 labels only adds nothing (0, not 0 / 0)."""
    per_class = torch.stack([1 - target, target], -1)  # a probability per class
    loss = torch.nn.functional.cross_entropy(logits, per_class, reduction="none")
    return (loss * weight).sum() / len(weight)


def fit_finetune(cfg: CriticConfig, base: str, train: pl.DataFrame, dev: pl.DataFrame, out: Path,
                 on_step: Callable[[int, int], None] | None = None):
    from datasets import Dataset
    from sklearn.metrics import roc_auc_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    class Steps(TrainerCallback):  # the caller's progress display, step by step
        def on_step_end(self, args, state, control, **kw):
            if on_step:
                on_step(state.global_step, state.max_steps)

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    if cfg.freeze_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    pad_for_decoder(tok, model)
    train_texts = verbalize_rows(train.to_dicts())
    max_length = cfg.max_length or fitted_length(tok, train_texts)

    def dataset(texts: list[str], df: pl.DataFrame, soft: bool, training: bool = True) -> Dataset:
        ds = Dataset.from_dict({"text": texts, "label": df["label"].to_list(),
                                "weight": example_weights(df, cfg, training).tolist(),
                                "target": targets(df, soft).tolist(),
                                **({"group": group_ids(df)} if cfg.rank_weight > 0 else {})})  # only to rank
        return ds.map(lambda b: tok(b["text"], truncation=True, max_length=max_length), batched=True,
                      remove_columns=["text"])

    class WeightedTrainer(Trainer):  # per-example weights (balanced classes, weighted sources) and targets
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            _, weight, target = inputs.pop("labels"), inputs.pop("weight"), inputs.pop("target")
            group = inputs.pop("group", None)
            outputs = model(**inputs)
            logits = outputs.logits.float()
            loss = weighted_loss(logits, target, weight)
            if cfg.rank_weight > 0:
                loss = loss + cfg.rank_weight * rank_loss(logits[:, 1] - logits[:, 0], target, group)
            return (loss, outputs) if return_outputs else loss

        def _get_train_sampler(self, train_dataset=None):
            if cfg.rank_weight > 0:  # batches of whole groups, or the ranking loss has few pairs to rank
                return GroupOrder((self.train_dataset if train_dataset is None else train_dataset)["group"],
                                  cfg.seed)
            return super()._get_train_sampler(train_dataset)

    def auc(pred) -> dict[str, float]:
        logits = torch.tensor(pred.predictions)
        return {"auc": float(roc_auc_score(pred.label_ids, torch.softmax(logits, -1)[:, 1].numpy()))}

    steps = cfg.max_steps if cfg.max_steps > 0 else int(-(-train.height // cfg.batch_size) * cfg.epochs)
    ckpt = Path(tempfile.mkdtemp(prefix="skd-critic-"))
    args = TrainingArguments(
        output_dir=str(ckpt), per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=128,
        learning_rate=cfg.lr, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, seed=cfg.seed,
        eval_strategy="steps", eval_steps=cfg.eval_steps, save_strategy="steps", save_steps=cfg.eval_steps,
        save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="auc", greater_is_better=True,
        logging_steps=max(1, cfg.eval_steps // 4), report_to=[], warmup_steps=max(1, steps // 16),
        use_cpu=device() == "cpu", bf16=bf16_native(), remove_unused_columns=False,  # keep the weight column
        train_sampling_strategy="group_by_length",  # batches of like lengths: little padding with dynamic padding
        disable_tqdm=True)
    trainer = WeightedTrainer(model=model, args=args, train_dataset=dataset(train_texts, train, cfg.soft_labels),
                              eval_dataset=dataset(verbalize_rows(dev.to_dicts()), dev, False, False),  # majority
                              data_collator=DataCollatorWithPadding(tok), compute_metrics=auc,
                              callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.patience), Steps()])
    trainer.remove_callback(PrinterCallback)  # its log dicts went to stdout, where --json prints the card
    trainer.train()
    trainer.model.save_pretrained(out / "model", safe_serialization=True)
    tok.save_pretrained(out / "model")
    shutil.rmtree(ckpt, ignore_errors=True)
    return FinetunedCritic(trainer.model.to(compute_dtype()), tok, max_length)  # saved in float32, scores as loaded


def fit_judge(cfg: CriticConfig, base: str, train: pl.DataFrame, dev: pl.DataFrame, out: Path):
    """Nothing to train: the labels only calibrate the thresholds (on dev)."""
    return load_judge(base, cfg.prompt or JUDGE_PROMPT)


_LIKELIHOOD: dict[str, Any] = {}  # base -> its likelihood critic, for this process (its cache with it)


def fit_likelihood(cfg: CriticConfig, base: str, train: pl.DataFrame, dev: pl.DataFrame, out: Path):
    """Nothing to train either; the LM is loaded once per process, so cross-validation computes each label's
    likelihood once (the folds' dev splits overlap)."""
    from .likelihood import load_likelihood

    if base not in _LIKELIHOOD:
        _LIKELIHOOD.clear()
        _LIKELIHOOD[base] = load_likelihood(base, keep=True)
    return _LIKELIHOOD[base]


def fit_critic(cfg: CriticConfig, train: pl.DataFrame, dev: pl.DataFrame, out: Path,
               on_step: Callable[[int, int], None] | None = None) -> tuple[Any, np.ndarray, dict[str, Any] | None]:
    """Train on TRAIN (early stopping on DEV) into OUT; the critic, its raw dev scores and its calibration.
    ON_STEP(step, steps) follows a fine-tune (the other modes train in seconds)."""
    base = resolve_model(cfg.base)
    with deterministic(cfg.seed):
        if cfg.mode == "finetune":
            critic = fit_finetune(cfg, base, train, dev, out, on_step)
        else:
            critic = {"embedding": fit_embedding, "llm-judge": fit_judge,
                      "likelihood": fit_likelihood}[cfg.mode](cfg, base, train, dev, out)
    raw = label_scores(critic, base, dev.to_dicts())
    return critic, raw, fit_platt(raw, dev["label"].to_numpy()) if cfg.calibrate else None


def label_scores(critic: Any, base: str, rows: list[dict[str, Any]]) -> np.ndarray:
    """Raw scores of labels; a frozen encoder's vectors come from the per-process cache, so that
    cross-validation encodes each label text once, whichever fold's dev or held-out part it falls in."""
    if isinstance(critic, EmbeddingCritic):
        return critic.score_vectors(critic.features(rows, lambda texts: cached_embeddings(critic, base, texts)))
    return score_rows(critic, rows)


def train_critic(db: str | Path, name: str, cfg: CriticConfig, out: Path,
                 on_step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train, choose thresholds on dev, save to `out` and register in `critics`; returns the card. The corpus
    is open only to read the labels and to register the critic: readers and writers work while it trains."""
    with Store(db) as store:  # for writing, like the callers that may hold it in this process
        check_name_free(store, name, out)
        df = load_labels(store, cfg.labels_where, cfg.sources)
    unweighed = sorted(set(cfg.source_weights) - set(df["source"].to_list()))
    if unweighed:  # a typo weighed nothing, the card still naming the weight
        raise SkdError(f"--source-weights names {unweighed[0]!r}, which holds none of these labels (sources: "
                       f"{', '.join(sorted(set(df['source'].to_list())))})")
    train, dev = split(df, cfg.dev_fraction, cfg.seed, cfg.dev_sources)
    with staging(out) as tmp:
        return publish(db, fitted_card(name, cfg, df, train, dev, tmp, on_step), tmp, out)


def fitted_card(name: str, cfg: CriticConfig, df: pl.DataFrame, train: pl.DataFrame, dev: pl.DataFrame, tmp: Path,
                on_step: Callable[[int, int], None] | None) -> dict[str, Any]:
    """Fit the critic into TMP, choose its thresholds on dev; its card. A base folder is recorded as an absolute
    path: an embedding, likelihood or judge critic reloads its base to score, from any directory or Ray worker."""
    cfg = cfg.model_copy(update={"base": encoder_name(cfg.base)})
    critic, raw, cal = fit_critic(cfg, train, dev, tmp, on_step)
    if isinstance(critic, FinetunedCritic):  # the card records the length the critic was trained at
        cfg = cfg.model_copy(update={"max_length": critic.max_length})
    dev_labels = dev["label"].to_numpy()
    dev_scores = apply(raw, cal)
    thresholds = choose_thresholds(dev_scores, dev_labels, cfg.recalls, cfg.precisions)
    metrics = {"dev": report(dev_scores, dev_labels, thresholds), "train_size": train.height, "dev_size": dev.height,
               "dev_calibration_error_raw": calibration_error(raw, dev_labels)}
    card = {"name": name, "critic_id": f"{name}-{uuid.uuid4().hex[:8]}", "mode": cfg.mode, "base_model": cfg.base,
            "label_sources": sorted(set(df["source"].to_list())),
            "label_counts": label_counts(df), "coverage": coverage(train), "dev_pool": dev_pool(df, cfg.dev_sources),
            "calibration": cal, "precision": precision(),
            "config": cfg.model_dump(mode="json"), "metrics": metrics, "thresholds": thresholds,
            "skd_version": skd_version()}
    if isinstance(critic, EmbeddingCritic):  # what the head was trained on: each text under this prompt
        card["encoder_prompt"] = critic.prompt
    return card


def label_counts(df: pl.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in zip(*np.unique(df["label"].to_numpy(), return_counts=True), strict=True)}


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A new empty folder beside OUT to build the artifact in, this training's own (two trainings into one OUT never
    share one); `publish` moves it to OUT when it is whole, and a failed training leaves nothing half built."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already where it was published


def publish(db: str | Path, card: dict[str, Any], tmp: Path, out: Path) -> dict[str, Any]:
    """Write CARD into the finished artifact TMP, move it to OUT and register it: a critic is in the catalog
    whole or not at all."""
    (tmp / "critic.json").write_text(json.dumps(card, indent=2))
    with Store(db) as store:
        check_name_free(store, card["name"], out)  # another process may have registered either meanwhile
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        store.critics.register(card, str(out.resolve()))
    return card


def check_name_free(store: Store, name: str, out: Path | None = None) -> None:
    """NAME is no critic's, and OUT (which publishing replaces) is new, empty or a critic artifact no catalog entry
    uses: a folder that holds a registered critic (at any depth), the corpus, or anything else is refused
    (publishing deleted whatever --out named: `--out DB.d/critics` took every critic with it)."""
    if store.critics.exists(name):
        raise SkdError(f"a critic named {name!r} exists; choose another name")
    if out is None or not out.exists():
        return
    where = out.resolve()
    holder = next((r["name"] for r in store.critics.all() if r["path"] and
                   (Path(r["path"]).resolve() == where or where in Path(r["path"]).resolve().parents)), None)
    if holder:
        raise SkdError(f"{out} holds critic {holder!r}; choose another --out")
    if where == store.path.resolve().parent or where in store.path.resolve().parents:
        raise SkdError(f"{out} holds the corpus {store.path.name}; choose another --out")
    if not out.is_dir() or (any(out.iterdir()) and not (out / "critic.json").is_file()):
        raise SkdError(f"{out} exists and is not a critic's folder; choose a new or empty --out")


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seeded, deterministic kernels: the same labels train the same critic, so two runs of a pipeline
    give the same scores and a snapshot cut near a threshold is reproducible."""
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])  # the caller's setting, strict or warning
