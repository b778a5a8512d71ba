"""Provider batch jobs end to end against a real local batch endpoint (tests/batch_server.py): the JSONL
written, uploaded, run, polled, downloaded and ingested; failed and expired lines retried in a later job;
a kill mid-poll and a lost create answer resumed without paying twice; usage and cost per request."""

import json
import os
import subprocess
import sys

import pytest

from generators import make_recipe, make_teacher, run_generation
from store import SkdError, Store
from tests.batch_server import BatchServer
from tests.conftest import ROOT, kill_when, run_skd
from tests.skd.test_hardening import one_line_error

INFER = {"events_from": "seeds", "max_events": 4, "relations": ["xWant", "xAttr"],
         "inference_sampling": {"n": 2, "temperature": 1.0, "max_tokens": 8, "stop": ["\n"]}}
PRICES = {"m": {"input": 1.0, "output": 4.0}}  # dollars per million tokens; batch pays half


def batch_teacher(server, **kw):
    return make_teacher("openai-batch", "m", base_url=server.url, poll_interval=0.01, max_poll_interval=0.05,
                        backoff=0.01, max_backoff=0.05, prices=PRICES, **kw)


def table(db, sql):
    with Store(db, read_only=True) as s:
        return s.query(sql)


def test_batch_job_answers_every_request_once_with_usage_and_batch_price(db_path):
    with BatchServer(polls=3, fail_every=3) as server:
        stats = run_generation(db_path, make_recipe("atomic10x", INFER), batch_teacher(server), seed=1)
        assert stats.requests == 8 and stats.generated == 8 and stats.completions == 16
        # Round 1 fails every third line once; round 2, a new job, answers exactly those.
        assert server.created == 2 and set(server.answered.values()) == {1} and len(server.answered) == 8
        again = run_generation(db_path, make_recipe("atomic10x", INFER), batch_teacher(server), seed=1)
        assert (again.already_done, again.generated, server.created) == (8, 0, 2)
    reqs = table(db_path, "SELECT * FROM requests")
    assert reqs.height == 8 and reqs["prompt_tokens"].min() > 0 and set(reqs["completion_tokens"]) == {6}
    expected = [(p * 1.0 + c * 4.0) / 1e6 * 0.5 for p, c in reqs.select("prompt_tokens", "completion_tokens").rows()]
    assert reqs["cost"].to_list() == pytest.approx(expected)
    assert stats.cost == pytest.approx(sum(expected)) and stats.prompt_tokens == reqs["prompt_tokens"].sum()
    jobs = table(db_path, "SELECT * FROM batch_jobs ORDER BY created_at")
    assert jobs["status"].to_list() == ["completed", "completed"] and jobs["closed_at"].null_count() == 0
    fails = table(db_path, "SELECT * FROM batch_failures")
    assert fails.height == 3 and set(fails["error"]) == {"HTTP 500 server overloaded"}
    assert set(fails["batch_key"]) == {jobs["batch_key"][0]}
    assert set(reqs.filter(reqs["request_id"].is_in(fails["request_id"].to_list()))["batch_key"]) == {
        jobs["batch_key"][1]}


def test_failed_lines_wait_for_the_next_run_when_rounds_run_out(db_path):
    recipe = make_recipe("atomic10x", INFER)
    with BatchServer(polls=1, fail_every=2) as server:
        first = run_generation(db_path, recipe, batch_teacher(server, rounds=1), seed=1)
        assert first.generated == 4 and sum(first.failures.values()) == 4
        assert table(db_path, "SELECT count(DISTINCT request_id) AS n FROM generations")["n"][0] == 4
        second = run_generation(db_path, recipe, batch_teacher(server, rounds=1), seed=1)
        assert (second.already_done, second.generated, server.created) == (4, 4, 2)
        assert set(server.answered.values()) == {1}  # nothing answered twice, nothing paid twice


def test_a_line_the_endpoint_refuses_is_a_recorded_failure_not_resubmitted(db_path):
    """A 400 (too long a prompt) is the line's own: every job would refuse it. It used to stay pending and be sent
    in a new job by every round of every run."""
    recipe = make_recipe("atomic10x", INFER)
    with BatchServer(polls=1, refuse_first=True) as server:
        stats = run_generation(db_path, recipe, batch_teacher(server), seed=1)
        assert stats.generated == 8 and stats.failures == {"refused: 400: maximum context length exceeded": 1}
        again = run_generation(db_path, recipe, batch_teacher(server), seed=1)
        assert (again.already_done, again.generated, server.created) == (8, 0, 1)


