"""Bad input from an outside test, each through the real `skd` command: one line on stderr and exit 2 (or a
recorded rejection), never a traceback, and nothing already stored lost."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from store import Store, import_labels
from tests.conftest import EXAMPLES, ROOT, run_skd


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("skd: error: ")
    assert proc.stderr.count("\n") == 1, proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr


@pytest.mark.parametrize("args, words", [
    (["query", "select 1", "--format", "xml"], ["'xml' is not one of"]),
    (["info", "--no-such-option"], ["No such option: --no-such-option"]),
    (["nosuch"], ["No such command 'nosuch'"]),
    (["snapshot", "show"], ["Missing argument"]),
    (["ingest"], ["Missing argument 'files'"]),
    (["critic", "train", "x", "--batch-size", "many"], ["--batch-size"]),
    (["ingest", "x.jsonl", "--kind", "poem"], ["'poem' is not one of"]),
    (["--wait", "-1", "info"], ["--wait"]),
])
def test_usage_errors_are_one_line_with_exit_2(args, words, db_path):
    one_line_error(run_skd(*args, db=db_path), *words)


def test_global_options_before_the_command(tmp_path):
    db = tmp_path / "g.duckdb"
    assert run_skd("--db", str(db), "init").returncode == 0 and db.exists()
    run_skd("--db", str(db), "ingest", str(EXAMPLES / "mini.jsonl"), check=True)
    p = run_skd("--db", str(db), "--json", "info", check=True)
    assert json.loads(p.stdout)["tables"]["items"] == 26
    p = run_skd("--db", str(db), "query", "SELECT count(*) AS n FROM items", "-f", "jsonl", check=True)
    assert json.loads(p.stdout) == {"n": 26}


def test_query_does_not_import_torch_or_polars(db_path):
    run_skd("init", db=db_path, check=True)
    code = ("import sys; sys.argv = ['skd', 'query', 'select 42']\nfrom skd.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'polars', 'pyarrow') if m in sys.modules), "
            "file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "SKD_DB": str(db_path)})
    assert "42" in p.stdout and p.stderr.strip().splitlines()[-1] == "[]", p.stderr


def test_model_that_is_no_path_nor_id_says_so(db_path):
    run_skd("init", db=db_path, check=True)
    with Store(db_path) as s:
        import_labels(s, EXAMPLES / "critic-labels.jsonl", "jsonl")
    p = run_skd("critic", "train", "c", "--mode", "embedding", "--base", "/nonexistent/model", db=db_path)
    one_line_error(p, "neither an embedded default", "no such path")


BAD_LINES = {
    "invalid UTF-8": b'{"text": "bad \xff\xfe bytes"}\n',
    "nested 10,000 deep": b'{"text": "deep", "x": ' + b"[" * 10000 + b"]" * 10000 + b"}\n",
    "a lone surrogate": b'{"text": "lone \\ud800 surrogate"}\n',
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
@pytest.mark.parametrize("strict", [False, True])
def test_hostile_jsonl_lines_are_rejected_by_row(case, strict, tmp_path, db_path):
    run_skd("ingest", str(EXAMPLES / "mini.jsonl"), db=db_path, check=True)
    f = tmp_path / "bad.jsonl"
    f.write_bytes(b'{"text": "A fine row."}\n' + BAD_LINES[case])
    t = time.monotonic()
    p = run_skd("ingest", str(f), *(["--strict"] if strict else []), "--json", db=db_path)
    assert time.monotonic() - t < 60  # pyarrow would take minutes over the deep list
    if strict:
        one_line_error(p, "row 2")
    else:
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
        assert (r["rows"], r["new_items"], r["rejected"]) == (2, 1, 1)
    with Store(db_path, read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM items") == 26 + (0 if strict else 1)


def test_csv_field_with_a_nul_byte_is_rejected_not_stripped(tmp_path, db_path):
    f = tmp_path / "nul.csv"
    f.write_bytes(b"text,domain\nhello\0world,a\nfine,b\n")
    r = json.loads(run_skd("ingest", str(f), "--json", db=db_path, check=True).stdout)
    assert (r["new_items"], r["rejected"]) == (1, 1)
    with Store(db_path, read_only=True) as s:
        assert s.scalar("SELECT list(text) FROM items") == ["fine"]
        assert s.scalar("SELECT reason FROM rejects") == "field text holds a NUL byte"


UNREADABLE = Path("/proc/sys/vm/compact_memory")  # write-only, even for root


@pytest.mark.skipif(not UNREADABLE.exists(), reason="needs a file nobody can read (/proc/sys/vm/compact_memory)")
@pytest.mark.parametrize("command", [["ingest"], ["labels", "import", "-f", "jsonl"]])
def test_unreadable_file_is_one_line(command, tmp_path, db_path):
    link = tmp_path / "secret.jsonl"
    link.symlink_to(UNREADABLE)
    one_line_error(run_skd(*command, str(link), db=db_path), "secret.jsonl", "read")


@pytest.mark.parametrize("out, words", [("/no/such/dir/x.csv", ["no folder /no/such/dir"]),
                                        (".", ["is a folder"])])
def test_query_out_to_a_bad_place(out, words, db_path):
    run_skd("init", db=db_path, check=True)
    one_line_error(run_skd("query", "select 1", "-f", "csv", "--out", out, db=db_path), *words)


def test_query_cannot_write_a_file(db_path, tmp_path):
    run_skd("ingest", str(EXAMPLES / "mini.jsonl"), db=db_path, check=True)
    out = tmp_path / "out.csv"
    one_line_error(run_skd("query", f"EXPLAIN ANALYZE COPY (SELECT * FROM items) TO '{out}'", db=db_path))
    assert not out.exists()


PIPE = """
[corpus]
path = "{d}/c.duckdb"
ingest = [{{ file = "examples/data/mini.jsonl", format = "jsonl" }}]
{extra}
[snapshot]
name = "s"
{snapshot}
"""
BAD_PIPELINES = {
    "negative split": ("", 'split = { train = -0.5, test = 1.5 }', "split"),
    "zero split": ("", 'split = { train = 0.0 }', "split"),
    "cut off the grid": ("[critic]\nthreshold_at_recall = 0.33\n", "", "threshold_at_recall 0.33 must be one of"),
    "eval limit": ("[eval]\nlimit = -1\n", "", "eval.limit"),
    "teacher option": ('[generate]\nrecipe = "atomic10x"\n[generate.teacher_options]\nwarp_speed = 9\n', "",
                       "takes no option 'warp_speed'"),
}


@pytest.mark.parametrize("case", sorted(BAD_PIPELINES))
def test_pipeline_is_checked_before_any_stage_runs(case, tmp_path):
    extra, snapshot, words = BAD_PIPELINES[case]
    cfg = tmp_path / "p.toml"
    cfg.write_text(PIPE.format(d=tmp_path, extra=extra, snapshot=snapshot))
    one_line_error(run_skd("run", str(cfg)), words)
    assert not (tmp_path / "c.duckdb").exists()  # not even the ingest stage ran


def test_binary_file_as_pipeline(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_bytes(bytes(range(256)) * 4)
    one_line_error(run_skd("run", str(cfg)), "not a TOML file")


# -- losses and leaks ----------------------------------------------------------------------------------
def label_count(db):
    with Store(db, read_only=True) as s:
        return s.scalar("SELECT count(*) FROM labels")


def test_label_import_never_wipes_what_it_did_not_read(tmp_path, db_path):
    labels = EXAMPLES / "critic-labels.jsonl"
    assert run_skd("labels", "import", str(labels), "-f", "jsonl", db=db_path).returncode == 0
    n = label_count(db_path)
    assert n == 64
    other = tmp_path / "other"
    other.mkdir()
    (other / labels.name).write_bytes(b"")  # same base name, another folder, empty
    one_line_error(run_skd("labels", "import", str(other / labels.name), "-f", "jsonl", db=db_path),
                   "no judgements read")
    (other / labels.name).write_bytes(bytes(range(256)))  # binary
    one_line_error(run_skd("labels", "import", str(other / labels.name), "-f", "jsonl", "--source",
                           f"jsonl:{labels.name}", db=db_path), "no judgements read")
    assert label_count(db_path) == n
    # the same file again changes nothing; another file into a held source needs --replace
    p = run_skd("labels", "import", str(labels), "-f", "jsonl", db=db_path, check=True)
    assert "nothing changed" in p.stdout and label_count(db_path) == n
    (other / labels.name).write_text('{"text": "Birds lay eggs.", "label": 1}\n')
    one_line_error(run_skd("labels", "import", str(other / labels.name), "-f", "jsonl", db=db_path), "--replace")
    assert label_count(db_path) == n
    p = run_skd("labels", "import", str(other / labels.name), "-f", "jsonl", "--replace", "--json", db=db_path,
                check=True)
    assert json.loads(p.stdout)["replaced"] == n and label_count(db_path) == 1


class EchoAuthServer:
    """Answers every request 400 with the Authorization header in the body, as some servers do."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps({"error": {"message": f"invalid credentials: {self.headers.get('Authorization')}"}})
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.port = self.httpd.server_address[1]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_api_key_and_url_password_never_reach_the_terminal_or_the_store(tmp_path, db_path):
    key, password = "sk-live-0123456789abcdefghij", "hunter2-very-secret"
    server = EchoAuthServer()
    try:
        run_skd("ingest", str(EXAMPLES / "mini.jsonl"), db=db_path, check=True)
        cfg = tmp_path / "recipe.toml"
        cfg.write_text('events_from = "seeds"\nmax_events = 1\nrelations = ["xWant"]\n')
        procs = [run_skd("generate", "atomic10x", "--config", str(cfg), "--backend", "openai", "--teacher", "m",
                         "--base-url", f"http://{creds}127.0.0.1:{server.port}/v1", "--quiet", db=db_path,
                         env={"OPENAI_API_KEY": key}) for creds in ("", f"user:{password}@")]
    finally:
        server.close()
    one_line_error(procs[0], "answered 400", "invalid credentials: Bearer ***")
    one_line_error(procs[1], "answered 400", "invalid credentials: Basic ***")  # httpx sends URL credentials
    for p in procs:
        assert key not in p.stderr + p.stdout and password not in p.stderr + p.stdout
    with Store(db_path, read_only=True) as s:
        stored = json.dumps(s.query("SELECT * FROM runs").rows(), default=str)
    assert key not in stored and password not in stored and f"127.0.0.1:{server.port}" in stored


