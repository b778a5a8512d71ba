"""The Ray engine on a real local cluster (ray.init(num_cpus=2)), no mocks: scoring and embedding through an actor
pool give what the local engine gives, a driver killed mid-run loses nothing and stores nothing twice on rerun,
and dedup's partitions run as Ray tasks with the single index's clusters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest

from corpus import dedup, embed_items
from critics import train_critic
from critics.config import CriticConfig
from critics.score import score_items
from skd.engines import EngineConfig, engine_from, mapper_for, task_map_for
from store import SkdError, Store, import_labels
from store.hardware import bf16_native
from tests.conftest import EXAMPLES, ROOT, atomic_corpus, kill_when, run_skd
from tests.local_http import JsonServer, choices

ray = pytest.importorskip("ray", reason="the ray engine needs the ray package (pip install 'skd[ray]')")
pytestmark = pytest.mark.slow
BF16_STEP = 2 ** -8  # bfloat16's rounding step for values below 1 (8 significant bits)


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module; commands in other processes join it by its address."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield EngineConfig(kind="ray", address=ray.get_runtime_context().gcs_address, actors=2)
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """400 ATOMIC-2020 lines (about 1,500 human tails), with an embedding critic trained on the example labels."""
    d = tmp_path_factory.mktemp("ray")
    db = atomic_corpus(d, 400)
    with Store(db) as s:
        import_labels(s, EXAMPLES / "critic-labels.jsonl", "jsonl")
    train_critic(db, "c", CriticConfig(mode="embedding"), d / "critic")
    return db


def copy(db, tmp_path, name):
    out = tmp_path / f"{name}.duckdb"
    shutil.copy(db, out)
    return out


def test_scores_and_embeddings_on_ray_equal_the_local_engine(corpus, cluster, tmp_path):
    local, on_ray = copy(corpus, tmp_path, "local"), copy(corpus, tmp_path, "ray")
    for db, engine in ((local, None), (on_ray, cluster)):
        e = embed_items(db, chunk=256, mapper=mapper_for(engine))
        s = score_items(db, "c", chunk=256, mapper=mapper_for(engine))
        assert e.embedded == s.scored > 1000
    with Store(local, read_only=True) as a, Store(on_ray, read_only=True) as b:
        for sql in ("SELECT item_id, vector FROM embeddings ORDER BY 1",
                    "SELECT item_id, score FROM scores ORDER BY 1"):
            ra, rb = a.con.execute(sql).fetchall(), b.con.execute(sql).fetchall()
            assert [r[0] for r in ra] == [r[0] for r in rb]
            x, y = (np.asarray([r[1] for r in rows], dtype=np.float64) for rows in (ra, rb))
            # in bfloat16 a 1-CPU actor and the 2-thread local engine can round a value a step apart (oneDNN's
            # kernels block by thread count): the same numbers up to that step, and nearly all of them identical
            assert np.allclose(x, y, atol=BF16_STEP if bf16_native() else 1e-5)
            assert (np.abs(x - y) <= 1e-5).mean() > 0.99
        runs = b.con.execute("SELECT stage, status FROM runs WHERE stage IN ('embed', 'score')").fetchall()
    assert sorted(runs) == [("embed", "ok"), ("score", "ok")]


def test_a_killed_driver_loses_nothing_and_stores_nothing_twice(corpus, cluster, tmp_path):
    db = copy(corpus, tmp_path, "killed")
    with Store(db) as s:
        n = s.scalar("SELECT count(*) FROM items")
    args = ["embed", "--engine", "ray", "--ray-address", cluster.address, "--chunk", "64", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "skd", *args, "--db", str(db)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    kill_when(proc, db, "SELECT count(*) FROM embeddings", 128)
    with Store(db, read_only=True) as s:
        partial = s.scalar("SELECT count(*) FROM embeddings")
    done = json.loads(run_skd(*args, "--json", db=db, check=True).stdout)
    with Store(db, read_only=True) as s:
        total, distinct = s.con.execute("SELECT count(*), count(DISTINCT item_id) FROM embeddings").fetchall()[0]
        statuses = [r[0] for r in s.con.execute("SELECT status FROM runs WHERE stage = 'embed' ORDER BY started_at")
                    .fetchall()]
    assert 0 < partial < n and total == distinct == n
    assert done["already_embedded"] == partial and done["embedded"] == n - partial
    assert statuses[-1] == "ok"


def test_partitions_as_ray_tasks_give_the_single_index_clusters(corpus, cluster, tmp_path):
    db = copy(corpus, tmp_path, "dedup")
    embed_items(db)
    with Store(db) as s:
        one = dedup(s, "semantic", 0.85, "global", incremental=False)
        expected = s.con.execute("SELECT item_id, cluster_id FROM dedup_clusters ORDER BY 1").fetchall()
        part = dedup(s, "semantic", 0.85, "global", incremental=False, partitions=8, max_visits=8,
                     map_fn=task_map_for(cluster))
        got = s.con.execute("SELECT item_id, cluster_id FROM dedup_clusters ORDER BY 1").fetchall()
    assert got == expected and part.removed == one.removed > 0 and part.audit["recall"] == 1.0


def test_a_failed_ray_task_is_one_line(cluster):
    """Dedup's partitions run as Ray tasks: a task's failure was a RayTaskError traceback. (A function the
    workers can import: this test module is not importable there.)"""
    with pytest.raises(SkdError, match="the Ray engine failed: JSONDecodeError: Expecting property name"):
        list(task_map_for(cluster)(json.loads, ["{"]))


def test_engine_options_are_checked():
    with pytest.raises(SkdError, match="--engine: kind"):
        engine_from("spark")
    p = run_skd("embed", "--engine", "spark", "--db", "/nonexistent/x.duckdb")
    assert p.returncode == 2 and "--engine: kind" in p.stderr and "Traceback" not in p.stderr
    assert mapper_for(None).__name__ == "local_mapper" and task_map_for(EngineConfig()) is map


def test_a_missing_model_is_one_line_before_the_cluster_works(corpus, tmp_path):
    db = copy(corpus, tmp_path, "m")
    p = run_skd("embed", "--engine", "ray", "--model", "/nonexistent/model", "--quiet", db=db)
    assert p.returncode == 2 and p.stderr.startswith("skd: error: model '/nonexistent/model'")
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


# -- generation ---------------------------------------------------------------------------------------------------

GENERATE = ('events_from = "seeds"\nmax_events = 20\nrelations = ["xWant", "xNeed"]\n'
            '[inference_sampling]\nn = 3\ntemperature = 1.0\ntop_p = 0.5\nmax_tokens = 16\nstop = ["\\n"]\n')


def generated(db):
    with Store(db, read_only=True) as s:
        return (s.con.execute("SELECT request_id, sample_index, text, parsed_ok FROM generations ORDER BY 1, 2")
                .fetchall(),
                s.con.execute("SELECT item_id, head, relation, tail FROM items ORDER BY 1").fetchall(),
                s.con.execute("SELECT item_id, request_id, sample_index FROM item_sources ORDER BY 2, 3, 1").fetchall())


def test_generation_on_ray_equals_the_local_engine_and_a_killed_driver_loses_nothing(cluster, tiny_lm, tmp_path):
    """The transformers backend in an actor pool: the same seeds give the same samples as the local engine, and a
    driver killed part way, rerun, ends with exactly the uninterrupted result (nothing lost, nothing twice)."""
    cfg = tmp_path / "atomic.toml"
    cfg.write_text(GENERATE)
    args = ["generate", "atomic10x", "--teacher", str(tiny_lm), "--config", str(cfg), "--seed", "5",
            "--batch-size", "2", "--quiet"]
    local, killed = tmp_path / "local.duckdb", tmp_path / "killed.duckdb"
    run_skd(*args, db=local, check=True, env={"HF_HUB_OFFLINE": "1"})
    ray_args = [*args, "--engine", "ray", "--ray-address", cluster.address]
    proc = subprocess.Popen([sys.executable, "-m", "skd", *ray_args, "--db", str(killed)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, killed, "SELECT count(*) FROM ingested_shards", 4)
    done = json.loads(run_skd(*ray_args, "--json", db=killed, check=True).stdout)
    assert done["already_done"] >= 8 and done["generated"] > 0 and done["already_done"] + done["generated"] == 40
    expected, got = generated(local), generated(killed)
    assert len(expected[0]) == 120 and got == expected
    with Store(killed, read_only=True) as s:
        config = json.loads(s.scalar("SELECT config FROM runs WHERE stage = 'generate' ORDER BY started_at DESC "
                                     "LIMIT 1"))
    assert config["engine"] == "ray"


def test_generation_errors_on_ray_are_one_line(cluster, tiny_lm, tmp_path):
    cfg, http = tmp_path / "atomic.toml", tmp_path / "http.toml"
    cfg.write_text(GENERATE)
    http.write_text(GENERATE + "[teacher]\nmax_retries = 1\nbackoff = 0.01\n")
    db = tmp_path / "e.duckdb"
    base = ["generate", "atomic10x", "--engine", "ray", "--ray-address", cluster.address, "--quiet"]
    p = run_skd(*base, "--config", str(cfg), "--teacher", "/nonexistent/model", db=db)
    assert p.returncode == 2 and p.stderr.startswith("skd: error: model '/nonexistent/model'")
    assert p.stderr.count("\n") == 1
    # the HTTP processor against a port nobody listens on: retried, then one line naming what failed
    p = run_skd(*base, "--config", str(http), "--backend", "openai", "--teacher", "m",
                "--base-url", "http://127.0.0.1:9/v1", db=db)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "the Ray engine failed: the endpoint failed after 2 attempts (last: ClientConnectorError)" in p.stderr
    with Store(db, read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM generations") == 0
        assert s.scalar("SELECT status FROM runs WHERE stage = 'generate'") == "failed"
    p = run_skd(*base, "--config", str(cfg), "--backend", "openai-batch", "--teacher", "m", db=db)
    assert p.returncode == 2 and "takes no --engine ray" in p.stderr


class ServerErrors(JsonServer):
    """An OpenAI-compatible endpoint that answers 500 with vLLM's error body: to its first `first` calls, and
    always to the prompts `always` picks."""

    def __init__(self, first=0, always=lambda prompt: False, too_long=lambda prompt: False):
        super().__init__()
        self.first, self.always, self.too_long = first, always, too_long
        self.calls, self.failing, self.refused = 0, set(), set()

    def respond(self, path, body, headers):
        self.calls += 1
        prompt = json.dumps(body.get("prompt") or body.get("messages"))
        if self.too_long(prompt):
            self.refused.add(prompt)
            return 400, {}, {"error": {"message": "too long", "type": "BadRequestError", "code": 400}}
        if self.always(prompt):
            self.failing.add(prompt)
        if self.calls <= self.first or self.always(prompt):
            return 500, {}, {"error": {"message": "engine busy", "type": "InternalServerError", "code": 500}}
        answers = choices(path, body.get("n", 1), lambda i, chat: "a tail" if chat else " a tail")
        return 200, {}, {"choices": answers, "usage": {"prompt_tokens": 5, "completion_tokens": 2 * len(answers)}}


def test_server_errors_through_rays_http_processor_are_retried_as_on_the_local_engine(cluster, tmp_path):
    """Ray's HTTP stage retries 429 and 502-504 but hands a 500 on as a body: one busy moment of the server stopped
    a Ray job that the local engine finishes. A 500 is asked again (the teacher's retries); a request that keeps
    failing stops the run in one line, with every answered request stored."""
    cfg = tmp_path / "atomic.toml"
    cfg.write_text(GENERATE + "[teacher]\nmax_retries = 2\nbackoff = 0.01\n")
    base = ["generate", "atomic10x", "--engine", "ray", "--ray-address", cluster.address, "--backend", "openai",
            "--teacher", "m", "--config", str(cfg), "--quiet"]
    # a block that mixes answers, refusals and server errors (Ray gives its rows one schema: `choices: None`)
    server = ServerErrors(first=6, too_long=lambda prompt: zlib.crc32(prompt.encode()) % 7 == 1)
    with server as url:
        run_skd(*base, "--base-url", url, db=tmp_path / "busy.duckdb", check=True)
    refused = len(server.refused)
    with Store(tmp_path / "busy.duckdb", read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM requests") == 40 and 0 < refused < 40
        assert s.scalar("SELECT count(*) FROM generations WHERE finish_reason LIKE 'refused: 400%'") == refused
        assert s.scalar("SELECT count(*) FROM generations") == 3 * (40 - refused) + refused
    server = ServerErrors(always=lambda prompt: zlib.crc32(prompt.encode()) % 4 == 0)
    with server as url:
        p = run_skd(*base, "--base-url", url, db=tmp_path / "down.duckdb")
    failing = len(server.failing)
    assert 0 < failing < 40 and p.returncode != 0 and "Traceback" not in p.stderr
    assert f"skd: error: the endpoint answered {failing} request(s) with a server error (409 or 5xx) 3 times; " \
        "the answered requests are stored, rerun to resume" in p.stderr
    with Store(tmp_path / "down.duckdb", read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM generations") == 3 * (40 - failing)
        assert s.scalar("SELECT status FROM runs WHERE stage = 'generate'") == "failed"


def test_a_vllm_teacher_without_vllm_installed_is_one_line(cluster, smollm2, tmp_path):
    """This environment has no vLLM (it lives in .venv-vllm): one line, not every engine actor failing and being
    restarted. The vLLM processor itself runs in tests/generators/test_vllm.py."""
    cfg = tmp_path / "atomic.toml"
    cfg.write_text(GENERATE)
    p = run_skd("generate", "atomic10x", "--backend", "vllm", "--config", str(cfg), "--engine", "ray",
                "--ray-address", cluster.address, "--quiet", db=tmp_path / "v.duckdb", timeout=120)
    assert p.returncode == 2 and "the vllm backend on Ray needs vLLM" in p.stderr and "Traceback" not in p.stderr


def test_vllm_processor_rows_are_one_sample_each_and_come_back_as_whole_requests():
    """Ray's vLLM processor keeps one output per row: a request of n samples goes in as n seeded rows, and its
    samples, arriving in any batches and order, come back as one response once all are in."""
    import pyarrow as pa

    from generators import Request, Sampling
    from generators.teacher_job import response_from
    from skd.ray_llm import KEY, regrouped, sample_rows

    reqs = [Request(model="m", sampling=Sampling(n=3, seed=7, stop=("\n",)), prompt="a"),
            Request(model="m", sampling=Sampling(n=1), messages=(("user", "b"),))]
    rows = sample_rows(reqs)
    params = [json.loads(r["sampling_params"]) for r in rows]
    assert [r["sample_index"] for r in rows] == [0, 1, 2, 0] and all(p["n"] == 1 for p in params)
    assert params[0]["seed"] == 7 and len({p["seed"] for p in params[:3]}) == 3 and params[3]["seed"] is None
    out = [{"request_id": r[KEY], "sample_index": r["sample_index"], "text": f"t{r['sample_index']}",
            "n_tokens": 2, "prompt_tokens": 5} for r in rows]
    batches = [pa.Table.from_pylist([out[2], out[3]]), pa.Table.from_pylist([out[1]]), pa.Table.from_pylist([out[0]])]
    tables = list(regrouped(iter(batches), reqs))
    assert [t.column("request_id").to_pylist() for t in tables] == [[reqs[1].request_id], [reqs[0].request_id]]
    whole = response_from(tables[1].column("response")[0].as_py())
    assert [c.text for c in whole] == ["t0", "t1", "t2"] and whole.prompt_tokens == 5



def test_a_ray_vllm_sample_has_the_finish_reason_and_logprob_the_local_engine_records():
    """Ray's vLLM output names no finish reason: without one a cut-off event was kept on Ray and dropped locally."""
    from skd.ray_llm import KEY, sample_of

    row = {KEY: "r", "sample_index": 1, "generated_text": "PersonX goes to the", "num_generated_tokens": 12,
           "num_input_tokens": 30, "max_tokens": 12, "generated_tokens": [5, 9],
           "logprobs": [{5: {"logprob": -0.5, "rank": 1}}, [(9, {"logprob": -1.25, "rank": 2})]]}
    got = sample_of(row)
    assert got["finish_reason"] == "length" and got["logprob"] == -1.75 and got["text"] == "PersonX goes to the"
    assert sample_of(row | {"num_generated_tokens": 4})["finish_reason"] == "stop"
    assert sample_of(row | {"logprobs": None})["logprob"] is None  # not asked for


def test_a_refusal_through_rays_http_processor_is_recorded_as_on_the_local_engine():
    """Ray's HTTP stage hands on the error body of a 400, not its status: one prompt past the context stopped the
    whole job, on every rerun."""
    from skd.ray_llm import http_response

    vllm = {"error": {"message": "This model's maximum context length is 2048", "type": "BadRequestError",
                      "code": 400}}
    openai = {"error": {"message": "too long", "type": "invalid_request_error", "code": "context_length_exceeded"}}
    assert http_response(vllm, False, None)[0].finish_reason == "refused: 400: This model's maximum context length " \
        "is 2048"
    assert http_response(openai, True, None)[0].finish_reason == "refused: 400: too long"
    with pytest.raises(SkdError, match="answered without choices: engine crashed"):
        http_response({"error": {"message": "engine crashed", "type": "InternalServerError", "code": 500}}, False, None)
    # ... and a server error is asked again (test_server_errors_through_rays_http_processor_...), a refusal never
    from skd.ray_llm import server_error

    assert server_error({"error": {"message": "engine crashed", "type": "InternalServerError", "code": 500}})
    assert server_error({"error": {"message": "try again", "type": "server_error", "code": None}})  # OpenAI's 500
    assert server_error({"object": "error", "message": "conflict", "code": 409})
    assert not server_error(vllm) and not server_error(openai) and not server_error({"choices": []})
    # the local engine's retried statuses, no others: a 501 answers the same however often it is asked
    assert not server_error({"error": {"message": "no such route", "type": "NotImplementedError", "code": 501}})


def test_rate_limits_the_http_processor_cannot_hold_are_one_line():
    from skd.ray_llm import per_worker_qps

    assert per_worker_qps({}, 2) is None and per_worker_qps({"rpm": 600}, 2) == 5
    with pytest.raises(SkdError, match="under one request per second"):
        per_worker_qps({"rpm": 60}, 2)
    with pytest.raises(SkdError, match="tpm"):
        per_worker_qps({"tpm": 1000}, 2)