def test_a_password_in_the_endpoint_is_not_stored(db_path):
    with BatchServer(polls=1) as server:
        url = server.url.replace("http://", "http://user:hunter2@")
        t = make_teacher("openai-batch", "m", base_url=url, poll_interval=0.01, max_poll_interval=0.05)
        run_generation(db_path, make_recipe("atomic10x", INFER), t, seed=1)
    assert "hunter2" not in str(table(db_path, "SELECT endpoint FROM batch_jobs").rows())


def test_expired_job_keeps_what_it_finished_and_resubmits_the_rest(db_path):
    with BatchServer(polls=1, expire_first=True) as server:
        stats = run_generation(db_path, make_recipe("atomic10x", INFER), batch_teacher(server), seed=1)
        assert stats.generated == 8 and server.created == 2 and set(server.answered.values()) == {1}
    fails = table(db_path, "SELECT error FROM batch_failures")
    assert fails.height == 4 and set(fails["error"]) == {"no result (job expired)"}


def test_a_lost_create_answer_is_found_by_listing_not_created_again(db_path):
    with BatchServer(polls=1, drop_create=1) as server:
        stats = run_generation(db_path, make_recipe("atomic10x", INFER), batch_teacher(server), seed=1)
        assert stats.generated == 8 and server.created == 1


def test_a_job_that_fails_validation_is_recorded_and_its_requests_stay_pending(db_path):
    with BatchServer(fail_validation=True) as server:
        stats = run_generation(db_path, make_recipe("atomic10x", INFER), batch_teacher(server), seed=1)
    assert stats.generated == 0 and stats.failures == {"batch: invalid_request: model not found for batch": 8}
    jobs = table(db_path, "SELECT status, error FROM batch_jobs")
    assert jobs.rows() == [("failed", "invalid_request: model not found for batch")] * 2
    assert table(db_path, "SELECT count(*) AS n FROM generations")["n"][0] == 0


def test_an_endpoint_without_the_batch_api_is_one_line(tmp_path, db_path):
    cfg = tmp_path / "r.toml"
    with BatchServer(no_batch_api=True) as server:
        cfg.write_text(f'events_from = "seeds"\nmax_events = 1\nrelations = ["xWant"]\n'
                       f'[teacher]\nbase_url = "{server.url}"\n')
        p = run_skd("generate", "atomic10x", "--config", str(cfg), "--backend", "openai-batch", "--teacher", "m",
                    "--quiet", db=db_path)
    one_line_error(p, "POST", "/files answered 404", "does this endpoint implement the OpenAI batch API?")


def batch_config(path, server, relations=("xWant", "xAttr")):
    path.write_text(f'events_from = "seeds"\nmax_events = 4\nrelations = {json.dumps(list(relations))}\n'
                    f'[inference_sampling]\nn = 2\nmax_tokens = 8\nstop = ["\\n"]\n'
                    f'[teacher]\nbase_url = "{server.url}"\npoll_interval = 0.05\nmax_poll_interval = 0.1\n'
                    f'[teacher.prices.m]\ninput = 1.0\noutput = 4.0\n')
    return path


def generate_args(cfg, db_path, *extra):
    return [sys.executable, "-m", "skd", "generate", "atomic10x", "--config", str(cfg), "--backend", "openai-batch",
            "--teacher", "m", "--seed", "1", "--db", str(db_path), *extra]


