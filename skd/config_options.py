"""`config_options` makes a command's options from a component's pydantic config model, so a stage's defaults
and help are written once (in the model) and the CLI, the pipeline's TOML table and the Python API all read
them from there."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel

from generators.recipes.base import validate_config
from store import SkdError

SCALARS = (str, int, float, bool, Path)


class Text:
    """A field typed on the command line as text and parsed into the model's value (a split, a pair, a list)."""

    def __init__(self, parse: Callable[[str], Any], show: Callable[[Any], str] = str):
        self.parse, self.show = parse, show


def floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SkdError(f"{text!r}: expected numbers separated by commas, e.g. 0.5,0.8") from None


FLOATS = Text(floats, lambda v: ",".join(f"{x:g}" for x in v))


def pairs(text: str) -> dict[str, float]:
    """'train=0.9,test=0.1' -> {'train': 0.9, 'test': 0.1} (a name may hold '=' or ':'; the last '=' splits)."""
    try:
        return {k.strip(): float(v) for k, v in (part.rsplit("=", 1) for part in text.split(",") if part.strip())}
    except ValueError:
        raise SkdError(f"{text!r}: expected NAME=NUMBER,... e.g. train=0.9,test=0.1") from None


PAIRS = Text(pairs, lambda v: ",".join(f"{k}={x:g}" for k, x in v.items()))


def _plain(annotation: Any) -> tuple[Any, bool]:
    """The type inside `X | None`, and whether None is allowed."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), True
    return annotation, False


def _option(name: str, field: Any, flag: str | None, text: Text | None) -> inspect.Parameter:
    kind, optional = _plain(field.annotation)
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    if text is not None:
        kind, default = str, (None if default is None else text.show(default))
    elif typing.get_origin(kind) is Literal:
        pass  # typer offers the choices itself
    elif typing.get_origin(kind) is list and typing.get_args(kind)[0] in SCALARS:
        default = default or None  # typer's repeatable options take None for "none given"
    elif kind not in SCALARS:
        raise TypeError(f"{name}: give a Text parser for a {kind} field")
    names = [flag or "--" + name.replace("_", "-")]
    if kind is bool and flag is None:
        names = [f"--{name.replace('_', '-')}/--no-{name.replace('_', '-')}"]
    opt = typer.Option(*names, help=field.description or "")
    annotation = Annotated[(kind | None) if optional or default is None else kind, opt]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=... if field.is_required() else default)


def config_options(model: type[BaseModel], source: str, *, skip: tuple[str, ...] = (),
                   flags: dict[str, str] | None = None, text: dict[str, Text] | None = None):
    """Decorate `fn(cfg, **own_options)`: the command gets one option per field of MODEL (name, default and help
    from the model) before its own, and `fn` receives the validated model; a bad value is one line."""
    flags, text = flags or {}, text or {}

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn, include_extras=True)  # typer reads annotations, not the signature
        own = [p.replace(annotation=hints[n]) for n, p in inspect.signature(fn).parameters.items() if n != "cfg"]
        fields = [_option(n, f, flags.get(n), text.get(n)) for n, f in model.model_fields.items() if n not in skip]
        taken = {p.name for p in own}

        @functools.wraps(fn)
        def command(**kw: Any) -> Any:
            data = {p.name: kw.pop(p.name) for p in fields if p.name not in taken}
            data = {k: text[k].parse(v) if k in text and isinstance(v, str) else v for k, v in data.items()
                    if v is not None or not model.model_fields[k].is_required()}
            data = {k: v for k, v in data.items() if v is not None or _plain(model.model_fields[k].annotation)[1]}
            return fn(validate_config(model, data, source), **kw)

        positional = [p for p in own if p.default is inspect.Parameter.empty]
        rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in positional]
        command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in positional]
            + [p for p in fields if p.name not in taken] + rest)
        command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
        del command.__wrapped__  # typer must read the signature above, not fn's
        return command
    return wrap
