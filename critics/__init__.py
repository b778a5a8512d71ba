"""Critic models: training from labels, scoring, calibration (thresholds), evaluation reports."""

from .metrics import choose_thresholds, report
from .model import load_critic, read_card
from .train import CriticConfig, train_critic
from .verbalize import verbalize

__all__ = ["CriticConfig", "choose_thresholds", "load_critic", "read_card", "report", "train_critic", "verbalize"]
