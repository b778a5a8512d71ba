"""Critic models: training from labels, scoring, calibration (thresholds), evaluation reports.

Names load from their modules on first use (PEP 562): a config (`critics.config`, `critics.cut`) loads
without torch, so a pipeline file is checked and `--help` shown before any model library is imported."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    ".config": ("CriticConfig",),
    ".cut": ("DEFAULT_RECALL", "RECALL_GRID", "CriticCut", "threshold_of"),
    ".ensemble": ("build_ensemble",),
    ".metrics": ("choose_thresholds", "report"),
    ".model": ("Critic", "load_critic", "read_card", "score_rows"),
    ".train": ("train_critic",),
    ".verbalize": ("verbalize",),
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}
__all__ = ["DEFAULT_RECALL", "RECALL_GRID", "Critic", "CriticConfig", "CriticCut", "build_ensemble",
           "choose_thresholds", "load_critic", "read_card", "report", "score_rows", "threshold_of", "train_critic",
           "verbalize"]


def __getattr__(name: str) -> Any:
    if name not in _MODULE:
        raise AttributeError(f"module 'critics' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE[name], __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .config import CriticConfig
    from .cut import DEFAULT_RECALL, RECALL_GRID, CriticCut, threshold_of
    from .ensemble import build_ensemble
    from .metrics import choose_thresholds, report
    from .model import Critic, load_critic, read_card
    from .train import train_critic
    from .verbalize import verbalize
