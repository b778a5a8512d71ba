"""The Ray engine on a real local cluster (ray.init(num_cpus=2)), no mocks: scoring and embedding through an actor
pool give what the local engine gives, a driver killed mid-run loses nothing and stores nothing twice on rerun,
and dedup's partitions run as Ray tasks with the single index's clusters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from corpus import dedup, embed_items
from critics import train_critic
from critics.config import CriticConfig
from critics.score import score_items
from skd.engines import EngineConfig, engine_from, mapper_for, task_map_for
from store import SkdError, Store, import_labels
from tests.conftest import EXAMPLES, ROOT, atomic_corpus, kill_when, run_skd

ray = pytest.importorskip("ray", reason="the ray engine needs the ray package (pip install 'skd[ray]')")
pytestmark = pytest.mark.slow


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
            assert np.allclose(np.asarray([r[1] for r in ra], dtype=np.float64),
                               np.asarray([r[1] for r in rb], dtype=np.float64), atol=1e-5)
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
