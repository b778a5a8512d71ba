import json
import sys

import pytest

from generators import make_recipe, make_teacher, run_generation
from store import Store
from tests.conftest import full_and_killed_runs, run_skd

INFER = {"events_from": "seeds", "max_events": 6, "relations": ["xWant", "xAttr"],
         "inference_sampling": {"n": 3, "temperature": 1.0, "top_p": 0.5, "max_tokens": 6, "stop": ["\n"]}}


def test_generation_stores_everything_with_provenance_and_resumes(db_path, tiny_lm):
    recipe = make_recipe("atomic10x", INFER)
    teacher = make_teacher("transformers", str(tiny_lm))
    first = run_generation(db_path, recipe, teacher, seed=1, limit=5, batch_size=2)
    assert (first.requests, first.generated, first.completions) == (5, 5, 15)
    with Store(db_path, read_only=True) as s:
        gens = s.query("SELECT * FROM generations")
        assert gens.height == 15 and set(gens["run_id"]) == {first.run_id}
        assert gens["parsed_ok"].sum() == first.parsed and first.parsed + sum(first.failures.values()) == 15
        failed = gens.filter(~gens["parsed_ok"])
        assert failed["error"].null_count() == 0  # every failure has its reason
        assert s.scalar("SELECT count(*) FROM requests") == 5
        # usage per request: the prompt's own tokens (not its padding) and every sample's tokens
        assert s.scalar("SELECT min(prompt_tokens) FROM requests") > 10
        generated = s.scalar("SELECT sum(n_tokens) FROM generations")
        assert s.scalar("SELECT sum(completion_tokens) FROM requests") == generated
        src = s.query("SELECT * FROM item_sources")
        assert src.height == first.items and set(src["teacher"]) == {str(tiny_lm)}
        assert src.select("request_id", "sample_index").is_unique().all()
        assert json.loads(src["params"][0])["n"] == 3 and json.loads(src["params"][0])["seed"] is not None
    # The same command again: nothing redone. A different batch size does not invalidate finished work.
    again = run_generation(db_path, recipe, teacher, seed=1, limit=5, batch_size=3)
    assert (again.already_done, again.generated) == (5, 0)
    more = run_generation(db_path, recipe, teacher, seed=1, limit=8, batch_size=3)
    assert (more.already_done, more.generated) == (5, 3)
    with Store(db_path, read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM generations") == 24
        assert s.scalar("SELECT count(*) FROM runs WHERE stage = 'generate' AND status = 'ok'") == 3


def _items(db):
    with Store(db, read_only=True) as s:
        items = s.query("SELECT item_id, head, relation, tail FROM items ORDER BY item_id")
        sources = s.query("SELECT item_id, request_id, sample_index FROM item_sources "
                          "ORDER BY request_id, sample_index")
    return items, sources


def test_killed_generate_resumes_to_the_uninterrupted_result(tmp_path, tiny_lm):
    cfg = tmp_path / "atomic.toml"
    cfg.write_text('events_from = "seeds"\nmax_events = 12\nrelations = ["xWant", "xNeed"]\n'
                   '[inference_sampling]\nn = 4\ntemperature = 1.0\ntop_p = 0.5\nmax_tokens = 24\nstop = ["\\n"]\n')
    args = [sys.executable, "-m", "skd", "generate", "atomic10x", "--teacher", str(tiny_lm), "--config", str(cfg),
            "--seed", "5", "--batch-size", "2", "-q"]
    full, killed, summary = full_and_killed_runs(args, tmp_path, shards=3)
    assert summary["already_done"] > 0 and summary["generated"] > 0  # killed part way
    assert summary["already_done"] + summary["generated"] == 24
    (items_a, src_a), (items_b, src_b) = _items(full), _items(killed)
    assert items_a.equals(items_b)  # the same items as a run that was never killed
    assert src_a.equals(src_b) and src_b.select("request_id", "sample_index").is_unique().all()  # none twice


def test_bad_teacher_inputs_are_clear_errors(db_path, tmp_path):
    from store import SkdError
    with pytest.raises(SkdError, match="neither an embedded default"):
        make_teacher("transformers", "no-such-org/no-such-model")
    with pytest.raises(SkdError, match="unknown backend"):
        make_teacher("ollama", "x")


def test_atomic10x_on_a_fresh_corpus_runs_both_stages(db_path, tmp_path, smollm2):
    """Events first, then inferences for the events it wrote; a rerun resumes both (nothing generated twice)."""
    cfg = tmp_path / "a.toml"
    cfg.write_text('prompts = 2\nmax_events = 1\nrelations = ["xWant"]\n'
                   '[event_sampling]\nmax_tokens = 48\ntemperature = 0.7\n'
                   '[inference_sampling]\nn = 1\nmax_tokens = 8\nstop = ["\\n"]\n')
    p = run_skd("generate", "atomic10x", "--config", str(cfg), "--json", "--quiet", db=db_path, check=True,
                timeout=600)
    assert json.loads(p.stdout)["requests"] == 2 + 1
    with Store(db_path, read_only=True) as s:
        stages = s.query("SELECT json_extract_string(config, '$.recipe_config.stage') AS stage FROM runs "
                         "WHERE stage = 'generate' ORDER BY started_at")["stage"].to_list()
        assert stages == ["events", "inferences"]
        assert s.scalar("SELECT count(*) FROM requests WHERE json_extract_string(meta, '$.head') IN (SELECT text "
                        "FROM items WHERE json_extract_string(extra, '$.role') = 'event')") == 1  # stage 2 on stage 1
    again = json.loads(run_skd("generate", "atomic10x", "--config", str(cfg), "--json", "--quiet", db=db_path,
                               check=True, timeout=600).stdout)
    assert again["already_done"] == again["requests"] == 3 and again["generated"] == 0
