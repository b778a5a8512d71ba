"""Task recipes: prompting and parsing for each kind of knowledge."""

from __future__ import annotations

from store import SkdError

from .atomic10x import Atomic10x
from .base import ParseError, Recipe, read_toml, validate_config
from .comparatives import Comparatives
from .generics import Generics
from .rationale import Rationale
from .template import Template

RECIPES: dict[str, type[Recipe]] = {r.name: r for r in (Atomic10x, Rationale, Template, Generics, Comparatives)}


def make_recipe(name: str, config: dict | None = None, source: str = "config") -> Recipe:
    if name not in RECIPES:
        raise SkdError(f"unknown recipe {name!r} (expected one of {', '.join(RECIPES)})")
    cls = RECIPES[name]
    return cls(validate_config(cls.Config, config or {}, source))


__all__ = ["RECIPES", "ParseError", "Recipe", "make_recipe", "read_toml", "validate_config"]