@pytest.mark.slow
def test_readers_work_while_a_critic_trains(tmp_path, db_path):
    """The critic's trainer holds the corpus only to read labels and to register: a query with no wait at all
    succeeds while it trains."""
    run_skd("ingest", str(EXAMPLES / "mini.jsonl"), db=db_path, check=True)
    with Store(db_path) as s:
        import_labels(s, EXAMPLES / "critic-labels.jsonl", "jsonl")
    out = tmp_path / "critic"
    trainer = subprocess.Popen([sys.executable, "-m", "skd", "critic", "train", "c", "--mode", "finetune",
                                "--max-steps", "30", "--batch-size", "8", "--out", str(out)], cwd=ROOT,
                               env={**os.environ, "SKD_DB": str(db_path)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob(".critic.*.tmp")) and trainer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert trainer.poll() is None, "the critic finished before it could be queried"
        p = run_skd("--wait", "0", "query", "SELECT count(*) AS n FROM labels", "-f", "jsonl", db=db_path)
        assert p.returncode == 0 and json.loads(p.stdout) == {"n": 64}, p.stderr
        assert trainer.poll() is None  # it was still training when the query ran
        assert trainer.wait(timeout=600) == 0, trainer.stderr.read()
    finally:
        trainer.kill()
    with Store(db_path, read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM critics WHERE name = 'c'") == 1
    shutil.rmtree(out, ignore_errors=True)
