import pytest

from generators import make_recipe
from generators.recipes.atomic10x import RELATIONS, read_events
from generators.types import Completion
from store import SkdError, Store, ingest_file
from tests.conftest import EXAMPLES, shared_file


def test_shipped_seed_data_is_big_enough():
    assert len(read_events(None)) >= 100
    assert all(len(spec["examples"]) >= 8 for spec in RELATIONS.values())
    assert set(RELATIONS) == {"xAttr", "xReact", "xEffect", "xWant", "xIntent", "xNeed", "HinderedBy"}


def test_event_stage_prompts_and_parsing():
    r = make_recipe("atomic10x", {"stage": "events", "prompts": 3})
    reqs = r.requests("m", seed=7)
    assert len(reqs) == 3 and reqs[0].prompt.startswith("1. PersonX") and reqs[0].prompt.endswith("11.")
    assert reqs[0].sampling.presence_penalty == 0.5 and reqs[0].sampling.top_p == 0.9
    assert [x.request_id for x in reqs] == [x.request_id for x in r.requests("m", seed=7)]
    text = (" PersonX paints the fence\n12. PersonX buys a red umbrella.\n13. Someone else walks\n"
            "14. PersonX buys a red umbrella\n15. PersonX " + "very " * 20 + "long\n16. PersonX cut")
    items = r.parse(reqs[0], Completion(text=text, finish_reason="length"))
    assert [i["text"] for i in items] == ["PersonX buys a red umbrella"]  # seed, other subject, dup, long, cut off
    assert items[0]["extra"]["role"] == "event"


def test_inference_stage_uses_names_and_maps_them_back():
    r = make_recipe("atomic10x", {"events_from": "seeds", "max_events": 2, "relations": ["xWant", "xAttr"]})
    reqs = r.requests("m", seed=0)
    assert len(reqs) == 4 and reqs[0].sampling.n == 10 and reqs[0].sampling.top_p == 0.5
    req = reqs[0]
    x, y = req.meta["x"], req.meta["y"]
    assert "PersonX" not in req.prompt and x in req.prompt and req.prompt.count("Event:") == 6
    items = r.parse(req, Completion(text=f" to thank {y} and {x}'s mom.\nEvent: more"))
    assert items == [{"kind": "triple", "head": req.meta["head"], "relation": "xWant",
                      "tail": "to thank PersonY and PersonX's mom", "domain": "atomic10x"}]
    with pytest.raises(ValueError, match="2 characters"):
        r.parse(req, Completion(text=" ok"))


def test_inference_stage_reads_generated_events_from_the_store(db_path, tmp_path):
    ev = tmp_path / "events.jsonl"
    ev.write_text('{"text": "PersonX flies a kite", "extra": {"role": "event"}}\n')
    with Store(db_path) as s:
        r = make_recipe("atomic10x", {"relations": ["xNeed"]})
        with pytest.raises(SkdError, match="no generated events"):
            r.requests("m", 0, s)
        ingest_file(s, ev, "jsonl")
        ingest_file(s, EXAMPLES / "mini.jsonl", "jsonl")  # other text items are not events
        assert [q.meta["head"] for q in r.requests("m", 0, s)] == ["PersonX flies a kite"]


def test_bad_atomic_configs_are_one_line_errors(tmp_path):
    with pytest.raises(SkdError, match=r"relations: .*unknown relation 'xFoo'"):
        make_recipe("atomic10x", {"relations": ["xFoo"]})
    with pytest.raises(SkdError, match="prompts: "):
        make_recipe("atomic10x", {"prompts": 0})
    with pytest.raises(SkdError, match="colour: Extra inputs"):
        make_recipe("atomic10x", {"colour": "red"})
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(SkdError, match="has no events"):
        make_recipe("atomic10x", {"stage": "events", "seeds": str(empty)}).requests("m", 0)
    with pytest.raises(SkdError, match="unknown recipe"):
        make_recipe("poetry")


def test_atomic2020_file_as_seeds():
    path = shared_file("atomic2020/human_tuples.tsv")
    events = read_events(path)
    assert events[0] == "PersonX calls PersonY ambulance" and len(events) > 1000


@pytest.mark.parametrize("fmt,rel,expect_type", [
    ("csqa", "csqa/train.jsonl", "choice"), ("gsm8k", "gsm8k/train.jsonl", "number"),
    ("strategyqa", "strategyqa/train.json", "yesno")])
def test_rationale_reads_each_dataset(fmt, rel, expect_type):
    r = make_recipe("rationale", {"input": str(shared_file(rel)), "format": fmt, "limit": 3})
    reqs = r.requests("m", 0)
    assert len(reqs) == 3 and reqs[0].meta["type"] == expect_type and reqs[0].meta["gold"]
    assert reqs[0].messages[-1][1].startswith("Question:") and len(reqs[0].messages) == 3


def _q(tmp_path, rows, fmt="jsonl"):
    import json
    p = tmp_path / "q.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return make_recipe("rationale", {"input": str(p), "format": fmt})


