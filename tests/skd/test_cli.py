import json

import polars as pl
import pytest

from tests.conftest import EXAMPLES, run_skd


def all_commands() -> list[list[str]]:
    """Every command and sub-command path, from the command line's own tree."""
    from skd.cli import COMMANDS, load_command

    paths = []
    for name in COMMANDS:
        cmd = load_command(name)
        paths.append([name])
        paths += [[name, sub] for sub in getattr(cmd, "commands", {})]
    return paths


@pytest.mark.parametrize("cmd", all_commands(), ids=" ".join)
def test_every_command_has_help(cmd):
    proc = run_skd(*cmd, "--help")
    assert proc.returncode == 0 and "Usage" in proc.stdout and proc.stderr == ""


def test_the_help_listing_is_each_commands_own_short_help():
    from skd.cli import COMMANDS, load_command

    for name, (_, listed) in COMMANDS.items():
        assert listed == load_command(name).get_short_help_str(limit=100), name
    top = run_skd("--help", check=True).stdout
    assert all(name in top for name in COMMANDS)


def test_help_shows_bracketed_defaults():
    # rich reads "[...]" as markup: an unescaped "[default: ...]" in a help text vanished without a trace.
    proc = run_skd("ingest", "--help", env={"COLUMNS": "240"}, check=True)
    assert "[default: from the suffix]" in proc.stdout and "[default: ./skd.duckdb]" in proc.stdout


def test_init_ingest_info_query_roundtrip(db_path, tmp_path):
    run_skd("init", db=db_path, check=True)
    proc = run_skd("ingest", str(EXAMPLES / "mini.jsonl"), "--json", db=db_path, check=True)
    assert json.loads(proc.stdout)["new_items"] == 26
    info = json.loads(run_skd("info", "--json", db=db_path, check=True).stdout)
    assert info["tables"]["items"] == 26 and info["items_per_kind"]["triple"] == 18
    assert info["triples_per_relation"]["xReact"] == 3
    proc = run_skd("query", "SELECT kind, count(*) AS n FROM items GROUP BY 1 ORDER BY 1", "--format", "csv",
                   db=db_path, check=True)
    assert proc.stdout.splitlines() == ["kind,n", "qa,3", "rationale,3", "text,2", "triple,18"]
    proc = run_skd("query", "SELECT question, choices FROM items WHERE kind = 'qa' ORDER BY 1", "-f", "jsonl",
                   db=db_path, check=True)
    rows = {r["question"]: r["choices"] for r in map(json.loads, proc.stdout.splitlines())}
    assert rows["Where would you keep milk cold?"] == ["oven", "refrigerator", "cupboard", "table", "garden"]
    out = tmp_path / "o.parquet"
    run_skd("query", "SELECT * FROM items", "-f", "parquet", "--out", str(out), db=db_path, check=True)
    assert pl.read_parquet(out).height == 26
    assert "triple" in run_skd("query", "SELECT kind FROM items", db=db_path, check=True).stdout


