"""An ensemble critic: trained critics combined on the dev split they share, and given thresholds there. Two ways:
the mean of their calibrated scores, calibrated again; or a stack (critics.stack), a logistic regression over their
logits, optionally with the teacher's own NLL of each item as one more input. Critics that are good at different
things (an MPNet fine-tuned on every CKBP label, another on the expert labels only) rank better together than
either alone (bench/critic_quality.py), and an ensemble is a critic like any other: `skd critic score`, snapshot
cuts and `[critic] use` take it by name."""

from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from store import SkdError, Store, skd_version
from store.models import MPNET

from .agreement import OWN, Encoder, encoder_name
from .calibration import apply, calibration_error, fit_platt
from .config import CriticConfig
from .metrics import choose_thresholds, report
from .model import card_dtype, load_critic, precision, read_card, reads_siblings, reads_teacher_nll, score_rows
from .stack import StackedCritic, fit_stack, reads, signals_of, stack_scores
from .stack import features as stack_features
from .support import Support
from .train import check_name_free, coverage, dev_pool, label_counts, load_labels, publish, split, staging

# the settings that decide which heads a critic held out for dev: members must agree on them, or the ensemble's
# dev would hold labels some member trained on, and its thresholds would be chosen on seen data
SPLIT_KEYS = ("seed", "dev_fraction", "dev_sources", "labels_where")
CUT_KEYS = ("recalls", "precisions")


