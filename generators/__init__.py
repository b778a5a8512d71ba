"""Teacher backends (vLLM, transformers, OpenAI-compatible HTTP) and task recipes (prompting + parsing)."""

from .backends import BACKENDS, Teacher, make_teacher
from .generate import GenerateSummary, planned_requests, run_generation
from .recipes import RECIPES, ParseError, Recipe, make_recipe
from .types import Completion, Constraint, Request, Sampling

__all__ = ["BACKENDS", "RECIPES", "Completion", "Constraint", "GenerateSummary", "ParseError", "Recipe", "Request",
           "Sampling", "Teacher", "make_recipe", "make_teacher", "planned_requests", "run_generation"]
