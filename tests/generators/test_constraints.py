"""Lexical and structured constraints (enforced by xgrammar on transformers, by vLLM's own structured outputs
on vLLM), and the generics and comparatives recipes that use them."""

import json
import re
import sys

import pytest

from generators import Request, Sampling, make_recipe, make_teacher, run_generation
from generators.backends.openai_http import OpenAITeacher
from generators.constraints import include_regex, noun_forms, unmet
from generators.generate import parse_completion
from generators.recipes import ParseError
from generators.recipes.comparatives import comparative_of, read_pairs
from generators.types import Completion, Lexical
from store import SkdError, Store
from tests.conftest import ROOT, full_and_killed_runs

BIRD = Lexical(include=(noun_forms("bird"), ("than",)))


@pytest.mark.parametrize(("text", "ok"), [
    (" Birds fly higher than bats.", True), (" Bats fly lower than a bird.\n", True),
    (" A bird.", False),  # one clause missing: the output cannot end here
    (" Birdsong is louder than rain.", False),  # whole words only
    (" Cats sleep. Birds are faster than cats.", False),  # single-line: the words come in the first sentence
])
def test_include_clauses_become_one_regex_in_any_order(text, ok):
    assert bool(re.fullmatch(include_regex(BIRD.include, single_line=True), text)) is ok


