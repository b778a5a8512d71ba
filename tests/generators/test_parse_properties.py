"""Arbitrary teacher output never crashes a parser: it yields items or a recorded reason."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from generators import make_recipe
from generators.generate import parse_completion
from generators.types import Completion


def recipes(tmp_path_factory=None):
    import tempfile
    from pathlib import Path
    d = Path(tempfile.mkdtemp())
    (d / "q.jsonl").write_text(json.dumps({"question": "Q?", "choices": ["a", "b"], "answer": "a"}) + "\n")
    (d / "rows.jsonl").write_text('{"x": "y"}\n')
    out = []
    for name, cfg in [("atomic10x", {"stage": "events", "prompts": 1}),
                      ("atomic10x", {"events_from": "seeds", "max_events": 1, "relations": ["xWant"]}),
                      ("rationale", {"input": str(d / "q.jsonl")}),
                      ("template", {"input": str(d / "rows.jsonl"), "prompt": "{{ row.x }}", "kind": "qa",
                                    "json_schema": {"type": "object", "required": ["question", "answer"]}}),
                      ("template", {"input": str(d / "rows.jsonl"), "prompt": "{{ row.x }}", "kind": "text",
                                    "parser": "regex", "regex": r"(?P<text>\w+)"})]:
        r = make_recipe(name, cfg)
        out.append((r, r.requests("m", 0)[0]))
    return out


RECIPES = recipes()
texts = st.one_of(st.text(max_size=300),
                  st.lists(st.sampled_from(["Answer:", "PersonX", "12.", "{", "}", '"question"', ":", "\n", " ",
                                            "yes", "Event:", "A", "(B)", '"answer": "x"']), max_size=40).map("".join))


@settings(max_examples=300, deadline=None)
@given(texts, st.sampled_from(["stop", "length", None]))
def test_parsers_never_crash(text, finish):
    for recipe, request in RECIPES:
        items, error = parse_completion(recipe, request, Completion(text=text, finish_reason=finish))
        assert (items and error is None) or (not items and error)
        assert error is None or not error.startswith("parser error"), error
        for item in items:
            assert item["kind"] in ("triple", "qa", "rationale", "text")
