"""Student fine-tuning from a snapshot, and evaluation of students and teachers."""

from .fit import TrainConfig, fit
from .formats import FORMATS

__all__ = ["FORMATS", "TrainConfig", "fit"]