def test_unmet_names_the_missing_or_excluded_word():
    assert unmet(BIRD, "Birds fly higher than bats") is None
    assert unmet(BIRD, "Birds fly high") == "constraint not met: no 'than'"
    assert unmet(Lexical(exclude=("fly",)), "Birds FLY") == "constraint not met: excluded 'fly'"
    assert unmet(Lexical(exclude=("fly",)), "Butterflies are insects") is None  # whole words only
    assert noun_forms("city") == ("city", "City", "cities", "Cities")


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"lexical": {"include": [["cat"]], "exclude": ["cat"]}}, "both required and excluded"),
    ({"lexical": {"include": [["a"], ["b"], ["c"], ["d"], ["e"]]}}, "at most 4"),
    ({"lexical": {"include": [["cat"]]}, "constraint": {"regex": "[a-z]+"}}, "cannot be combined"),
    ({"lexical": {}}, "needs include or exclude"),
])
def test_bad_constraints_are_refused_before_any_work(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Sampling(**kwargs)


def test_request_ids_without_lexical_constraints_are_unchanged():
    """Adding the field must not change the key of requests stored before it existed."""
    assert "lexical" not in Sampling().key()
    assert Sampling(lexical={"exclude": ["x"]}).key()["lexical"]["exclude"] == ["x"]


def test_openai_body_carries_vllms_constraint_parameters():
    t = OpenAITeacher("m", base_url="http://127.0.0.1:1/v1")
    s = Sampling(stop=("\n",), lexical={"include": [["bird", "birds"]], "exclude": ["fly"]})
    _, body = t.body(Request(model="m", sampling=s, prompt="About birds:"))
    assert re.fullmatch(body["structured_outputs"]["regex"], " Birds sing.") is None  # capital form not given
    assert re.fullmatch(body["structured_outputs"]["regex"], " The birds sing.")
    assert body["bad_words"] == ["fly", "Fly"]
    with pytest.raises(SkdError, match="api.openai.com cannot enforce"):
        OpenAITeacher("m", base_url="https://api.openai.com/v1").check(s)


def test_generics_parsing_keeps_the_concept():
    r = make_recipe("generics", {"max_concepts": 3})
    reqs = r.requests("m", seed=0)
    assert len(reqs) == 3 and all(q.prompt.endswith(f"About {q.meta['entities'][0]}:") for q in reqs)
    assert reqs[0].sampling.lexical.include == (noun_forms(reqs[0].meta["entities"][0]),)
    bird = next(q for q in make_recipe("generics", {}).requests("m", 0) if q.meta["entities"] == ["bird"])
    item, = r.parse(bird, Completion(" birds can fly. About dogs: Dogs bark."))
    assert (item["text"], item["head"], item["domain"]) == ("Birds can fly.", "bird", "generics")
    for text, reason in [(" Dogs bark at night.", "'bird' does not appear"), (" Do birds fly?", "a question"),
                         (" I like birds.", "personal"), (" Birds.", "statement of 1 words")]:
        with pytest.raises(ParseError, match=reason):  # the parser holds unconstrained outputs to it too
            r.parse(bird, Completion(text))
    assert parse_completion(r, bird, Completion(" Dogs bark all day long"))[1] == "constraint not met: no 'bird'"


def test_comparatives_parsing_keeps_both_entities_and_the_comparative(tmp_path):
    r = make_recipe("comparatives", {})
    steel = r.requests("m", seed=0)[0]
    assert steel.meta["entities"] == ["steel", "styrofoam"] and steel.prompt.endswith("steel, styrofoam:")
    item, = r.parse(steel, Completion(" Steel is much stronger than styrofoam. Also..."))
    assert (item["head"], item["tail"], item["relation"]) == ("steel", "styrofoam", "comparative")
    assert item["extra"]["comparative"] == "stronger than" and item["text"] == "Steel is much stronger than styrofoam."
    assert comparative_of("Gold is more valuable than copper") == "more valuable than"
    with pytest.raises(ValueError, match="no comparative"):
        comparative_of("Steel rather than styrofoam")
    bad = tmp_path / "pairs.tsv"
    bad.write_text("# pairs\nsteel\tstyrofoam\nonly one\n")
    with pytest.raises(SkdError, match="entry 2: expected two different entities"):
        read_pairs(bad)


def test_smollm2_on_transformers_meets_lexical_and_regex_constraints(smollm2):
    t = make_teacher("transformers", "smollm2-135m-instruct", batch_size=8)
    recipe = make_recipe("generics", {"max_concepts": 6, "exclude": ["made"],
                                      "sampling": {"n": 4, "max_tokens": 32, "stop": ["\n"]}})
    reqs = recipe.requests(t.model, seed=0)
    out = t.generate(reqs)
    for r, completions in zip(reqs, out, strict=True):
        for c in completions:
            assert not re.search(r"\bmade\b", c.text, re.I)  # banned while decoding, not only rejected after
            if c.finish_reason == "stop":  # the grammar does not let an output end without the concept
                assert unmet(r.sampling.lexical, c.text) is None, c.text
    met = sum(unmet(r.sampling.lexical, c.text) is None for r, o in zip(reqs, out, strict=True) for c in o)
    assert met >= 20  # of 24: the bias towards the word brings it in within the budget
    regex = Request(model=t.model, prompt="The colour of the sky is",
                    sampling=Sampling(n=3, max_tokens=8, constraint={"regex": " (blue|grey|red)"}))
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 8}},
              "required": ["colour"], "additionalProperties": False}
    as_json = Request(model=t.model, messages=(("user", "The sky's colour as JSON"),),
                      sampling=Sampling(max_tokens=48, temperature=0, constraint={"json_schema": schema}))
    choice, obj = t.generate([regex, as_json])
    assert all(c.text in (" blue", " grey", " red") for c in choice)
    assert set(json.loads(obj[0].text)) == {"colour"}


def test_unsatisfiable_constraint_is_a_recorded_failure_within_the_budget(db_path, tiny_lm):
    """A required word longer than the token budget: every sample stops at max_tokens and is recorded with
    the reason; nothing hangs and the run finishes."""
    rows = db_path.parent / "rows.jsonl"
    rows.write_text('{"x": "a"}\n{"x": "b"}\n')
    recipe = make_recipe("template", {"input": str(rows), "prompt": "Say {{ row.x }}", "chat": False,
                                      "parser": "regex", "regex": "(?P<text>.+)", "kind": "text",
                                      "include": ["antidisestablishmentarianism"],
                                      "sampling": {"n": 2, "max_tokens": 3}})
    stats = run_generation(db_path, recipe, make_teacher("transformers", str(tiny_lm)), seed=0)
    assert (stats.completions, stats.parsed) == (4, 0)
    with Store(db_path, read_only=True) as s:
        rows = s.query("SELECT error, finish_reason, n_tokens FROM generations").rows()
    assert all(e == "constraint not met: no 'antidisestablishmentarianism'" and f == "length" and n <= 3
               for e, f, n in rows)