class MeanOfCritics:
    """The mean of the members' (calibrated) scores."""

    def __init__(self, members: list[Any]):
        self.members = members

    def score(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        return np.mean([m.score(texts, batch_size=batch_size) for m in self.members], axis=0)

    def score_rows(self, rows: list[dict[str, Any]], batch_size: int = 128) -> np.ndarray:
        return np.mean([score_rows(m, rows, batch_size) for m in self.members], axis=0)


def load_ensemble(card: dict[str, Any], path: Path) -> MeanOfCritics | StackedCritic:
    members = [load_critic(m["path"], m.get("critic_id")) for m in card["members"]]
    if not card.get("stack"):
        return MeanOfCritics(members)
    # a card from before the prompt was recorded: the encoder's own, as it was scored then
    prompt = card["encoder_prompt"] if "encoder_prompt" in card else OWN
    encoder = Encoder(card["config"]["encoder"], card_dtype(card), prompt) if card["config"].get("encoder") else None
    support = Support.load(path) if reads(card["stack"], "support") else None
    return StackedCritic(members, card["stack"], encoder, support)


def shared_split(cards: list[dict[str, Any]]) -> CriticConfig:
    """The split settings every member used (one config), or a one-line error naming where they differ."""
    configs = [CriticConfig(**{k: c["config"][k] for k in SPLIT_KEYS if k in c["config"]}) for c in cards]
    for key in SPLIT_KEYS:
        values = {json.dumps(getattr(cfg, key)) for cfg in configs}
        if len(values) > 1:
            raise SkdError(f"the members split dev differently ({key}: {', '.join(sorted(values))}); an ensemble "
                           "needs members trained with the same seed, dev fraction, dev sources and label filter")
    # its thresholds at every recall and precision a member has, so a cut that works on a member works on it
    cuts = {k: sorted({x for c in cards for x in c["config"].get(k, getattr(configs[0], k))}) for k in CUT_KEYS}
    return configs[0].model_copy(update=cuts)


def build_ensemble(db: str | Path, name: str, members: list[str], out: Path, combine: str = "mean",
                   teacher_nll: bool = False, agreement: bool = False, support: str | None = None,
                   encoder: str = MPNET) -> dict[str, Any]:
    """Combine the critics MEMBERS of the corpus at DB into the critic NAME, saved to OUT and registered. COMBINE is
    "mean" or "stack". A stack may also weigh signals besides the members (and then one member will do): the
    teacher's NLL of each item (TEACHER_NLL), its agreement with its siblings (AGREEMENT), its support in the
    human-written positives of the label source SUPPORT; the last two under the sentence encoder ENCODER."""
    asked = [k for k, on in (("nll", teacher_nll), ("agreement", agreement), ("support", support)) if on]
    stacked = combine == "stack" or bool(asked)
    if len(set(members)) < (1 if asked else 2) or len(set(members)) < len(members):
        raise SkdError("an ensemble needs at least two different critics (one, stacked with the teacher's NLL, "
                       "sibling agreement or support)")
    encoder = encoder_name(encoder) if agreement or support else None
    enc = Encoder(encoder) if encoder else None  # a missing encoder fails here, before any scoring
    with Store(db) as store:
        check_name_free(store, name, out)
        rows = [store.critics.get(m) for m in members]
        cards = [read_card(Path(r["path"])) for r in rows]
        split_cfg = shared_split(cards)
        sources = sorted({s for c in cards for s in c["label_sources"]})
        df = load_labels(store, split_cfg.labels_where, sources,
                         teacher_nll=teacher_nll or any(map(reads_teacher_nll, cards)),
                         siblings=agreement or any(map(reads_siblings, cards)))
        pool = support_pool(store, support, enc) if support else None
    pool_now = dev_pool(df, split_cfg.dev_sources)
    check_dev_pool(cards, pool_now)
    train, dev = split(df, split_cfg.dev_fraction, split_cfg.seed, split_cfg.dev_sources)
    dev_rows, labels = dev.to_dicts(), dev["label"].to_numpy()
    each = [score_rows(load_critic(r["path"], r["critic_id"]), dev_rows) for r in rows]
    signals = signals_of(dev_rows, enc, agreement, pool)
    if pool is not None:  # the source's own labels are the reference, not items it judges
        signals["support"][dev["source"].to_numpy() == support] = np.nan
    fits, cal, raw, scores, how = combine_on_dev(each, signals, labels, stacked, asked)
    thresholds = choose_thresholds(scores, labels, split_cfg.recalls, split_cfg.precisions)
    card = {"name": name, "critic_id": f"{name}-{uuid.uuid4().hex[:8]}", "mode": "ensemble",
            "base_model": "+".join(c["base_model"] for c in cards), "label_sources": sources,
            "members": [{"name": r["name"], "critic_id": r["critic_id"], "path": str(Path(r["path"]).resolve())}
                        for r in rows],
            "label_counts": label_counts(df), "coverage": coverage(train),
            "dev_pool": pool_now, "calibration": cal, "stack": fits,
            # what its encoder ran at here, which scoring must match (the members score at their own precision)
            "precision": precision() if enc else cards[0].get("precision"),
            **({"encoder_prompt": enc.prompt} if enc else {}),  # and the prompt its cosines were made under
            "config": {"combine": how, "members": members, "teacher_nll": teacher_nll, "agreement": agreement,
                       "support": support, "encoder": encoder}
            | {k: getattr(split_cfg, k) for k in SPLIT_KEYS + CUT_KEYS},
            "metrics": {"dev": report(scores, labels, thresholds), "dev_size": dev.height,
                        "dev_calibration_error_raw": calibration_error(raw, labels),
                        "members_dev_auc": {c["name"]: report(s, labels, {})["auc"]
                                            for c, s in zip(cards, each, strict=True)}}
            | {f"dev_with_{'teacher_nll' if k == 'nll' else k}": int((~np.isnan(signals[k])).sum()) for k in asked},
            "thresholds": thresholds, "skd_version": skd_version()}
    with staging(out) as tmp:
        if pool is not None:
            pool.save(tmp)
        return publish(db, card, tmp, out)


def check_dev_pool(cards: list[dict[str, Any]], now: str | None) -> None:
    """A one-line error where the dev sources have labelled new heads since a member was trained: the shared split
    would now put in dev heads that member trained on (cards from before the pool was recorded are not checked)."""
    stale = [c["name"] for c in cards if c.get("dev_pool") not in (None, now)]
    if stale:
        raise SkdError(f"the labels of {', '.join(cards[0]['config']['dev_sources'])} changed since critic "
                       f"{stale[0]!r} was trained: dev would hold heads it trained on; retrain it")


def support_pool(store: Store, source: str, enc: Encoder) -> Support:
    """The human-written positives of the label SOURCE, embedded; a one-line error where it holds none."""
    rows = [r for r in store.labels.select(None, [source]).to_dicts() if r["label"] == 1]
    if not rows:
        raise SkdError(f"label source {source!r} holds no positive labels to support with; import human-written "
                       "knowledge with `skd labels import FILE --format atomic2020 --source NAME`")
    return Support.from_labels(rows, source, enc.encode)


def combine_on_dev(each: list[np.ndarray], signals: dict[str, np.ndarray], labels: np.ndarray, stacked: bool,
                   asked: list[str]):
    """The combination's fits (a stack reading the ASKED signals) or calibration (a mean), its raw and final dev
    scores, and what it is."""
    if stacked:
        fits = stack_fits(each, {k: signals[k] for k in asked}, labels)
        scores = stack_scores(each, signals, fits)  # a fit on dev: already a probability, no Platt step
        how = "logistic regression over the members' logits" + "".join(f" and {WHAT[k]}" for k in asked)
        return fits, None, scores, scores, how
    raw = np.mean(each, axis=0)
    cal = fit_platt(raw, labels)
    return None, cal, raw, apply(raw, cal), "mean of calibrated scores"


WHAT = {"nll": "the teacher's NLL", "agreement": "sibling agreement", "support": "support"}
WHERE_FROM = {"nll": "import labels with an `nll` in extra, or label items generated with `logprobs = true`",
              "agreement": "label several of the teacher's samples for the same question (or head and relation)",
              "support": "label items of the kinds and relations the support source holds, from other sources"}


def stack_fits(each: list[np.ndarray], signals: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    """The members-only fit, and one fit per combination of the SIGNALS over the dev labels that know them all. Each
    signal alone needs at least ten dev labels of each class that know it, or a one-line error says where it comes
    from; a combination with fewer is left out (its items get the fit of one signal)."""
    fits: dict[str, Any] = {"members": fit_stack(stack_features(each), labels), "with": {}}
    names = list(signals)
    for combo in (c for n in range(1, len(names) + 1) for c in itertools.combinations(names, n)):
        known = np.logical_and.reduce([~np.isnan(signals[k]) for k in combo])
        if min(int(labels[known].sum()), int((1 - labels[known]).sum())) < 10:
            if len(combo) > 1:
                continue
            raise SkdError(f"only {int(known.sum())} dev labels carry {WHAT[combo[0]]} (need 10 of each class): "
                           f"{WHERE_FROM[combo[0]]}")
        x = stack_features([s[known] for s in each], *(signals[k][known] for k in combo))
        fits["with"]["+".join(combo)] = fit_stack(x, labels[known])
    return fits
