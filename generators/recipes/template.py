"""A user's Jinja2 prompt over the rows of an input table, with a regex or JSON parser: new kinds of
knowledge (comparatives, generics, document-grounded Q&A) without code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import jinja2
import jsonschema
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from store import KINDS, SkdError, Store

from ..constraints import cased, make_lexical
from ..types import Completion, Constraint, Request, Sampling, derive_seed
from .base import ParseError, Recipe, check_item

ITEM_FIELDS = ("head", "relation", "tail", "question", "answer", "rationale", "text", "domain", "choices")
ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)


class TemplateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: Path = Field(..., description="Rows to prompt over (jsonl, csv or parquet); each row is `row` in Jinja.")
    prompt: str = Field(..., description="Jinja2 template of the prompt, e.g. 'Compare {{ row.a }} and {{ row.b }}'.")
    chat: bool = Field(True, description="Send the prompt as a chat message (else as a raw completion prompt).")
    system: str | None = Field(None, description="Optional system message for chat prompts.")
    kind: str = Field("text", description="Kind of the items produced.")
    parser: Literal["regex", "json"] = Field("json", description="How completions become items.")
    regex: str | None = Field(None, description="With parser = regex: named groups become item fields.")
    json_schema: dict[str, Any] | None = Field(None, description="With parser = json: the schema outputs must meet.")
    constrain: bool = Field(False, description="Also enforce the regex/schema while decoding (every backend).")
    grammar: str | None = Field(None, description="With constrain: an EBNF grammar to enforce instead of the "
                                                  "regex/schema (the parser still reads the output).")
    include: list[str] = Field([], description="Words the output must contain, each a Jinja2 template over `row` "
                                                "(a lexical constraint, enforced on every backend).")
    exclude: list[str] = Field([], description="Words the output must not contain.")
    fields: dict[str, str] = Field({}, description="Extra item fields, each a Jinja2 template over `row`.")
    limit: int | None = Field(None, ge=1, description="Use at most this many rows.")
    sampling: Sampling = Sampling(n=1, temperature=0.7, top_p=0.95, max_tokens=128)

    @model_validator(mode="after")
    def _check(self) -> TemplateConfig:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        if self.parser == "regex":
            if not self.regex:
                raise ValueError("parser = 'regex' needs a regex")
            try:
                re.compile(self.regex)
            except re.error as e:
                raise ValueError(f"invalid regex: {e}") from None
        if self.json_schema is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(self.json_schema)
            except jsonschema.SchemaError as e:
                raise ValueError(f"invalid JSON schema: {e.message}") from None
        if self.grammar and not self.constrain:
            raise ValueError("a grammar is enforced only with constrain = true")
        if self.include and self.constrain:
            raise ValueError("include words cannot be combined with constrain = true (one grammar per output)")
        try:
            ENV.parse(self.prompt)
            for t in [*self.fields.values(), *self.include]:
                ENV.parse(t)
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"invalid Jinja2 template: {e.message}") from None
        return self


def read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = Path(path).suffix.lower()
    if not Path(path).is_file():
        raise SkdError(f"no such input file: {path}")
    try:
        if suffix in (".jsonl", ".ndjson", ".json"):
            return pl.read_ndjson(path).to_dicts()
        if suffix == ".csv":
            return pl.read_csv(path, infer_schema=False).to_dicts()
        if suffix == ".parquet":
            return pl.read_parquet(path).to_dicts()
    except Exception as e:  # polars raises many types for bad files
        raise SkdError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    raise SkdError(f"{path}: input must be .jsonl, .csv or .parquet")


def first_json_object(text: str) -> Any:
    start = text.find("{")
    while start >= 0:
        try:
            return json.JSONDecoder().raw_decode(text[start:])[0]
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
    raise ParseError("no JSON object in the output")


class Template(Recipe):
    name = "template"
    Config = TemplateConfig

    def check_inputs(self) -> None:
        read_rows(self.config.input)

    def requests(self, model: str, seed: int, store: Store | None = None) -> list[Request]:
        c = self.config
        prompt_t = ENV.from_string(c.prompt)
        field_ts = {k: ENV.from_string(v) for k, v in c.fields.items()}
        include_ts = [ENV.from_string(t) for t in c.include]
        constraint = None
        if c.constrain and c.grammar:
            constraint = Constraint(grammar=c.grammar)
        elif c.constrain:
            constraint = Constraint(regex=c.regex) if c.parser == "regex" else Constraint(
                json_schema=c.json_schema or {"type": "object"})
        out = []
        for i, row in enumerate(read_rows(c.input)[: c.limit]):
            try:
                prompt = prompt_t.render(row=row)
                fields = {k: t.render(row=row) for k, t in field_ts.items()}
                words = tuple(w for w in (t.render(row=row).strip() for t in include_ts) if w)
            except jinja2.UndefinedError as e:
                raise SkdError(f"{c.input}: row {i + 1}: template error: {e.message}") from None
            include = tuple(cased(w) for w in words)
            lexical = make_lexical(include, tuple(c.exclude), 0.0, f"{c.input}: row {i + 1}")
            sampling = c.sampling.model_copy(update={"seed": derive_seed(seed, prompt), "constraint": constraint,
                                                     "lexical": lexical})
            meta = {"fields": fields, "row": i + 1}
            if c.chat:
                messages = ((("system", c.system),) if c.system else ()) + (("user", prompt),)
                out.append(Request(model=model, sampling=sampling, messages=messages, meta=meta))
            else:
                out.append(Request(model=model, sampling=sampling, prompt=prompt, meta=meta))
        return out

    def parse(self, request: Request, completion: Completion) -> list[dict[str, Any]]:
        c = self.config
        if c.parser == "regex":
            m = re.search(c.regex, completion.text, re.S)
            if not m:
                raise ParseError("output does not match the regex")
            values = {k: v for k, v in m.groupdict().items() if v is not None}
        else:
            values = first_json_object(completion.text)
            if not isinstance(values, dict):
                raise ParseError("the JSON output is not an object")
            if c.json_schema is not None:
                err = next(iter(jsonschema.Draft202012Validator(c.json_schema).iter_errors(values)), None)
                if err is not None:
                    raise ParseError(f"JSON does not meet the schema: {err.message[:80]}")
        merged = {**request.meta["fields"], **values}
        item: dict[str, Any] = {"kind": c.kind}
        extra = {}
        for k, v in merged.items():
            if k == "choices":
                item[k] = choices_of(v)
            elif k in ITEM_FIELDS:
                item[k] = v if v is None else str(v)
            else:
                extra[k] = v
        item["extra"] = extra or None
        return [check_item(item)]


def choices_of(v: Any) -> list[str] | None:
    """A teacher's `choices` as a list of text (a JSON list written as a string included); anything else is
    a recorded rejection, not a row the store cannot take."""
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            raise ParseError("choices is not a list") from None
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in v):
        raise ParseError("choices is not a list of texts")
    return [str(c) for c in v]