def test_template_regex_with_named_groups_is_enforced_on_transformers(db_path, tiny_lm):
    """Group names are for the parser: the grammar takes the regex without them. A regex xgrammar cannot
    compile is one line before any request runs."""
    rows = db_path.parent / "rows.jsonl"
    rows.write_text('{"x": "a"}\n{"x": "b"}\n')
    cfg = {"input": str(rows), "prompt": "Say {{ row.x }}", "chat": False, "parser": "regex", "kind": "text",
           "regex": "(?P<text>[a-z]{3,8})", "constrain": True, "sampling": {"n": 3, "max_tokens": 8}}
    teacher = make_teacher("transformers", str(tiny_lm))
    stats = run_generation(db_path, make_recipe("template", cfg), teacher, seed=0)
    with Store(db_path, read_only=True) as s:
        texts = s.query("SELECT text FROM generations")["text"].to_list()
    assert stats.completions == 6 and all(re.fullmatch("[a-z]{3,8}", t) for t in texts), texts
    ebnf = 'root ::= "A" [0-9] [0-9] " " ("yes" | "no")'  # an EBNF grammar, enforced the same way
    out, = teacher.generate([Request(model=teacher.model, prompt="Code:",
                                     sampling=Sampling(n=4, max_tokens=12, constraint={"grammar": ebnf}))])
    assert all(re.fullmatch("A[0-9]{2} (yes|no)", c.text) for c in out), [c.text for c in out]
    with pytest.raises(SkdError, match="cannot enforce this constraint: .*Lookahead"):
        run_generation(db_path.parent / "other.duckdb", make_recipe("template", {**cfg, "regex": "(?=a)(?P<text>b)"}),
                       teacher, seed=0)


def test_recipe_constraints_that_contradict_themselves_are_one_line():
    with pytest.raises(SkdError, match="generics: 'bird': 'bird' is both required and excluded"):
        make_recipe("generics", {"exclude": ["bird", "birds"]}).requests("m", seed=0)
    assert noun_forms("mouse")[2:] == ("mice", "Mice") and noun_forms("knife")[2] == "knives"
    generics = make_recipe("generics", {})
    bird = next(q for q in generics.requests("m", 0) if q.meta["entities"] == ["bird"])
    assert generics.parse(bird, Completion(" 3 birds sat on a wire."))[0]["text"] == "3 birds sat on a wire."
    assert comparative_of("An elephant weighs more than a mouse") == "more than"
    with pytest.raises(ValueError, match="no comparative"):
        comparative_of("Copper than gold", ("copper", "gold"))


def _generations(db):
    with Store(db, read_only=True) as s:
        return (s.query("SELECT request_id, sample_index, text FROM generations ORDER BY ALL"),
                s.query("SELECT item_id, head, tail, text FROM items ORDER BY item_id"))


@pytest.mark.parametrize("recipe", ["generics", "comparatives"])
def test_statement_recipes_resume_after_a_kill(recipe, tmp_path, tiny_lm):
    cfg = tmp_path / "r.toml"
    key = "max_concepts" if recipe == "generics" else "max_pairs"
    cfg.write_text(f"{key} = 40\nboost = 6.0\n[sampling]\nn = 3\ntemperature = 1.0\nmax_tokens = 24\n"
                   'stop = ["\\n"]\n')
    args = [sys.executable, "-m", "skd", "generate", recipe, "--teacher", str(tiny_lm), "--config", str(cfg),
            "--seed", "3", "--batch-size", "2", "-q"]
    full, killed, summary = full_and_killed_runs(args, tmp_path, shards=2)
    assert summary["already_done"] > 0 and summary["already_done"] + summary["generated"] == 40
    (gens_a, items_a), (gens_b, items_b) = _generations(full), _generations(killed)
    assert gens_a.height == 120 and gens_a.equals(gens_b) and items_a.equals(items_b)  # all once, as uninterrupted


def test_shipped_example_config_and_seed_lists():
    from generators.recipes import read_toml
    data = read_toml(ROOT / "examples" / "generics.toml")
    data.pop("teacher")
    reqs = make_recipe("generics", data).requests("m", seed=0)
    assert len(reqs) == 80 and reqs[0].sampling.lexical.exclude == ("always", "never")
    assert len(make_recipe("generics", {}).concepts()) >= 140 and len(make_recipe("comparatives", {}).pairs()) >= 80
