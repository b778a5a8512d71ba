"""Student fine-tuning from a snapshot, and evaluation of students and teachers."""

from .fit import StudentOptions, TrainConfig, fit
from .formats import FORMATS

__all__ = ["FORMATS", "StudentOptions", "TrainConfig", "fit"]