def test_rationale_parsing_and_answer_checking(tmp_path):
    r = _q(tmp_path, [{"question": "Where is milk kept?", "choices": ["oven", "fridge", "car"], "answer": "fridge"},
                      {"question": "2+3?", "answer": "5"}, {"question": "Is ice cold?", "answer": "yes"}])
    choice, free, yesno = r.requests("m", 0)
    item = r.parse(choice, Completion(text="Milk spoils when warm, so it is kept cold.\nAnswer: (B)"))[0]
    assert (item["answer"], item["extra"]["correct"], item["rationale"]) == (
        "fridge", True, "Milk spoils when warm, so it is kept cold.")
    assert r.parse(choice, Completion(text="Ovens heat food up.\n**Answer:** oven"))[0]["extra"]["correct"] is False
    assert r.parse(yesno, Completion(text="Ice is frozen water.\nAnswer: Yes."))[0]["answer"] == "yes"
    assert r.parse(free, Completion(text="Two plus three makes five.\nFinal answer: 5"))[0]["extra"]["correct"]
    with pytest.raises(ValueError, match="no final 'Answer:' line"):
        r.parse(free, Completion(text="I think it is 5."))
    with pytest.raises(ValueError, match="no reasoning"):
        r.parse(free, Completion(text="Answer: 5"))


def test_choice_answers_are_letters_only_where_meant_and_the_longest_choice_named():
    from generators.recipes.rationale import is_correct, normalise_answer

    q = {"type": "choice", "choices": ["mouse", "house", "grocery store", "store", "bobcat", "cat"]}
    assert [normalise_answer(a, q) for a in ("a house", "(B) house", "B. house", "b", "F.")] == ["house"] * 4 + ["cat"]
    assert normalise_answer("at the grocery store", q) == "grocery store"  # not "store", the first choice inside
    assert normalise_answer("a bobcat", q) == "bobcat" and normalise_answer("a dog", q) == "a dog"
    assert is_correct(normalise_answer("grocery store", q), "store", q) is False  # two choices are not one
    yesno = {"type": "yesno", "choices": None}
    assert [normalise_answer(a, yesno) for a in ("Yes, it can.", "no.", "True", "Not enough information",
                                                 "Normally yes")] == ["yes", "no", "yes", "Not enough information",
                                                                      "Normally yes"]


def test_gsm8k_numbers_are_compared_as_numbers(tmp_path):
    from generators.recipes.rationale import is_correct

    r = _q(tmp_path, [{"question": "How many?", "answer": "Work.\n#### 1,200"}], fmt="gsm8k")
    req = r.requests("m", 0)[0]
    item = r.parse(req, Completion(text="So 1000 + 200 = 1200 apples.\nAnswer: $1,200.00"))[0]
    assert item["extra"]["correct"] is True and item["answer"] == "1200.00"
    half = r.parse(req, Completion(text="Half a cup each.\nAnswer: .5"))[0]
    assert half["answer"] == ".5" and is_correct(half["answer"], "0.5", {"type": "number"})  # not 5


def test_template_recipe_regex_and_json(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"a": "a cat", "b": "a lion"}\n{"a": "tea", "b": "coffee"}\n')
    r = make_recipe("template", {"input": str(rows), "prompt": "Compare {{ row.a }} with {{ row.b }}.",
                                 "kind": "triple", "parser": "regex",
                                 "regex": r"(?P<tail>[^.\n]+ than [^.\n]+)",
                                 "fields": {"head": "{{ row.a }}", "relation": "comparative"}})
    reqs = r.requests("m", 0)
    assert reqs[0].messages == (("user", "Compare a cat with a lion."),)
    item = r.parse(reqs[0], Completion(text="A cat is smaller than a lion. Indeed."))[0]
    assert item == {"kind": "triple", "head": "a cat", "relation": "comparative",
                    "tail": "A cat is smaller than a lion", "extra": None}
    schema = {"type": "object", "required": ["question", "answer"],
              "properties": {"question": {"type": "string"}, "answer": {"type": "string"}}}
    j = make_recipe("template", {"input": str(rows), "prompt": "Ask about {{ row.a }}", "kind": "qa",
                                 "json_schema": schema, "constrain": True})
    req = j.requests("m", 0)[0]
    assert req.sampling.constraint.json_schema == schema
    got = j.parse(req, Completion(text='Sure: {"question": "What do cats eat?", "answer": "fish", "level": 2}'))
    assert got[0]["answer"] == "fish" and got[0]["extra"] == {"level": 2}
    with pytest.raises(ValueError, match="schema"):
        j.parse(req, Completion(text='{"question": "Q?"}'))
    with pytest.raises(ValueError, match="no JSON object"):
        j.parse(req, Completion(text="no json here {"))
    # choices as the store takes them, or a recorded rejection (a list of numbers stopped the whole batch)
    mc = make_recipe("template", {"input": str(rows), "prompt": "Ask about {{ row.a }}", "kind": "qa"})
    ask = mc.requests("m", 0)[0]
    said = '{"question": "Q?", "answer": "2", "choices": %s}'
    assert mc.parse(ask, Completion(text=said % "[1, 2]"))[0]["choices"] == ["1", "2"]
    assert mc.parse(ask, Completion(text=said % '"[\\"a\\", \\"b\\"]"'))[0]["choices"] == ["a", "b"]
    for bad in ("3", '{"a": 1}', '[[1]]', '"a, b"', "[true]"):
        with pytest.raises(ValueError, match="choices is not a list"):
            mc.parse(ask, Completion(text=said % bad))


def test_bad_template_configs(tmp_path):
    with pytest.raises(SkdError, match="invalid regex"):
        make_recipe("template", {"input": "x.jsonl", "prompt": "p", "parser": "regex", "regex": "(unclosed"})
    with pytest.raises(SkdError, match="invalid Jinja2"):
        make_recipe("template", {"input": "x.jsonl", "prompt": "{{ row.a "})
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"a": 1}\n')
    with pytest.raises(SkdError, match="row 1: template error"):
        make_recipe("template", {"input": str(rows), "prompt": "{{ row.missing }}"}).requests("m", 0)