def kill_mid_poll(cfg, db_path):
    proc = subprocess.Popen(generate_args(cfg, db_path, "-q"), cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_when(proc, db_path, "SELECT count(*) FROM batch_jobs WHERE status = 'in_progress'", 1)


def test_killed_mid_poll_resumes_the_recorded_job_and_pays_once(tmp_path, db_path):
    with BatchServer(polls=1) as server:
        server.hold.set()  # the job stays in progress until released
        cfg = batch_config(tmp_path / "r.toml", server)
        kill_mid_poll(cfg, db_path)
        assert server.created == 1 and not server.answered
        # Another run of the same recipe with other requests leaves that job alone: it is not this run's.
        other = batch_config(tmp_path / "other.toml", server, relations=("xNeed",))
        server.hold.clear()
        p = subprocess.run(generate_args(other, db_path, "--json"), cwd=ROOT, capture_output=True, text=True,
                           timeout=300, check=True)
        assert json.loads(p.stdout)["generated"] == 4 and server.created == 2
        assert table(db_path, "SELECT count(*) AS n FROM batch_jobs WHERE closed_at IS NULL")["n"][0] == 1
        p = subprocess.run(generate_args(cfg, db_path, "--json"), cwd=ROOT, capture_output=True, text=True,
                           timeout=300, check=True)
        assert server.created == 2 and len(server.answered) == 12  # resumed, not submitted again
    summary = json.loads(p.stdout)
    assert summary["generated"] == 8 and summary["cost"] > 0
    runs = table(db_path, "SELECT config FROM runs WHERE stage = 'generate' ORDER BY started_at")
    assert json.loads(runs["config"][-1])["resumed_jobs"] == ["batch-0"]
    assert set(server.answered.values()) == {1}


def test_a_job_created_by_a_run_killed_before_it_recorded_the_id_is_found(db_path):
    """The state a kill between create and its record leaves: the job exists at the endpoint, the store
    knows only the uploaded file. The rerun finds the job by listing; it does not create another."""
    recipe = make_recipe("atomic10x", INFER)
    with BatchServer(polls=1) as server:
        t = batch_teacher(server)
        with Store(db_path) as s:
            todo = planned_requests_for(recipe, s)
            file_id = t.upload([t.line(r) for r in todo])
            t.create(file_id, t.url(todo[0]), "killed-1")
            for k in range(3):  # newer jobs of someone else: the list's first pages are theirs
                t.create(t.upload([t.line(todo[k])]), t.url(todo[0]), f"other-{k}")
            server.page_size = 1
            s.batch_jobs.record("killed-1", run_id="killed", recipe="atomic10x", model="m", endpoint=t.base_url,
                                url=t.url(todo[0]), request_ids=[r.request_id for r in todo],
                                input_file_id=file_id, status="uploaded")
        stats = run_generation(db_path, recipe, batch_teacher(server), seed=1)
        assert stats.generated == 8 and server.created == 4 and set(server.answered.values()) == {1}


def test_a_job_the_endpoint_forgot_gives_its_requests_back(db_path):
    recipe = make_recipe("atomic10x", INFER)
    with BatchServer(polls=1) as server:
        server.hold.set()
        t = batch_teacher(server, rounds=1)
        with Store(db_path) as s:
            todo = planned_requests_for(recipe, s)
            file_id = t.upload([t.line(r) for r in todo])
            job = t.create(file_id, t.url(todo[0]), "gone-1")
            s.batch_jobs.record("gone-1", run_id="old", recipe="atomic10x", model="m", endpoint=t.base_url,
                                url=t.url(todo[0]), request_ids=[r.request_id for r in todo],
                                input_file_id=file_id, job_id=job["id"], status="in_progress")
        del server.batches[job["id"]]  # purged at the provider
        server.hold.clear()
        first = run_generation(db_path, recipe, t, seed=1)
        assert first.generated == 0
        assert table(db_path, "SELECT status FROM batch_jobs WHERE batch_key = 'gone-1'")["status"][0] == "lost"
        again = run_generation(db_path, recipe, t, seed=1)
        assert again.generated == 8


def test_a_404_in_passing_does_not_make_a_job_lost(db_path):
    """One 404 while polling (a proxy restarting) closed the job as lost and paid for all its lines again."""
    with BatchServer(polls=1, blips=2) as server:
        stats = run_generation(db_path, make_recipe("atomic10x", INFER), batch_teacher(server), seed=1)
    assert stats.generated == 8 and server.created == 1


def planned_requests_for(recipe, store):
    from generators.generate import planned_requests

    return planned_requests(recipe, "m", 1, store)


def test_generate_without_a_store_runs_one_job_and_names_failed_lines(db_path):
    from generators import Request, Sampling

    reqs = [Request(model="m", sampling=Sampling(n=2), messages=(("user", f"hello {i}"),)) for i in range(3)]
    with BatchServer(polls=1) as server:
        out = batch_teacher(server).generate(reqs)
        assert [len(o) for o in out] == [2, 2, 2] and out[0].prompt_tokens > 0 and out[0].cost > 0
    with BatchServer(polls=1, fail_every=2) as server, pytest.raises(SkdError, match="2 of 3 requests failed"):
        batch_teacher(server).generate(reqs)


def test_snapshot_card_and_info_report_the_tokens_and_cost_that_made_it(tmp_path, db_path):
    with BatchServer(polls=1) as server:
        stats = run_generation(db_path, make_recipe("atomic10x", INFER), batch_teacher(server), seed=1)
    run_skd("snapshot", "create", "s", db=db_path, check=True)
    info = json.loads(run_skd("info", "--json", db=db_path, check=True).stdout)["generation_cost"]
    snap = info["per_snapshot"]["s"]
    assert snap["requests"] == 8 and snap["cost"] == pytest.approx(stats.cost)
    assert info["per_teacher"][0]["teacher"] == "m" and info["per_teacher"][0]["completion_tokens"] == 48
    assert "generation cost" in run_skd("info", db=db_path, check=True).stdout
    run_skd("export", "s", "--out", str(tmp_path / "out"), db=db_path, check=True)
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"Generation cost: 8 teacher requests, {snap['prompt_tokens']:,} prompt and 48 completion tokens" in card
