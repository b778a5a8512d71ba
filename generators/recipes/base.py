"""A recipe turns inputs into teacher requests and parses completions into items. It writes two hooks;
the generation loop owns batching, progress, provenance and recording failures with their reason."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from store import SkdError, Store
from store.items import REQUIRED

from ..types import Completion, Request


class ParseError(ValueError):
    """A completion that yields no item; the message is the reason recorded in `generations.error`."""


class Recipe:
    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]

    def __init__(self, config: BaseModel):
        self.config = config

    def check_inputs(self) -> None:
        """Read the recipe's input files now, so a bad one fails before a model is loaded."""

    def stages(self) -> list[Recipe]:
        """The recipes to run in order, each its own resumable run (a two-stage recipe returns two)."""
        return [self]

    def requests(self, model: str, seed: int, store: Store | None = None) -> list[Request]:
        raise NotImplementedError

    def parse(self, request: Request, completion: Completion) -> list[dict[str, Any]]:
        """Items (dicts of item fields) from one completion; raises ParseError when there are none."""
        raise NotImplementedError


def validate_config(model: type[BaseModel], data: dict[str, Any], source: str) -> BaseModel:
    """A pydantic model from user data; a bad value becomes one line naming the key and the problem."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise SkdError(f"{source}: {key}: {err['msg']}") from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SkdError(f"no such config file: {path}") from None
    except IsADirectoryError:
        raise SkdError(f"{path} is a folder, not a config file") from None
    except OSError as e:
        raise SkdError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise SkdError(f"{path}: not a TOML file (not valid UTF-8 at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise SkdError(f"{path}: invalid TOML: {e}") from None


def check_item(item: dict[str, Any]) -> dict[str, Any]:
    missing = [f for f in REQUIRED[item["kind"]] if not str(item.get(f) or "").strip()]
    if missing:
        raise ParseError(f"missing {', '.join(missing)}")
    return item
