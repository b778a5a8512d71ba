"""An ensemble critic: the mean of trained critics' calibrated scores, calibrated again and given thresholds on
the dev split the members share. Critics that are good at different things (an MPNet fine-tuned on every CKBP
label, another on the expert labels only) rank better together than either alone (bench/critic_quality.py), and
an ensemble is a critic like any other: `skd critic score`, snapshot cuts and `[critic] use` take it by name."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from store import SkdError, Store, skd_version

from .calibration import apply, calibration_error, fit_platt
from .config import CriticConfig
from .metrics import choose_thresholds, report
from .model import load_critic, read_card
from .train import check_name_free, coverage, label_counts, load_labels, publish, split, staging
from .verbalize import verbalize_rows

# the settings that decide which heads a critic held out for dev: members must agree on them, or the ensemble's
# dev would hold labels some member trained on, and its thresholds would be chosen on seen data
SPLIT_KEYS = ("seed", "dev_fraction", "dev_sources", "labels_where")


class MeanOfCritics:
    """The mean of the members' (calibrated) scores."""

    def __init__(self, members: list[Any]):
        self.members = members

    def score(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        return np.mean([m.score(texts, batch_size=batch_size) for m in self.members], axis=0)


def load_ensemble(card: dict[str, Any]) -> MeanOfCritics:
    return MeanOfCritics([load_critic(m["path"]) for m in card["members"]])


def shared_split(cards: list[dict[str, Any]]) -> CriticConfig:
    """The split settings every member used (one config), or a one-line error naming where they differ."""
    configs = [CriticConfig(**{k: c["config"][k] for k in SPLIT_KEYS if k in c["config"]}) for c in cards]
    for key in SPLIT_KEYS:
        values = {json.dumps(getattr(cfg, key)) for cfg in configs}
        if len(values) > 1:
            raise SkdError(f"the members split dev differently ({key}: {', '.join(sorted(values))}); an ensemble "
                           "needs members trained with the same seed, dev fraction, dev sources and label filter")
    return configs[0]


def build_ensemble(db: str | Path, name: str, members: list[str], out: Path) -> dict[str, Any]:
    """Combine the critics MEMBERS of the corpus at DB into the critic NAME, saved to OUT and registered."""
    if len(set(members)) < 2:
        raise SkdError("an ensemble needs at least two different critics")
    with Store(db) as store:
        check_name_free(store, name)
        rows = [store.critics.get(m) for m in members]
        cards = [read_card(Path(r["path"])) for r in rows]
        split_cfg = shared_split(cards)
        sources = sorted({s for c in cards for s in c["label_sources"]})
        df = load_labels(store, split_cfg.labels_where, sources)
    _, dev = split(df, split_cfg.dev_fraction, split_cfg.seed, split_cfg.dev_sources)
    texts, labels = verbalize_rows(dev.to_dicts()), dev["label"].to_numpy()
    each = [load_critic(r["path"]).score(texts) for r in rows]
    raw = np.mean(each, axis=0)
    cal = fit_platt(raw, labels)
    scores = apply(raw, cal)
    thresholds = choose_thresholds(scores, labels, split_cfg.recalls, split_cfg.precisions)
    card = {"name": name, "critic_id": f"{name}-{uuid.uuid4().hex[:8]}", "mode": "ensemble",
            "base_model": "+".join(c["base_model"] for c in cards), "label_sources": sources,
            "members": [{"name": r["name"], "critic_id": r["critic_id"], "path": str(Path(r["path"]).resolve())}
                        for r in rows],
            "label_counts": label_counts(df), "coverage": coverage(df), "calibration": cal,
            "precision": cards[0].get("precision"),
            "config": {"combine": "mean of calibrated scores", "members": members}
            | {k: getattr(split_cfg, k) for k in SPLIT_KEYS},
            "metrics": {"dev": report(scores, labels, thresholds), "dev_size": dev.height,
                        "dev_calibration_error_raw": calibration_error(raw, labels),
                        "members_dev_auc": {c["name"]: report(s, labels, {})["auc"]
                                            for c, s in zip(cards, each, strict=True)}},
            "thresholds": thresholds, "skd_version": skd_version()}
    return publish(db, card, staging(out), out)