def test_bad_rows_summary_and_report(db_path, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{oops\n')
    proc = run_skd("ingest", str(bad), db=db_path)
    assert proc.returncode == 0
    assert "1 new items" in proc.stdout.replace(",", "") and "1 rejected" in proc.stdout
    assert "rejected rows and reasons" in proc.stderr
    strict = tmp_path / "bad2.jsonl"
    strict.write_text('{"text": "fine too"}\n{oops\n')
    proc = run_skd("ingest", str(strict), "--strict", db=db_path)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"skd: error: {strict}: row 2: invalid JSON: Expecting property name enclosed in double quotes at column 2;"
        " nothing ingested (--strict)")


@pytest.mark.parametrize("args,message", [
    (["ingest", "nope.jsonl"], "no such file: nope.jsonl"),
    (["ingest", "x.xml"], "cannot tell the format of x.xml"),
    (["query", "DELETE FROM items"], "only reads; DELETE statements are refused"),
    (["labels", "import", "nope.csv", "--format", "ckbp"], "no such file"),
])
def test_user_errors_are_one_line_with_exit_2(db_path, args, message):
    run_skd("init", db=db_path, check=True)
    proc = run_skd(*args, db=db_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr


def test_reader_of_missing_corpus_is_told_to_init(tmp_path):
    proc = run_skd("info", db=tmp_path / "none.duckdb")
    assert proc.returncode == 2 and "skd init" in proc.stderr


def test_labels_import_cli(db_path, tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("head,relation,tail,label\nPersonX a,xAttr,b,1\nPersonX a,xAttr,b,0\nPersonX a,xAttr,b,1\n")
    out = json.loads(run_skd("labels", "import", str(path), "--format", "ckbp", "--json", db=db_path,
                             check=True).stdout)
    assert (out["items"], out["positive"], out["conflicts"]) == (1, 1, 1)


@pytest.mark.parametrize("config,args,message", [
    ('relations = ["xFoo"]\n', [], "relations: Value error, unknown relation 'xFoo'"),
    ('stage = "events"\nseeds = "EMPTY"\n', [], "has no events"),
    ("prompts = [\n", [], "invalid TOML"),
    ('[teacher]\nconcurrency = 4\n', [], "teacher option 'concurrency' does not apply to the transformers backend"),
    ("", ["--rpm", "60"], "--rpm does not apply to the transformers backend"),  # was dropped without a word
    ("", ["--teacher", "no-such-org/no-such-model"], "neither an embedded default"),
])
def test_generate_user_errors_are_one_line(db_path, tmp_path, config, args, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.replace("EMPTY", str(empty)))
    proc = run_skd("generate", "atomic10x", "--config", str(cfg), *args, db=db_path, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr


def test_ingest_many_files_and_folders_resumes_after_a_failure(db_path, tmp_path):
    folder = tmp_path / "shards"
    (folder / "part2").mkdir(parents=True)
    (folder / ".cache").mkdir()
    (folder / "part1.jsonl").write_text((EXAMPLES / "mini.jsonl").read_text())
    (folder / "part2" / "b.csv").write_text("text\nA fact from a CSV shard.\n")
    (folder / ".cache" / "c.jsonl").write_text('{"text": "hidden, not ingested"}\n')
    (folder / "notes.md").write_text("not data")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a fact before the bad line"}\n{oops\n')
    later = tmp_path / "later.jsonl"
    later.write_text('{"text": "a fact after the bad file"}\n')

    proc = run_skd("ingest", str(folder), str(bad), str(later), "--strict", db=db_path)
    assert proc.returncode == 2 and f"{bad}: row 2" in proc.stderr  # stops at the bad file, keeps the folder's
    kept = json.loads(run_skd("info", "--json", db=db_path, check=True).stdout)["tables"]["items"]
    assert kept == 27

    bad.write_text('{"text": "a fact before the bad line"}\n')
    proc = run_skd("ingest", str(folder), str(bad), str(later), "--json", db=db_path, check=True)
    results = json.loads(proc.stdout)
    assert [r["file"] for r in results] == [str(folder / "part1.jsonl"), str(folder / "part2" / "b.csv"), str(bad),
                                            str(later)]
    assert [r["skipped"] for r in results] == [True, True, False, False]
    assert sum(r["new_items"] for r in results) == 2


def test_ingest_folder_with_format_takes_that_format_only(db_path, tmp_path):
    (tmp_path / "a.csv").write_text("text\nA fact from CSV.\n")
    (tmp_path / "b.jsonl").write_text('{"text": "A fact from JSONL."}\n')
    results = json.loads(run_skd("ingest", str(tmp_path), "-f", "csv", "--json", db=db_path, check=True).stdout)
    assert [r["file"] for r in results] == [str(tmp_path / "a.csv")] and results[0]["new_items"] == 1
    proc = run_skd("ingest", str(tmp_path), "-f", "parquet", db=db_path)
    assert proc.returncode == 2 and "no parquet files (.parquet) in" in proc.stderr


def test_data_that_looks_like_markup_is_printed_as_it_is(db_path, tmp_path):
    """A relation "[/x]" (or a file named so) raised rich's MarkupError after the ingest was committed."""
    path = tmp_path / "odd[bold].jsonl"
    path.write_text(json.dumps({"head": "PersonX eats", "relation": "[/x]", "tail": "food"}) + "\n")
    p = run_skd("ingest", str(path), db=db_path)
    assert p.returncode == 0 and "odd[bold].jsonl" in p.stdout, p.stderr  # not read as a style
    p = run_skd("info", db=db_path)
    assert p.returncode == 0 and "[/x]" in p.stdout, p.stderr
